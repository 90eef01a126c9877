"""Fault injection: each kind, counts, runtime changes through the control file."""

import json
import subprocess
import time

import pytest

from conftest import (CSR_TOPIC, GATEWAY, Clients, Simulator, assert_rejected, certificate_id,
                      csr_request, make_csr, public_key_of_cert, public_key_of_key, register,
                      register_topic)
from mqttclient import ConnectionClosed


def raw_request(client, topic, payload, wait=2.0, linger=0.3):
    """Subscribe, publish; every message until none came for linger s (at most wait s)."""
    client.subscribe(topic + "/accepted", topic + "/rejected")
    client.publish(topic, payload)
    first = client.receive(wait)
    return [first, *client.receive_all(linger)] if first else []


@pytest.fixture
def claim(clients):
    return clients.claim("gw-faulty")


@pytest.fixture
def csr(tmp_path):
    return make_csr(tmp_path)


def test_throttled_burst(sim, claim, csr):
    sim.set_faults(["throttle:csr:5"])
    claim.subscribe(CSR_TOPIC + "/accepted", CSR_TOPIC + "/rejected")
    for _ in range(20):
        claim.publish(CSR_TOPIC, {"certificateSigningRequest": csr[1]})
    answers = claim.receive_all(1.0)
    assert len(answers) == 20
    accepted = [a for a in answers if a[0].endswith("/accepted")]
    rejected = [json.loads(a[1]) for a in answers if a[0].endswith("/rejected")]
    assert 5 <= len(accepted) <= 8, len(accepted)
    for body in rejected:
        assert_rejected("rejected", body, 429, "ThrottlingException", "Rate exceeded")
    assert sim.stats()["statusCodes"]["429"] == len(rejected)
    assert len(sim.certificates()) == len(accepted)
    time.sleep(0.5)  # the bucket refills at 5/s
    assert csr_request(claim, csr[1])[0] == "accepted"
    # Other APIs are not throttled by a csr rule.
    assert claim.request(register_topic(), {"certificateOwnershipToken": ""})[1]["statusCode"] == 400


def test_reject_next_count(sim, claim, csr):
    sim.set_faults(["reject:csr:2:503:ServiceUnavailableException:Try again: later",
                    "reject:register:1:500:InternalFailureException"])
    for _ in range(2):
        outcome, body = csr_request(claim, csr[1])
        assert_rejected(outcome, body, 503, "ServiceUnavailableException")
        assert body["errorMessage"] == "Try again: later"
    outcome, issued = csr_request(claim, csr[1])
    assert outcome == "accepted"
    outcome, body = register(claim, issued["certificateOwnershipToken"], {"SerialNumber": "X"})
    assert_rejected(outcome, body, 500, "InternalFailureException", "Injected fault")
    assert register(claim, issued["certificateOwnershipToken"], {"SerialNumber": "X"})[0] == "accepted"


def test_delay(sim, claim, csr):
    sim.set_faults(["delay:csr:400:1"])
    started = time.monotonic()
    assert csr_request(claim, csr[1])[0] == "accepted"
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    assert csr_request(claim, csr[1])[0] == "accepted"
    assert time.monotonic() - started < 0.3


def test_drop_processes_but_never_answers(sim, claim, csr):
    outcome, issued = csr_request(claim, csr[1])
    sim.set_faults(["drop:register:1"])
    body = {"certificateOwnershipToken": issued["certificateOwnershipToken"],
            "parameters": {"SerialNumber": "D"}}
    assert raw_request(claim, register_topic(), body, wait=1.0) == []
    # The lost answer's work was done: the device may resume with the same token.
    assert len(sim.certificates(status="ACTIVE")) == 1
    assert register(claim, issued["certificateOwnershipToken"], {"SerialNumber": "D"})[0] == "accepted"
    assert list(sim.things()) == ["gw-D"]
    assert sim.stats()["dropped"] == {"RegisterThing": 1}


def test_duplicate(sim, claim, csr):
    sim.set_faults(["duplicate:csr:1"])
    answers = raw_request(claim, CSR_TOPIC, {"certificateSigningRequest": csr[1]}, wait=1.0)
    assert len(answers) == 2 and answers[0] == answers[1]
    assert answers[0][0] == CSR_TOPIC + "/accepted"
    assert len(sim.certificates()) == 1


def test_malformed(sim, claim, csr):
    sim.set_faults(["malformed:csr"])
    (topic, payload), = raw_request(claim, CSR_TOPIC, {"certificateSigningRequest": csr[1]})
    assert topic == CSR_TOPIC + "/accepted"
    with pytest.raises(ValueError):
        json.loads(payload)


def test_wrongtypes(sim, claim, csr):
    sim.set_faults(["wrongtypes:all:2"])
    (topic, payload), = raw_request(claim, CSR_TOPIC, {"certificateSigningRequest": csr[1]})
    body = json.loads(payload)
    assert topic.endswith("/accepted")
    assert isinstance(body["certificateId"], int)
    assert isinstance(body["certificatePem"], int)
    assert isinstance(body["certificateOwnershipToken"], int)
    sim.clear_faults()
    _, issued = csr_request(claim, csr[1])
    sim.set_faults(["wrongtypes:register"])
    (topic, payload), = raw_request(claim, register_topic(),
                                    {"certificateOwnershipToken": issued["certificateOwnershipToken"],
                                     "parameters": {"SerialNumber": "W"}})
    body = json.loads(payload)
    assert isinstance(body["thingName"], int) and isinstance(body["deviceConfiguration"], list)


def test_oversize(sim, claim, csr):
    sim.set_faults(["oversize:csr:1"])
    (topic, payload), = raw_request(claim, CSR_TOPIC, {"certificateSigningRequest": csr[1]})
    assert topic.endswith("/accepted")
    assert len(payload) > 1024 * 1024
    assert len(json.loads(payload)["certificateId"]) == 64


def test_badcert(sim, claim, csr):
    sim.set_faults(["badcert:csr:1"])
    outcome, body = csr_request(claim, csr[1])
    assert outcome == "accepted"
    assert body["certificatePem"].startswith("-----BEGIN CERTIFICATE-----")
    proc = subprocess.run(["openssl", "x509", "-noout"], input=body["certificatePem"].encode(),
                          capture_output=True)
    assert proc.returncode != 0


def test_wrongkey(sim, claim, csr):
    key, pem = csr
    sim.set_faults(["wrongkey:csr:1"])
    outcome, body = csr_request(claim, pem)
    assert outcome == "accepted"
    assert body["certificateId"] == certificate_id(body["certificatePem"])
    assert public_key_of_cert(body["certificatePem"]) != public_key_of_key(key)
    outcome, body = csr_request(claim, pem)
    assert public_key_of_cert(body["certificatePem"]) == public_key_of_key(key)


def test_disconnect(sim, clients, claim, csr):
    sim.set_faults(["disconnect:csr:1"])
    with pytest.raises(ConnectionClosed):
        raw_request(claim, CSR_TOPIC, {"certificateSigningRequest": csr[1]})
    assert sim.certificates() == []
    again = clients.claim("gw-faulty")
    assert csr_request(again, csr[1])[0] == "accepted"


def test_faults_given_at_start_and_their_counts(tmp_path, csr):
    with Simulator(str(tmp_path / "sim"), templates={"GatewayTemplate": GATEWAY},
                   faults=["reject:all:1:429:ThrottlingException:Rate exceeded"]) as sim:
        clients = Clients(sim)
        try:
            claim = clients.claim()
            assert_rejected(*csr_request(claim, csr[1]), 429, "ThrottlingException")
            assert csr_request(claim, csr[1])[0] == "accepted"
        finally:
            clients.close()


def test_bad_spec_is_refused_and_the_old_rules_stay(sim, claim, csr):
    sim.set_faults(["reject:csr:1:400:Nope"])
    for bad in (["explode:csr"], ["drop:nothing"], ["throttle:csr:0"], ["reject:csr:1"],
                ["badcert:register"], ["delay:csr:abc"]):
        with pytest.raises(ValueError):
            sim.set_faults(bad)
    assert_rejected(*csr_request(claim, csr[1]), 400, "Nope")


def test_invalid_fault_at_start_stops_the_simulator(tmp_path):
    sim = Simulator(str(tmp_path / "sim"), faults=["drop:everything"])
    with pytest.raises(RuntimeError, match="drop:everything"):
        sim.start()
    sim.stop()
