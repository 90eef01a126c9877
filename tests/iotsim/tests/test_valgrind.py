"""The plugin under valgrind: a full provisioning and the error paths, no leaks, no errors."""

import shutil

import pytest

from conftest import (CREATE_TOPIC, CSR_TOPIC, GATEWAY, Clients, Simulator, csr_request,
                      make_csr, openssl, provision, register, register_topic, write_cert,
                      write_hook)
from mqttclient import Refused
from test_cbor import encode as cbor_encode


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_provisioning_under_valgrind(tmp_path):
    hook = write_hook(tmp_path, "hook", "cat >/dev/null\n"
                      "echo '{\"allowProvisioning\": true, \"parameterOverrides\": {\"DeviceLocation\": \"v\"}}'\n")
    sim = Simulator(str(tmp_path / "sim"), templates={"GatewayTemplate": GATEWAY, "Hooked": GATEWAY},
                    hooks={"Hooked": hook}, faults=["delay:register:50:1"], valgrind=True)
    sim.start()
    clients = Clients(sim)
    try:
        claim = clients.claim("gw-valgrind", timeout=30)  # valgrind is slow; RSA keygen more so
        key, issued, registered = provision(claim, tmp_path, "VG-1")
        assert registered["thingName"] == "gw-VG-1"
        provision(claim, tmp_path, "VG-2", template="Hooked")
        # Not CreateKeysAndCertificate: RSA key generation under valgrind takes minutes.
        claim.request(CREATE_TOPIC, b"not json")
        # Error paths: bad JSON, bad CSR, unknown template, bad token, faults.
        claim.request(CSR_TOPIC, b"{")
        _, weak = make_csr(tmp_path, "weak", "rsa1024")
        csr_request(claim, weak)
        claim.request(register_topic("Nope"), {})
        for payload in (cbor_encode({"certificateSigningRequest": weak, "n": [1, -2, None, True]}),
                        b"\xa1\x63abc"):
            claim.publish("$aws/certificates/create-from-csr/cbor", payload)
            assert claim.receive()[0].endswith("/cbor/rejected")
        register(claim, "not-a-token", {"SerialNumber": "X"})
        sim.set_faults(["duplicate:csr:1", "wrongtypes:csr:1", "throttle:register:1"])
        _, csr = make_csr(tmp_path, "again")
        csr_request(claim, csr)
        assert len(claim.receive_all(1.0)) == 1  # the duplicate
        register(claim, issued["certificateOwnershipToken"], {"SerialNumber": "VG-1"})
        register(claim, issued["certificateOwnershipToken"], {"SerialNumber": "VG-1"})
        # A device connects; an unknown certificate is turned away.
        clients.connect(write_cert(tmp_path, "dev", issued["certificatePem"]), key, "gw-VG-1",
                        timeout=30).ping()
        rogue_key, rogue_csr = make_csr(tmp_path, "rogue")
        rogue = str(tmp_path / "rogue.crt")
        openssl("x509", "-req", "-CA", sim.ca_file, "-CAkey", str(sim.dir / "ca.key"),
                "-CAcreateserial", "-out", rogue, "-days", "1", input=rogue_csr.encode())
        with pytest.raises(Refused):
            clients.connect(rogue, rogue_key, "rogue", timeout=30)
    finally:
        clients.close()
        sim.stop()  # raises if valgrind found errors or leaks
    assert "ERROR SUMMARY: 0 errors" in sim.valgrind_log.read_text()
    assert len(sim.things()) == 2
