"""Bad requests of every kind get an AWS-shaped /rejected answer, and the broker goes on."""

import json

import pytest

from conftest import (CREATE_TOPIC, CSR_TOPIC, TEMPLATES, Simulator, assert_rejected,
                      csr_request, make_csr, register, register_topic)


def still_serving(claim, tmp_path):
    _, csr = make_csr(tmp_path, "after")
    outcome, body = csr_request(claim, csr)
    assert outcome == "accepted", body


@pytest.mark.parametrize("kind, reason", [
    ("rsa1024", "at least 2048"),
    ("secp256k1", "curve"),
    ("ed25519", "unsupported key type"),
])
def test_weak_or_unsupported_csr_key(sim, clients, tmp_path, kind, reason):
    claim = clients.claim()
    _, csr = make_csr(tmp_path, kind, kind)
    outcome, body = csr_request(claim, csr)
    assert_rejected(outcome, body, 400, "InvalidRequestException", reason)
    assert sim.certificates() == []
    still_serving(claim, tmp_path)


@pytest.mark.parametrize("kind", ["rsa2048", "ec384"])
def test_strong_csr_keys_are_accepted(sim, clients, tmp_path, kind):
    _, csr = make_csr(tmp_path, kind, kind)
    outcome, body = csr_request(clients.claim(), csr)
    assert outcome == "accepted", body


def test_garbage_and_tampered_csr(sim, clients, tmp_path):
    claim = clients.claim()
    outcome, body = csr_request(claim, "-----BEGIN CERTIFICATE REQUEST-----\nZ2FyYmFnZQ==\n"
                                       "-----END CERTIFICATE REQUEST-----\n")
    assert_rejected(outcome, body, 400, "InvalidRequestException", "could not be parsed")
    outcome, body = csr_request(claim, "not a CSR at all")
    assert_rejected(outcome, body, 400, "InvalidRequestException", "could not be parsed")

    # Change one byte of the signed part: the self-signature no longer verifies.
    import base64
    _, csr = make_csr(tmp_path)
    lines = csr.strip().splitlines()
    der = bytearray(base64.b64decode("".join(lines[1:-1])))
    der[40] ^= 0x01
    b64 = base64.b64encode(bytes(der)).decode()
    tampered = "\n".join([lines[0], *[b64[i:i + 64] for i in range(0, len(b64), 64)], lines[-1]])
    outcome, body = csr_request(claim, tampered + "\n")
    assert_rejected(outcome, body, 400, "InvalidRequestException")
    assert sim.certificates() == []
    still_serving(claim, tmp_path)


@pytest.mark.parametrize("payload, message", [
    (b"this is not json", "not valid JSON"),
    (b"{\"certificateSigningRequest\": ", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b"", "not valid JSON"),
    ({}, "certificateSigningRequest is required"),
    ({"certificateSigningRequest": 42}, "certificateSigningRequest is required"),
    ({"certificateSigningRequest": ""}, "certificateSigningRequest is required"),
    (b"{\"certificateSigningRequest\": \"\xff\xfe\"}", "not valid JSON"),
])
def test_malformed_csr_requests(sim, clients, tmp_path, payload, message):
    claim = clients.claim()
    outcome, body = claim.request(CSR_TOPIC, payload)
    assert_rejected(outcome, body, 400, "InvalidRequestException", message)
    still_serving(claim, tmp_path)


def test_oversized_request(sim, clients, tmp_path):
    claim = clients.claim()
    outcome, body = claim.request(CSR_TOPIC, {"certificateSigningRequest": "A" * (128 * 1024)})
    assert_rejected(outcome, body, 413, "RequestEntityTooLargeException", "131072")
    outcome, body = claim.request(register_topic(), b"{" + b" " * (200 * 1024) + b"}")
    assert_rejected(outcome, body, 413, "RequestEntityTooLargeException")
    still_serving(claim, tmp_path)


def test_create_keys_with_a_bad_payload(sim, clients):
    outcome, body = clients.claim().request(CREATE_TOPIC, b"nope")
    assert_rejected(outcome, body, 400, "InvalidRequestException", "not valid JSON")
    assert sim.certificates() == []


@pytest.mark.parametrize("body, code, message", [
    ({"parameters": {"SerialNumber": "X"}}, "InvalidCertificateOwnershipToken",
     "Certificate ownership token cannot be empty."),
    ({"certificateOwnershipToken": "", "parameters": {}}, "InvalidCertificateOwnershipToken",
     "Certificate ownership token cannot be empty."),
    ({"certificateOwnershipToken": None}, "InvalidCertificateOwnershipToken",
     "Certificate ownership token cannot be empty."),
    ({"certificateOwnershipToken": "eyJub3QiOiJpc3N1ZWQifQ=="}, "InvalidCertificateOwnershipToken",
     "invalid"),
    ({"certificateOwnershipToken": 7}, "InvalidRequestException", "must be a string"),
    ({"certificateOwnershipToken": "x", "parameters": {"SerialNumber": 5}},
     "InvalidRequestException", "parameters"),
    ({"certificateOwnershipToken": "x", "parameters": ["SerialNumber"]},
     "InvalidRequestException", "parameters"),
])
def test_bad_register_requests(sim, clients, tmp_path, body, code, message):
    claim = clients.claim()
    outcome, answer = claim.request(register_topic(), body)
    assert_rejected(outcome, answer, 400, code, message)
    if message == "Certificate ownership token cannot be empty.":
        assert answer["errorMessage"] == message
    still_serving(claim, tmp_path)


def test_unknown_template_is_404(sim, clients, tmp_path):
    claim = clients.claim()
    outcome, body = claim.request(register_topic("NoSuchTemplate"),
                                  {"certificateOwnershipToken": "x", "parameters": {}})
    assert_rejected(outcome, body, 404, "ResourceNotFoundException", "NoSuchTemplate")
    still_serving(claim, tmp_path)


def test_template_evaluation_error_is_400_with_the_engines_reason(sim, clients, tmp_path):
    claim = clients.claim()
    _, csr = make_csr(tmp_path)
    _, issued = csr_request(claim, csr)
    # SerialNumber has no default in the gateway template.
    outcome, body = register(claim, issued["certificateOwnershipToken"], {})
    assert_rejected(outcome, body, 400, "InvalidRequestException", "SerialNumber")
    assert sim.things() == {}
    assert sim.certificates(status="PENDING_ACTIVATION") != []
    # The same token still works once the parameters are right.
    outcome, body = register(claim, issued["certificateOwnershipToken"], {"SerialNumber": "S"})
    assert outcome == "accepted", body


def test_invalid_template_stops_the_simulator_at_start(tmp_path):
    """AWS checks a template when it is created; the simulator when it loads it."""
    sim = Simulator(str(tmp_path / "sim"), templates={"Bad": str(TEMPLATES / "bad-unknown-fn.json")})
    with pytest.raises(RuntimeError, match="Fn::If"):
        sim.start()
    sim.stop()


def test_rejections_are_counted(sim, clients, tmp_path):
    claim = clients.claim("counted")
    claim.request(CSR_TOPIC, b"x")
    claim.request(register_topic("Nope"), {})
    stats = sim.stats()
    assert stats["rejected"] == {"CreateCertificateFromCsr": 1, "RegisterThing": 1}
    assert stats["statusCodes"] == {"400": 1, "404": 1}
    assert stats["clients"]["counted"]["rejected"] == 2
    assert json.dumps(stats)
