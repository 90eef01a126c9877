"""Secrets stay secret, and files get their designed modes whatever the umask.

A private key or an ownership token must never reach anything fleetprovd writes for
people or systemd: stderr at debug level, STATUS= and other sd_notify messages, the
output of `fleetprovd status`. Every key and token the daemon holds during a scenario is
captured from the state directory while the exchange is held by a simulator fault, and
then searched for in all of that text, whole and in fragments.
"""

import base64
import binascii
import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import threading
import time

import pytest

from conftest import FLEETPROVD, Device, NotifyListener, wait_for
from test_faults import FAST, REGISTER, requests

# The shortest fragment that counts as a leak: 16 base64 characters carry 12 bytes of key.
FRAGMENT = 16


class SecretCollector:
    """Polls pending/ while the daemon runs and keeps every key and token it sees."""

    def __init__(self, state_dir):
        self.pending = state_dir / "pending"
        self.keys, self.tokens = set(), set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _look(self):
        with contextlib.suppress(OSError):
            key = (self.pending / "device.key").read_text()
            if "-----END" in key:
                self.keys.add(key)
        with contextlib.suppress(OSError, ValueError):
            cert = json.loads((self.pending / "certificate.json").read_text())
            self.tokens.add(cert["certificateOwnershipToken"])

    def _run(self):
        while not self._stop.is_set():
            self._look()
            time.sleep(0.005)

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._look()


def pem_der(pem):
    body = "".join(l for l in pem.splitlines() if l and not l.startswith("-----"))
    return base64.b64decode(body)


def private_scalar(pem):
    """The secret part of an EC key, as openssl prints it ("priv:" hex)."""
    text = subprocess.run(["openssl", "pkey", "-noout", "-text"], input=pem, text=True,
                          capture_output=True, check=True).stdout
    m = re.search(r"priv:\n((?:\s+[0-9a-f:]+\n)+)", text)
    assert m, text
    return bytes.fromhex(re.sub(r"[\s:]", "", m.group(1)))


def windows(s, n=FRAGMENT):
    return {s[i:i + n] for i in range(0, max(len(s) - n, 0) + 1)}


def key_fragments(pem):
    """Strings whose presence in a log means the key leaked."""
    der, priv = pem_der(pem), private_scalar(pem)
    start = der.index(priv)
    frags = {l for l in pem.splitlines() if l and not l.startswith("-----")}
    # Base64 of the DER at the three byte alignments, only windows that cover the secret.
    for shift in range(3):
        b64 = base64.b64encode(der[shift:]).decode()
        for i in range(0, len(b64) - FRAGMENT - 4):
            first, last = shift + i * 3 // 4, shift + (i + FRAGMENT) * 3 // 4
            if first < start + len(priv) and last > start:
                frags.add(b64[i:i + FRAGMENT])
    hexed = priv.hex()
    frags |= windows(hexed, 2 * FRAGMENT) | windows(hexed.upper(), 2 * FRAGMENT)
    frags |= windows(binascii.hexlify(priv, ":").decode(), 3 * FRAGMENT)
    frags |= windows(base64.b64encode(priv).decode())
    return frags


def token_fragments(token):
    return {token} | windows(token)


def assert_no_secret(text, keys, tokens, what):
    for pem in keys:
        for frag in key_fragments(pem):
            assert frag not in text, f"private key material {frag!r} in {what}"
    for token in tokens:
        for frag in token_fragments(token):
            assert frag not in text, f"ownership token fragment {frag!r} in {what}"


def run_command(dev, *args):
    proc = subprocess.run([FLEETPROVD, "--config", str(dev.config_path), *args],
                          capture_output=True, text=True, timeout=30)
    return proc.stdout + proc.stderr


class Run:
    """fleetprovd in the background, everything it writes captured (stdout, stderr,
    sd_notify), secrets collected from pending/ meanwhile."""

    def __init__(self, dev, preexec_fn=None):
        self.dev = dev
        sock = dev.root / "notify.sock"
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        self.listener = NotifyListener(sock)
        self.collector = SecretCollector(dev.state_dir)
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        env["NOTIFY_SOCKET"] = str(sock)
        self.out = open(dev.root / "stdout", "w+b")
        self.err = open(dev.root / "stderr", "w+b")
        self.proc = subprocess.Popen(
            [FLEETPROVD, "--config", str(dev.config_path), "--log-level", "debug"],
            env=env, stdout=self.out, stderr=self.err, preexec_fn=preexec_fn)

    def log(self):
        self.err.flush()
        return (self.dev.root / "stderr").read_text(errors="replace")

    def wait(self, timeout=60):
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            time.sleep(0.05)
            self.listener.close()
            self.collector.stop()
            self.out.close()
            self.err.close()
        text = "".join((self.dev.root / n).read_text(errors="replace")
                       for n in ("stdout", "stderr"))
        return rc, text + "\n".join(self.listener.messages)


def hold_and_status(run):
    """While the token is on disk: what `fleetprovd status` prints is scanned too."""
    cert = run.dev.state_dir / "pending" / "certificate.json"
    assert wait_for(cert.exists, timeout=20), run.log()
    return run_command(run.dev, "status") + run_command(run.dev, "status", "--json")


# id: (faults, config, expected exit code, tokens at least)
SCENARIOS = {
    "success": (["delay:register:500:1"], FAST, 0, 1),
    "rejection": (["reject:register:1:403:AccessDeniedException:Denied",
                   "delay:register:500"], FAST, 0, 1),
    "timeout": (["drop:csr:1", "delay:register:500:1"], FAST, 0, 1),
    "restart-flow": (["reject:register:1:400:InvalidCertificateOwnershipToken:Token expired",
                      "delay:register:500"], FAST, 0, 2),
    "give-up": (["reject:register:1:403:AccessDeniedException:Denied", "delay:register:500"],
                FAST.replace("max_attempts = 8", "max_attempts = 1"), 1, 1),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_no_secret_in_anything_written(scenario, tmp_path, sim):
    faults, config, expected_rc, min_tokens = SCENARIOS[scenario]
    sim.set_faults(faults)
    dev = Device(tmp_path / "dev", sim, extra=config)
    run = Run(dev)
    status = hold_and_status(run)
    rc, text = run.wait()

    assert rc == expected_rc, text
    keys, tokens = run.collector.keys, run.collector.tokens
    if expected_rc == 0:
        keys.add((dev.current / "device.key").read_text())
    assert len(keys) == 1, "the key changed during the run"
    assert len(tokens) >= min_tokens, (tokens, text)
    keys.add(open(sim.claim_key).read())
    assert "BEGIN" not in text and "PRIVATE" not in text
    assert_no_secret(text, keys, tokens, f"the output of fleetprovd ({scenario})")
    assert_no_secret(status, keys, tokens, "fleetprovd status")
    # Only device.key and pending/certificate.json may hold a secret; the rest is public.
    for root, _, files in os.walk(dev.state_dir):
        for name in files:
            if name not in ("device.key", "certificate.json"):
                path = os.path.join(root, name)
                assert_no_secret(open(path).read(), keys, tokens, path)


def test_no_secret_after_a_kill_and_resume(tmp_path, sim):
    """Killed while RegisterThing is answered late; the next start resumes with the token."""
    sim.set_faults(["delay:register:3000:1"])
    dev = Device(tmp_path / "dev", sim, extra=FAST)
    first = Run(dev)
    hold_and_status(first)
    first.proc.send_signal(signal.SIGKILL)
    rc, text1 = first.wait()
    assert rc == -signal.SIGKILL
    sim.clear_faults()

    second = Run(dev)
    rc, text2 = second.wait()
    assert rc == 0, text2
    assert "Resuming with certificate" in text2
    assert requests(sim, REGISTER) == 2
    keys = first.collector.keys | second.collector.keys | {(dev.current / "device.key")
                                                           .read_text()}
    tokens = first.collector.tokens | second.collector.tokens
    assert len(keys) == 1 and len(tokens) == 1, (len(keys), len(tokens))
    assert_no_secret(text1 + text2, keys, tokens, "the output of fleetprovd")
    # check reads the claim key: neither it nor the device key may appear in its report.
    report = run_command(dev, "check") + run_command(dev, "check", "--json")
    assert_no_secret(report, keys | {open(sim.claim_key).read()}, tokens, "fleetprovd check")


def test_fragments_do_find_a_leak(tmp_path):
    """The scan itself: a key or token hidden in a log line is found."""
    key = tmp_path / "k.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-out", str(key)], check=True)
    pem = key.read_text()
    priv = private_scalar(pem)
    for leaked in (pem.splitlines()[1], base64.b64encode(pem_der(pem)[1:]).decode()[20:60],
                   priv.hex()[10:50], "key " + binascii.hexlify(priv, ":").decode()):
        with pytest.raises(AssertionError):
            assert_no_secret(f"<7>debug {leaked} end", {pem}, set(), "test")
    with pytest.raises(AssertionError):
        assert_no_secret("token=..." + "AbCdEfGhIjKlMnOpQrSt"[2:19], set(),
                         {"xxAbCdEfGhIjKlMnOpQrStyy"}, "test")
    assert_no_secret("nothing secret here", {pem}, {"xxAbCdEfGhIjKlMnOpQrStyy"}, "test")


# --- file modes under umask 000 -------------------------------------------------------------

PENDING_MODES = {"device.key": 0o640, "request.csr": 0o644, "certificate.json": 0o600,
                 "registration.json": 0o600, "attempt.json": 0o600}
GEN_MODES = {"device.key": 0o640, "device.crt": 0o644, "identity.json": 0o644,
             "identity.env": 0o644}


class ModeWatcher:
    """Records (type, mode) of every entry under the state directory while the daemon runs,
    temporary files included."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.seen = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _look(self):
        for root, dirs, files in os.walk(self.state_dir):
            for name in [".", *dirs, *files]:
                path = os.path.join(root, name)
                with contextlib.suppress(OSError):
                    st = os.lstat(path)
                    rel = os.path.normpath(os.path.relpath(path, self.state_dir))
                    self.seen.setdefault(rel, set()).add(
                        (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)))

    def _run(self):
        while not self._stop.is_set():
            self._look()
            time.sleep(0.002)

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._look()


def final_name(name):
    """A temporary file (".device.key.XXXXXX") is born with the mode of its final name."""
    return re.sub(r"^\.(.+)\.[^.]+$", r"\1", name)


def designed(rel):
    """(type, mode) the design gives the state directory entry rel; None if it has none."""
    parts = rel.split(os.sep)
    if rel == ".":
        return stat.S_IFDIR, 0o750
    if parts == ["pending"]:
        return stat.S_IFDIR, 0o700
    if len(parts) == 1 and re.fullmatch(r"gen-[0-9a-f]{64}", parts[0]):
        return stat.S_IFDIR, 0o750
    if len(parts) == 1 and final_name(parts[0]) == "current":
        return stat.S_IFLNK, None
    if len(parts) == 2 and parts[0] == "pending" and final_name(parts[1]) in PENDING_MODES:
        return stat.S_IFREG, PENDING_MODES[final_name(parts[1])]
    if len(parts) == 2 and parts[0].startswith("gen-") and final_name(parts[1]) in GEN_MODES:
        return stat.S_IFREG, GEN_MODES[final_name(parts[1])]
    return None


def test_designed_modes_under_umask_000(tmp_path, sim):
    # A failed attempt writes attempt.json; a late RegisterThing answer holds certificate.json.
    sim.set_faults(["reject:csr:1:500:InternalFailureException:Internal failure",
                    "delay:register:500:1"])
    dev = Device(tmp_path / "dev", sim, extra=FAST)
    assert not dev.state_dir.exists()  # created by the daemon
    watcher = ModeWatcher(dev.state_dir)
    run = Run(dev, preexec_fn=lambda: os.umask(0))
    try:
        rc, text = run.wait()
    finally:
        watcher.stop()
    assert rc == 0, text

    seen = watcher.seen
    for name in ("device.key", "request.csr", "certificate.json", "attempt.json"):
        assert os.path.join("pending", name) in seen, sorted(seen)
    gen = os.readlink(dev.current)
    for name in GEN_MODES:
        assert os.path.join(gen, name) in seen, sorted(seen)
    for rel, observed in sorted(seen.items()):
        want = designed(rel)
        assert want, f"unexpected entry '{rel}' in the state directory"
        kind, mode = want
        for got_kind, got_mode in observed:
            assert got_kind == kind, (rel, got_kind)
            assert mode is None or got_mode == mode, (rel, oct(got_mode), oct(mode))

    # What is left: the state directory, current and one generation, nothing else.
    assert sorted(os.listdir(dev.state_dir)) == sorted(["current", gen])
    assert sorted(os.listdir(dev.state_dir / gen)) == sorted(GEN_MODES)
