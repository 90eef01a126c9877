"""Who may connect, and what the claim and device certificates may do."""

import ssl

import pytest

from conftest import (CSR_TOPIC, GATEWAY, Clients, Simulator, csr_request, make_csr, openssl,
                      provision, register, register_topic, write_cert)
from mqttclient import ConnectionClosed, Refused


def sign_with_sim_ca(sim, tmp_path, name):
    """A certificate from the simulator's own CA that the registry has never heard of."""
    key, csr = make_csr(tmp_path, name)
    crt = str(tmp_path / f"{name}.crt")
    openssl("x509", "-req", "-CA", sim.ca_file, "-CAkey", str(sim.dir / "ca.key"),
            "-CAcreateserial", "-out", crt, "-days", "2", input=csr.encode())
    return crt, key


def test_unknown_certificate_is_refused_at_connect(sim, clients, tmp_path):
    crt, key = sign_with_sim_ca(sim, tmp_path, "rogue")
    with pytest.raises(Refused) as e:
        clients.connect(crt, key, "rogue")
    assert e.value.code == 5
    assert "refused 'rogue'" in sim.log_text()
    clients.claim().ping()  # the claim still gets in
    assert sim.stats()["connections"]["refused"] == 1


def test_certificate_of_another_ca_fails_the_handshake(sim, clients, tmp_path):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(tmp_path / "other.key"), "-out", str(tmp_path / "other.crt"),
            "-subj", "/CN=other", "-days", "2")
    with pytest.raises((ssl.SSLError, ConnectionClosed, OSError)):
        clients.connect(str(tmp_path / "other.crt"), str(tmp_path / "other.key"), "other").ping()


@pytest.mark.parametrize("topic", [
    "fleet/gw-1/telemetry",
    "$aws/things/gw-1/shadow/update/accepted",
    "$aws/certificates/create-from-csr/json/+",
    "$aws/certificates/#",
    "#",
    "$aws/certificates/create-from-csr/json",  # a request topic is not for subscribing
    "$aws/provisioning-templates/GatewayTemplate/provision/xml/accepted",
])
def test_claim_may_not_subscribe_outside_its_policy(sim, clients, topic):
    claim = clients.claim()
    assert claim.subscribe(topic) == [0x80]
    assert claim.subscribe(CSR_TOPIC + "/accepted", register_topic() + "/rejected") == [1, 1]


@pytest.mark.parametrize("topic", [
    "fleet/gw-1/telemetry",
    CSR_TOPIC + "/accepted",
    "$aws/things/gw-1/shadow/update",
])
def test_claim_publishing_outside_its_policy_is_disconnected(sim, clients, tmp_path, topic):
    key, issued, _ = provision(clients.claim("provisioner"), tmp_path)
    device = clients.connect(write_cert(tmp_path, "dev", issued["certificatePem"]), key, "gw-GW-0001")
    assert device.subscribe("fleet/#") == [1]
    claim = clients.claim("gw-rogue")
    with pytest.raises(ConnectionClosed):
        claim.publish(topic, b"x")
        claim.ping()
    assert device.receive(0.5) is None
    assert f"denied publish on '{topic}'" in sim.log_text()


def test_claim_templates_limit_the_claim_policy(tmp_path):
    templates = {"GatewayTemplate": GATEWAY, "Other": GATEWAY}
    with Simulator(str(tmp_path / "sim"), templates=templates,
                   claim_templates=["GatewayTemplate"]) as sim:
        clients = Clients(sim)
        try:
            claim = clients.claim()
            assert claim.subscribe(register_topic("Other") + "/accepted") == [0x80]
            provision(claim, tmp_path)  # its own template works
            with pytest.raises(ConnectionClosed):
                claim.publish(register_topic("Other"), {"certificateOwnershipToken": "x"})
                claim.ping()
        finally:
            clients.close()
        assert sim.stats()["requests"].get("RegisterThing") == 1


def test_device_certificate_may_not_use_aws_topics(sim, clients, tmp_path):
    key, issued, _ = provision(clients.claim(), tmp_path)
    crt = write_cert(tmp_path, "dev", issued["certificatePem"])
    device = clients.connect(crt, key, "gw-GW-0001")
    assert device.subscribe(CSR_TOPIC + "/accepted") == [0x80]
    assert device.subscribe("fleet/gw-GW-0001/cmd") == [1]
    _, csr = make_csr(tmp_path, "again")
    with pytest.raises(ConnectionClosed):
        device.publish(CSR_TOPIC, {"certificateSigningRequest": csr})
        device.ping()
    assert len(sim.certificates()) == 1


def test_answers_go_only_to_the_requesting_client(sim, clients, tmp_path):
    a = clients.claim("gw-A")
    b = clients.claim("gw-B")
    assert b.subscribe(CSR_TOPIC + "/accepted", CSR_TOPIC + "/rejected",
                       register_topic() + "/accepted", register_topic() + "/rejected") == [1] * 4
    _, csr = make_csr(tmp_path)
    outcome, issued = csr_request(a, csr)
    assert outcome == "accepted"
    outcome, _ = register(a, issued["certificateOwnershipToken"], {"SerialNumber": "A"})
    assert outcome == "accepted"
    outcome, _ = a.request(CSR_TOPIC, b"garbage")
    assert outcome == "rejected"
    assert b.receive_all(0.5) == []
    # B's own request is answered to B (and only B).
    outcome, _ = csr_request(b, csr)
    assert outcome == "accepted"
    assert a.receive_all(0.3) == []


def test_answer_arrives_without_a_subscription(sim, clients, tmp_path):
    """AWS answers on the requesting connection; the subscription is only good manners."""
    claim = clients.claim()
    _, csr = make_csr(tmp_path)
    outcome, body = claim.request(CSR_TOPIC, {"certificateSigningRequest": csr}, subscribe=False)
    assert outcome == "accepted" and len(body["certificateId"]) == 64
