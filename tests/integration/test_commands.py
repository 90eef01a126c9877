"""`fleetprovd check` and `fleetprovd status` against the simulator, good and broken setups."""

import json
import subprocess

from conftest import FLEETPROVD, Device, openssl, wait_for


def run(device, *args):
    proc = subprocess.run([FLEETPROVD, "--config", str(device.config_path), *args],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def results(device, *args):
    rc, out, err = run(device, "check", "--json", *args)
    entries = json.loads(out)
    return rc, {e["check"]: e for e in entries}, err


def test_check_passes_on_a_good_setup(device):
    rc, checks, err = results(device)
    assert rc == 0, (checks, err)
    for name in ("configuration", "claim certificate", "claim key", "CA bundle", "clock",
                 "parameters", "client id", "TCP", "TLS", "MQTT"):
        assert checks[name]["result"] == "ok", checks[name]
    assert checks["client id"]["message"] == "'gw-GW-0001'"

    rc, out, _ = run(device, "check")
    assert rc == 0
    assert out.strip().endswith("0 failed, 1 warning") or "0 failed" in out.splitlines()[-1]


def test_check_names_an_untrusted_server(tmp_path, sim):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(tmp_path / "o.key"), "-out", str(tmp_path / "o.pem"),
            "-subj", "/CN=Other", "-days", "2")
    dev = Device(tmp_path / "dev", sim, ca_file=str(tmp_path / "o.pem"))
    rc, checks, _ = results(dev)
    assert rc == 1
    assert checks["TLS"]["result"] == "fail"
    assert "not trusted" in checks["TLS"]["message"]
    assert "ca_file" in checks["TLS"]["fix"]
    assert "MQTT" not in checks  # layers above a broken one are not tried


def test_check_finds_a_mismatched_claim_key(tmp_path, sim):
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", str(tmp_path / "other.key"))
    dev = Device(tmp_path / "dev", sim, claim_private_key=str(tmp_path / "other.key"))
    rc, checks, _ = results(dev)
    assert rc == 1
    assert checks["claim key"]["result"] == "fail"
    assert "does not belong" in checks["claim key"]["message"]


def test_check_reports_an_unresolvable_endpoint(tmp_path, sim):
    dev = Device(tmp_path / "dev", sim, endpoint="no-such-endpoint.invalid")
    rc, checks, _ = results(dev)
    assert rc == 1
    assert checks["DNS"]["result"] == "fail"
    assert "no-such-endpoint.invalid" in checks["DNS"]["message"]


def test_status_before_during_and_after(tmp_path, sim):
    dev = Device(tmp_path / "dev", sim, serial="GW-0042")
    rc, out, _ = run(dev, "status", "--json")
    assert rc == 0
    assert json.loads(out)["identity"]["state"] == "missing"

    sim.set_faults(["drop:register"])
    proc = dev.start()
    try:
        assert wait_for(lambda: (dev.state_dir / "pending" / "certificate.json").exists(), 30)
        rc, out, _ = run(dev, "status", "--json")
        pending = json.loads(out)["pending"]
        assert pending["step"].startswith("certificate issued")
        assert len(pending["certificateId"]) == 64
        token = json.loads((dev.state_dir / "pending" / "certificate.json").read_text())[
            "certificateOwnershipToken"]
        assert token not in out
        sim.clear_faults()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        dev.log_file.close()

    rc, out, _ = run(dev, "status", "--json")
    status = json.loads(out)
    assert status["identity"]["state"] == "valid"
    assert status["identity"]["thingName"] == "gw-GW-0042"
    assert status["pending"] is None
    rc, text, _ = run(dev, "status")
    assert "gw-GW-0042" in text and "Pending attempt: none" in text
