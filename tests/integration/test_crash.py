"""Power cut at every step: SIGKILL the real daemon, start it again, and check what is left.

The daemon is held at each step of the exchange, then killed with SIGKILL (nothing runs
after it, as after a power cut), then started again with no faults. Steps are reached with
the simulator's answer delays and, inside the daemon, with strace's syscall delay injection
restricted to one path (-P): the daemon is stopped in the syscall that would take it past
the step, which the test confirms from the state directory and the process state before the
kill. After every kill point:

- the next run reaches READY=1 and exits 0, with a verified identity at that moment;
- the registry holds exactly one thing and exactly one ACTIVE certificate, ours;
- at most one PENDING_ACTIVATION certificate is orphaned per kill;
- `current` is absent or whole (identity.json parses, the key belongs to the certificate)
  whenever it is looked at, by a watcher polling it all along and after each kill.

A randomized variant kills at random moments under small random answer delays.
FLEETPROVD_CRASH_RUNS sets its number of runs (default 25), FLEETPROVD_CRASH_SEED its seed.
"""

import collections
import hashlib
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import threading
import time

import pytest

from conftest import FLEETPROVD, IOTSIM_DIR, Device, NotifyListener, Simulator, wait_for

CSR = "CreateCertificateFromCsr"
REGISTER = "RegisterThing"
INACTIVE_TEMPLATE = IOTSIM_DIR / "templates" / "inactive.json"
# strace holds the daemon in a syscall this long: far beyond any test's wait for it.
HOLD_USEC = 20_000_000
# How long the process must stay in ptrace stop to count as held (strace also stops it
# briefly at every syscall it looks at).
HELD_FOR = 0.1
# The daemon connects as one client id at most once a second (spec §5.6 step 9), plus slack.
VERIFY_PACING = 1.2
ONE_ATTEMPT = ("timeouts = { connect = 5; response = 5; };\n"
               "retry = { base = 1; cap = 1; permanent = 1; max_attempts = 1; };\n")

needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")


# ---- looking at the state directory and the registry ----------------------------------------

def public_key(args):
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


def certificate_sha256(crt):
    der = subprocess.run(["openssl", "x509", "-in", str(crt), "-outform", "DER"], check=True,
                         capture_output=True).stdout
    return hashlib.sha256(der).hexdigest()


def read_identity(gen):
    return json.loads((gen / "identity.json").read_text())


def current_snapshot(dev):
    """None when current is absent; else its target, after checking it is whole (no OpenSSL).

    Raises AssertionError for a current that a service could see half made.
    """
    try:
        target = os.readlink(dev.current)
    except FileNotFoundError:
        return None
    assert target.startswith("gen-") and len(target) == 4 + 64, target
    gen = dev.state_dir / target
    identity = read_identity(gen)
    assert identity["certificateId"] == target[4:]
    for name in ("device.key", "device.crt"):
        assert (gen / name).stat().st_size == identity["manifest"][name]["size"], name
    assert (gen / "identity.env").is_file()
    return target


def tree(root):
    """Every entry below root with its size (symlinks by target), for before/after checks."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            out[rel] = os.readlink(p) if os.path.islink(p) else os.lstat(p).st_size
    return out


def assert_current_whole(dev):
    """current is absent (None) or whole, checked with the openssl command; its identity."""
    if current_snapshot(dev) is None:
        return None
    cur = dev.current
    identity = read_identity(cur)
    assert public_key(["pkey", "-in", str(cur / "device.key"), "-pubout"]) == \
        public_key(["x509", "-in", str(cur / "device.crt"), "-noout", "-pubkey"])
    assert certificate_sha256(cur / "device.crt") == identity["certificateId"]
    return identity


class Watcher:
    """Polls current/ all along a test; every look must find it absent or whole."""

    def __init__(self):
        self.devices = []
        self.looks = 0
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def watch(self, dev):
        """Watch dev from now on (instead of the device before it)."""
        self.devices = [dev]

    def _run(self):
        while not self._stop.is_set():
            for dev in self.devices:
                try:
                    current_snapshot(dev)
                except Exception as e:  # noqa: BLE001 - any failure to read is a finding
                    self.errors.append(f"{dev.state_dir}: {e!r}")
                self.looks += 1
            time.sleep(0.002)

    def close(self):
        self._stop.set()
        self._thread.join()
        assert not self.errors, self.errors[:5]


def client_stats(sim, client_id):
    return sim.stats().get("clients", {}).get(client_id, {})


def requests(sim, client_id, op):
    return client_stats(sim, client_id).get(op, 0)


def certificates_of(sim, client_id, status=None):
    return [c for c in sim.certificates(status)
            if c.get("clientId") == client_id]


def assert_registry(sim, dev, identity, kills):
    """One thing, one ACTIVE certificate (ours), at most one orphan per kill; the orphans."""
    client_id = f"gw-{dev.serial}"
    things = [t for name, t in sim.things().items() if name == client_id]
    assert len(things) == 1
    active = certificates_of(sim, client_id, "ACTIVE")
    assert [c["certificateId"] for c in active] == [identity["certificateId"]]
    assert things[0]["principals"] == [identity["certificateId"]]
    orphans = certificates_of(sim, client_id, "PENDING_ACTIVATION")
    assert len(orphans) <= kills, orphans
    others = [c for c in certificates_of(sim, client_id)
              if c["status"] not in ("ACTIVE", "PENDING_ACTIVATION")]
    assert others == []
    return len(orphans)


# ---- running, holding and killing the daemon ---------------------------------------------

def process_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def child_pid(pid):
    """The daemon started by the wrapper pid (strace also forks short-lived probes)."""
    def is_daemon(kid):
        try:
            return os.path.samefile(f"/proc/{kid}/exe", FLEETPROVD)
        except OSError:
            return False

    def find():
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except FileNotFoundError:
            return None
        return next((k for k in kids if is_daemon(k)), None)
    found = wait_for(find, timeout=10)
    assert found, "the wrapped daemon did not start"
    return found


def hold_args(paths, syscalls):
    """strace arguments: stop the daemon on entry to syscalls that touch paths."""
    args = ["-f", "-qq", "-o", "/dev/null", "-e", "trace=" + ",".join(syscalls)]
    for p in paths:
        args += ["-P", str(p)]
    for s in syscalls:
        args += ["-e", f"inject={s}:delay_enter={HOLD_USEC}"]
    return args


class Daemon:
    """One fleetprovd process in the background, to be held and killed."""

    def __init__(self, dev, wrapper=()):
        self.dev = dev
        self.wrapped = bool(wrapper)
        sock = dev.root / "notify.sock"
        if sock.exists():
            sock.unlink()
        self.listener = NotifyListener(sock)
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        env["NOTIFY_SOCKET"] = str(sock)
        self.log = open(dev.root / "daemon.log", "ab")
        self.proc = subprocess.Popen(
            [*wrapper, FLEETPROVD, "--config", str(dev.config_path), "--log-level", "debug"],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        self.pid = child_pid(self.proc.pid) if wrapper else self.proc.pid
        self.tracer = None

    def attach(self, paths, syscalls):
        """Hold the running daemon at the next matching syscall (strace -p)."""
        self.tracer = subprocess.Popen(
            ["strace", "-p", str(self.pid), *hold_args(paths, syscalls)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(lambda: self.tracer_pid() not in (None, 0), timeout=10), \
            "strace did not attach"

    def tracer_pid(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("TracerPid:"):
                        return int(line.split()[1])
        except FileNotFoundError:
            return None
        return None

    def held(self):
        """True once the daemon has sat in ptrace stop for HELD_FOR seconds."""
        deadline = time.monotonic() + HELD_FOR
        while time.monotonic() < deadline:
            if process_state(self.pid) != "t":
                return False
            time.sleep(0.01)
        return True

    def alive(self):
        return self.proc.poll() is None and process_state(self.pid) not in (None, "Z")

    def kill(self):
        """SIGKILL, as a power cut; returns whether the daemon was still running."""
        was_alive = self.alive()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        # A held daemon stays in ptrace stop with the SIGKILL pending until strace lets go,
        # and strace sleeps out its whole delay first: stop strace. The kernel then skips the
        # held syscall (a fatal signal is pending) and the daemon dies without running on.
        for tracer in (self.tracer, self.proc if self.wrapped else None):
            if tracer:
                tracer.kill()
                tracer.wait(timeout=30)
        assert wait_for(lambda: process_state(self.pid) in (None, "Z", "X"), timeout=10)
        self.proc.wait(timeout=30)
        time.sleep(0.05)  # the last datagrams reach the listener
        self.listener.close()
        self.log.close()
        return was_alive

    def wait(self, timeout=60):
        rc = self.proc.wait(timeout=timeout)
        time.sleep(0.05)
        self.listener.close()
        self.log.close()
        return rc


def finish_run(dev, sim):
    """Start again after the kills: READY with a verified, whole identity; the identity."""
    def at_ready():
        identity = assert_current_whole(dev)
        return identity and identity.get("verified")

    rc, log, notify = dev.run(on_ready=at_ready)
    assert rc == 0, log
    assert notify.ready, log
    assert notify.ready_observation is True, "READY=1 before a verified identity was on disk"
    identity = assert_current_whole(dev)
    assert identity["verified"] is True
    assert not (dev.state_dir / "pending").exists()
    return identity, log


# ---- the kill points ----------------------------------------------------------------------

def pending(dev, name=""):
    return dev.state_dir / "pending" / name


def cert_id_pending(dev):
    return json.loads(pending(dev, "certificate.json").read_text())["certificateId"]


def wait_held(d, condition, what):
    ok = wait_for(lambda: condition() and d.held(), timeout=30)
    assert ok, (f"the daemon never stopped {what}: process state {process_state(d.pid)}, "
                f"state dir {tree(d.dev.state_dir)}")


def at_key_temp(sim, dev, cid):
    """Writing the private key: its temporary file exists, device.key does not."""
    d = Daemon(dev, ["strace", *hold_args([pending(dev)], ["renameat", "renameat2"])])
    wait_held(d, lambda: any(pending(dev).glob(".device.key.*")), "while writing the key")
    assert not pending(dev, "device.key").exists()
    return d


def at_key_written(sim, dev, cid):
    """Key and CSR durable, nothing sent yet (held opening the claim certificate)."""
    d = Daemon(dev, ["strace", *hold_args([sim.claim_cert], ["openat", "open"])])
    wait_held(d, lambda: pending(dev, "request.csr").exists(), "after the key")
    assert pending(dev, "device.key").exists()
    assert requests(sim, cid, CSR) == 0
    return d


def at_csr_published(sim, dev, cid):
    """CreateCertificateFromCsr sent and processed, its answer not yet delivered."""
    sim.set_faults(["delay:csr:4000"])
    d = Daemon(dev)
    assert wait_for(lambda: requests(sim, cid, CSR) == 1, timeout=30)
    assert len(certificates_of(sim, cid)) == 1
    assert not pending(dev, "certificate.json").exists()
    return d


def at_certificate_stored(sim, dev, cid):
    """The accepted certificate and token are in pending/; RegisterThing not yet sent."""
    sim.set_faults(["delay:csr:1500"])
    d = Daemon(dev)
    assert wait_for(lambda: requests(sim, cid, CSR) == 1, timeout=30)
    d.attach([pending(dev)], ["fsync"])
    wait_held(d, lambda: pending(dev, "certificate.json").exists(), "storing the certificate")
    assert requests(sim, cid, REGISTER) == 0
    return d


def at_register_published(sim, dev, cid):
    """RegisterThing sent and applied by the cloud, its answer not yet delivered."""
    sim.set_faults(["delay:register:4000"])
    d = Daemon(dev)
    assert wait_for(lambda: requests(sim, cid, REGISTER) == 1, timeout=30)
    assert [c["status"] for c in certificates_of(sim, cid)] == ["ACTIVE"]
    assert not pending(dev, "registration.json").exists()
    return d


def registered_then_attach(sim, dev, cid, paths, syscalls):
    """Wait for RegisterThing (its answer held back), then hold syscalls on paths()."""
    sim.set_faults(["delay:register:1500"])
    d = Daemon(dev)
    assert wait_for(lambda: requests(sim, cid, REGISTER) == 1, timeout=30)
    d.attach(paths(), syscalls)
    return d


def at_registration_stored(sim, dev, cid):
    """RegisterThing's answer is in pending/; nothing committed yet."""
    d = registered_then_attach(sim, dev, cid, lambda: [pending(dev)], ["fsync"])
    wait_held(d, lambda: pending(dev, "registration.json").exists(), "storing the answer")
    assert not os.path.lexists(dev.current)
    return d


def at_generation_half_written(sim, dev, cid):
    """Committing: gen-<id>/ holds the key but not yet the certificate or identity.json."""
    gen = lambda: dev.state_dir / f"gen-{cert_id_pending(dev)}"  # noqa: E731
    d = registered_then_attach(sim, dev, cid, lambda: [gen()], ["fsync"])
    wait_held(d, lambda: (gen() / "device.key").exists(), "writing the generation")
    assert not (gen() / "identity.json").exists()
    assert not os.path.lexists(dev.current)
    return d


def at_current_switching(sim, dev, cid):
    """Committing: gen-<id>/ complete and current.tmp made, current not yet renamed."""
    d = registered_then_attach(sim, dev, cid, lambda: [dev.state_dir],
                               ["renameat", "renameat2"])
    wait_held(d, lambda: os.path.lexists(dev.state_dir / "current.tmp"), "switching current")
    assert (dev.state_dir / f"gen-{cert_id_pending(dev)}" / "identity.json").exists()
    assert not os.path.lexists(dev.current)
    return d


def at_commit_housekeeping(sim, dev, cid):
    """Committed: current switched, pending/ not yet removed."""
    d = registered_then_attach(sim, dev, cid, lambda: [pending(dev)], ["unlinkat", "unlink"])
    wait_held(d, lambda: os.path.lexists(dev.current), "removing pending/")
    assert pending(dev, "certificate.json").exists()
    return d


def at_verifying(sim, dev, cid):
    """Committed and not yet verified: the connect with the new identity is under way."""
    d = registered_then_attach(sim, dev, cid, lambda: [dev.current / "device.crt"],
                               ["openat", "open"])
    wait_held(d, lambda: os.path.lexists(dev.current), "verifying")
    assert read_identity(dev.current)["verified"] is False
    return d


# name -> (how to get there, orphans expected, CSRs and RegisterThings of the next run)
KILL_POINTS = {
    "key-temp": (at_key_temp, 0, (1, 1)),
    "key-written": (at_key_written, 0, (1, 1)),
    "csr-published": (at_csr_published, 1, (1, 1)),
    "certificate-stored": (at_certificate_stored, 0, (0, 1)),
    "register-published": (at_register_published, 0, (0, 1)),
    "registration-stored": (at_registration_stored, 0, (0, 0)),
    "generation-half-written": (at_generation_half_written, 0, (0, 0)),
    "current-switching": (at_current_switching, 0, (0, 0)),
    "commit-housekeeping": (at_commit_housekeeping, 0, (0, 0)),
    "verifying": (at_verifying, 0, (0, 0)),
}
matrix_results = collections.OrderedDict()


@needs_strace
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_point(point, tmp_path, sim):
    arrive, expected_orphans, (more_csr, more_register) = KILL_POINTS[point]
    dev = Device(tmp_path / "dev", sim)
    cid = f"gw-{dev.serial}"
    watcher = Watcher()
    watcher.watch(dev)
    try:
        d = arrive(sim, dev, cid)
        key_at_kill = pending(dev, "device.key")
        key_at_kill = key_at_kill.read_text() if key_at_kill.exists() else None
        before = tree(dev.state_dir)
        assert d.kill(), "the daemon ended before the kill"
        # Nothing moved after the decision to kill: the held syscall never ran.
        assert tree(dev.state_dir) == before
        assert not d.listener.ready, "READY=1 before the kill point"
        assert_current_whole(dev)

        sim.clear_faults()
        csr_before, reg_before = requests(sim, cid, CSR), requests(sim, cid, REGISTER)
        identity, log = finish_run(dev, sim)
    finally:
        watcher.close()
    assert "Already provisioned" not in log
    assert requests(sim, cid, CSR) - csr_before == more_csr, log
    assert requests(sim, cid, REGISTER) - reg_before == more_register, log
    if key_at_kill:
        # The key written before the kill is the one provisioned: no new key material.
        assert (dev.current / "device.key").read_text() == key_at_kill
    orphans = assert_registry(sim, dev, identity, kills=1)
    assert orphans == expected_orphans
    matrix_results[point] = (orphans, watcher.looks)


def test_kill_point_summary(capsys):
    """Runs after the matrix (pytest keeps file order): one line for the report."""
    if not matrix_results:
        pytest.skip("the kill point matrix did not run")
    with capsys.disabled():
        print(f"\ncrash matrix: {len(matrix_results)}/{len(KILL_POINTS)} kill points tried, "
              f"{len(matrix_results) * 2} runs, "
              f"{sum(o for o, _ in matrix_results.values())} orphan certificate(s), "
              f"{sum(n for _, n in matrix_results.values())} looks at current/")


# ---- randomized kills -------------------------------------------------------------------

def classify(dev, sim, cid, sent_before):
    """Where a killed run had got to, from what it left on disk and what the cloud saw."""
    time.sleep(0.15)  # the simulator writes its statistics every broker tick (100 ms)
    csr_sent = requests(sim, cid, CSR) > sent_before[0]
    register_sent = requests(sim, cid, REGISTER) > sent_before[1]
    if os.path.lexists(dev.current):
        return "verified" if read_identity(dev.current).get("verified") else "committed"
    if pending(dev, "registration.json").exists():
        return "registered"
    if pending(dev, "certificate.json").exists():
        return "register-sent" if register_sent else "certificate"
    if pending(dev, "device.key").exists():
        return "csr-sent" if csr_sent else "key"
    return "nothing"


def test_random_kills(tmp_path, sim, capsys):
    runs = int(os.environ.get("FLEETPROVD_CRASH_RUNS", "25"))
    seed = int(os.environ.get("FLEETPROVD_CRASH_SEED", str(time.time_ns() % 1_000_000)))
    rng = random.Random(seed)
    hits = collections.Counter()
    kills = orphans = 0
    watcher = Watcher()
    try:
        for run in range(runs):
            dev = Device(tmp_path / f"dev{run}", sim, serial=f"R{run:04d}")
            cid = f"gw-{dev.serial}"
            watcher.watch(dev)
            csr_ms, reg_ms = rng.choice((0, 0, 100, 200, 300)), rng.choice((0, 0, 100, 200, 300))
            sim.set_faults([f"delay:csr:{csr_ms}", f"delay:register:{reg_ms}"])
            # The exchange takes about 50 ms on loopback, plus the delays (which the broker
            # tick, up to 100 ms, makes longer); then the verify connect waits out AWS's one
            # CONNECT per second per client id. Kill mostly in the exchange, else anywhere.
            span = 0.06 + sum(ms / 1000 + 0.1 for ms in (csr_ms, reg_ms) if ms)
            if rng.random() < 0.25:
                span += VERIFY_PACING
            run_kills = 0
            for _ in range(rng.randint(1, 3)):
                sent = requests(sim, cid, CSR), requests(sim, cid, REGISTER)
                d = Daemon(dev)
                time.sleep(rng.uniform(0, span))
                if not d.kill():
                    hits["too late"] += 1
                    break
                run_kills += 1
                point = classify(dev, sim, cid, sent)
                hits[point] += 1
                assert_current_whole(dev)
                if point == "verified":
                    break
            kills += run_kills
            identity, log = finish_run(dev, sim)
            orphans += assert_registry(sim, dev, identity, kills=run_kills)
    finally:
        watcher.close()
        sim.clear_faults()
    with capsys.disabled():
        print(f"\ncrash random: {runs} runs (seed {seed}), {kills} kills, kill points hit: "
              + ", ".join(f"{k} {v}" for k, v in sorted(hits.items()))
              + f"; {orphans} orphan certificate(s), {watcher.looks} looks at current/")
    assert kills > 0



# ---- an identity committed but never proven -------------------------------------------------

def status_json(dev):
    proc = subprocess.run([FLEETPROVD, "--config", str(dev.config_path), "status", "--json"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def activate_in_registry(sim, certificate_id):
    """What an operator does in the console: the certificate becomes ACTIVE (broker down)."""
    path = sim.dir / "registry" / "certificates" / f"{certificate_id}.json"
    record = json.loads(path.read_text())
    record["status"] = "ACTIVE"
    path.write_text(json.dumps(record, indent=2))


def test_refused_verify_is_never_taken_for_ready(tmp_path):
    """The template leaves the certificate INACTIVE: it is committed, but cannot connect.

    No READY=1 and max_attempts' exit code; the next start does not take the fast path but
    only retries the connect (no new CSR, no second registration); once the certificate is
    activated in the cloud, that connect heals the device without provisioning again.
    """
    with Simulator(str(tmp_path / "sim"), templates={"GatewayTemplate": INACTIVE_TEMPLATE}) as sim:
        dev = Device(tmp_path / "dev", sim, extra=ONE_ATTEMPT)
        cid = f"gw-{dev.serial}"
        rc, log, notify = dev.run()
        assert rc == 1, log
        assert not notify.ready, log
        assert "not authori" in log.lower() and "Giving up" in log
        identity = assert_current_whole(dev)
        assert identity["verified"] is False
        assert [c["status"] for c in certificates_of(sim, cid)] == ["INACTIVE"]
        assert status_json(dev)["identity"]["state"] == "unverified"
        claims = sim.stats()["connections"].get("claim", 0)

        rc, log, notify = dev.run()
        assert rc == 1, log
        assert not notify.ready, log
        assert "Already provisioned" not in log
        assert "never verified" in log
        assert requests(sim, cid, CSR) == 1 and requests(sim, cid, REGISTER) == 1
        assert sim.stats()["connections"].get("claim", 0) == claims
        assert read_identity(dev.current)["verified"] is False

        sim.stop()
        activate_in_registry(sim, identity["certificateId"])
        sim.start()  # the statistics start from zero again
        identity, log = finish_run(dev, sim)
        assert requests(sim, cid, CSR) == 0 and requests(sim, cid, REGISTER) == 0
        assert sim.stats()["connections"].get("claim", 0) == 0
        assert sim.stats()["connections"].get("device", 0) == 1
        assert_registry(sim, dev, identity, kills=0)
        assert status_json(dev)["identity"]["state"] == "valid"
        # From now on the fast path: READY without touching the network.
        rc, log, notify = dev.run()
        assert rc == 0 and notify.ready and "Already provisioned" in log, log


def test_unverified_identity_is_enough_without_verify(tmp_path):
    """verify = false: an identity nobody connected with is what the admin asked for."""
    with Simulator(str(tmp_path / "sim"), templates={"GatewayTemplate": INACTIVE_TEMPLATE}) as sim:
        dev = Device(tmp_path / "dev", sim, extra=ONE_ATTEMPT, verify=False)
        rc, log, notify = dev.run()
        assert rc == 0 and notify.ready, log
        assert read_identity(dev.current)["verified"] is False
        rc, log, notify = dev.run()
        assert rc == 0 and notify.ready and "Already provisioned" in log, log
        # Asking for the proof later makes the next start connect once, here refused.
        dev.settings["verify"] = True
        dev.write_config()
        rc, log, notify = dev.run()
        assert rc == 1 and not notify.ready, log
        assert requests(sim, f"gw-{dev.serial}", CSR) == 1
