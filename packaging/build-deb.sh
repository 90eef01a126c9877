#!/bin/sh
# Build the fleetprovd .deb from this source tree without touching it: copy the tree
# (the files git knows about, plus new ones it does not ignore) to a temporary
# directory, put packaging/debian at debian/ there, run dpkg-buildpackage, copy the
# resulting .deb files to OUTDIR and print their paths, one per line, on stdout.
#
# usage: packaging/build-deb.sh [OUTDIR]     (default OUTDIR: the current directory)
# Needs the Build-Depends of packaging/debian/control (dpkg-checkbuilddeps names any
# that are missing), plus dpkg-dev and fakeroot when not building as root.
set -eu

srcdir=$(cd "$(dirname "$0")/.." && pwd)
outdir=$(mkdir -p "${1:-.}" && cd "${1:-.}" && pwd)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tree=$work/fleetprovd

mkdir -p "$tree"
if git -C "$srcdir" rev-parse --git-dir >/dev/null 2>&1; then
	(cd "$srcdir" && git ls-files -z --cached --others --exclude-standard) |
		(cd "$srcdir" && xargs -0 cp --parents -t "$tree" 2>/dev/null) || true
else
	(cd "$srcdir" && tar --exclude='./build*' --exclude=./.git -cf - .) | tar -C "$tree" -xf -
fi
[ -f "$tree/meson.build" ] || {
	echo "build-deb: could not copy the source tree" >&2
	exit 1
}
rm -rf "$tree/debian"
cp -r "$srcdir/packaging/debian" "$tree/debian"

(cd "$tree" && dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || {
	tail -n 60 "$work/build.log" >&2
	echo "build-deb: dpkg-buildpackage failed" >&2
	exit 1
}
for deb in "$work"/*.deb; do
	cp "$deb" "$outdir/"
	echo "$outdir/$(basename "$deb")"
done
