#!/usr/bin/python3
"""Check systemd/fleetprovd.catalog against include/message-ids.h.

Every MESSAGE_ID defined in the header has exactly one catalog entry and every entry
belongs to a defined id; each entry has a Subject, "Defined-By: fleetprovd", no Support
line and an explanatory body; Documentation= names only man pages the project ships.
Then journalctl compiles the catalog into a temporary root and must list every entry
with its subject (skipped when journalctl is missing).

usage: test-catalog.py CATALOG MESSAGE_IDS_H MAN_DIR
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

ID_RE = re.compile(r"^[0-9a-f]{32}$")
# Entry header: "-- <128-bit id in hex>" with an optional language ("-- <id> de").
ENTRY_RE = re.compile(r"^-- ([0-9A-Za-z]+)(?: ([a-z]{2}(?:_[A-Z]{2})?))?\s*$")
FIELD_RE = re.compile(r"^([A-Z][A-Za-z-]*): (.+)$")
MAN_RE = re.compile(r"^man:([A-Za-z0-9_.-]+)\(([1-8])\)$")
# Shortest explanation worth showing under "journalctl -x": what happened and what to do.
MIN_BODY_WORDS = 40

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def read_ids(header):
    ids = {}
    with open(header, encoding="utf-8") as f:
        for line in f:
            m = re.match(r'^#define\s+(MESSAGE_ID_[A-Z_]+)\s+"([^"]*)"', line)
            if m:
                ids[m.group(2)] = m.group(1)
    return ids


def parse_catalog(path):
    """Returns {id: {"fields": {...}, "body": [...], "line": n}} and reports format errors."""
    entries = {}
    current = None
    in_header = False
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if line.startswith("-- "):
                m = ENTRY_RE.match(line)
                if not m or not ID_RE.match(m.group(1)):
                    fail(f"{path}:{n}: malformed entry header {line!r}")
                    current = None
                    continue
                key = m.group(1) + (" " + m.group(2) if m.group(2) else "")
                if key in entries:
                    fail(f"{path}:{n}: second entry for {key}")
                current = entries[key] = {"fields": {}, "body": [], "line": n}
                in_header = True
                continue
            if current is None:
                if line and not line.startswith("#"):
                    fail(f"{path}:{n}: text outside an entry: {line!r}")
                continue
            if in_header:
                if not line:
                    in_header = False
                    continue
                m = FIELD_RE.match(line)
                if not m:
                    fail(f"{path}:{n}: header line is not 'Key: value': {line!r}")
                    continue
                if m.group(1) in current["fields"]:
                    fail(f"{path}:{n}: duplicate header {m.group(1)}")
                current["fields"][m.group(1)] = m.group(2)
            else:
                current["body"].append(line)
    return entries


def check_entry(key, entry, man_dir):
    fields = entry["fields"]
    where = f"entry {key} (line {entry['line']})"
    if not fields.get("Subject", "").strip():
        fail(f"{where}: no Subject")
    if fields.get("Defined-By") != "fleetprovd":
        fail(f"{where}: Defined-By is {fields.get('Defined-By')!r}, not 'fleetprovd'")
    if "Support" in fields:
        fail(f"{where}: has a Support line; fleetprovd has no support URL to name")
    for doc in fields.get("Documentation", "").split():
        m = MAN_RE.match(doc)
        if not m:
            fail(f"{where}: Documentation {doc!r} is not man:PAGE(SECTION)")
        elif m.group(1).startswith("fleetprovd"):
            page = os.path.join(man_dir, f"{m.group(1)}.{m.group(2)}.scd")
            if not os.path.exists(page):
                fail(f"{where}: Documentation names {doc}, but {page} does not exist")
    words = " ".join(entry["body"]).split()
    if len(words) < MIN_BODY_WORDS:
        fail(f"{where}: body has {len(words)} words; explain what happened and what to do")
    # "@FIELD@" is replaced by journalctl; an unknown field would show up as its bare name.
    for var in re.findall(r"@([A-Za-z0-9_]+)@", "\n".join(entry["body"])):
        fail(f"{where}: uses @{var}@, which not every record of this id carries")


def check_with_journalctl(catalog, entries):
    journalctl = shutil.which("journalctl")
    if not journalctl:
        print("note: journalctl not found, catalog not compiled")
        return
    with tempfile.TemporaryDirectory() as root:
        catdir = os.path.join(root, "usr", "lib", "systemd", "catalog")
        os.makedirs(catdir)
        shutil.copy(catalog, catdir)
        r = subprocess.run([journalctl, "--root", root, "--update-catalog"],
                           capture_output=True, text=True)
        if r.returncode != 0 or r.stderr.strip():
            fail(f"journalctl --update-catalog: rc {r.returncode}: {r.stderr.strip()}")
            return
        r = subprocess.run([journalctl, "--root", root, "--list-catalog"],
                           capture_output=True, text=True)
        listed = {}
        for line in r.stdout.splitlines():
            parts = line.split(" ", 1)
            if len(parts) == 2:
                listed[parts[0]] = parts[1]
        for key, entry in entries.items():
            want = f"fleetprovd: {entry['fields'].get('Subject', '')}"
            if listed.get(key.split()[0]) != want:
                fail(f"journalctl lists {key} as {listed.get(key.split()[0])!r}, "
                     f"expected {want!r}")
        print(f"ok: journalctl compiled {len(listed)} entries")


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    catalog, header, man_dir = sys.argv[1:]
    ids = read_ids(header)
    if len(ids) < 1:
        fail(f"{header}: no MESSAGE_ID_ definitions found")
    for value, name in ids.items():
        if not ID_RE.match(value):
            fail(f"{header}: {name} = {value!r} is not 32 lower-case hex digits")

    entries = parse_catalog(catalog)
    default_entries = {k: v for k, v in entries.items() if " " not in k}
    for value, name in sorted(ids.items(), key=lambda kv: kv[1]):
        if value in default_entries:
            print(f"ok: {name} {value}: {default_entries[value]['fields'].get('Subject')}")
        else:
            fail(f"{name} ({value}) has no entry in {catalog}")
    for key in entries:
        if key.split()[0] not in ids:
            fail(f"catalog entry {key} is not a MESSAGE_ID in {header}")
    for key, entry in entries.items():
        check_entry(key, entry, man_dir)
    check_with_journalctl(catalog, entries)

    if failures:
        print(f"{len(failures)} problem(s)")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
