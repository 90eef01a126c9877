"""The fault matrix: every fault the simulator can inject, each with its expected outcome.

Transient faults (lost connections, lost, late, duplicated or unusable answers, 429, 5xx)
must end in exactly one thing and one ACTIVE certificate after the retries design.md
decision 7 prescribes; the log names the step and the cause; the simulator's request
counts prove how often the daemon asked. Short timeouts and backoff keep each case fast.
"""

import contextlib
import datetime
import json
import pathlib
import re
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

from conftest import GATEWAY_TEMPLATE, IOTSIM_DIR, Device, Simulator, wait_for
from iotsimlib import ensure_pki, free_port

CSR = "CreateCertificateFromCsr"
REGISTER = "RegisterThing"
# Response deadline 2 s, backoff 1-2 s; a bound on attempts so a regression fails fast.
FAST = ("timeouts = { connect = 3; response = 2; };\n"
        "retry = { base = 1; cap = 2; permanent = 2; max_attempts = 8; };\n")
# A 1 s response deadline for answers delayed beyond it.
DEADLINE_1S = FAST.replace("response = 2", "response = 1")


def public_key(args):
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


def key_matches_certificate(key, crt):
    return public_key(["pkey", "-in", str(key), "-pubout"]) == \
        public_key(["x509", "-in", str(crt), "-noout", "-pubkey"])


def requests(sim, op):
    return sim.stats().get("requests", {}).get(op, 0)


def claim_connections(sim):
    return sim.stats().get("connections", {}).get("claim", 0)


def assert_provisioned(dev, sim, rc, log, notify, orphans=(0,)):
    """Exit 0 after READY; the registry holds exactly our thing and one ACTIVE certificate.

    orphans: the accepted numbers of certificates left PENDING_ACTIVATION (issued, answer
    lost or unusable, never registered).
    """
    assert rc == 0, log
    assert notify.ready, log
    identity = json.loads((dev.current / "identity.json").read_text())
    thing = f"gw-{dev.serial}"
    assert identity["thingName"] == thing
    assert list(sim.things()) == [thing]
    active = sim.certificates(status="ACTIVE")
    assert [c["certificateId"] for c in active] == [identity["certificateId"]]
    others = [c for c in sim.certificates() if c["status"] != "ACTIVE"]
    assert {c["status"] for c in others} <= {"PENDING_ACTIVATION"}, others
    assert len(others) in orphans, others
    assert key_matches_certificate(dev.current / "device.key", dev.current / "device.crt")
    assert not (dev.state_dir / "pending").exists()
    return identity


def finish(dev, proc, timeout=60):
    """Wait for a daemon started with Device.start; returns (exit code, log)."""
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        time.sleep(0.05)
        dev.listener.close()
        dev.log_file.close()
    return rc, (dev.root / "daemon.log").read_text(errors="replace")


def daemon_log(dev):
    try:
        return (dev.root / "daemon.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


# --- the matrix ---------------------------------------------------------------------------
#
# id: (faults, config, log patterns, {api: requests}, retries, orphan certificates allowed)

MATRIX = {
    "disconnect-after-csr": (
        ["disconnect:csr:1"], FAST,
        [rf"{CSR}: localhost:\d+: connection lost"],
        {CSR: 2, REGISTER: 1}, 1, (0,)),
    "disconnect-after-register": (
        ["disconnect:register:1"], FAST,
        [rf"{REGISTER}: localhost:\d+: connection lost", "Resuming|Registering the thing"],
        {CSR: 1, REGISTER: 2}, 1, (0,)),
    "csr-answer-dropped": (
        ["drop:csr:1"], FAST,
        [rf"{CSR}: no reply from AWS IoT within 2 s"],
        {CSR: 2, REGISTER: 1}, 1, (1,)),
    "register-answer-dropped": (
        ["drop:register:1"], FAST,
        [rf"{REGISTER}: no reply from AWS IoT within 2 s"],
        {CSR: 1, REGISTER: 2}, 1, (0,)),
    "csr-answer-duplicated": (
        ["duplicate:csr"], FAST,
        [r"Ignoring a message on '\$aws/certificates/create-from-csr/json/accepted' while "
         r"waiting for the RegisterThing reply"],
        {CSR: 1, REGISTER: 1}, 0, (0,)),
    "register-answer-duplicated": (
        ["duplicate:register"], FAST, [], {CSR: 1, REGISTER: 1}, 0, (0,)),
    "csr-answer-late": (
        ["delay:csr:3000:1"], DEADLINE_1S,
        [rf"{CSR}: no reply from AWS IoT within 1 s"],
        {CSR: 2, REGISTER: 1}, 1, (1,)),
    "register-answer-late": (
        ["delay:register:3000:1"], DEADLINE_1S,
        [rf"{REGISTER}: no reply from AWS IoT within 1 s"],
        {CSR: 1, REGISTER: 2}, 1, (0,)),
    "csr-answer-malformed": (
        ["malformed:csr:1"], FAST,
        [rf"Protocol error: {CSR} reply from AWS IoT is malformed"],
        {CSR: 2, REGISTER: 1}, 1, (1,)),
    "register-answer-malformed": (
        ["malformed:register:1"], FAST,
        [rf"Protocol error: {REGISTER} reply from AWS IoT is malformed"],
        {CSR: 1, REGISTER: 2}, 1, (0,)),
    "csr-answer-wrong-types": (
        ["wrongtypes:csr:1"], FAST,
        [rf"Protocol error: {CSR} reply from AWS IoT is malformed"],
        {CSR: 2, REGISTER: 1}, 1, (1,)),
    "register-answer-wrong-types": (
        ["wrongtypes:register:1"], FAST,
        [rf"Protocol error: {REGISTER} reply from AWS IoT is malformed"],
        {CSR: 1, REGISTER: 2}, 1, (0,)),
    "csr-answer-oversized": (
        ["oversize:csr:1"], FAST,
        [rf"{CSR}.*too large"],
        {CSR: 2, REGISTER: 1}, 1, (1,)),
    "register-answer-oversized": (
        ["oversize:register:1"], FAST,
        [rf"{REGISTER}.*too large"],
        {CSR: 1, REGISTER: 2}, 1, (0,)),
    "certificate-for-another-key": (
        ["wrongkey:csr:1"], FAST,
        [rf"Protocol error: {CSR} reply from AWS IoT is a certificate for another key"],
        {CSR: 2, REGISTER: 1}, 1, (1,)),
    "certificate-not-a-certificate": (
        ["badcert:csr:1"], FAST,
        [rf"Protocol error: {CSR} reply from AWS IoT is not a usable certificate"],
        {CSR: 2, REGISTER: 1}, 1, (1,)),
    "register-throttled-3-times": (
        ["reject:register:3:429:ThrottlingException:Rate exceeded"], FAST,
        [rf"{REGISTER} rejected by AWS IoT: 429 ThrottlingException: Rate exceeded"],
        {CSR: 1, REGISTER: 4}, 3, (0,)),
    "csr-internal-failure-twice": (
        ["reject:csr:2:500:InternalFailureException:Internal failure"], FAST,
        [rf"{CSR} rejected by AWS IoT: 500 InternalFailureException: Internal failure"],
        {CSR: 3, REGISTER: 1}, 2, (0,)),
    "register-denied-then-allowed": (
        ["reject:register:1:403:AccessDeniedException:Denied by the hook"], FAST,
        [rf"<3>{REGISTER} rejected by AWS IoT: 403 AccessDeniedException: Denied by the hook"],
        {CSR: 1, REGISTER: 2}, 1, (0,)),
    "token-refused-twice": (
        ["reject:register:2:400:InvalidCertificateOwnershipToken:Token expired"], FAST,
        [r"RegisterThing refused the ownership token \(400 InvalidCertificateOwnershipToken: "
         r"Token expired\); requesting a new certificate with the same key",
         rf"{REGISTER} rejected by AWS IoT: 400 InvalidCertificateOwnershipToken: Token expired"],
        {CSR: 3, REGISTER: 3}, 1, (2,)),
    "register-denied-twice-logged-once": (
        ["reject:register:2:403:AccessDeniedException:Denied by the hook"], FAST,
        [rf"<3>{REGISTER} rejected by AWS IoT: 403 AccessDeniedException: Denied by the hook\. "
         r"\S",  # with the likely fix
         rf"<5>{REGISTER} rejected by AWS IoT: 403 AccessDeniedException: Denied by the hook"],
        {CSR: 1, REGISTER: 3}, 2, (0,)),
}


@pytest.mark.parametrize("case", list(MATRIX))
def test_fault_matrix(case, tmp_path, sim):
    faults, config, patterns, counts, retries, orphans = MATRIX[case]
    sim.set_faults(faults)
    dev = Device(tmp_path / "dev", sim, extra=config)

    rc, log, notify = dev.run(timeout=90)

    assert_provisioned(dev, sim, rc, log, notify, orphans)
    for pattern in patterns:
        assert re.search(pattern, log), f"no /{pattern}/ in the log:\n{log}"
    for op, n in counts.items():
        assert requests(sim, op) == n, (op, sim.stats(), log)
    assert log.count("Retrying in") == retries, log
    statuses = notify.assignments("STATUS")
    assert sum(1 for s in statuses if re.search(r"retry \d+ in ", s)) == retries, statuses


def test_late_answer_to_an_abandoned_request_is_used_once(tmp_path, sim):
    """The answer to a timed-out CSR arrives on the next connection, before the answer to
    the retry: it is for our key, so it is used, and the certificate is registered once."""
    # t=0 CSR 1; t=3 deadline; t=4..5 retry (1 s plus up to 1 s of jitter): CSR 2;
    # t=6 answer 1; t>=6.8 answer 2 (ignored). A second or more between any two of them.
    sim.set_faults(["delay:csr:6000:1", "delay:csr:2800:1"])
    dev = Device(tmp_path / "dev", sim,
                 extra=FAST.replace("cap = 2", "cap = 1").replace("response = 2", "response = 3"))
    rc, log, notify = dev.run(timeout=60)

    identity = assert_provisioned(dev, sim, rc, log, notify, orphans=(1,))
    assert requests(sim, CSR) == 2 and requests(sim, REGISTER) == 1, sim.stats()
    assert re.search(rf"{CSR}: no reply from AWS IoT within 3 s", log), log
    first = min(sim.certificates(), key=lambda c: c["createdAt"])
    assert identity["certificateId"] == first["certificateId"]


def test_broker_down_at_start_then_up(tmp_path):
    port = free_port()
    sim = Simulator(str(tmp_path / "sim"), port=port,
                    templates={"GatewayTemplate": str(GATEWAY_TEMPLATE)})
    sim.start()  # creates the PKI the device's config names
    sim.stop()
    dev = Device(tmp_path / "dev", sim, extra=FAST.replace("max_attempts = 8", "max_attempts = 0"))
    proc = dev.start()
    try:
        assert wait_for(lambda: daemon_log(dev).count("Retrying in") >= 2, timeout=15), \
            daemon_log(dev)
        assert proc.poll() is None
        assert not (dev.state_dir / "pending" / "certificate.json").exists()
        sim.start()  # the same directory and port
        rc, log = finish(dev, proc, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        sim.stop()
    assert re.search(rf"Connect: localhost:{port}: TCP connection failed", log), log
    assert any(s.startswith(f"Waiting for network: cannot reach localhost:{port}")
               for s in dev.listener.assignments("STATUS")), dev.listener.messages
    assert rc == 0, log
    assert dev.listener.ready
    assert list(sim.things()) == ["gw-GW-0001"]
    assert len(sim.certificates(status="ACTIVE")) == 1
    assert requests(sim, CSR) == 1 and requests(sim, REGISTER) == 1


def test_three_devices_against_a_throttled_account(tmp_path, sim):
    """A whole site boots at once against 1 request/s per API: all three get through."""
    sim.set_faults(["throttle:all:1"])
    devs = [Device(tmp_path / f"dev{i}", sim, serial=f"GW-000{i}",
                   extra=FAST.replace("max_attempts = 8", "max_attempts = 0"))
            for i in range(1, 4)]
    procs = [d.start() for d in devs]
    results = [finish(d, p, timeout=90) for d, p in zip(devs, procs)]

    for dev, (rc, log) in zip(devs, results):
        assert rc == 0, log
        assert dev.listener.ready
    assert sorted(sim.things()) == ["gw-GW-0001", "gw-GW-0002", "gw-GW-0003"]
    assert len(sim.certificates(status="ACTIVE")) == 3
    stats = sim.stats()
    throttled = stats.get("statusCodes", {}).get("429", 0)
    assert throttled >= 1, stats
    logged = sum(log.count("429 ThrottlingException") for _, log in results)
    assert logged == throttled, (logged, stats)
    # Every 429 was followed by one more request, and nothing else was retried.
    assert requests(sim, CSR) + requests(sim, REGISTER) == 6 + throttled, stats


class Proxy:
    """A TCP relay to the simulator whose connections (numbered from 1) can misbehave:
    faults[n] = "stall" accepts connection n and then forwards nothing, as behind a dead
    NAT; "reset" closes it at once with a TCP reset; "unavailable" completes TLS with the
    simulator's server certificate and answers CONNECT with CONNACK 3, server unavailable."""

    def __init__(self, target_port, faults, sim_dir=None):
        self.target_port = target_port
        if sim_dir:
            d = pathlib.Path(sim_dir)
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(d / "server.pem", d / "server.key")
            self.tls.load_verify_locations(d / "ca.pem")
            self.tls.verify_mode = ssl.CERT_REQUIRED
        self.faults = dict(faults)
        self.accepted = 0
        self.accept_times = []  # time.monotonic() of each accepted connection
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self._held = []
        threading.Thread(target=self._serve, daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accept_times.append(time.monotonic())
            self.accepted += 1
            fault = self.faults.get(self.accepted)
            if fault == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                continue
            self._held.append(conn)
            if fault == "stall":
                continue
            if fault == "unavailable":
                threading.Thread(target=self._unavailable, args=(conn,), daemon=True).start()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._held.append(upstream)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _unavailable(self, conn):
        with contextlib.suppress(OSError):
            tls = self.tls.wrap_socket(conn, server_side=True)
            if tls.recv(1)[0] & 0xF0 == 0x10:  # CONNECT: answer before reading the rest
                tls.sendall(b"\x20\x02\x00\x03")
            time.sleep(0.2)
            tls.close()

    def close(self):
        self.sock.close()
        for c in self._held:
            with contextlib.suppress(OSError):
                c.close()


@pytest.mark.parametrize("fault", ["stall", "reset", "unavailable"])
def test_network_fault_on_first_connect(fault, tmp_path, sim):
    """The first connection meets a black hole (no TLS answer), a TCP reset or a broker
    that is up but unavailable (CONNACK 3): transient, retried."""
    with contextlib.closing(Proxy(sim.port, {1: fault}, sim.dir)) as proxy:
        dev = Device(tmp_path / "dev", sim, port=proxy.port,
                     extra=FAST.replace("connect = 3", "connect = 1"))
        rc, log, notify = dev.run(timeout=60)
        assert proxy.accepted == 3  # the stalled or reset one, the claim, the verify
    assert_provisioned(dev, sim, rc, log, notify)
    if fault == "stall":
        assert re.search(rf"Connect: no answer from localhost:{proxy.port} within 1 s", log), log
        assert any(s.startswith(f"Waiting for network: no answer from localhost:{proxy.port}")
                   for s in notify.assignments("STATUS")), notify.messages
    elif fault == "unavailable":
        assert re.search(rf"Connect: localhost:{proxy.port}: server unavailable \(CONNACK 3\)",
                         log), log
    else:
        # Depending on when the reset lands: on the ClientHello, on the read, or as SO_ERROR.
        assert re.search(rf"Connect: localhost:{proxy.port}: (TLS handshake|TCP connection) "
                         r"failed \((Connection reset by peer|Broken pipe|connection closed by "
                         r"the server)\)", log), log
        assert "not connected" not in log, log
    assert log.count("Retrying in") == 1
    assert claim_connections(sim) == 1
    assert requests(sim, CSR) == 1 and requests(sim, REGISTER) == 1


def test_one_connect_per_second_per_client_id(tmp_path, sim):
    """AWS IoT allows one CONNECT per second per client id (spec §3.1, §5.6 step 9): the
    verify connection, under the thing name, which here is also the claim's client id,
    waits until a second has passed since the claim connection."""
    with contextlib.closing(Proxy(sim.port, {})) as proxy:
        dev = Device(tmp_path / "dev", sim, port=proxy.port, extra=FAST)
        rc, log, notify = dev.run(timeout=30)
        times = list(proxy.accept_times)
    assert_provisioned(dev, sim, rc, log, notify)
    assert "Connecting to localhost:%d as 'gw-GW-0001'" % proxy.port in log
    assert "Verifying the new certificate: connecting to localhost:%d as 'gw-GW-0001'" \
        % proxy.port in log
    assert len(times) == 2, times
    # Accept times stand for the CONNECTs: both follow one TLS handshake on loopback.
    assert times[1] - times[0] >= 0.95, times[1] - times[0]


def pending_key_when_held(dev, proc):
    key = dev.state_dir / "pending" / "device.key"
    assert wait_for(key.exists, timeout=15), daemon_log(dev)
    data = wait_for(lambda: key.read_bytes() if b"END" in key.read_bytes() else b"")
    assert proc.poll() is None
    return data


@pytest.mark.parametrize("variant", ["token-expired", "token-rejected"])
def test_refused_token_restarts_with_the_same_key(variant, tmp_path):
    """RegisterThing refuses the token: a new CSR for the key written before the first one."""
    if variant == "token-expired":
        # The CSR answer arrives after the token's 1 s lifetime: RegisterThing refuses it.
        faults, ttl = ["delay:csr:2000:1"], 1
    else:
        faults, ttl = ["delay:csr:1000:1", "reject:register:1:400:InvalidCertificateOwnershipToken"
                       ":The certificate ownership token is invalid"], None
    with Simulator(str(tmp_path / "sim"), templates={"GatewayTemplate": str(GATEWAY_TEMPLATE)},
                   faults=faults, token_ttl=ttl) as sim:
        # The held answer must arrive well within the response deadline.
        dev = Device(tmp_path / "dev", sim, extra=FAST.replace("response = 2", "response = 5"))
        proc = dev.start()
        early_key = pending_key_when_held(dev, proc)
        assert requests(sim, REGISTER) == 0
        rc, log = finish(dev, proc)

        assert rc == 0, log
        assert re.search(r"RegisterThing refused the ownership token \(400 "
                         r"InvalidCertificateOwnershipToken: .+\); requesting a new certificate "
                         r"with the same key", log), log
        assert log.count("Generated a new") == 1
        assert requests(sim, CSR) == 2 and requests(sim, REGISTER) == 2, sim.stats()
        assert log.count("Retrying in") == 0, log  # the restart is immediate, not a retry
        assert (dev.current / "device.key").read_bytes() == early_key
        assert key_matches_certificate(dev.current / "device.key", dev.current / "device.crt")
        assert list(sim.things()) == ["gw-GW-0001"]
        active = sim.certificates(status="ACTIVE")
        identity = json.loads((dev.current / "identity.json").read_text())
        assert [c["certificateId"] for c in active] == [identity["certificateId"]]


@pytest.mark.parametrize("issued", ["two-hours-ago", "in-the-future"])
def test_stale_token_at_restart_requests_a_new_certificate(issued, tmp_path, sim):
    """Power cut with a token on disk; at the next start it is too old (or its age is
    unknown: issued 'in the future' after the clock was set back): new CSR, same key."""
    sim.set_faults(["disconnect:register"])
    dev = Device(tmp_path / "dev", sim,
                 extra=FAST.replace("base = 1; cap = 2", "base = 30; cap = 60"))
    proc = dev.start()
    try:
        cert = dev.state_dir / "pending" / "certificate.json"
        assert wait_for(lambda: "-> backoff" in daemon_log(dev), timeout=20), daemon_log(dev)
        assert cert.exists()
        proc.send_signal(signal.SIGKILL)
        rc, log = finish(dev, proc, timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == -signal.SIGKILL
    key = (dev.state_dir / "pending" / "device.key").read_bytes()
    record = json.loads(cert.read_text())
    hour = 3600 * 10**6
    record["issuedAtUsec"] = time.time_ns() // 1000 + (hour if issued == "in-the-future"
                                                        else -2 * hour)
    cert.write_text(json.dumps(record))
    sim.clear_faults()
    dev.settings["extra"] = FAST
    dev.write_config()

    rc, log, notify = dev.run(timeout=60)
    assert_provisioned(dev, sim, rc, log, notify, orphans=(1,))
    assert (f"The ownership token of certificate {record['certificateId']} is too old "
            "(token_max_age), requesting a new certificate with the same key") in log
    assert (dev.current / "device.key").read_bytes() == key
    assert "Generated a new" not in log
    identity = json.loads((dev.current / "identity.json").read_text())
    assert identity["certificateId"] != record["certificateId"]
    assert requests(sim, CSR) == 2 and requests(sim, REGISTER) == 2, sim.stats()


CA_CONFIG = """\
[ ca ]
default_ca = local
[ local ]
database = {d}/index.txt
new_certs_dir = {d}
serial = {d}/serial
default_md = sha256
policy = anything
unique_subject = no
email_in_dn = no
[ anything ]
commonName = supplied
[ claim ]
extendedKeyUsage = clientAuth
basicConstraints = critical,CA:FALSE
"""


def future_claim(sim_dir, work, not_before, out=None):
    """Reissue sim_dir/claim.crt (or write out) for the same key, valid from not_before."""
    sim_dir = pathlib.Path(sim_dir)
    work.mkdir()
    (work / "index.txt").write_text("")
    (work / "serial").write_text("1000\n")
    (work / "ca.cnf").write_text(CA_CONFIG.format(d=work))
    subprocess.run(["openssl", "req", "-new", "-key", str(sim_dir / "claim.key"),
                    "-subj", "/CN=iotsim fleet provisioning claim",
                    "-out", str(work / "claim.csr")], check=True, capture_output=True)
    subprocess.run(["openssl", "ca", "-batch", "-notext", "-config", str(work / "ca.cnf"),
                    "-cert", str(sim_dir / "ca.pem"), "-keyfile", str(sim_dir / "ca.key"),
                    "-in", str(work / "claim.csr"), "-out", str(out or sim_dir / "claim.crt"),
                    "-extensions", "claim",
                    "-startdate", not_before.strftime("%y%m%d%H%M%SZ"),
                    "-enddate", "491231235959Z"], check=True, capture_output=True)


def utc_in(seconds):
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)


def test_clock_before_claim_not_before_waits_then_provisions(tmp_path):
    """The claim is not valid yet: no connection until it is, and STATUS says why."""
    sim_dir = tmp_path / "sim"
    sim_dir.mkdir()
    ensure_pki(sim_dir)
    # Valid soon after the daemon starts, before its first clock re-check (5 s later).
    future_claim(sim_dir, tmp_path / "ca", utc_in(4))
    with Simulator(str(sim_dir), templates={"GatewayTemplate": str(GATEWAY_TEMPLATE)}) as sim:
        dev = Device(tmp_path / "dev", sim, extra=FAST)
        proc = dev.start()
        assert wait_for(lambda: "Waiting for a trustworthy clock" in daemon_log(dev),
                        timeout=10), daemon_log(dev)
        time.sleep(1.5)
        log = daemon_log(dev)
        assert "Connecting to" not in log, log
        assert claim_connections(sim) == 0, sim.stats()
        assert proc.poll() is None
        statuses = dev.listener.assignments("STATUS")
        assert any("clock" in s and "claim certificate becomes valid" in s
                   for s in statuses), statuses
        assert not dev.listener.ready
        rc, log = finish(dev, proc)

    assert rc == 0, log
    assert dev.listener.ready
    assert "The clock is now plausible, continuing" in log
    assert log.index("The clock is now plausible") < log.index("Connecting to")
    assert list(sim.things()) == ["gw-GW-0001"]
    assert claim_connections(sim) == 1


def test_every_fault_kind_is_covered():
    """Each rule of the simulator's fault table appears in this matrix."""
    readme = (IOTSIM_DIR / "README.md").read_text()
    table = readme[readme.index("## Fault injection"):]
    kinds = set(re.findall(r"^\| `([a-z]+):", table, re.M))
    used = {f.split(":")[0] for faults, *_ in MATRIX.values() for f in faults}
    used |= {"throttle", "delay", "reject"}  # the standalone tests above
    print(f"\nfault kinds covered: {len(kinds & used)} of {len(kinds)}: "
          f"{', '.join(sorted(kinds & used))}; matrix cases: {len(MATRIX)}")
    assert len(kinds) >= 11, kinds
    assert kinds <= used, sorted(kinds - used)


# AWS's API reference lists ThrottlingException as HTTP 400 for CreateCertificateFromCsr and
# RegisterThing (docs/aws-behaviour.md §1): the errorCode, not only the status, says transient.
TRANSIENT_BY_ERROR_CODE = {
    "400-throttling": ("register", "400:ThrottlingException:Rate exceeded", True),
    "400-throttling-variant": ("csr", "400:ThrottlingException.Account:Slow down", True),
    "400-service-unavailable": ("register", "400:ServiceUnavailableException:Try later", False),
    "400-internal-failure": ("csr", "400:InternalFailureException:Oops", False),
}


@pytest.mark.parametrize("case", list(TRANSIENT_BY_ERROR_CODE))
def test_transient_error_code_under_a_4xx_status_is_retried_soon(case, tmp_path, sim):
    """A 4xx whose errorCode is Throttling*, ServiceUnavailable* or InternalFailure* is
    transient: retried on the fast schedule (throttle-paced for throttling), never logged as a
    permanent refusal with a fix. retry.permanent is long, so the slow schedule cannot pass."""
    op, rejection, throttled = TRANSIENT_BY_ERROR_CODE[case]
    sim.set_faults([f"reject:{op}:2:{rejection}"])
    config = FAST.replace("permanent = 2", "permanent = 600")
    dev = Device(tmp_path / "dev", sim, extra=config)

    rc, log, notify = dev.run(timeout=90)

    assert_provisioned(dev, sim, rc, log, notify)
    assert log.count("Retrying in") == 2, log
    assert not re.search(r"<3>.*rejected by AWS IoT", log), log
    statuses = [s for s in notify.assignments("STATUS") if re.search(r"retry \d+ in ", s)]
    assert len(statuses) == 2, statuses
    if throttled:
        assert all(s.startswith("Throttled by AWS (400 ") for s in statuses), statuses
    else:
        assert all(s.startswith("AWS IoT error on ") for s in statuses), statuses
