"""Shared fixtures for the daemon's integration tests.

Every test runs the real fleetprovd binary against the real simulator: mosquitto with the
iotsim plugin, TLS with client certificates, on loopback. Nothing is mocked.
"""

import os
import pathlib
import shlex
import socket
import subprocess
import sys
import threading
import time

import pytest

IOTSIM_DIR = pathlib.Path(os.environ.get("IOTSIM_DIR", pathlib.Path(__file__).parents[1] / "iotsim"))
sys.path.insert(0, str(IOTSIM_DIR))

from iotsimlib import Simulator  # noqa: E402

FLEETPROVD = os.environ.get("FLEETPROVD", "")
GATEWAY_TEMPLATE = IOTSIM_DIR / "templates" / "gateway.json"


class NotifyListener:
    """An sd_notify receiver: a datagram socket the daemon finds through NOTIFY_SOCKET.

    on_ready, if given, runs in the receiving thread the moment READY=1 arrives, so a test
    can look at the disk exactly when the daemon claims to be ready.
    """

    def __init__(self, path, on_ready=None):
        self.path = str(path)
        self.messages = []
        self.on_ready = on_ready
        self.ready_observation = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            text = data.decode(errors="replace")
            if "READY=1" in text.split("\n") and self.on_ready and self.ready_observation is None:
                self.ready_observation = self.on_ready()
            self.messages.append(text)

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def assignments(self, key):
        out = []
        for m in self.messages:
            for line in m.split("\n"):
                if line.startswith(key + "="):
                    out.append(line[len(key) + 1:])
        return out

    @property
    def ready(self):
        return any("READY=1" in m.split("\n") for m in self.messages)


def conf_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Device:
    """One gateway: a config file and a state directory, run against a simulator."""

    def __init__(self, root, sim, serial="GW-0001", **overrides):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sim = sim
        self.serial = serial
        self.state_dir = self.root / "state"
        self.config_path = self.root / "fleetprovd.conf"
        self.settings = {
            "endpoint": "localhost",
            "port": sim.port,
            "ca_file": sim.ca_file,
            "claim_certificate": sim.claim_cert,
            "claim_private_key": sim.claim_key,
            "template": "GatewayTemplate",
            "parameters": [("SerialNumber", "value", serial), ("DeviceLocation", "value", "lab")],
            "client_id": "gw-${SerialNumber}",
            "state_dir": str(self.state_dir),
            "verify": True,
            "extra": "timeouts = { connect = 5; response = 5; };\n"
                     "retry = { base = 1; cap = 2; permanent = 2; max_attempts = 0; };\n",
        }
        self.settings.update(overrides)
        self.write_config()

    def write_config(self, text=None):
        if text is None:
            s = self.settings
            params = ",\n".join(
                "    { name = %s; %s = %s; }" % (conf_value(n), src, conf_value(v))
                for n, src, v in s["parameters"])
            text = (
                f"endpoint = {conf_value(s['endpoint'])};\n"
                f"port = {s['port']};\n"
                f"ca_file = {conf_value(s['ca_file'])};\n"
                f"claim = {{ certificate = {conf_value(s['claim_certificate'])}; "
                f"private_key = {conf_value(s['claim_private_key'])}; }};\n"
                f"template = {{\n  name = {conf_value(s['template'])};\n"
                f"  parameters = (\n{params}\n  );\n}};\n"
                f"client_id = {conf_value(s['client_id'])};\n"
                f"state_dir = {conf_value(s['state_dir'])};\n"
                f"verify = {conf_value(s['verify'])};\n"
                + s["extra"]
            )
        self.config_path.write_text(text)

    def _notify_env(self, env=None, on_ready=None):
        """A fresh NOTIFY_SOCKET listener and the environment that points the daemon at it."""
        sock = self.root / "notify.sock"
        if sock.exists():
            sock.unlink()
        listener = NotifyListener(sock, on_ready=on_ready)
        full_env = dict(os.environ)
        full_env.pop("JOURNAL_STREAM", None)
        full_env["NOTIFY_SOCKET"] = str(sock)
        full_env.update(env or {})
        return listener, full_env

    def _command(self, args):
        return [*shlex.split(os.environ.get("FLEETPROVD_WRAPPER", "")), FLEETPROVD,
                "--config", str(self.config_path), "--log-level", "debug", *args]

    def run(self, timeout=60, args=(), on_ready=None, wrapper=(), env=None):
        """Run fleetprovd to completion; returns (exit code, stderr text, notify listener)."""
        listener, full_env = self._notify_env(env, on_ready)
        try:
            proc = subprocess.run(
                [*wrapper, *self._command(args)], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        finally:
            time.sleep(0.05)
            listener.close()
        log = proc.stderr.decode(errors="replace")
        return proc.returncode, log, listener

    def start(self, args=(), env=None):
        """Start fleetprovd in the background; the caller waits or kills it."""
        self.listener, full_env = self._notify_env(env)
        self.log_file = open(self.root / "daemon.log", "ab")
        return subprocess.Popen(self._command(args), env=full_env, stdout=subprocess.DEVNULL, stderr=self.log_file)

    @property
    def current(self):
        return self.state_dir / "current"


@pytest.fixture
def sim(tmp_path):
    s = Simulator(str(tmp_path / "sim"), templates={"GatewayTemplate": str(GATEWAY_TEMPLATE)})
    s.start()
    yield s
    s.stop()


@pytest.fixture
def device(tmp_path, sim):
    return Device(tmp_path / "device", sim)


def openssl(*args, cwd=None):
    subprocess.run(["openssl", *args], check=True, cwd=cwd,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(predicate, timeout=20.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


if not FLEETPROVD or not os.path.exists(FLEETPROVD):
    pytest.exit("FLEETPROVD does not point at the built daemon", returncode=1)
