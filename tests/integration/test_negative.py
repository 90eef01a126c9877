"""What goes wrong in the field, each with its expected message and exit code or retry."""

import os
import stat

from conftest import Device, openssl

EX_CONFIG = 78
ONE_ATTEMPT = ("timeouts = { connect = 5; response = 5; };\n"
               "retry = { base = 1; cap = 1; permanent = 1; max_attempts = 1; };\n")


def test_bad_config_names_file_line_and_key(device):
    text = device.config_path.read_text().replace(f"port = {device.sim.port};", 'port = "8883";')
    device.write_config(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if l.startswith("port"))

    rc, log, notify = device.run()
    assert rc == EX_CONFIG, log
    assert f"{device.config_path}:{line}" in log
    assert "port" in log
    assert not notify.ready

    rc, _, _ = device.run(args=("--check-config",))
    assert rc == EX_CONFIG


def test_check_config_accepts_good_file(device):
    rc, log, _ = device.run(args=("--check-config",))
    assert rc == 0, log
    assert not device.state_dir.exists() or not (device.state_dir / "pending").exists()


def test_unreadable_claim_key_is_a_config_error(tmp_path, sim):
    missing = tmp_path / "no-such-claim.key"
    dev = Device(tmp_path / "dev", sim, claim_private_key=str(missing))
    rc, log, notify = dev.run()
    assert rc == EX_CONFIG, log
    assert str(missing) in log
    assert not notify.ready
    assert not dev.current.exists()


def test_wrong_server_ca_is_refused(tmp_path, sim):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(tmp_path / "other.key"), "-out", str(tmp_path / "other-ca.pem"),
            "-subj", "/CN=Not The Server CA", "-days", "2")
    dev = Device(tmp_path / "dev", sim, ca_file=str(tmp_path / "other-ca.pem"), extra=ONE_ATTEMPT)
    rc, log, notify = dev.run()
    assert rc == 1, log
    assert "ca_file" in log
    assert not notify.ready
    assert sim.things() == {}


def test_unregistered_claim_is_refused_at_connect(tmp_path, sim):
    """A certificate from the right CA that AWS does not know: CONNACK refuses it."""
    ca_key = os.path.join(os.path.dirname(sim.ca_file), "ca.key")
    key, csr, crt = (str(tmp_path / n) for n in ("rogue.key", "rogue.csr", "rogue.crt"))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr, "-subj", "/CN=rogue")
    openssl("x509", "-req", "-in", csr, "-CA", sim.ca_file, "-CAkey", ca_key,
            "-CAcreateserial", "-out", crt, "-days", "2")
    dev = Device(tmp_path / "dev", sim, claim_certificate=crt, claim_private_key=key,
                 extra=ONE_ATTEMPT)
    rc, log, notify = dev.run()
    assert rc == 1, log
    assert "not authori" in log.lower()
    assert not notify.ready


def test_weak_csr_is_rejected_with_400(tmp_path, sim):
    key, csr = str(tmp_path / "weak.key"), str(tmp_path / "weak.csr")
    openssl("req", "-newkey", "rsa:1024", "-nodes", "-keyout", key, "-out", csr,
            "-subj", "/CN=weak")
    dev = Device(tmp_path / "dev", sim, extra=ONE_ATTEMPT +
                 f'key = {{ file = "{key}"; csr_file = "{csr}"; }};\n')
    rc, log, notify = dev.run()
    assert rc == 1, log
    assert "400" in log and "CreateCertificateFromCsr" in log
    assert not notify.ready
    assert sim.certificates(status="ACTIVE") == []


def test_hook_denial_is_a_403(tmp_path):
    from conftest import GATEWAY_TEMPLATE, Simulator
    hook = tmp_path / "deny-hook"
    hook.write_text("#!/bin/sh\ncat >/dev/null\necho '{\"allowProvisioning\": false}'\n")
    hook.chmod(stat.S_IRWXU)
    with Simulator(str(tmp_path / "sim"), templates={"GatewayTemplate": str(GATEWAY_TEMPLATE)},
                   hooks={"GatewayTemplate": str(hook)}) as sim:
        dev = Device(tmp_path / "dev", sim, extra=ONE_ATTEMPT)
        rc, log, notify = dev.run()
        assert rc == 1, log
        assert "403" in log and "RegisterThing" in log
        assert not notify.ready
        assert sim.things() == {}
        # The certificate was issued but never activated.
        assert sim.certificates(status="ACTIVE") == []


def test_throttling_then_success(device, sim):
    sim.set_faults(["reject:csr:2:429:ThrottlingException:Rate exceeded"])
    rc, log, notify = device.run()
    assert rc == 0, log
    assert notify.ready
    assert log.count("429") >= 2
    assert list(sim.things()) == ["gw-GW-0001"]
    assert len(sim.certificates(status="ACTIVE")) == 1
