"""Native journal logging: the records fleetprovd sends when its stderr is the journal.

sd-journal always sends to /run/systemd/journal/socket. Each daemon runs in a private mount
namespace where that path is this test's own datagram socket, with JOURNAL_STREAM set to
the device:inode of the daemon's stderr, as systemd does for a service. The records are
parsed from the native journal protocol and checked field by field.
"""

import array
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading

import pytest

import conftest
from conftest import Device, wait_for

ID_PROVISIONED = "bb0236d4b58441ad86388e68af923f8a"
ID_ALREADY_PROVISIONED = "d14fe98315df45a496e3192358dd45f9"
ID_REJECTED = "9b5f10f43fd84fe99e190d5db4afa3ab"
ID_RETRYING = "cdaa7ec6f53d42b99180c554913d219b"
ID_CONFIG_ERROR = "949f3f707a674b709db054e5fab98eb9"
EX_CONFIG = 78

# Runs inside "unshare --mount": put the fake /run/systemd (or /run) in place, then tell the
# daemon that its stderr is the journal, exactly as systemd would: "<st_dev>:<st_ino>" of
# the stream (here the pipe Device.run reads). JOURNAL_STREAM_OVERRIDE replaces the value.
NAMESPACE_SCRIPT = r"""
set -e
if [ -d /run/systemd ]; then
    mount --bind "$FAKE_RUN/systemd" /run/systemd
else
    mount --bind "$FAKE_RUN" /run
fi
JOURNAL_STREAM=${JOURNAL_STREAM_OVERRIDE:-$(stat -L -c %d:%i /proc/self/fd/2)}
export JOURNAL_STREAM
exec "$@"
"""
WRAPPER = ("unshare", "--mount", "--propagation", "private", "sh", "-c", NAMESPACE_SCRIPT,
           "fleetprovd-journal-test")
# Room for one datagram and for the descriptors sd-journal may pass instead (a memfd when
# a record is too large for a datagram).
RECV_SIZE = 1 << 20
RECV_FDS = 4


def parse_native(data):
    """The native protocol: KEY=VALUE\\n, or KEY\\n<le64 size><value>\\n when binary-safe."""
    fields = []
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = nl + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", data, nl + 1)
            start = nl + 1 + 8
            value = data[start:start + size]
            if len(value) != size or data[start + size:start + size + 1] != b"\n":
                raise ValueError(f"truncated binary field {key!r}")
            i = start + size + 1
        fields.append((key.decode(), value.decode(errors="replace")))
    return fields


class FakeJournal:
    """A datagram socket standing in for journald; collects records as lists of fields."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        journal_dir = os.path.join(run_dir, "systemd", "journal")
        os.makedirs(journal_dir)
        self.records = []
        self.errors = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(os.path.join(journal_dir, "socket"))
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _receive_one(self):
        data, ancdata, _, _ = self.sock.recvmsg(RECV_SIZE, socket.CMSG_SPACE(RECV_FDS * 4))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                for fd in fds:
                    with os.fdopen(fd, "rb") as f:
                        f.seek(0)
                        data += f.read()
        try:
            self.records.append(parse_native(data))
        except (ValueError, struct.error) as e:
            self.errors.append(f"{e}: {data[:200]!r}")

    def _run(self):
        while not self._stop.is_set():
            try:
                self._receive_one()
            except socket.timeout:
                continue
            except OSError:
                return

    def close(self):
        """Stop, after taking whatever is still queued."""
        self._stop.set()
        self._thread.join()
        self.sock.setblocking(False)
        while True:
            try:
                self._receive_one()
            except (BlockingIOError, OSError):
                break
        self.sock.close()

    def entries(self):
        """Each record as a dict; a field sent twice in one record is a failure."""
        out = []
        for fields in self.records:
            keys = [k for k, _ in fields]
            assert len(keys) == len(set(keys)), f"duplicate fields in {fields}"
            out.append(dict(fields))
        return out

    def with_id(self, message_id):
        return [e for e in self.entries() if e.get("MESSAGE_ID") == message_id]


@pytest.fixture
def fake_run():
    """A directory to appear as /run/systemd (or /run) in the daemon's mount namespace."""
    if os.geteuid() != 0:
        pytest.skip("a private mount namespace for the fake journal socket needs root")
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    # Short: the socket path must fit in sun_path (108 bytes).
    d = tempfile.mkdtemp(prefix="fpj-")
    os.makedirs(os.path.join(d, "systemd"))
    probe = subprocess.run([*WRAPPER, "true"], env={**os.environ, "FAKE_RUN": d},
                           capture_output=True, text=True)
    if probe.returncode != 0:
        shutil.rmtree(d)
        pytest.skip("cannot bind a fake journal socket in a private mount namespace: "
                    + probe.stderr.strip())
    yield d
    shutil.rmtree(d)


def run_with_journal(device, fake_run, env=None, **kwargs):
    """Device.run with the fake journal; returns (exit code, stderr, notify, journal)."""
    shutil.rmtree(os.path.join(fake_run, "systemd", "journal"), ignore_errors=True)
    journal = FakeJournal(fake_run)
    try:
        rc, log, notify = device.run(wrapper=WRAPPER, env={"FAKE_RUN": fake_run, **(env or {})},
                                     **kwargs)
    finally:
        journal.close()
    assert not journal.errors, journal.errors
    return rc, log, notify, journal


def assert_well_formed(journal):
    entries = journal.entries()
    assert entries, "no record reached the journal"
    for e in entries:
        assert e.get("SYSLOG_IDENTIFIER") == "fleetprovd", e
        assert e.get("PRIORITY") in {str(p) for p in range(8)}, e
        assert e.get("MESSAGE"), e
        # sd-journal's automatic location would name the logging module, never the caller.
        assert not e.get("CODE_FILE", "").endswith("log.c"), e
        if "ERRNO" in e:
            assert int(e["ERRNO"]) > 0, e


def the_only(records, what):
    assert len(records) == 1, f"{what}: {records}"
    return records[0]


def test_provisioned_then_already_provisioned(device, sim, fake_run):
    rc, log, notify, journal = run_with_journal(device, fake_run)
    assert rc == 0, log
    assert notify.ready
    assert log == "", "journal mode wrote to stderr"
    assert_well_formed(journal)
    debug = [e for e in journal.entries() if e["PRIORITY"] == "7"]
    assert debug, "--log-level debug sent no debug record"

    done = the_only(journal.with_id(ID_PROVISIONED), "Provisioned records")
    assert done["MESSAGE"].startswith("Provisioned as thing 'gw-GW-0001'"), done
    assert done["FLEETPROVD_THING_NAME"] == "gw-GW-0001"
    assert done["PRIORITY"] == "6"
    assert done["FLEETPROVD_STEP"] == "Done"
    assert "AWS_STATUS_CODE" not in done and "ERRNO" not in done
    certificate_id = json.loads((device.current / "identity.json").read_text())["certificateId"]
    assert certificate_id in done["MESSAGE"]

    rc, log, notify, journal = run_with_journal(device, fake_run)
    assert rc == 0, log
    assert notify.ready
    assert log == ""
    assert_well_formed(journal)
    assert journal.with_id(ID_PROVISIONED) == []
    again = the_only(journal.with_id(ID_ALREADY_PROVISIONED), "already provisioned records")
    assert again["FLEETPROVD_THING_NAME"] == "gw-GW-0001"
    assert again["PRIORITY"] == "6"
    assert certificate_id in again["MESSAGE"]


def test_throttled_request_is_rejected_then_retried(device, sim, fake_run):
    sim.set_faults(["reject:csr:1:429:ThrottlingException:Rate exceeded"])
    rc, log, notify, journal = run_with_journal(device, fake_run)
    assert rc == 0, log
    assert notify.ready
    assert log == ""
    assert_well_formed(journal)

    rejected = the_only(journal.with_id(ID_REJECTED), "rejections")
    assert rejected["AWS_STATUS_CODE"] == "429"
    assert rejected["AWS_ERROR_CODE"] == "ThrottlingException"
    assert rejected["FLEETPROVD_STEP"] == "CreateCertificateFromCsr"
    assert rejected["FLEETPROVD_ATTEMPT"] == "1"
    assert "Rate exceeded" in rejected["MESSAGE"]
    # Transient: a warning, not an error.
    assert rejected["PRIORITY"] == "4"

    retry = the_only(journal.with_id(ID_RETRYING), "retries")
    assert retry["FLEETPROVD_STEP"] == "CreateCertificateFromCsr"
    assert retry["FLEETPROVD_ATTEMPT"] == "1"
    assert retry["MESSAGE"].startswith("Retrying in "), retry
    entries = journal.entries()
    assert entries.index(rejected) < entries.index(retry)
    # The retry succeeded: the second attempt ends provisioned.
    assert the_only(journal.with_id(ID_PROVISIONED), "Provisioned records")


def test_config_error(device, fake_run):
    text = device.config_path.read_text().replace(f"port = {device.sim.port};", 'port = "8883";')
    device.write_config(text)
    rc, log, notify, journal = run_with_journal(device, fake_run)
    assert rc == EX_CONFIG, log
    assert not notify.ready
    assert log == ""
    assert_well_formed(journal)
    error = the_only(journal.with_id(ID_CONFIG_ERROR), "configuration errors")
    assert error["PRIORITY"] == "3"
    assert str(device.config_path) in error["MESSAGE"] and "port" in error["MESSAGE"]
    assert int(error["ERRNO"]) > 0


def test_identifier_does_not_depend_on_argv0(device, fake_run, tmp_path, monkeypatch):
    """journalctl -t fleetprovd finds the records whatever name the binary was started by."""
    link = tmp_path / "gateway-setup"
    link.symlink_to(os.path.abspath(conftest.FLEETPROVD))
    monkeypatch.setattr(conftest, "FLEETPROVD", str(link))
    device.write_config("port = ;\n")
    rc, log, _, journal = run_with_journal(device, fake_run)
    assert rc == EX_CONFIG, log
    assert_well_formed(journal)


def pem_body_lines(path):
    return [line for line in open(path).read().splitlines()
            if line and not line.startswith("-----")]


def test_no_secret_reaches_the_journal(tmp_path, sim, fake_run):
    """Hold RegisterThing until the ownership token is on disk, read it, then finish."""
    sim.set_faults(["drop:register"])
    dev = Device(tmp_path / "dev", sim, serial="GW-0002")
    result = {}
    runner = threading.Thread(target=lambda: result.update(
        zip(("rc", "log", "notify", "journal"), run_with_journal(dev, fake_run))))
    runner.start()
    try:
        pending = dev.state_dir / "pending" / "certificate.json"
        assert wait_for(pending.exists, timeout=30), "no certificate was stored"
        token = json.loads(pending.read_text())["certificateOwnershipToken"]
        assert token
    finally:
        sim.clear_faults()
        runner.join()
    assert result["rc"] == 0, result["log"]
    journal = result["journal"]
    assert_well_formed(journal)
    assert journal.with_id(ID_PROVISIONED)

    secrets = [token, "PRIVATE KEY"]
    secrets += pem_body_lines(dev.current / "device.key")
    secrets += pem_body_lines(sim.claim_key)
    for entry in journal.entries():
        for key, value in entry.items():
            for secret in secrets:
                assert secret not in value, f"{key}= carries a secret"


@pytest.mark.parametrize("socket_state", ["missing", "refusing"])
def test_unreachable_journal_falls_back_to_stderr(device, fake_run, socket_state):
    """JOURNAL_STREAM matches but journald does not listen: the records go to stderr."""
    device.write_config("port = ;\n")
    journal_dir = os.path.join(fake_run, "systemd", "journal")
    shutil.rmtree(journal_dir, ignore_errors=True)
    if socket_state == "refusing":
        # A socket file nobody receives on: sending is refused (ECONNREFUSED).
        os.makedirs(journal_dir)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(os.path.join(journal_dir, "socket"))
    rc, log, _ = device.run(wrapper=WRAPPER, env={"FAKE_RUN": fake_run})
    assert rc == EX_CONFIG, log
    assert f"<3>{device.config_path}:1" in log, log


def test_other_stderr_is_not_the_journal(device, fake_run):
    """JOURNAL_STREAM naming another stream (stderr redirected after systemd set it)."""
    device.write_config("port = ;\n")
    rc, log, _, journal = run_with_journal(
        device, fake_run, env={"JOURNAL_STREAM_OVERRIDE": "0:1"})
    assert rc == EX_CONFIG, log
    assert f"<3>{device.config_path}:1" in log, log
    assert journal.records == []


def test_receiver_reads_binary_fields_and_descriptors(tmp_path):
    """The harness itself: both encodings of the native protocol, inline and in a memfd."""
    run_dir = tempfile.mkdtemp(prefix="fpj-")
    try:
        journal = FakeJournal(run_dir)
        value = b"two\nlines"
        record = b"MESSAGE\n" + struct.pack("<Q", len(value)) + value + b"\nPRIORITY=6\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(os.path.join(run_dir, "systemd", "journal", "socket"))
            s.send(record)
            fd = os.memfd_create("journal-test")
            os.write(fd, b"MESSAGE=in a memfd\n")
            s.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            os.close(fd)
        assert wait_for(lambda: len(journal.records) == 2, timeout=5)
        journal.close()
        assert journal.entries() == [{"MESSAGE": "two\nlines", "PRIORITY": "6"},
                                     {"MESSAGE": "in a memfd"}]
        assert not journal.errors
    finally:
        shutil.rmtree(run_dir)
