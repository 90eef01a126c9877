"""The happy paths of the Fleet Provisioning API, checked against the registry on disk."""

import json
import subprocess
import time

from conftest import (CREATE_TOPIC, GATEWAY, TEMPLATES, Simulator, certificate_id, csr_request,
                      make_csr, openssl, provision, public_key_of_cert, public_key_of_key,
                      register, write_cert)
from mqttclient import Refused


def test_csr_provisioning_end_to_end(sim, clients, tmp_path):
    claim = clients.claim("gw-GW-0001")
    key, issued, registered = provision(claim, tmp_path, "GW-0001")

    cert_id = issued["certificateId"]
    assert len(cert_id) == 64 and cert_id == cert_id.lower()
    assert cert_id == certificate_id(issued["certificatePem"])
    assert public_key_of_cert(issued["certificatePem"]) == public_key_of_key(key)
    assert registered["thingName"] == "gw-GW-0001"
    assert registered["deviceConfiguration"]["telemetryTopic"] == "fleet/gw-GW-0001/telemetry"
    assert registered["deviceConfiguration"]["region"] == "eu-west-1"

    things = sim.things()
    assert list(things) == ["gw-GW-0001"]
    assert things["gw-GW-0001"]["principals"] == [cert_id]
    assert things["gw-GW-0001"]["attributes"] == {"location": "unknown"}
    certs = sim.certificates()
    assert [c["certificateId"] for c in certs] == [cert_id]
    assert certs[0]["status"] == "ACTIVE"
    assert certs[0]["things"] == ["gw-GW-0001"]
    assert certs[0]["policies"] == ["GatewayOperationalPolicy"]
    assert sim.policies()["GatewayOperationalPolicy"]["targets"] == [cert_id]
    # The registry keeps only a hash of the token.
    assert issued["certificateOwnershipToken"] not in json.dumps(sim.registry())

    stats = sim.stats()
    assert stats["requests"] == {"CreateCertificateFromCsr": 1, "RegisterThing": 1}
    assert stats["accepted"] == {"CreateCertificateFromCsr": 1, "RegisterThing": 1}
    assert stats["clients"]["gw-GW-0001"]["accepted"] == 2


def test_issued_certificate_looks_like_aws(sim, clients, tmp_path):
    claim = clients.claim()
    _, csr = make_csr(tmp_path)
    outcome, issued = csr_request(claim, csr)
    assert outcome == "accepted"
    text = openssl("x509", "-noout", "-subject", "-enddate", "-issuer",
                   input=issued["certificatePem"].encode()).decode()
    assert "subject=CN = AWS IoT Certificate" in text
    assert "notAfter=Dec 31 23:59:59 2049 GMT" in text
    subprocess.run(["openssl", "verify", "-CAfile", sim.ca_file],
                   input=issued["certificatePem"].encode(), check=True, capture_output=True)
    # Until RegisterThing the certificate waits, and cannot be used to connect.
    assert [c["status"] for c in sim.certificates()] == ["PENDING_ACTIVATION"]
    assert len(issued["certificateOwnershipToken"]) >= 64


def test_each_request_gets_a_new_certificate(sim, clients, tmp_path):
    claim = clients.claim()
    _, csr = make_csr(tmp_path)
    ids = {csr_request(claim, csr)[1]["certificateId"] for _ in range(3)}
    assert len(ids) == 3
    assert len(sim.certificates(status="PENDING_ACTIVATION")) == 3


def test_provisioned_device_connects_and_pending_does_not(sim, clients, tmp_path):
    claim = clients.claim()
    key, issued, _ = provision(claim, tmp_path, "GW-0002")
    crt = write_cert(tmp_path, "device", issued["certificatePem"])
    device = clients.connect(crt, key, "gw-GW-0002")
    assert device.subscribe("fleet/gw-GW-0002/telemetry") == [1]
    device.publish("fleet/gw-GW-0002/telemetry", b"21.5")
    assert device.receive(2) == ("fleet/gw-GW-0002/telemetry", b"21.5")

    pending_key, csr = make_csr(tmp_path, "pending")
    _, pending = csr_request(claim, csr)
    pending_crt = write_cert(tmp_path, "pending", pending["certificatePem"])
    try:
        clients.connect(pending_crt, pending_key, "pending")
        raise AssertionError("a PENDING_ACTIVATION certificate connected")
    except Refused as e:
        assert e.code == 5


def test_register_again_with_same_token_is_idempotent(sim, clients, tmp_path):
    claim = clients.claim()
    _, issued, first = provision(claim, tmp_path, "GW-0003")
    outcome, again = register(claim, issued["certificateOwnershipToken"], {"SerialNumber": "GW-0003"})
    assert outcome == "accepted", again
    assert again == first
    assert list(sim.things()) == ["gw-GW-0003"]
    assert sim.things()["gw-GW-0003"]["version"] == 1
    active = sim.certificates(status="ACTIVE")
    assert len(active) == 1 and active[0]["registrations"] == 2


def test_merge_and_replace_override_settings(tmp_path):
    with Simulator(str(tmp_path / "sim"), templates={"Full": str(TEMPLATES / "full.json")}) as sim:
        from conftest import Clients
        clients = Clients(sim)
        try:
            claim = clients.claim()
            provision(claim, tmp_path, "GW-7", template="Full")
            _, csr = make_csr(tmp_path, "second")
            _, issued = csr_request(claim, csr)
            outcome, body = register(claim, issued["certificateOwnershipToken"],
                                     {"SerialNumber": "GW-7", "HardwareRev": "B2"}, "Full")
            assert outcome == "accepted", body
        finally:
            clients.close()
        thing = sim.things()["gw-GW-7"]
        assert thing["attributes"]["hw"] == "B2"  # MERGE: the new value wins
        assert thing["thingTypeName"] == "GatewayRevB"  # REPLACE
        assert set(thing["thingGroups"]) == {"gateways", "gw-rev-a", "gw-rev-b"}  # MERGE
        assert len(thing["principals"]) == 2
        assert thing["version"] == 2
        assert len(sim.certificates(status="ACTIVE")) == 2
        # A policy given as a document is named after the document's hash.
        policies = sim.policies()
        assert len(policies) == 1
        (name, policy), = policies.items()
        assert len(name) == 64 and len(policy["targets"]) == 2


def test_fail_override_conflicts_only_on_a_change(tmp_path):
    templates = {"Strict": str(TEMPLATES / "strict-fail.json")}
    with Simulator(str(tmp_path / "sim"), templates=templates) as sim:
        from conftest import Clients
        clients = Clients(sim)
        try:
            claim = clients.claim()
            _, issued, _ = provision(claim, tmp_path, "GW-9", template="Strict")
            # Same token, same values: nothing would change, so no conflict.
            outcome, body = register(claim, issued["certificateOwnershipToken"],
                                     {"SerialNumber": "GW-9"}, "Strict")
            assert outcome == "accepted", body
        finally:
            clients.close()
        assert len(sim.certificates(status="ACTIVE")) == 1


def test_inactive_template_leaves_certificate_inactive(tmp_path):
    with Simulator(str(tmp_path / "sim"),
                   templates={"Quiet": str(TEMPLATES / "inactive.json")}) as sim:
        from conftest import Clients
        clients = Clients(sim)
        try:
            key, issued, _ = provision(clients.claim(), tmp_path, "GW-5", template="Quiet")
            crt = write_cert(tmp_path, "inactive", issued["certificatePem"])
            try:
                clients.connect(crt, key, "gw-GW-5")
                raise AssertionError("an INACTIVE certificate connected")
            except Refused as e:
                assert e.code == 5
        finally:
            clients.close()
        assert [c["status"] for c in sim.certificates()] == ["INACTIVE"]


def test_create_keys_and_certificate(sim, clients, tmp_path):
    claim = clients.claim()
    for payload in (b"", {}):
        outcome, body = claim.request(CREATE_TOPIC, payload)
        assert outcome == "accepted", body
        assert set(body) == {"certificateId", "certificatePem", "privateKey",
                             "certificateOwnershipToken"}
        assert body["privateKey"].startswith("-----BEGIN RSA PRIVATE KEY-----")
        key = tmp_path / "created.key"
        key.write_text(body["privateKey"])
        assert public_key_of_key(key) == public_key_of_cert(body["certificatePem"])
        assert b"2048 bit" in openssl("pkey", "-in", str(key), "-noout", "-text")
    outcome, registered = register(claim, body["certificateOwnershipToken"], {"SerialNumber": "K1"})
    assert outcome == "accepted", registered
    assert registered["thingName"] == "gw-K1"
    assert sim.stats()["requests"]["CreateKeysAndCertificate"] == 2


def test_expired_token_is_rejected_and_certificate_deleted(tmp_path):
    with Simulator(str(tmp_path / "sim"), templates={"GatewayTemplate": GATEWAY}, token_ttl=1) as sim:
        from conftest import Clients, assert_rejected
        clients = Clients(sim)
        try:
            claim = clients.claim()
            _, csr = make_csr(tmp_path)
            _, issued = csr_request(claim, csr)
            assert len(sim.certificates(status="PENDING_ACTIVATION")) == 1
            time.sleep(1.3)
            outcome, body = register(claim, issued["certificateOwnershipToken"],
                                     {"SerialNumber": "GW-1"})
            assert_rejected(outcome, body, 400, "InvalidCertificateOwnershipToken")
            deadline = time.monotonic() + 3
            while sim.certificates() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sim.certificates() == []
            assert sim.things() == {}
        finally:
            clients.close()


def test_registry_survives_a_restart(tmp_path):
    workdir = str(tmp_path / "sim")
    with Simulator(workdir, templates={"GatewayTemplate": GATEWAY}) as sim:
        from conftest import Clients
        clients = Clients(sim)
        try:
            key, issued, _ = provision(clients.claim(), tmp_path, "GW-R")
        finally:
            clients.close()
    with Simulator(workdir, templates={"GatewayTemplate": GATEWAY}) as sim:
        clients = Clients(sim)
        try:
            crt = write_cert(tmp_path, "restart", issued["certificatePem"])
            clients.connect(crt, key, "gw-GW-R").ping()
            claim = clients.claim()
            outcome, body = register(claim, issued["certificateOwnershipToken"], {"SerialNumber": "GW-R"})
            assert outcome == "accepted", body
        finally:
            clients.close()
        assert list(sim.things()) == ["gw-GW-R"]
