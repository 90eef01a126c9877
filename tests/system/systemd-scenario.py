#!/usr/bin/python3
"""fleetprovd.service under a real systemd, inside a throwaway container (test-systemd.sh).

Installs the built daemon, unit, sysusers.d, tmpfiles.d and catalog files the way the
packages do, starts the AWS IoT simulator on the container's loopback, and then checks,
with the full sandbox of the unit in force:
  - first boot: "systemctl start" returns once READY=1 came, the unit stays active
    (exited), the identity is on disk with the documented owners and modes, the journal
    has the "provisioned" record with its catalog text, exactly one thing is registered;
  - a consumer service with SupplementaryGroups=fleetprovd reads the key through
    identity.env, and the same service without the group cannot;
  - a claim key dropped in as root:root 0600 is made root:fleetprovd 0640 by tmpfiles.d;
  - second boot: the fast path, "already provisioned", nothing new registered;
  - SIGTERM mid-provisioning (systemctl stop): exit 0 with pending/ kept, and the next
    start resumes and still registers one thing;
  - a broken configuration: exit 78, unit failed, and systemd does not restart it;
  - systemd-analyze security on the loaded unit stays at or below 2.0.

usage (inside the container, as root): systemd-scenario.py STAGE_DIR
STAGE_DIR holds fleetprovd, fleetprovd.service, fleetprovd.sysusers, fleetprovd.tmpfiles,
fleetprovd.catalog, iotsim.so, message-ids.h and iotsim/ (iotsimlib.py, templates/).
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

STAGE = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/run/fleetprovd-test")
sys.path.insert(0, str(STAGE / "iotsim"))
os.environ["IOTSIM_PLUGIN"] = str(STAGE / "iotsim.so")

from iotsimlib import Simulator  # noqa: E402

UNIT = "fleetprovd.service"
CONSUMER = "fleetprovd-consumer-test.service"
STATE = pathlib.Path("/var/lib/fleetprovd")
CONF_DIR = pathlib.Path("/etc/fleetprovd")
SERIAL = "GW-SYSTEMD-0001"
THING = "gw-" + SERIAL
MAX_EXPOSURE = 2.0
START_TIMEOUT = 60

failures = []


def check(cond, what):
    print(("ok:   " if cond else "FAIL: ") + what, flush=True)
    if not cond:
        failures.append(what)
    return cond


def run(*args, check_rc=True, timeout=START_TIMEOUT):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check_rc and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {r.returncode}: {r.stderr.strip()}")
    return r


def props(unit=UNIT):
    out = run("systemctl", "show", unit, "-p", "ActiveState,SubState,Result,ExecMainStatus,"
              "NRestarts,StatusText").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def message_ids():
    text = (STAGE / "message-ids.h").read_text()
    return dict(re.findall(r'#define\s+MESSAGE_ID_([A-Z_]+)\s+"([0-9a-f]{32})"', text))


def journal(message_id):
    """The unit's journal records with this MESSAGE_ID, oldest first."""
    out = run("journalctl", "--no-pager", "-o", "json", "-u", UNIT, f"MESSAGE_ID={message_id}",
              check_rc=False).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def new_records(message_id, before, timeout=10):
    """Records added since len(before): journald takes native records asynchronously."""
    wait_for(lambda: len(journal(message_id)) > len(before), timeout)
    return journal(message_id)[len(before):]


def wait_for(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def install():
    """What the .deb/.rpm and their maintainer scripts do."""
    shutil.copy(STAGE / "fleetprovd", "/usr/sbin/fleetprovd")
    os.chmod("/usr/sbin/fleetprovd", 0o755)
    for src, dst in (("fleetprovd.service", "/usr/lib/systemd/system/fleetprovd.service"),
                     ("fleetprovd.sysusers", "/usr/lib/sysusers.d/fleetprovd.conf"),
                     ("fleetprovd.tmpfiles", "/usr/lib/tmpfiles.d/fleetprovd.conf"),
                     ("fleetprovd.catalog", "/usr/lib/systemd/catalog/fleetprovd.catalog")):
        shutil.copy(STAGE / src, dst)
        os.chmod(dst, 0o644)
    run("systemd-sysusers", "fleetprovd.conf")
    run("systemd-tmpfiles", "--create", "fleetprovd.conf")
    run("journalctl", "--update-catalog")
    run("systemctl", "daemon-reload")


def mac_interface():
    """An interface with a real MAC address: the container's private network has only lo."""
    for kind in (["dummy"], ["veth", "peer", "name", "fptest1"]):
        if run("ip", "link", "add", "fptest0", "type", *kind, check_rc=False).returncode == 0:
            return "fptest0"
    for iface in sorted(os.listdir("/sys/class/net")):
        if pathlib.Path(f"/sys/class/net/{iface}/address").read_text().strip() not in (
                "", "00:00:00:00:00:00"):
            return iface
    return None


def write_config(sim, broken=False):
    """What an image builder drops into /etc/fleetprovd: claim files and the config."""
    shutil.copy(sim.ca_file, CONF_DIR / "ca.pem")
    shutil.copy(sim.claim_cert, CONF_DIR / "claim.crt")
    os.chmod(CONF_DIR / "ca.pem", 0o644)
    os.chmod(CONF_DIR / "claim.crt", 0o644)
    (CONF_DIR / "location").write_text("Lab-7\n")
    os.chmod(CONF_DIR / "location", 0o644)
    template = "" if broken else 'name = "GatewayTemplate";'
    iface = mac_interface.cached if hasattr(mac_interface, "cached") else mac_interface()
    mac_interface.cached = iface
    mac = f'{{ name = "MacAddress"; interface_mac = "{iface}"; }},' if iface else ""
    (CONF_DIR / "fleetprovd.conf").write_text(f"""
endpoint = "{sim.host}";
port = {sim.port};
ca_file = "/etc/fleetprovd/ca.pem";
template = {{
  {template}
  parameters = (
    {mac}
    {{ name = "SerialNumber"; command = "/bin/echo {SERIAL}"; }},
    {{ name = "DeviceLocation"; file = "/etc/fleetprovd/location"; }}
  );
}};
client_id = "gw-${{SerialNumber}}";
retry = {{ base = 1; cap = 2; }};
""")
    os.chmod(CONF_DIR / "fleetprovd.conf", 0o644)


def drop_claim_key(sim):
    """The claim key arrives root:root 0600; tmpfiles.d must make it readable by the service."""
    key = CONF_DIR / "claim.key"
    shutil.copy(sim.claim_key, key)
    os.chown(key, 0, 0)
    os.chmod(key, 0o600)
    run("systemd-tmpfiles", "--create", "fleetprovd.conf")
    st = key.stat()
    gid = int(run("getent", "group", "fleetprovd").stdout.split(":")[2])
    check((st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, gid),
          f"tmpfiles.d made the claim key root:fleetprovd 0640 (got {st.st_mode & 0o777:o} "
          f"{st.st_uid}:{st.st_gid})")


def first_boot(sim, ids):
    before = journal(ids["PROVISIONED"])
    r = run("systemctl", "start", UNIT, check_rc=False)
    p = props()
    check(r.returncode == 0, f"systemctl start returned once ready (rc {r.returncode})")
    check((p["ActiveState"], p["SubState"], p["Result"], p["ExecMainStatus"]) ==
          ("active", "exited", "success", "0"), f"unit active (exited) after exit 0: {p}")
    st = STATE.stat()
    check(st.st_mode & 0o777 == 0o750 and st.st_uid != 0,
          f"{STATE} is 0750 and owned by fleetprovd ({st.st_mode & 0o777:o}, uid {st.st_uid})")
    current = STATE / "current"
    check(current.is_symlink() and re.fullmatch(r"gen-[0-9a-f]{64}", os.readlink(current) or ""),
          f"current -> {os.readlink(current) if current.is_symlink() else None}")
    key = (current / "device.key").stat()
    check(key.st_mode & 0o777 == 0o640, f"device.key is 0640 ({key.st_mode & 0o777:o})")
    env = (current / "identity.env").read_text()
    check(f'FLEETPROVD_THING_NAME="{THING}"' in env, "identity.env names the thing")
    records = new_records(ids["PROVISIONED"], before)
    check(len(records) == 1, f"one 'provisioned' journal record ({len(records)})")
    if records:
        check(records[0].get("FLEETPROVD_THING_NAME") == THING,
              "the record carries FLEETPROVD_THING_NAME")
    text = run("journalctl", "--no-pager", "-x", "-u", UNIT,
               f"MESSAGE_ID={ids['PROVISIONED']}").stdout
    check("Gateway provisioned as an AWS IoT thing" in text,
          "journalctl -x shows the catalog entry")
    things = sorted(sim.things())
    check(things == [THING], f"exactly one thing {THING} registered: {things}")


def consumer():
    unit = pathlib.Path("/etc/systemd/system") / CONSUMER
    # Without the group nothing under /var/lib/fleetprovd (0750) is readable; systemd
    # itself reads EnvironmentFile= as root, so the variables arrive either way.
    with_group_cmd = ('test -r "$FLEETPROVD_PRIVATE_KEY_FILE" && '
                      'test -r "$FLEETPROVD_CERTIFICATE_FILE" && test -n "$FLEETPROVD_THING_NAME"')
    without_group_cmd = ('! test -r "$FLEETPROVD_PRIVATE_KEY_FILE" && '
                         'test -n "$FLEETPROVD_PRIVATE_KEY_FILE"')
    for with_group, test in ((True, with_group_cmd), (False, without_group_cmd)):
        group = "SupplementaryGroups=fleetprovd" if with_group else ""
        unit.write_text(f"""[Unit]
Requires=fleetprovd.service
After=fleetprovd.service
[Service]
Type=oneshot
User=nobody
{group}
EnvironmentFile=/var/lib/fleetprovd/current/identity.env
ExecStart=/bin/sh -c '{test}'
""")
        run("systemctl", "daemon-reload")
        r = run("systemctl", "start", CONSUMER, check_rc=False)
        what = "can" if with_group else "cannot"
        check(r.returncode == 0, f"a consumer {'with' if with_group else 'without'} "
              f"SupplementaryGroups=fleetprovd {what} read the key via identity.env")
    unit.unlink()
    run("systemctl", "daemon-reload")


def second_boot(sim, ids):
    before = journal(ids["ALREADY_PROVISIONED"])
    certs = len(sim.certificates())
    r = run("systemctl", "restart", UNIT, check_rc=False)
    p = props()
    check(r.returncode == 0 and p["ActiveState"] == "active", f"second boot is ready again: {p}")
    records = new_records(ids["ALREADY_PROVISIONED"], before)
    check(len(records) == 1, f"one 'already provisioned' record ({len(records)})")
    check(len(sim.certificates()) == certs, "the second boot asked for no certificate")


def stop_and_resume(sim):
    run("systemctl", "stop", UNIT)
    shutil.rmtree(STATE)
    sim.set_faults(["drop:register"])
    run("systemctl", "start", "--no-block", UNIT)
    got = wait_for(lambda: (STATE / "pending" / "certificate.json").exists(), 60)
    check(got, "provisioning reached RegisterThing (pending/certificate.json)")
    p = props()
    check(p["ActiveState"] == "activating" and p["StatusText"] != "",
          f"while waiting the unit is activating with a status text: {p['StatusText']!r}")
    r = run("systemctl", "stop", UNIT, check_rc=False)
    p = props()
    check(r.returncode == 0 and p["ExecMainStatus"] == "0" and p["Result"] == "success",
          f"SIGTERM mid-provisioning ends with exit 0: {p}")
    check((STATE / "pending" / "device.key").exists(), "pending/ is kept for the next start")
    sim.clear_faults()
    r = run("systemctl", "start", UNIT, check_rc=False)
    # Ready means active; the process exits just after READY=1, so "running" may still show.
    p = props()
    check(r.returncode == 0 and p["ActiveState"] == "active", f"the next start resumes: {p}")
    things = sorted(sim.things())
    check(things == [THING], f"still exactly one thing {THING}: {things}")


def config_error(sim, ids):
    before = journal(ids["CONFIG_ERROR"])
    write_config(sim, broken=True)
    r = run("systemctl", "restart", UNIT, check_rc=False)
    check(r.returncode != 0, "systemctl restart fails with a broken configuration")
    time.sleep(2)
    p = props()
    check((p["ActiveState"], p["SubState"], p["ExecMainStatus"], p["NRestarts"]) ==
          ("failed", "failed", "78", "0"),
          f"exit 78, unit failed and not restarted (RestartPreventExitStatus=78): {p}")
    records = new_records(ids["CONFIG_ERROR"], before)
    check(len(records) >= 1, f"a 'configuration error' journal record ({len(records)})")
    write_config(sim)
    run("systemctl", "reset-failed", UNIT, check_rc=False)


def security():
    out = run("systemd-analyze", "security", "--no-pager", UNIT, check_rc=False).stdout
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    check(m is not None and float(m.group(1)) <= MAX_EXPOSURE,
          f"systemd-analyze security of the loaded unit: {m.group(1) if m else out[-200:]}")


def main():
    ids = message_ids()
    install()
    workdir = pathlib.Path("/var/lib/fleetprovd-test-sim")
    with Simulator(str(workdir), templates={
            "GatewayTemplate": str(STAGE / "iotsim" / "templates" / "gateway.json")}) as sim:
        write_config(sim)
        drop_claim_key(sim)
        print(f"MacAddress from: {mac_interface.cached}")
        # Each phase builds on the previous one: stop at the first that fails.
        for phase in (lambda: first_boot(sim, ids), consumer, lambda: second_boot(sim, ids),
                      lambda: stop_and_resume(sim), lambda: config_error(sim, ids), security):
            try:
                phase()
            except Exception as e:  # noqa: BLE001 - report, then show the journal
                check(False, f"{type(e).__name__}: {e}")
            if failures:
                print(run("journalctl", "--no-pager", "-u", UNIT, "-n", "60",
                          check_rc=False).stdout)
                break
    print(f"{len(failures)} failed" if failures else "PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
