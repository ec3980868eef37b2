#!/usr/bin/env bash
# Two builds of ocivm against each other with the machine's noise paired
# out: both serve a `--cache never` mount at once, and blocks of the same
# operations alternate between them (bench/paired_ops.py), so a slow
# moment of this shared machine hits both. Prints, per workload, the median
# of the per-round time ratios A/B and each side's µs per operation.
#   pairedbench.sh OCIVM_A OCIVM_B [ocivm mount options for both]
#   env: ROUNDS (100), BLK (200 operations per block), OPS (open+read,stat,create+unlink)
set -uo pipefail
A=${1:?usage: pairedbench.sh OCIVM_A OCIVM_B [mount options]}
B=${2:?usage: pairedbench.sh OCIVM_A OCIVM_B [mount options]}
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
command -v python3 >/dev/null || { echo "pairedbench: python3 missing: apt-get install python3" >&2; exit 1; }
D=$(mktemp -d "${TMPDIR:-/tmp}/ocivm-pairedbench.XXXXXX")
PA="" PB=""
cleanup() {
  for m in "$D/ma" "$D/mb"; do mountpoint -q "$m" && umount "$m"; done
  for p in $PA $PB; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$D"
}
trap cleanup EXIT
mkdir -p "$D/sa" "$D/sb" "$D/ma" "$D/mb"
"$A" mount "$D/sa" "$D/ma" --cache never "$@" & PA=$!
"$B" mount "$D/sb" "$D/mb" --cache never "$@" & PB=$!
for _ in $(seq 200); do mountpoint -q "$D/ma" && mountpoint -q "$D/mb" && break; sleep 0.05; done
mountpoint -q "$D/ma" && mountpoint -q "$D/mb" || { echo "pairedbench: the mounts did not come up" >&2; exit 1; }
echo "pairedbench: A=$A B=$B, --cache never $*, ${ROUNDS:-100} rounds of ${BLK:-200}"
python3 "$HERE/paired_ops.py" "$D/ma" "$D/mb" "${ROUNDS:-100}" "${BLK:-200}" | sed 's|new/prev|A/B|; s|us/op new|us/op A|; s| prev | B |'
