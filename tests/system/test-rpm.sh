#!/bin/sh
# Build the RPM with packaging/build-rpm.sh and check it without installing it (this
# machine may not be RPM-based): the files and where they go, the owner and mode of
# /etc/fleetprovd, the configuration file marked %config(noreplace), and scriptlets that
# create the user, apply tmpfiles.d and leave the unit to presets (not enabled, not
# started, not restarted on upgrade).
#
# usage: test-rpm.sh SRCDIR
# Exit status: 0 pass, 1 fail, 77 skip (no rpmbuild).
set -eu

srcdir=${1:?usage: test-rpm.sh SRCDIR}

command -v rpmbuild >/dev/null 2>&1 || {
	echo "SKIP: rpmbuild not found"
	exit 77
}
fail() {
	echo "FAIL: $*"
	exit 1
}
ok() {
	echo "ok: $*"
}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

rpms=$("$srcdir/packaging/build-rpm.sh" "$out") || fail "packaging/build-rpm.sh failed"
rpm=$(printf '%s\n' "$rpms" | grep '/fleetprovd-[0-9][^/]*\.rpm$' | head -n1)
[ -f "$rpm" ] || fail "no fleetprovd RPM among: $rpms"
ok "built $(basename "$rpm")"

# One line per file: path, mode (octal), user, group, flags (c = config, n = noreplace).
files=$(rpm -qp --qf '[%{FILENAMES} %{FILEMODES:octal} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILEFLAGS:fflags}\n]' "$rpm")
printf '%s\n' "$files"
entry() { # path: prints "mode user group flags"
	printf '%s\n' "$files" | awk -v p="$1" '$1 == p { print $2, $3, $4, $5 }'
}
for path in /usr/sbin/fleetprovd /usr/lib/systemd/system/fleetprovd.service \
	/usr/lib/sysusers.d/fleetprovd.conf /usr/lib/tmpfiles.d/fleetprovd.conf \
	/usr/lib/systemd/catalog/fleetprovd.catalog; do
	[ -n "$(entry "$path")" ] || fail "the RPM lacks $path"
done
printf '%s\n' "$files" | grep -q '^/usr/share/man/man8/fleetprovd\.8' || fail "no fleetprovd(8)"
printf '%s\n' "$files" | grep -q '^/usr/share/man/man5/fleetprovd\.conf\.5' ||
	fail "no fleetprovd.conf(5)"
ok "files present"

dir=$(entry /etc/fleetprovd)
case "$dir" in
"40750 root fleetprovd"*) ok "/etc/fleetprovd 0750 root:fleetprovd" ;;
*) fail "/etc/fleetprovd is '$dir', expected 40750 root fleetprovd" ;;
esac
conf=$(entry /etc/fleetprovd/fleetprovd.conf)
case "${conf##* }" in
*c*n* | *n*c*) ok "fleetprovd.conf is %config(noreplace)" ;;
*) fail "fleetprovd.conf is '$conf', expected the flags of %config(noreplace)" ;;
esac

scripts=$(rpm -qp --scripts "$rpm")
printf '%s\n' "$scripts" | sed -n '/^preinstall/,/^postinstall/p' | grep -q 'fleetprovd' ||
	fail "%pre does not create the fleetprovd user"
printf '%s\n' "$scripts" | sed -n '/^preinstall/,/^postinstall/p' |
	grep -q '^u fleetprovd ' || fail "%pre does not carry the sysusers.d line"
printf '%s\n' "$scripts" | sed -n '/^postinstall/,/^preuninstall/p' |
	grep -q 'tmpfiles.*fleetprovd.conf' || fail "%post does not apply tmpfiles.d"
printf '%s\n' "$scripts" | grep -Eq 'systemctl.*(enable|start|restart) ' &&
	fail "a scriptlet enables, starts or restarts the unit"
ok "scriptlets: user in %pre, tmpfiles in %post, no start or restart"
echo "PASS"
