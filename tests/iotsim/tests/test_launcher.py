"""The iotsim command as a person runs it: PKI, configuration, broker in the foreground."""

import os
import pathlib
import subprocess
import sys
import time

from conftest import (GATEWAY, IOTSIM_DIR, Clients, assert_rejected, csr_request, make_csr,
                      openssl, register, write_hook)
from iotsimlib import free_port


class Launched:
    """Just enough of a Simulator for Clients: the paths and the port."""

    def __init__(self, d, port):
        self.dir = pathlib.Path(d)
        self.port = port
        self.ca_file = str(self.dir / "ca.pem")
        self.claim_cert = str(self.dir / "claim.crt")
        self.claim_key = str(self.dir / "claim.key")


def wait_for_port(proc, port, log):
    import socket
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the launcher did not open its port:\n" + log.read_text())


def test_launcher_runs_the_simulator(tmp_path):
    d, port = tmp_path / "sim", free_port()
    seen = tmp_path / "hook-saw"
    hook = write_hook(tmp_path, "hook", f"cat > {seen}\necho '{{\"allowProvisioning\": true}}'\n")
    log = tmp_path / "launcher.log"
    cmd = [sys.executable, str(IOTSIM_DIR / "iotsim"), "--dir", str(d), "--port", str(port),
           "--template", f"GatewayTemplate={GATEWAY}", "--hook", f"GatewayTemplate={hook}",
           "--fault", "reject:csr:1:503:ServiceUnavailableException", "--token-ttl", "600"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(proc, port, log)
        # The launcher became mosquitto (exec), so stopping it stops the broker.
        assert os.path.basename(os.readlink(f"/proc/{proc.pid}/exe")) == "mosquitto"
        conf = (d / "mosquitto.conf").read_text()
        for line in (f"listener {port} 127.0.0.1", "require_certificate true", "tls_version tlsv1.2",
                     "plugin_opt_token_ttl 600"):
            assert line in conf.splitlines()
        san = openssl("x509", "-in", str(d / "server.pem"), "-noout", "-ext", "subjectAltName")
        assert b"DNS:localhost" in san and b"IP Address:127.0.0.1" in san
        assert oct(os.stat(d / "claim.key").st_mode & 0o777) == "0o600"

        clients = Clients(Launched(d, port))
        try:
            claim = clients.claim()
            _, csr = make_csr(tmp_path)
            assert_rejected(*csr_request(claim, csr), 503, "ServiceUnavailableException")
            outcome, issued = csr_request(claim, csr)
            assert outcome == "accepted"
            outcome, body = register(claim, issued["certificateOwnershipToken"], {"SerialNumber": "L1"})
            assert outcome == "accepted", body
        finally:
            clients.close()
        assert seen.exists()
        assert (d / "registry" / "things" / "gw-L1.json").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert "iotsim: ready" in log.read_text()


def test_launcher_keeps_an_existing_pki(tmp_path):
    from iotsimlib import prepare
    d = tmp_path / "sim"
    prepare(d, free_port())
    before = (d / "ca.pem").read_bytes(), (d / "claim.crt").read_bytes()
    prepare(d, free_port())
    assert ((d / "ca.pem").read_bytes(), (d / "claim.crt").read_bytes()) == before
