#!/bin/sh
# Run fleetprovd.service under a real systemd: boot this machine's own file system as a
# throwaway systemd-nspawn container (read-only bind of /, writes go to a tmpfs overlay,
# private network with only loopback), then run systemd-scenario.py inside it. Nothing on
# the host changes. systemd need not run on the host.
#
# usage: test-systemd.sh SRCDIR BUILD_UNIT BUILD_TMPFILES DAEMON IOTSIM_PLUGIN
# Exit status: 0 pass, 1 fail, 77 skip (not root, no systemd-nspawn, no container could be
# booted, daemon or simulator not built).
set -eu

srcdir=${1:?usage: test-systemd.sh SRCDIR UNIT TMPFILES DAEMON IOTSIM_PLUGIN}
unit=${2:?}
tmpfiles=${3:?}
daemon=${4:-}
plugin=${5:-}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-90}

skip() {
	echo "SKIP: $*"
	exit 77
}
[ "$(id -u)" -eq 0 ] || skip "needs root to boot a container"
command -v systemd-nspawn >/dev/null 2>&1 || skip "systemd-nspawn not found (package systemd-container)"
[ -x /lib/systemd/systemd ] || skip "no systemd to boot in the container"
if [ -z "$daemon" ] || [ ! -x "$daemon" ]; then
	skip "the daemon has not been built"
fi
if [ -z "$plugin" ] || [ ! -f "$plugin" ]; then
	skip "the simulator plugin has not been built"
fi
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || skip "mosquitto not found"
# The scenario installs the unit the way a package does: /etc and /var, i.e. --prefix=/usr.
grep -q '^d /etc/fleetprovd ' "$tmpfiles" || skip "the build is not configured with --prefix=/usr"

work=$(mktemp -d /var/tmp/fleetprovd-systemd.XXXXXX)
root=$work/root
stage=$work/stage
log=$work/nspawn.log
nspawn=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
		kill "$nspawn" 2>/dev/null || true
		i=0
		while kill -0 "$nspawn" 2>/dev/null && [ "$i" -lt 100 ]; do
			sleep 0.2
			i=$((i + 1))
		done
		kill -9 "$nspawn" 2>/dev/null || true
	fi
	mountpoint -q "$root" && umount "$root"
	rm -rf "$work"
}
trap cleanup EXIT

# What the scenario installs, staged where the container sees it (/run/fleetprovd-test).
mkdir -p "$root" "$stage/iotsim/templates"
cp "$daemon" "$stage/fleetprovd"
cp "$unit" "$stage/fleetprovd.service"
cp "$tmpfiles" "$stage/fleetprovd.tmpfiles"
cp "$srcdir/systemd/fleetprovd.sysusers" "$srcdir/systemd/fleetprovd.catalog" "$stage/"
cp "$srcdir/include/message-ids.h" "$plugin" "$stage/"
[ "$(basename "$plugin")" = iotsim.so ] || mv "$stage/$(basename "$plugin")" "$stage/iotsim.so"
cp "$srcdir"/tests/iotsim/*.py "$stage/iotsim/"
cp "$srcdir"/tests/iotsim/templates/* "$stage/iotsim/templates/"
cp "$srcdir/tests/system/systemd-scenario.py" "$stage/"

mount --bind / "$root"
mount -o remount,bind,ro "$root"

# Boot only to basic.target: the host's own services (brokers, databases) stay down.
systemd-nspawn --quiet --directory="$root" --volatile=overlay --private-network \
	--register=no --keep-unit --machine=fleetprovd-test \
	--bind-ro="$stage:/run/fleetprovd-test" --console=read-only \
	--boot -- systemd.unit=basic.target systemd.show_status=false >"$log" 2>&1 &
nspawn=$!

# The container's init: the process named systemd among nspawn's descendants.
leader=
i=0
while [ -z "$leader" ] && [ $i -lt $((BOOT_TIMEOUT * 5)) ]; do
	kill -0 "$nspawn" 2>/dev/null || break
	for pid in $(pgrep -x systemd); do
		a=$pid
		while [ "${a:-1}" -gt 1 ]; do
			a=$(ps -o ppid= -p "$a" | tr -d ' ')
			if [ "$a" = "$nspawn" ]; then
				leader=$pid
				break 2
			fi
		done
	done
	sleep 0.2
	i=$((i + 1))
done
# A host that cannot boot containers (an unprivileged CI container, no cgroups) is not a
# fleetprovd failure: skip, and show why.
if [ -z "$leader" ]; then
	cat "$log"
	skip "systemd-nspawn could not boot a container here"
fi

in_container() {
	nsenter --target "$leader" --mount --uts --ipc --net --pid --cgroup -- "$@"
}
# systemctl fails until the container's manager listens; then --wait blocks until booted.
i=0
while :; do
	state=$(in_container timeout "$BOOT_TIMEOUT" systemctl is-system-running --wait 2>&1) || true
	case "$state" in
	*"Failed to connect"*) ;;
	*) break ;;
	esac
	[ $i -lt $((BOOT_TIMEOUT * 5)) ] || break
	sleep 0.2
	i=$((i + 1))
done
echo "container booted: $state"
case "$state" in
running | degraded) ;;
*)
	cat "$log"
	skip "the container's systemd did not finish booting ($state)"
	;;
esac

rc=0
in_container /usr/bin/python3 /run/fleetprovd-test/systemd-scenario.py /run/fleetprovd-test || rc=$?
in_container systemctl poweroff --no-block >/dev/null 2>&1 || true
exit "$rc"
