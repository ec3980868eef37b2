#!/usr/bin/env bash
# imagebench: importing a ~300 MB Debian root file system image into ocivm's
# store (verify blobs, unpack, assemble the root) against `umoci unpack` of
# the same OCI layout, then a second import of the same image (everything
# already stored). Interleaved, REPS repetitions (default 3), medians, ratios.
# The image is built offline from this Debian machine's own installed files
# (/etc, /usr/bin, /usr/sbin, /usr/lib/x86_64-linux-gnu up to ~300 MB) and
# packed with scripts/make-oci-layout.sh (one gzip layer, as most images).
#   bench/imagebench.sh [OCIVM]
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
OCIVM=${1:-$HERE/../build/ocivm}
REPS=${REPS:-3}
fail() { echo "imagebench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root"
command -v umoci >/dev/null || fail "umoci missing: apt-get install umoci"
[ -x "$OCIVM" ] || fail "$OCIVM missing: make build"
WORK=$(scratch_dir imagebench) || fail "cannot make a scratch directory in /var/tmp"
trap '[ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT

root=$WORK/rootfs
make_debian_tree "$root"
for d in bin sbin lib lib64; do ln -sfn usr/$d "$root/$d"; done
mkdir -p "$root"/{proc,sys,dev,tmp,root,var/tmp}
size=$(du -sm "$root" | cut -f1)
files=$(find "$root" | wc -l)
"$HERE/../scripts/make-oci-layout.sh" "$root" "$WORK/layout" latest /bin/sh || fail "packing the layout"
blob=$(du -sm "$WORK/layout/blobs" | cut -f1)
sync

: > "$WORK/umoci.t"; : > "$WORK/first.t"; : > "$WORK/second.t"
for i in $(seq "$REPS"); do
  rm -rf "$WORK/bundle" "$WORK/store"; sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
  t0=$(now); umoci unpack --image "$WORK/layout:latest" "$WORK/bundle" > /dev/null 2>&1 || fail "umoci unpack failed"; t1=$(now)
  echo "$t1 - $t0" | bc >> "$WORK/umoci.t"
  rm -rf "$WORK/bundle"; sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
  t0=$(now); OCIVM_HOME=$WORK/store "$OCIVM" image import "oci:$WORK/layout" --name bench > /dev/null || fail "ocivm import failed"; t1=$(now)
  echo "$t1 - $t0" | bc >> "$WORK/first.t"
  t0=$(now); OCIVM_HOME=$WORK/store "$OCIVM" image import "oci:$WORK/layout" --name bench > /dev/null || fail "second import failed"; t1=$(now)
  echo "$t1 - $t0" | bc >> "$WORK/second.t"
done
# The two unpackers must agree on the tree.
umoci unpack --image "$WORK/layout:latest" "$WORK/bundle" > /dev/null 2>&1
rootdir=$(ls -d "$WORK/store/roots/"*)
if ! diff <(cd "$WORK/bundle/rootfs" && find . -printf '%p %y %m %U:%G %l\n' | sort) \
          <(cd "$rootdir" && find . -printf '%p %y %m %U:%G %l\n' | sort) > "$WORK/tree.diff"; then
  echo "imagebench: WARNING: ocivm's root and umoci's rootfs differ:"; head -20 "$WORK/tree.diff"
fi
U=$(median < "$WORK/umoci.t"); F=$(median < "$WORK/first.t"); S=$(median < "$WORK/second.t")
echo "imagebench: ${size} MB root file system, ${files} entries, ${blob} MB compressed; median of $REPS, cold page cache"
printf "%-44s %10s\n" "step" "median s"
printf "%-44s %10.3f\n" "umoci unpack (peer)" "$U"
printf "%-44s %10.3f\n" "ocivm image import, first" "$F"
printf "%-44s %10.3f\n" "ocivm image import, second (all stored)" "$S"
printf "%-44s %10.2f\n" "speed-up first import vs umoci (target >= 2)" "$(echo "scale=4; $U / $F" | bc)"
printf "%-44s %10.1f\n" "first / second import (target >= 10)" "$(echo "scale=4; $F / $S" | bc)"
echo "all umoci:  $(tr '\n' ' ' < "$WORK/umoci.t")"
echo "all first:  $(tr '\n' ' ' < "$WORK/first.t")"
echo "all second: $(tr '\n' ' ' < "$WORK/second.t")"
