"""The CBOR variant of the API: same operations, payloads as CBOR maps (spec §1.1)."""

import struct

import pytest

from conftest import assert_rejected, make_csr

CSR = "$aws/certificates/create-from-csr/cbor"
REGISTER = "$aws/provisioning-templates/GatewayTemplate/provision/cbor"


def head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for info, fmt in ((24, "!B"), (25, "!H"), (26, "!I"), (27, "!Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | info]) + struct.pack(fmt, n)


def encode(v):
    if v is None:
        return b"\xf6"
    if isinstance(v, bool):
        return b"\xf5" if v else b"\xf4"
    if isinstance(v, int):
        return head(0, v) if v >= 0 else head(1, -1 - v)
    if isinstance(v, str):
        b = v.encode()
        return head(3, len(b)) + b
    if isinstance(v, list):
        return head(4, len(v)) + b"".join(encode(x) for x in v)
    if isinstance(v, dict):
        return head(5, len(v)) + b"".join(encode(k) + encode(x) for k, x in v.items())
    raise TypeError(v)


def decode(data):
    value, rest = _decode(data)
    assert rest == b"", "trailing bytes"
    return value


def _decode(data):
    major, info = data[0] >> 5, data[0] & 0x1F
    data = data[1:]
    if major == 7:
        return {20: False, 21: True, 22: None}[info], data
    if info < 24:
        n = info
    else:
        size = 1 << (info - 24)
        n, data = int.from_bytes(data[:size], "big"), data[size:]
    if major == 0:
        return n, data
    if major == 1:
        return -1 - n, data
    if major == 3:
        return data[:n].decode(), data[n:]
    if major == 4:
        out = []
        for _ in range(n):
            item, data = _decode(data)
            out.append(item)
        return out, data
    if major == 5:
        out = {}
        for _ in range(n):
            k, data = _decode(data)
            out[k], data = _decode(data)
        return out, data
    raise ValueError(f"major type {major}")


def cbor_request(client, topic, value):
    client.subscribe(topic + "/accepted", topic + "/rejected")
    client.publish(topic, encode(value) if not isinstance(value, bytes) else value)
    rtopic, payload = client.receive()
    return rtopic[len(topic) + 1:], decode(payload)


def test_cbor_provisioning(sim, clients, tmp_path):
    claim = clients.claim()
    _, csr = make_csr(tmp_path)
    outcome, issued = cbor_request(claim, CSR, {"certificateSigningRequest": csr})
    assert outcome == "accepted", issued
    assert len(issued["certificateId"]) == 64
    outcome, body = cbor_request(claim, REGISTER, {
        "certificateOwnershipToken": issued["certificateOwnershipToken"],
        "parameters": {"SerialNumber": "C1"}})
    assert outcome == "accepted", body
    assert body["thingName"] == "gw-C1"
    assert body["deviceConfiguration"]["telemetryTopic"] == "fleet/gw-C1/telemetry"
    assert [c["status"] for c in sim.certificates()] == ["ACTIVE"]


@pytest.mark.parametrize("payload, message", [
    (b"\xff\x00", "not valid CBOR"),
    (b"\xa1\x63abc", "not valid CBOR"),                 # a map missing its value
    (encode(["not", "a", "map"]), "must be a CBOR map"),
    (encode({"certificateSigningRequest": 7}), "certificateSigningRequest"),
    (encode({"certificateSigningRequest": "x"}) + b"\x00", "not valid CBOR"),  # trailing byte
    (b"\x81" * 40 + b"\x00", "not valid CBOR"),         # nested too deep
])
def test_bad_cbor_is_rejected_in_cbor(sim, clients, payload, message):
    outcome, body = cbor_request(clients.claim(), CSR, payload)
    assert_rejected(outcome, body, 400, "InvalidRequestException", message)


def test_empty_token_in_cbor(sim, clients):
    outcome, body = cbor_request(clients.claim(), REGISTER, {"certificateOwnershipToken": ""})
    assert_rejected(outcome, body, 400, "InvalidCertificateOwnershipToken",
                    "Certificate ownership token cannot be empty.")
