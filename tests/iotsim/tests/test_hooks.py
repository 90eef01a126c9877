"""Pre-provisioning hooks: the input they get, overrides, every way of saying no."""

import hashlib
import json
import ssl
import time

import pytest

from conftest import (GATEWAY, Clients, Simulator, assert_rejected, csr_request, make_csr,
                      register, write_hook)


def run_with_hook(tmp_path, hook, serial="GW-0001", params=None):
    """One CSR + RegisterThing against a simulator with hook; returns (sim, outcome, body)."""
    sim = Simulator(str(tmp_path / "sim"), templates={"GatewayTemplate": GATEWAY},
                    hooks={"GatewayTemplate": hook})
    sim.start()
    clients = Clients(sim)
    try:
        claim = clients.claim("gw-" + serial)
        _, csr = make_csr(tmp_path)
        _, issued = csr_request(claim, csr)
        outcome, body = register(claim, issued["certificateOwnershipToken"],
                                 params or {"SerialNumber": serial}, timeout=10)
        return sim, issued, outcome, body
    finally:
        clients.close()
        sim.stop()


def test_hook_gets_the_aws_input_and_its_overrides_win(tmp_path):
    seen = tmp_path / "hook-input.json"
    hook = write_hook(tmp_path, "allow", f"cat > {seen}\n"
                      "echo '{\"allowProvisioning\": true, \"parameterOverrides\": "
                      "{\"SerialNumber\": \"GW-OVR\", \"DeviceLocation\": \"site-7\"}}'\n")
    sim, issued, outcome, body = run_with_hook(tmp_path, hook, params={"SerialNumber": "GW-0001",
                                                                       "DeviceLocation": "lab"})
    assert outcome == "accepted", body
    assert body["thingName"] == "gw-GW-OVR"
    assert body["deviceConfiguration"]["location"] == "site-7"
    assert sim.things()["gw-GW-OVR"]["attributes"] == {"location": "site-7"}
    assert [c["status"] for c in sim.certificates()] == ["ACTIVE"]

    given = json.loads(seen.read_text())
    claim_der = ssl.PEM_cert_to_DER_cert(open(sim.claim_cert).read())
    assert given["claimCertificateId"] == hashlib.sha256(claim_der).hexdigest()
    assert given["certificateId"] == issued["certificateId"]
    assert given["certificatePem"] == issued["certificatePem"]
    assert given["templateArn"].endswith(":provisioningtemplate/GatewayTemplate")
    assert given["clientId"] == "gw-GW-0001"
    assert given["parameters"] == {"SerialNumber": "GW-0001", "DeviceLocation": "lab"}


@pytest.mark.parametrize("script, reason", [
    ("cat >/dev/null; echo '{\"allowProvisioning\": false}'", "allowProvisioning is false"),
    ("cat >/dev/null; kill -SEGV $$", "signal 11"),
    ("cat >/dev/null; echo '{\"allowProvisioning\": true}'; exit 3", "exit status 3"),
    ("echo 'sure, go ahead'", "invalid response"),
    ("echo '{\"allowProvisioning\": \"yes\"}'", "invalid response"),
    ("echo '{\"allowProvisioning\": true, \"parameterOverrides\": {\"a\": 1}}'",
     "invalid response"),
    ("head -c 70000 /dev/zero | tr '\\\\0' x", "more than"),
])
def test_hook_denials_are_403(tmp_path, script, reason):
    sim, _, outcome, body = run_with_hook(tmp_path, write_hook(tmp_path, "hook", script + "\n"))
    assert_rejected(outcome, body, 403, "AccessDeniedException", reason)
    assert sim.things() == {}
    assert sim.certificates(status="ACTIVE") == []
    assert len(sim.certificates(status="PENDING_ACTIVATION")) == 1


def test_missing_hook_executable_is_403(tmp_path):
    _, _, outcome, body = run_with_hook(tmp_path, str(tmp_path / "no-such-hook"))
    assert_rejected(outcome, body, 403, "AccessDeniedException", "could not be started")


def test_slow_hook_times_out_after_5s_without_blocking_the_broker(tmp_path):
    hook = write_hook(tmp_path, "slow", "cat >/dev/null\nsleep 30\necho '{\"allowProvisioning\": true}'\n")
    with Simulator(str(tmp_path / "sim"), templates={"GatewayTemplate": GATEWAY},
                   hooks={"GatewayTemplate": hook}) as sim:
        clients = Clients(sim)
        try:
            slow, other = clients.claim("gw-slow"), clients.claim("gw-other")
            _, csr = make_csr(tmp_path)
            _, issued = csr_request(slow, csr)
            for t in ("/accepted", "/rejected"):
                slow.subscribe("$aws/provisioning-templates/GatewayTemplate/provision/json" + t)
            started = time.monotonic()
            slow.publish("$aws/provisioning-templates/GatewayTemplate/provision/json",
                         {"certificateOwnershipToken": issued["certificateOwnershipToken"],
                          "parameters": {"SerialNumber": "SLOW"}})
            # Meanwhile the broker answers others at once.
            outcome, _ = csr_request(other, csr)
            assert outcome == "accepted"
            assert time.monotonic() - started < 1.0
            topic, payload = slow.receive(10)
            elapsed = time.monotonic() - started
        finally:
            clients.close()
    assert topic.endswith("/rejected")
    assert_rejected("rejected", json.loads(payload), 403, "AccessDeniedException", "timed out")
    assert 4.9 <= elapsed < 6.5, elapsed
