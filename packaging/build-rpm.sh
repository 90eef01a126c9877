#!/bin/sh
# Build the fleetprovd RPM from this source tree: make fleetprovd-<version>.tar.gz from
# the files git knows about (plus new ones it does not ignore), run rpmbuild -bb on
# packaging/rpm/fleetprovd.spec in a temporary _topdir, copy the RPMs to OUTDIR and
# print their paths, one per line, on stdout.
#
# usage: packaging/build-rpm.sh [OUTDIR]     (default OUTDIR: the current directory)
# On Fedora/RHEL install the spec's BuildRequires first (dnf builddep). On a host
# without RPM build macros (Debian's rpm package) the stand-ins in
# packaging/rpm/macros.fallback are loaded and BuildRequires are not checked.
set -eu

srcdir=$(cd "$(dirname "$0")/.." && pwd)
outdir=$(mkdir -p "${1:-.}" && cd "${1:-.}" && pwd)
spec=$srcdir/packaging/rpm/fleetprovd.spec

command -v rpmbuild >/dev/null 2>&1 || {
	echo "build-rpm: rpmbuild not found" >&2
	exit 1
}
version=$(sed -n 's/^Version: *//p' "$spec")
project_version=$(sed -n "s/^[[:space:]]*version: '\([^']*\)'.*/\1/p" "$srcdir/meson.build" | head -n1)
[ "$version" = "$project_version" ] || {
	echo "build-rpm: spec Version $version differs from meson.build version $project_version" >&2
	exit 1
}

top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
mkdir -p "$top/SOURCES" "$top/tree/fleetprovd-$version"
tree=$top/tree/fleetprovd-$version
if git -C "$srcdir" rev-parse --git-dir >/dev/null 2>&1; then
	(cd "$srcdir" && git ls-files -z --cached --others --exclude-standard) |
		(cd "$srcdir" && xargs -0 cp --parents -t "$tree" 2>/dev/null) || true
else
	(cd "$srcdir" && tar --exclude='./build*' --exclude=./.git -cf - .) | tar -C "$tree" -xf -
fi
tar -C "$top/tree" -czf "$top/SOURCES/fleetprovd-$version.tar.gz" "fleetprovd-$version"
cp "$srcdir/systemd/fleetprovd.sysusers" "$top/SOURCES/fleetprovd.sysusers"

set -- --define "_topdir $top"
if [ -z "$(rpm --eval '%{?meson:1}%{?systemd_post:1}')" ]; then
	set -- "$@" --load "$srcdir/packaging/rpm/macros.fallback" --nodeps
fi
if [ -z "$(rpm --eval '%{?__find_debuginfo}')" ] && ! command -v find-debuginfo >/dev/null 2>&1; then
	set -- "$@" --define "debug_package %{nil}"
fi

rpmbuild -bb "$@" "$spec" >"$top/build.log" 2>&1 || {
	tail -n 60 "$top/build.log" >&2
	echo "build-rpm: rpmbuild failed" >&2
	exit 1
}
find "$top/RPMS" -name '*.rpm' | while read -r rpm; do
	cp "$rpm" "$outdir/"
	echo "$outdir/$(basename "$rpm")"
done
