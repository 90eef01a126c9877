"""The local AWS IoT Core simulator: mosquitto with the iotsim plugin, on loopback, mutual TLS.

Used by the simulator's own tests, by fleetprovd's integration tests and by the `iotsim`
launcher (the same code makes the PKI and the broker configuration for both).

    from iotsimlib import Simulator, free_port
    with Simulator(workdir, templates={"GatewayTemplate": "templates/gateway.json"}) as sim:
        ... sim.host, sim.port, sim.ca_file, sim.claim_cert, sim.claim_key
        ... sim.things(), sim.certificates(status="ACTIVE"), sim.stats()
        ... sim.set_faults(["throttle:register:5"]); sim.clear_faults()

Only the standard library and the `openssl` command are needed.
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

IOTSIM_DIR = pathlib.Path(__file__).resolve().parent
DEFAULT_TEMPLATES = {"GatewayTemplate": str(IOTSIM_DIR / "templates" / "gateway.json")}
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
CLAIM_SUBJECT = "/CN=iotsim fleet provisioning claim"
CA_SUBJECT = "/CN=iotsim local CA"
VALIDITY_DAYS = "3650"
START_TIMEOUT = 15.0
VALGRIND_START_TIMEOUT = 90.0
FAULTS_APPLY_TIMEOUT = 5.0
REGISTRY_KINDS = ("things", "certificates", "policies")


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_plugin():
    """$IOTSIM_PLUGIN, else the newest iotsim.so in a build directory of this checkout."""
    env = os.environ.get("IOTSIM_PLUGIN")
    if env:
        return env
    root = IOTSIM_DIR.parents[1]
    built = sorted(root.glob("build*/tests/iotsim/iotsim.so"), key=lambda p: p.stat().st_mtime)
    if not built:
        raise RuntimeError("iotsim.so not found: build it (meson/ninja) or set IOTSIM_PLUGIN")
    return str(built[-1])


def _openssl(*args, cwd):
    # Keys are born private: the umask applies when openssl creates them.
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          preexec_fn=lambda: os.umask(0o077))
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


def _issue(d, name, subject, extensions):
    """An EC P-256 key name.key and a certificate for it signed by the CA in d."""
    crt = "claim.crt" if name == "claim" else f"{name}.pem"
    args = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", crt, "-subj", subject, "-days", VALIDITY_DAYS,
            "-CA", "ca.pem", "-CAkey", "ca.key"]
    for ext in extensions:
        args += ["-addext", ext]
    _openssl(*args, cwd=d)


def ensure_pki(d):
    """Create in d, where missing: the CA, the server certificate and the claim."""
    d = pathlib.Path(d)
    if not (d / "ca.pem").exists() or not (d / "ca.key").exists():
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-subj", CA_SUBJECT,
                 "-days", VALIDITY_DAYS,
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
        for stale in ("server.pem", "claim.crt"):
            (d / stale).unlink(missing_ok=True)
    if not (d / "server.pem").exists():
        _issue(d, "server", "/CN=localhost",
               ["subjectAltName=DNS:localhost,IP:127.0.0.1", "extendedKeyUsage=serverAuth",
                "basicConstraints=critical,CA:FALSE"])
    if not (d / "claim.crt").exists():
        _issue(d, "claim", CLAIM_SUBJECT,
               ["extendedKeyUsage=clientAuth", "basicConstraints=critical,CA:FALSE"])


def _write_atomic(path, text):
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_faults(d, faults, generation):
    """The fault control file the plugin re-reads when it changes."""
    lines = [f"# generation {generation}", *faults]
    _write_atomic(pathlib.Path(d) / "faults", "\n".join(lines) + "\n")


def _materialise_templates(d, templates):
    """Template paths as absolute strings; dicts are written to d/templates/NAME.json."""
    out = {}
    for name, tmpl in templates.items():
        if isinstance(tmpl, dict):
            tdir = pathlib.Path(d) / "templates"
            tdir.mkdir(exist_ok=True)
            path = tdir / f"{name}.json"
            path.write_text(json.dumps(tmpl, indent=2))
            out[name] = str(path)
        else:
            out[name] = str(pathlib.Path(tmpl).resolve())
    return out


def write_config(d, port, plugin, templates, hooks=None, token_ttl=None, claim_templates=None):
    """d/mosquitto.conf: TLS listener on 127.0.0.1:port, client certificates, the plugin."""
    d = pathlib.Path(d).resolve()
    lines = [
        "# The local AWS IoT Core simulator (tests/iotsim). Generated; edits are overwritten.",
        "per_listener_settings false",
        "allow_anonymous false",
        "persistence false",
        "log_dest stderr",
        "log_type error", "log_type warning", "log_type notice", "log_type information",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "connection_messages true",
        # Answers are small; Nagle would add tens of milliseconds to every exchange.
        "set_tcp_nodelay true",
    ]
    if os.geteuid() == 0:
        # Root would otherwise drop to the 'mosquitto' user, which cannot read d.
        lines.append("user root")
    lines += [f"plugin {plugin}", f"plugin_opt_dir {d}", f"plugin_opt_claim_cert {d / 'claim.crt'}"]
    for name, path in templates.items():
        lines.append(f"plugin_opt_template_{name} {path}")
    for name, exe in (hooks or {}).items():
        lines.append(f"plugin_opt_hook_{name} {pathlib.Path(exe).resolve()}")
    if token_ttl is not None:
        lines.append(f"plugin_opt_token_ttl {int(token_ttl)}")
    if claim_templates is not None:
        lines.append(f"plugin_opt_claim_templates {','.join(claim_templates)}")
    lines += [
        f"listener {port} 127.0.0.1",
        f"cafile {d / 'ca.pem'}",
        f"certfile {d / 'server.pem'}",
        f"keyfile {d / 'server.key'}",
        "require_certificate true",
        "tls_version tlsv1.2",
    ]
    conf = d / "mosquitto.conf"
    _write_atomic(conf, "\n".join(lines) + "\n")
    return conf


def prepare(d, port, templates=None, faults=(), hooks=None, token_ttl=None, plugin=None,
            claim_templates=None):
    """Everything the broker needs in d; returns the path of mosquitto.conf."""
    d = pathlib.Path(d).resolve()
    d.mkdir(parents=True, exist_ok=True)
    ensure_pki(d)
    write_faults(d, list(faults), 0)
    templates = _materialise_templates(d, DEFAULT_TEMPLATES if templates is None else templates)
    return write_config(d, port, plugin or default_plugin(), templates, hooks, token_ttl,
                        claim_templates)


def _port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Simulator:
    """One simulator instance in workdir (created if needed; PKI and registry are kept)."""

    def __init__(self, workdir, port=None, templates=None, faults=(), hooks=None, token_ttl=None,
                 valgrind=False, plugin=None, claim_templates=None):
        self.dir = pathlib.Path(workdir).resolve()
        self.port = port or free_port()
        self.host = "localhost"
        self.templates = DEFAULT_TEMPLATES if templates is None else dict(templates)
        self.faults = list(faults)
        self.hooks = dict(hooks or {})
        self.token_ttl = token_ttl
        self.valgrind = valgrind
        self.plugin = plugin
        self.claim_templates = claim_templates
        self.ca_file = str(self.dir / "ca.pem")
        self.claim_cert = str(self.dir / "claim.crt")
        self.claim_key = str(self.dir / "claim.key")
        self.log_path = self.dir / "broker.log"
        self.valgrind_log = self.dir / "valgrind.log"
        self.proc = None
        self._generation = 0

    def _command(self, conf):
        cmd = [MOSQUITTO, "-c", str(conf)]
        if not self.valgrind:
            return cmd
        return ["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
                "--show-leak-kinds=definite,indirect",
                f"--suppressions={IOTSIM_DIR / 'valgrind.supp'}",
                f"--log-file={self.valgrind_log}", *cmd]

    def start(self):
        conf = prepare(self.dir, self.port, self.templates, self.faults, self.hooks,
                       self.token_ttl, self.plugin, self.claim_templates)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self._command(conf), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + (VALGRIND_START_TIMEOUT if self.valgrind else START_TIMEOUT)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the simulator exited with {self.proc.returncode}:\n"
                                   + self.log_text())
            if _port_open(self.port):
                return self
            time.sleep(0.02)
        self._kill()
        raise RuntimeError("the simulator did not open its port in time:\n" + self.log_text())

    def _kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        """Stop the broker; with valgrind, raise if it reported errors or leaks."""
        if not self.proc:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=VALGRIND_START_TIMEOUT if self.valgrind else 10)
            except subprocess.TimeoutExpired:
                self._kill()
        self.proc = None
        if self.valgrind:
            self._check_valgrind()

    def _check_valgrind(self):
        text = self.valgrind_log.read_text(errors="replace")
        summary = [l for l in text.splitlines() if "ERROR SUMMARY:" in l]
        if not summary or " 0 errors" not in summary[-1]:
            raise RuntimeError("valgrind reported errors or leaks:\n" + text)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _read_json(self, path, default):
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return default

    def registry(self):
        """{"things": {name: rec}, "certificates": {id: rec}, "policies": {name: rec}}."""
        out = {}
        for kind in REGISTRY_KINDS:
            records = {}
            for p in sorted((self.dir / "registry" / kind).glob("*.json")):
                rec = self._read_json(p, None)
                if rec is not None:
                    records[p.stem] = rec
            out[kind] = records
        return out

    def things(self):
        return self.registry()["things"]

    def certificates(self, status=None):
        certs = self.registry()["certificates"].values()
        return [c for c in certs if status is None or c.get("status") == status]

    def policies(self):
        return self.registry()["policies"]

    def stats(self):
        return self._read_json(self.dir / "registry" / "stats.json", {})

    def set_faults(self, faults):
        """Replace the faults in force; returns once the plugin has taken them."""
        self._generation += 1
        self.faults = list(faults)
        write_faults(self.dir, self.faults, self._generation)
        state_path = self.dir / "registry" / "faults.json"
        deadline = time.monotonic() + FAULTS_APPLY_TIMEOUT
        while time.monotonic() < deadline:
            state = self._read_json(state_path, {})
            if state.get("generation") == self._generation:
                if state.get("error"):
                    raise ValueError(state["error"])
                return
            time.sleep(0.01)
        raise RuntimeError("the simulator did not pick up the new faults:\n" + self.log_text())

    def clear_faults(self):
        self.set_faults([])


def _pairs(values, what):
    out = {}
    for v in values or []:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"iotsim: --{what} wants NAME=PATH, got '{v}'")
        out[name] = path
    return out


def main(argv=None):
    """The `iotsim` launcher: prepare DIR and run mosquitto in the foreground."""
    ap = argparse.ArgumentParser(prog="iotsim", description=main.__doc__)
    ap.add_argument("--dir", required=True, help="work directory (PKI, registry, config)")
    ap.add_argument("--port", required=True, type=int, help="TLS port on 127.0.0.1")
    ap.add_argument("--template", action="append", metavar="NAME=FILE",
                    help="provisioning template (default: GatewayTemplate=templates/gateway.json)")
    ap.add_argument("--fault", action="append", default=[], metavar="SPEC",
                    help="fault rule in force at start (see README.md)")
    ap.add_argument("--hook", action="append", metavar="NAME=EXECUTABLE",
                    help="pre-provisioning hook for template NAME")
    ap.add_argument("--token-ttl", type=int, metavar="SECONDS",
                    help="ownership token lifetime (default 3600)")
    ap.add_argument("--plugin", help="iotsim.so (default: $IOTSIM_PLUGIN)")
    ap.add_argument("--claim-templates", metavar="NAME,...",
                    help="templates the claim's policy names (default: any)")
    args = ap.parse_args(argv)
    templates = _pairs(args.template, "template") if args.template else None
    claim_templates = args.claim_templates.split(",") if args.claim_templates else None
    try:
        conf = prepare(args.dir, args.port, templates, args.fault, _pairs(args.hook, "hook"),
                       args.token_ttl, args.plugin, claim_templates)
    except RuntimeError as e:
        raise SystemExit(f"iotsim: {e}")
    d = pathlib.Path(args.dir).resolve()
    print(f"iotsim: CA {d / 'ca.pem'}, claim {d / 'claim.crt'} + {d / 'claim.key'}, "
          f"registry {d / 'registry'}, TLS on localhost:{args.port}", file=sys.stderr, flush=True)
    os.execvp(MOSQUITTO, [MOSQUITTO, "-c", str(conf)])
