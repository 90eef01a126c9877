"""The main job end to end: a fresh gateway becomes a registered thing, then boots fast."""

import json
import os
import shutil
import stat
import subprocess

import pytest

from conftest import Device


def public_key(args):
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


def key_matches_certificate(key, crt):
    return public_key(["pkey", "-in", str(key), "-pubout"]) == \
        public_key(["x509", "-in", str(crt), "-noout", "-pubkey"])


def pem_body_lines(path):
    return [line for line in open(path).read().splitlines()
            if line and not line.startswith("-----")]


def test_provision_end_to_end(device, sim):
    def observe_disk():
        cur = device.current
        return {name: (cur / name).exists()
                for name in ("device.key", "device.crt", "identity.json", "identity.env")}

    rc, log, notify = device.run(on_ready=observe_disk)

    assert rc == 0, log
    assert notify.ready, log
    # READY=1 only once the committed files were all there.
    assert notify.ready_observation == {"device.key": True, "device.crt": True,
                                        "identity.json": True, "identity.env": True}
    assert notify.assignments("STATUS"), "no STATUS= progress was reported"

    cur = device.current
    assert os.path.islink(cur)
    assert os.readlink(cur).startswith("gen-")
    assert key_matches_certificate(cur / "device.key", cur / "device.crt")

    identity = json.loads((cur / "identity.json").read_text())
    assert identity["thingName"] == "gw-GW-0001"
    assert len(identity["certificateId"]) == 64
    config = identity["deviceConfiguration"]
    assert config, "the template's DeviceConfiguration did not reach identity.json"
    assert any("gw-GW-0001" in v for v in config.values())
    env = (cur / "identity.env").read_text()
    assert "FLEETPROVD_THING_NAME=" in env and "gw-GW-0001" in env

    # The registry holds exactly one thing and one ACTIVE certificate: ours.
    things = sim.things()
    assert list(things) == ["gw-GW-0001"]
    active = sim.certificates(status="ACTIVE")
    assert [c["certificateId"] for c in active] == [identity["certificateId"]]

    # Key mode and owner as designed: 0640, owned by the user that ran the daemon.
    st = os.stat(cur / "device.key")
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_uid == os.getuid()
    assert stat.S_IMODE(os.stat(device.state_dir / os.readlink(cur)).st_mode) == 0o750
    assert not (device.state_dir / "pending").exists()

    # No secret in the log: not a line of the private key.
    for line in pem_body_lines(cur / "device.key"):
        assert line not in log


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_second_start_takes_fast_path(device, sim):
    rc, log, _ = device.run()
    assert rc == 0, log
    stats_before = sim.stats()
    sim.stop()  # nothing to talk to: the fast path must not need the network

    trace = device.root / "trace"
    rc, log, notify = device.run(wrapper=("strace", "-f", "-qq", "-o", str(trace),
                                          "-e", "trace=socket,connect"))
    assert rc == 0, log
    assert notify.ready
    assert "Already provisioned" in log
    calls = trace.read_text()
    assert "AF_INET" not in calls and "AF_INET6" not in calls, calls
    assert stats_before  # the simulator did see the first run


def test_token_and_key_never_logged(tmp_path, sim):
    """Hold the exchange after the certificate is issued, read the token, then finish."""
    sim.set_faults(["drop:register"])
    dev = Device(tmp_path / "dev", sim, serial="GW-0002")
    proc = dev.start()
    try:
        pending = dev.state_dir / "pending" / "certificate.json"
        from conftest import wait_for
        assert wait_for(lambda: pending.exists(), timeout=30), "no certificate was stored"
        token = json.loads(pending.read_text())["certificateOwnershipToken"]
        assert token
        sim.clear_faults()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        dev.log_file.close()
    log = (dev.root / "daemon.log").read_text()
    assert token not in log
    for line in pem_body_lines(dev.current / "device.key"):
        assert line not in log
    assert (dev.current / "identity.json").exists()
