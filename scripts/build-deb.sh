#!/usr/bin/env bash
# Builds the ocivm .deb with `dpkg-buildpackage -us -uc -b` (debian/) on a
# copy of the source tree in OUTDIR/src, so that nothing is written into the
# tree and dpkg-buildpackage's outputs (which go to the parent of the tree
# it builds) land in OUTDIR: the .deb, the -dbgsym .deb, .buildinfo and
# .changes.       build-deb.sh OUTDIR
set -euo pipefail
OUT=${1:?output directory}
cd "$(dirname "$0")/.."
for tool in dpkg-buildpackage dh; do
  command -v $tool >/dev/null || { echo "build-deb: $tool is missing: apt-get install dpkg-dev debhelper (or scripts/install-deps.sh)" >&2; exit 1; }
done
rm -rf "$OUT"
mkdir -p "$OUT/src"
OUT=$(cd "$OUT" && pwd)
# The files of the checkout, committed or not, but not what git ignores
# (build directories); outside git, everything but build*/.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - -cf - | tar -xf - -C "$OUT/src"
else
  tar --exclude='./build' --exclude='./build-*' -cf - . | tar -xf - -C "$OUT/src"
fi
(cd "$OUT/src" && dpkg-buildpackage -us -uc -b)
rm -rf "$OUT/src"
ls "$OUT"/*.deb
