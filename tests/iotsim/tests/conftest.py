"""Fixtures for the simulator's own tests: a fresh simulator per test, claim clients, keys.

Everything is real: mosquitto with the iotsim plugin, TLS with client certificates on
loopback, keys and CSRs made by the openssl command.
"""

import hashlib
import json
import os
import pathlib
import ssl
import subprocess
import sys

import pytest

IOTSIM_DIR = pathlib.Path(os.environ.get("IOTSIM_DIR", pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(IOTSIM_DIR))

from iotsimlib import Simulator  # noqa: E402
from mqttclient import Client  # noqa: E402

TEMPLATES = IOTSIM_DIR / "templates"
GATEWAY = str(TEMPLATES / "gateway.json")
CSR_TOPIC = "$aws/certificates/create-from-csr/json"
CREATE_TOPIC = "$aws/certificates/create/json"


def register_topic(template="GatewayTemplate"):
    return f"$aws/provisioning-templates/{template}/provision/json"


def openssl(*args, input=None):
    return subprocess.run(["openssl", *args], check=True, capture_output=True,
                          input=input).stdout


KEY_ARGS = {
    "ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "ec384": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
    "secp256k1": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
    "rsa1024": ["-newkey", "rsa:1024"],
    "rsa2048": ["-newkey", "rsa:2048"],
    "ed25519": ["-newkey", "ed25519"],
}


def make_csr(directory, name="device", kind="ec"):
    """A private key and a CSR for it; returns (key path, CSR PEM text)."""
    key = pathlib.Path(directory) / f"{name}.key"
    csr = pathlib.Path(directory) / f"{name}.csr"
    openssl("req", *KEY_ARGS[kind], "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", f"/CN={name}")
    return str(key), csr.read_text()


def certificate_id(pem):
    """What AWS calls the certificate id: SHA-256 of the DER certificate, in hex."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def public_key_of_cert(pem):
    return openssl("x509", "-noout", "-pubkey", input=pem.encode())


def public_key_of_key(path):
    return openssl("pkey", "-in", str(path), "-pubout")


@pytest.fixture
def sim(tmp_path):
    s = Simulator(str(tmp_path / "sim"), templates={"GatewayTemplate": GATEWAY})
    s.start()
    yield s
    s.stop()


class Clients:
    """Opens MQTT connections to a simulator and closes them all at the end."""

    def __init__(self, sim):
        self.sim = sim
        self.open = []

    def claim(self, client_id="gw-claim", **kw):
        return self.connect(self.sim.claim_cert, self.sim.claim_key, client_id, **kw)

    def connect(self, cert, key, client_id, **kw):
        c = Client(self.sim.port, self.sim.ca_file, cert, key, client_id, **kw)
        self.open.append(c)
        return c

    def close(self):
        for c in self.open:
            c.close()


@pytest.fixture
def clients(sim):
    c = Clients(sim)
    yield c
    c.close()


def csr_request(client, csr):
    return client.request(CSR_TOPIC, {"certificateSigningRequest": csr})


def register(client, token, params, template="GatewayTemplate", **kw):
    body = {"certificateOwnershipToken": token, "parameters": params}
    return client.request(register_topic(template), body, **kw)


def provision(client, tmp_path, serial="GW-0001", template="GatewayTemplate", kind="ec"):
    """The whole CSR flow on one claim connection; returns (key, issued, registered)."""
    key, csr = make_csr(tmp_path, f"dev-{serial}", kind)
    outcome, issued = csr_request(client, csr)
    assert outcome == "accepted", issued
    outcome, registered = register(client, issued["certificateOwnershipToken"],
                                   {"SerialNumber": serial}, template)
    assert outcome == "accepted", registered
    return key, issued, registered


def write_cert(tmp_path, name, pem):
    path = pathlib.Path(tmp_path) / f"{name}.crt"
    path.write_text(pem)
    return str(path)


def write_hook(tmp_path, name, body):
    """An executable hook script (shell)."""
    path = pathlib.Path(tmp_path) / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def assert_rejected(outcome, body, status, code, message=None):
    assert outcome == "rejected", body
    assert body["statusCode"] == status, body
    assert isinstance(body["statusCode"], int)
    assert body["errorCode"] == code, body
    assert isinstance(body["errorMessage"], str) and body["errorMessage"], body
    if message is not None:
        assert message in body["errorMessage"], body
