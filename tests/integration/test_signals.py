"""SIGTERM (and SIGINT) in every state the daemon waits in.

Whatever it is waiting for (TCP/TLS, SUBACK, an answer, the backoff timer, the clock), a
stop must be clean: exit 0, STOPPING=1 and no READY=1, pending/ exactly as it was, no
temporary file left behind, and the next start completes with the same private key.
"""

import contextlib
import glob
import json
import os
import signal
import socket
import ssl
import threading
import time

import pytest

from conftest import Device, wait_for
from test_faults import (CSR, REGISTER, Proxy, assert_provisioned, daemon_log, finish,
                         future_claim, requests, utc_in)

# Deadlines far beyond the time a test takes: the daemon must still be waiting at the signal.
PATIENT = ("timeouts = { connect = 60; response = 60; };\n"
           "retry = { base = 1; cap = 2; permanent = 2; max_attempts = 0; };\n")
# A transient failure then a long backoff (at least the 1 s reconnect floor).
LONG_BACKOFF = PATIENT.replace("base = 1; cap = 2", "base = 30; cap = 60")
FAST = PATIENT.replace("connect = 60; response = 60", "connect = 5; response = 5")
# libfaketime (Debian's faketime) sets the wall clock of the daemon alone.
LIBFAKETIME = next(iter(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")), None)
# Long before any build of fleetprovd; the monotonic clocks stay real.
FAKE_CLOCK = {"LD_PRELOAD": LIBFAKETIME or "", "FAKETIME": "@2020-01-01 00:00:00",
              "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
MQTT_CONNECT = 0x10
MQTT_CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


class SilentPort:
    """A TCP port that completes the TCP handshake (the backlog) but never speaks TLS."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


def _read_packet(conn):
    """One MQTT control packet: (first byte, body), or None at end of stream."""
    head = conn.recv(1)
    if not head:
        return None
    length, shift = 0, 0
    while True:
        b = conn.recv(1)
        if not b:
            return None
        length |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return head[0], body


class MuteBroker:
    """Mutual TLS with the simulator's server certificate; accepts CONNECT, then answers
    nothing: a SUBSCRIBE waits for its SUBACK forever."""

    def __init__(self, sim):
        d = os.path.dirname(sim.ca_file)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(os.path.join(d, "server.pem"), os.path.join(d, "server.key"))
        self.ctx.load_verify_locations(sim.ca_file)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.subscribes = 0
        self._conns = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(raw,), daemon=True).start()

    def _client(self, raw):
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
            self._conns.append(conn)
            while True:
                packet = _read_packet(conn)
                if packet is None:
                    return
                kind = packet[0] & 0xF0
                if kind == MQTT_CONNECT:
                    conn.sendall(MQTT_CONNACK_ACCEPTED)
                elif kind == 0x80:
                    self.subscribes += 1
        except (OSError, ssl.SSLError):
            return

    def close(self):
        self.sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()


def snapshot(directory):
    """{name: bytes} of the files in directory ({} when it does not exist)."""
    try:
        return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
    except FileNotFoundError:
        return {}


def leftovers(state_dir):
    """Temporary names anywhere under the state directory."""
    out = []
    for root, dirs, files in os.walk(state_dir):
        out += [os.path.join(root, n) for n in dirs + files
                if n.startswith(".") or n.endswith(".tmp")]
    return out


def arrange_device(state, tmp_path, sim, stack):
    """A device that will wait in state; returns (device, log marker or predicate that says
    it waits there, a function that points its config at the simulator, environment)."""
    def back_to_sim(dev):
        dev.settings["port"] = sim.port
        dev.settings["claim_certificate"] = sim.claim_cert
        dev.write_config()

    root = tmp_path / "dev"
    if state == "connecting":
        port = stack.enter_context(contextlib.closing(SilentPort())).port
        return Device(root, sim, port=port, extra=PATIENT), "-> connecting", back_to_sim
    if state == "subscribing":
        broker = stack.enter_context(contextlib.closing(MuteBroker(sim)))
        dev = Device(root, sim, port=broker.port, extra=PATIENT)
        # Waiting for a SUBACK: the SUBSCRIBE has reached the broker.
        return dev, lambda: "-> subscribing" in daemon_log(dev) and broker.subscribes, back_to_sim
    if state in ("csr-sent", "csr-sent-sigint"):
        sim.set_faults(["delay:csr:5000:1"])
        return Device(root, sim, extra=PATIENT), "-> csr-sent", back_to_sim
    if state == "register-sent":
        sim.set_faults(["delay:register:5000:1"])
        return Device(root, sim, extra=PATIENT), "-> register-sent", back_to_sim
    if state == "backoff":
        sim.set_faults(["reject:csr:1:500:InternalFailureException:Internal failure"])
        return Device(root, sim, extra=LONG_BACKOFF), "-> backoff", back_to_sim
    if state == "clock-wait":
        claim = tmp_path / "future-claim.crt"
        future_claim(os.path.dirname(sim.ca_file), tmp_path / "ca", utc_in(86400), out=claim)
        return (Device(root, sim, claim_certificate=str(claim), extra=PATIENT),
                "-> clock-wait", back_to_sim)
    raise AssertionError(state)


def arrange(state, tmp_path, sim, stack):
    if state == "clock-before-build":
        if not LIBFAKETIME:
            pytest.skip("faketime is not installed")
        return (Device(tmp_path / "dev", sim, extra=PATIENT), "-> clock-wait",
                lambda dev: None, FAKE_CLOCK)
    return (*arrange_device(state, tmp_path, sim, stack), None)


STATES = ["connecting", "subscribing", "csr-sent", "csr-sent-sigint", "register-sent",
          "backoff", "clock-wait", "clock-before-build"]


@pytest.mark.parametrize("state", STATES)
def test_stop_while_waiting(state, tmp_path, sim):
    sig = signal.SIGINT if state.endswith("-sigint") else signal.SIGTERM
    with contextlib.ExitStack() as stack:
        dev, marker, reconfigure, env = arrange(state, tmp_path, sim, stack)
        waiting = marker if callable(marker) else lambda: marker in daemon_log(dev)
        proc = dev.start(env=env)
        try:
            assert wait_for(waiting, timeout=20), daemon_log(dev)
            time.sleep(0.2)  # settle in the wait: nothing may be half-written
            assert proc.poll() is None, daemon_log(dev)
            before = snapshot(dev.state_dir / "pending")
            requests_before = sim.stats().get("requests", {})
            proc.send_signal(sig)
            rc, log = finish(dev, proc, timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()

    assert rc == 0, log
    assert "STOPPING=1" in "\n".join(dev.listener.messages).split("\n")
    assert not dev.listener.ready
    assert "the pending attempt is kept for the next start" in log
    assert f"Received {signal.strsignal(sig)}" in log
    # The daemon closed the connection itself: nothing may blame the server.
    assert "closed by the server" not in log, log
    # pending/ as it was: the key (and, once issued, the certificate and token) kept.
    assert "device.key" in before
    assert (dev.state_dir / "pending" / "certificate.json").exists() == \
        (state == "register-sent")
    assert snapshot(dev.state_dir / "pending") == before
    assert not (dev.state_dir / "current").exists()
    assert leftovers(dev.state_dir) == []
    assert sim.stats().get("requests", {}) == requests_before  # nothing sent on the way out
    if state.startswith("clock-"):
        why = "claim certificate" if state == "clock-wait" else "before the build time"
        assert any(s.startswith("Waiting for the clock: ") and why in s
                   for s in dev.listener.assignments("STATUS")), dev.listener.messages
        assert "Connecting to" not in log
        assert sim.stats().get("connections", {}).get("claim", 0) == 0

    reconfigure(dev)
    sim.clear_faults()
    rc, log, notify = dev.run(timeout=60)
    assert_provisioned(dev, sim, rc, log, notify, orphans=(0, 1))
    assert (dev.current / "device.key").read_bytes() == before["device.key"]
    assert "Generated a new" not in log
    assert leftovers(dev.state_dir) == []
    if state == "register-sent":
        # Resumed with the issued certificate: no second CSR, the same certificate id.
        cert_id = json.loads(before["certificate.json"])["certificateId"]
        assert f"Resuming with certificate {cert_id}" in log
        assert requests(sim, CSR) == 1 and requests(sim, REGISTER) == 2, sim.stats()
        assert json.loads((dev.current / "identity.json").read_text())["certificateId"] == \
            cert_id


def test_stop_while_verifying(tmp_path, sim):
    """Committed, but the connect with the new certificate hangs: a stop keeps the committed
    identity, marked unverified (no READY now); the next start verifies it, without
    provisioning again, and is ready."""
    with contextlib.closing(Proxy(sim.port, {2: "stall"})) as proxy:
        dev = Device(tmp_path / "dev", sim, port=proxy.port, extra=PATIENT)
        proc = dev.start()
        try:
            assert wait_for(lambda: "-> verifying" in daemon_log(dev) and proxy.accepted == 2,
                            timeout=20), daemon_log(dev)
            time.sleep(0.2)
            assert proc.poll() is None, daemon_log(dev)
            committed = snapshot(dev.current)
            proc.send_signal(signal.SIGTERM)
            rc, log = finish(dev, proc, timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()

    assert rc == 0, log
    assert "STOPPING=1" in "\n".join(dev.listener.messages).split("\n")
    assert not dev.listener.ready
    assert "closed by the server" not in log, log
    assert "Stopping; the saved identity is verified at the next start" in log
    assert {"device.key", "device.crt", "identity.json", "identity.env"} <= set(committed)
    assert snapshot(dev.current) == committed
    assert json.loads(committed["identity.json"])["verified"] is False
    assert not (dev.state_dir / "pending").exists()
    assert leftovers(dev.state_dir) == []

    dev.settings["port"] = sim.port
    dev.write_config()
    rc, log, notify = dev.run(timeout=30)
    assert rc == 0, log
    assert notify.ready
    assert "(thing 'gw-GW-0001') was saved but never verified, verifying it now" in log
    after = snapshot(dev.current)
    for name in ("device.key", "device.crt", "identity.env"):
        assert after[name] == committed[name], name
    assert json.loads(after["identity.json"])["verified"] is True
    assert requests(sim, CSR) == 1 and requests(sim, REGISTER) == 1, sim.stats()
    assert list(sim.things()) == ["gw-GW-0001"]
    assert len(sim.certificates(status="ACTIVE")) == 1
    assert leftovers(dev.state_dir) == []
