#!/usr/bin/python3
"""Check that the documentation covers the interface.

  test-docs.py keys CONF_MAN_SCD CONF_FILE
      Every configuration setting of fleetprovd is a heading in fleetprovd.conf(5), with
      its type, default and range, and appears (possibly commented out) in the shipped
      conf/fleetprovd.conf, inside the right group. Headings in the page that are not
      settings fail too, so a renamed or invented key is caught.

  test-docs.py options DAEMON_MAN_SCD DAEMON
      Every option and command that "fleetprovd --help" prints is documented in
      fleetprovd(8), and every option documented there is in --help. Exit 77 (skip)
      when the daemon has not been built.
"""

import os
import re
import subprocess
import sys

# The settings, fixed by the configuration contract (include/config.h): key, then words
# the heading in fleetprovd.conf(5) must contain (type, default, range).
SETTINGS = [
    ("endpoint", ["string", "required"]),
    ("port", ["integer", "8883", "1 to 65535"]),
    ("ca_file", ["string", "/etc/fleetprovd/AmazonRootCA1.pem"]),
    ("keepalive", ["integer", "60", "30 to 1200"]),
    ("timeouts.connect", ["integer", "30", "1 to 600"]),
    ("timeouts.response", ["integer", "30", "1 to 600"]),
    ("claim.certificate", ["string", "/etc/fleetprovd/claim.crt"]),
    ("claim.private_key", ["string", "/etc/fleetprovd/claim.key"]),
    ("template.name", ["string", "required", "1 to 36"]),
    ("template.parameters", ["list of groups"]),
    ("client_id", ["string", "machine ID"]),
    ("key.type", ["string", "ec-p256"]),
    ("key.subject", ["string", "CN="]),
    ("key.file", ["string", "unset"]),
    ("key.csr_file", ["string", "unset", "key.file"]),
    ("state_dir", ["string", "/var/lib/fleetprovd"]),
    ("verify", ["boolean", "true"]),
    ("retry.base", ["integer", "1", "1 to 3600"]),
    ("retry.cap", ["integer", "300", "retry.base to 86400"]),
    ("retry.permanent", ["integer", "900", "1 to 86400"]),
    ("retry.max_attempts", ["integer", "0"]),
    ("retry.throttle", ["integer", "10", "1 to 86400"]),
    ("token_max_age", ["integer", "3300", "60 to 3540"]),
    ("log_level", ["info"]),
]
# Settings of each group in template.parameters: a name and exactly one source.
PARAMETER_SETTINGS = [
    ("name", ["string", "required"]),
    ("value", ["string"]),
    ("file", ["string"]),
    ("interface_mac", ["string"]),
    ("machine_id", ["boolean", "true"]),
    ("hostname", ["boolean", "true"]),
    ("command", ["string"]),
    ("timeout_ms", ["integer", "5000", "1 to 60000", "command"]),
]
# Values that must be named in the text of fleetprovd.conf(5).
REQUIRED_WORDS = ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096", "x-amzn-mqtt-ca",
                  "emerg", "alert", "crit", "err", "warning", "notice", "debug", "0 to 7"]

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def scd_text(s):
    """scdoc source to plain text: drop emphasis markers and escapes."""
    return re.sub(r"\\(.)", r"\1", s.replace("*", "").replace("\\_", "_")).replace("\\", "")


def man_headings(path):
    """Definition-list headings of an scdoc page: a line "*key* (type, default, range)"."""
    heads = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            m = re.match(r"^\*([A-Za-z0-9_.\\]+)\*( \(.*\))$", line.rstrip("\n"))
            if m:
                heads[m.group(1).replace("\\_", "_")] = (n, scd_text(m.group(2)))
    return heads


def section(path, title):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"^# " + re.escape(title) + r"\n(.*?)(?=^# |\Z)", text, re.M | re.S)
    return m.group(1) if m else ""


def check_man_keys(scd):
    heads = man_headings(scd)
    params = section(scd, "TEMPLATE PARAMETERS")
    param_heads = {k for k in heads if re.search(r"^\*" + re.escape(k).replace("_", r"\\?_")
                                                 + r"\*", params, re.M)}
    expected = dict(SETTINGS)
    expected_params = dict(PARAMETER_SETTINGS)
    for key, words in SETTINGS + PARAMETER_SETTINGS:
        if key not in heads:
            fail(f"fleetprovd.conf(5) has no heading for '{key}'")
            continue
        n, rest = heads[key]
        for w in words:
            if w not in rest:
                fail(f"{scd}:{n}: heading of '{key}' lacks '{w}': {rest.strip()!r}")
    for key in PARAMETER_SETTINGS:
        if key[0] in heads and key[0] not in param_heads:
            fail(f"'{key[0]}' is not documented under TEMPLATE PARAMETERS")
    for key, (n, _) in heads.items():
        if key not in expected and key not in expected_params:
            fail(f"{scd}:{n}: heading '{key}' is not a fleetprovd setting")
    with open(scd, encoding="utf-8") as f:
        text = scd_text(f.read())
    for w in REQUIRED_WORDS:
        if not re.search(r"(?<![\w-])" + re.escape(w) + r"(?![\w-])", text):
            fail(f"fleetprovd.conf(5) never mentions '{w}'")
    print(f"ok: fleetprovd.conf(5) has {len(heads)} setting headings")


SETTING_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*[=:]\s*")


def conf_settings(path):
    """Dotted names of every setting in a libconfig file, commented-out ones included.

    Lines are uncommented first ("# port = 8883;" counts), then read as settings: a value
    that opens a group or list without closing it on the same line starts a nested scope,
    a line of only "}" or ")" closes it; settings inside one-line groups such as
    "{ name = "Serial"; file = "/x"; }" belong to the enclosing scope.
    """
    found = set()
    stack = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = re.sub(r"^\s*(#+|//)\s?", "", raw.rstrip("\n")).strip()
            if not line:
                continue
            if re.match(r"^[})][;,]?$", line):
                if stack:
                    stack.pop()
                continue
            if line.startswith("{"):
                for name in SETTING_RE.findall(line):
                    found.add(".".join(stack + [name]))
                continue
            m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*[=:]\s*(.*)$", line)
            if not m:
                continue
            name, value = m.groups()
            found.add(".".join(stack + [name]))
            if value.startswith(("{", "(")):
                inner = value[1:]
                for sub in SETTING_RE.findall(inner):
                    found.add(".".join(stack + [name, sub]))
                if value.count(value[0]) > value.count("}" if value[0] == "{" else ")"):
                    stack.append(name)
    return found


def check_conf_keys(conf):
    if not os.path.exists(conf):
        fail(f"{conf} does not exist")
        return
    found = conf_settings(conf)
    for key, _ in SETTINGS:
        if key not in found:
            fail(f"{conf} does not show the setting '{key}'")
    for key, _ in PARAMETER_SETTINGS:
        if "template.parameters." + key not in found:
            fail(f"{conf} does not show '{key}' in a template.parameters group")
    print(f"ok: {conf} shows {len(found)} settings")


def help_options(daemon):
    r = subprocess.run([daemon, "--help"], capture_output=True, text=True, timeout=30)
    text = r.stdout + r.stderr
    if r.returncode != 0:
        fail(f"'{daemon} --help' exited with {r.returncode}")
    opts = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[A-Za-z])(?![\w-])", text))
    commands = {c for c in ("run", "check", "status") if re.search(rf"\b{c}\b", text)}
    if not opts:
        fail(f"'{daemon} --help' lists no options:\n{text}")
    return opts, commands


def check_options(scd, daemon):
    opts, commands = help_options(daemon)
    options_text = section(scd, "OPTIONS")
    documented = set(re.findall(r"\*(--[a-z][a-z0-9-]*|-[A-Za-z])\*", options_text))
    for o in sorted(opts - documented):
        fail(f"'{o}' is in --help but not under OPTIONS in fleetprovd(8)")
    for o in sorted(documented - opts):
        fail(f"'{o}' is documented in fleetprovd(8) but not in --help")
    commands_text = section(scd, "COMMANDS")
    for c in sorted({"run", "check", "status"}):
        if not re.search(rf"^\*{c}\*$", commands_text, re.M):
            fail(f"command '{c}' is not under COMMANDS in fleetprovd(8)")
        if c not in commands:
            fail(f"command '{c}' is documented but not in --help")
    print(f"ok: --help options {sorted(opts)}")


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("keys", "options"):
        print(__doc__)
        return 2
    if sys.argv[1] == "keys":
        check_man_keys(sys.argv[2])
        check_conf_keys(sys.argv[3])
    else:
        daemon = sys.argv[3]
        if not (os.path.isfile(daemon) and os.access(daemon, os.X_OK)):
            print(f"SKIP: {daemon} has not been built")
            return 77
        check_options(sys.argv[2], daemon)
    if failures:
        print(f"{len(failures)} problem(s)")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
