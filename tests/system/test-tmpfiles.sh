#!/bin/sh
# Apply fleetprovd's sysusers.d and tmpfiles.d files to a temporary root with systemd's own
# tools and check the result: a system user and group "fleetprovd" without a login shell,
# /etc/fleetprovd root:fleetprovd 0750, and a claim key dropped in with loose modes turned
# into root:fleetprovd 0640.
#
# usage: test-tmpfiles.sh SYSUSERS TMPFILES SYSCONFDIR
# Exit status: 0 pass, 1 fail, 77 skip (not root, or no systemd-sysusers/systemd-tmpfiles).
set -eu

sysusers=${1:?usage: test-tmpfiles.sh SYSUSERS TMPFILES SYSCONFDIR}
tmpfiles=${2:?usage: test-tmpfiles.sh SYSUSERS TMPFILES SYSCONFDIR}
sysconfdir=${3:?usage: test-tmpfiles.sh SYSUSERS TMPFILES SYSCONFDIR}

# With --root, relative paths would be looked up inside the root.
sysusers=$(realpath "$sysusers")
tmpfiles=$(realpath "$tmpfiles")

for tool in systemd-sysusers systemd-tmpfiles; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "SKIP: $tool not found"
		exit 77
	fi
done
if [ "$(id -u)" -ne 0 ]; then
	echo "SKIP: needs root to create files owned by another user"
	exit 77
fi

fail() {
	echo "FAIL: $*"
	exit 1
}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc" "$root$sysconfdir"

systemd-sysusers --root="$root" "$sysusers"
entry=$(grep '^fleetprovd:' "$root/etc/passwd") || fail "no user fleetprovd in passwd"
echo "passwd: $entry"
uid=$(echo "$entry" | cut -d: -f3)
gid=$(grep '^fleetprovd:' "$root/etc/group" | cut -d: -f3) || fail "no group fleetprovd"
if [ "$uid" -le 0 ] || [ "$uid" -ge 1000 ]; then
	fail "uid $uid is not a system uid"
fi
[ "$(echo "$entry" | cut -d: -f4)" = "$gid" ] || fail "primary group is not fleetprovd"
case "$(echo "$entry" | cut -d: -f7)" in
*/nologin | */false) ;;
*) fail "fleetprovd has a login shell" ;;
esac

# Two cases in one root: the directory exists with loose modes (as dpkg or an image
# builder leaves it), and the claim key is world-readable and owned by root:root.
confdir=$root$sysconfdir/fleetprovd
mkdir -p "$confdir"
chmod 0755 "$confdir"
echo "claim key" >"$confdir/claim.key"
chmod 0644 "$confdir/claim.key"

systemd-tmpfiles --root="$root" --create "$tmpfiles"

check_mode() { # path mode uid gid
	got=$(stat -c '%a %u %g' "$1")
	[ "$got" = "$2 $3 $4" ] || fail "$1: mode/owner/group '$got', expected '$2 $3 $4'"
	echo "ok: ${1#"$root"} $got"
}
check_mode "$confdir" 750 0 "$gid"
check_mode "$confdir/claim.key" 640 0 "$gid"

# Without a claim key, "z" must not create one.
rm "$confdir/claim.key"
systemd-tmpfiles --root="$root" --create "$tmpfiles"
[ ! -e "$confdir/claim.key" ] || fail "tmpfiles created a claim key"
echo "PASS"
