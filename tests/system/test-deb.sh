#!/bin/sh
# Build the Debian package with packaging/build-deb.sh, check it with lintian, install it
# on this machine, check what it put where (files, owners, modes, the system user, the
# journal catalog, the unit as systemd sees it), install it again as an upgrade would,
# then purge it and check that nothing is left behind.
#
# It changes the machine (dpkg -i / --purge), so it runs only as root, and it refuses to
# run where fleetprovd is already installed or /var/lib/fleetprovd already exists.
# systemd need not be running (containers, CI): the maintainer scripts cope without it.
#
# usage: test-deb.sh SRCDIR
# Exit status: 0 pass, 1 fail, 77 skip.
set -eu

srcdir=${1:?usage: test-deb.sh SRCDIR}

skip() {
	echo "SKIP: $*"
	exit 77
}
fail() {
	echo "FAIL: $*"
	exit 1
}
ok() {
	echo "ok: $*"
}

[ "$(id -u)" -eq 0 ] || skip "needs root to install the package"
for tool in dpkg dpkg-buildpackage dh; do
	command -v "$tool" >/dev/null 2>&1 || skip "$tool not found"
done
package_status() {
	dpkg-query -W -f='${db:Status-Status}' fleetprovd 2>/dev/null || echo not-installed
}
case "$(package_status)" in
not-installed | config-files) ;;
*) skip "fleetprovd is installed on this machine; not replacing it" ;;
esac
[ ! -e /var/lib/fleetprovd ] || skip "/var/lib/fleetprovd exists; purging would delete it"
[ ! -e /etc/fleetprovd ] || skip "/etc/fleetprovd exists; not touching it"

out=$(mktemp -d)
installed=no
cleanup() {
	if [ "$installed" = yes ]; then
		dpkg --purge fleetprovd >/dev/null 2>&1 || true
	fi
	rm -rf "$out"
}
trap cleanup EXIT

echo "== build"
version=$(dpkg-parsechangelog -l "$srcdir/packaging/debian/changelog" -S Version)
project_version=$(sed -n "s/^[[:space:]]*version: '\([^']*\)'.*/\1/p" "$srcdir/meson.build" | head -n1)
[ "$version" = "$project_version" ] ||
	fail "debian/changelog is at $version, meson.build at $project_version"
missing=$(dpkg-checkbuilddeps "$srcdir/packaging/debian/control" 2>&1) ||
	skip "build dependencies missing: $missing"
debs=$("$srcdir/packaging/build-deb.sh" "$out") || fail "packaging/build-deb.sh failed"
deb=$(printf '%s\n' "$debs" | grep '/fleetprovd_[^/]*\.deb$' | head -n1)
[ -f "$deb" ] || fail "no fleetprovd .deb among: $debs"
ok "built $(basename "$deb")"

if command -v lintian >/dev/null 2>&1; then
	echo "== lintian"
	# Errors fail the test; warnings and below are shown for the record.
	report=$(lintian --tag-display-limit 0 "$deb" 2>&1) || true
	printf '%s\n' "$report"
	if printf '%s\n' "$report" | grep -q '^E: '; then
		fail "lintian reports errors"
	fi
	ok "lintian: no errors"
fi

echo "== contents"
contents=$(dpkg-deb -c "$deb")
has() { # path-suffix
	printf '%s\n' "$contents" | grep -q " \./$1\$" || fail "package lacks $1"
}
has usr/sbin/fleetprovd
has lib/systemd/system/fleetprovd.service
has usr/lib/sysusers.d/fleetprovd.conf
has usr/lib/tmpfiles.d/fleetprovd.conf
has usr/lib/systemd/catalog/fleetprovd.catalog
has usr/share/man/man8/fleetprovd.8.gz
has usr/share/man/man5/fleetprovd.conf.5.gz
has etc/fleetprovd/fleetprovd.conf
dpkg-deb -I "$deb" conffiles | grep -qx /etc/fleetprovd/fleetprovd.conf ||
	fail "/etc/fleetprovd/fleetprovd.conf is not a conffile"
ok "files and conffile present"

echo "== install"
dpkg -i "$deb" || fail "dpkg -i failed"
installed=yes

entry=$(getent passwd fleetprovd) || fail "user fleetprovd was not created"
case "$entry" in
*/nologin | */false) ok "user: $entry" ;;
*) fail "fleetprovd has a login shell: $entry" ;;
esac
getent group fleetprovd >/dev/null || fail "group fleetprovd was not created"
uid=$(echo "$entry" | cut -d: -f3)
[ "$uid" -lt 1000 ] || fail "uid $uid is not a system uid"

mode() { # path expected-"mode user group"
	got=$(stat -c '%a %U %G' "$1") || fail "$1 is missing"
	[ "$got" = "$2" ] || fail "$1: '$got', expected '$2'"
	ok "$1 $got"
}
mode /etc/fleetprovd "750 root fleetprovd"
mode /etc/fleetprovd/fleetprovd.conf "644 root root"
mode /usr/sbin/fleetprovd "755 root root"
unit=$(dpkg -L fleetprovd | grep '/systemd/system/fleetprovd.service$')
mode "$unit" "644 root root"
[ ! -e /etc/systemd/system/multi-user.target.wants/fleetprovd.service ] ||
	fail "the service was enabled on installation"
ok "service installed, not enabled"

/usr/sbin/fleetprovd --version | grep -qF "$version" ||
	fail "fleetprovd --version does not say $version"
/usr/sbin/fleetprovd --help >/dev/null || fail "fleetprovd --help failed"
rc=0
/usr/sbin/fleetprovd --check-config >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 0 ] || fail "the shipped configuration does not pass --check-config (exit $rc)"
ok "the installed daemon runs and accepts the shipped configuration"

if command -v systemd-analyze >/dev/null 2>&1; then
	findings=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify: $findings"
	[ -z "$findings" ] || fail "systemd-analyze verify: $findings"
	ok "systemd-analyze verify $unit: clean (binary and man pages found)"
fi
if command -v journalctl >/dev/null 2>&1; then
	ids=$(sed -n 's/^#define MESSAGE_ID_[A-Z_]* *"\([0-9a-f]*\)".*/\1/p' \
		"$srcdir/include/message-ids.h")
	[ -n "$ids" ] || fail "no MESSAGE_IDs in include/message-ids.h"
	listed=$(journalctl --list-catalog 2>/dev/null)
	for id in $ids; do
		printf '%s\n' "$listed" | grep -q "^$id fleetprovd: " ||
			fail "journal catalog entry $id is not in the installed catalog database"
	done
	ok "journalctl --list-catalog knows all $(echo "$ids" | wc -w) MESSAGE_IDs"
fi

echo "== reinstall (as an upgrade runs the maintainer scripts)"
dpkg -i "$deb" >/dev/null || fail "installing over the installed package failed"
mode /etc/fleetprovd "750 root fleetprovd"

echo "== purge"
# State the daemon would have written, to check that purge removes it.
install -d -o fleetprovd -g fleetprovd -m 0750 /var/lib/fleetprovd/gen-test
dpkg --purge fleetprovd || fail "dpkg --purge failed"
installed=no
for path in /usr/sbin/fleetprovd "$unit" /usr/lib/sysusers.d/fleetprovd.conf \
	/usr/lib/tmpfiles.d/fleetprovd.conf /usr/lib/systemd/catalog/fleetprovd.catalog \
	/usr/share/man/man8/fleetprovd.8.gz /etc/fleetprovd /var/lib/fleetprovd; do
	[ ! -e "$path" ] || fail "$path is left after purge"
done
[ "$(package_status)" = not-installed ] || fail "dpkg still lists fleetprovd: $(package_status)"
if command -v journalctl >/dev/null 2>&1; then
	journalctl --list-catalog 2>/dev/null | grep -q ' fleetprovd: ' &&
		fail "the catalog database still lists fleetprovd entries"
fi
ok "purged: no files left"
echo "PASS"
