#!/usr/bin/env bash
# Two file servers against each other with the machine's noise paired out:
# both serve a mount at once, and blocks of the same operations alternate
# between them (bench/paired_ops.py), so a slow moment of this shared
# machine hits both. Prints, per workload, the median of the per-round time
# ratios A/B (below 1.0: A faster) and each side's µs per operation.
#   pairedbench.sh OCIVM_A OCIVM_B|bindfs [ocivm mount options for the ocivm sides]
#   env: ROUNDS (100), BLK (200 operations per block),
#        OPS (open+read,stat,create+unlink; also cycle: fsbench's create
#             4K / stat / open+read / unlink, each timed on its own),
#        CACHE (never: the ocivm sides' --cache),
#        CONTEND (0: busy loops competing for the CPUs during the whole
#                 run, fsbench --contend's paired counterpart)
# B=bindfs: Debian's bindfs (libfuse) as the B side, fsbench's peer.
# Where each process runs matters as much as what it does once the CPUs are
# contended: with autogroup scheduling (the kernel's default where there is
# no systemd slice) a session's processes share one CPU share. Both servers
# run in this script's session, with the client (bindfs -f, not a daemon in
# a session of its own); each busy loop has a session of its own, as a
# program started elsewhere would. fsbench --contend does the same
# (docs/benchmarks.md, session 12).
set -uo pipefail
A=${1:?usage: pairedbench.sh OCIVM_A OCIVM_B|bindfs [mount options]}
B=${2:?usage: pairedbench.sh OCIVM_A OCIVM_B|bindfs [mount options]}
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
CACHE=${CACHE:-never}
CONTEND=${CONTEND:-0}
fail() { echo "pairedbench: $*" >&2; exit 1; }
command -v python3 >/dev/null || fail "python3 missing: apt-get install python3"
[ "$B" != bindfs ] || command -v bindfs >/dev/null || fail "bindfs missing: apt-get install bindfs"
[[ $CONTEND =~ ^[0-9]+$ ]] && [ "$CONTEND" -le 64 ] || fail "CONTEND must be 0 to 64 busy loops, not '$CONTEND'"
D=$(scratch_dir pairedbench "${TMPDIR:-/tmp}") || fail "cannot make a scratch directory in ${TMPDIR:-/tmp}"
PA="" PB="" SPIN=""
cleanup() {
  trap '' INT TERM HUP  # a second signal must not cut the cleanup short
  for p in $SPIN; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for m in "$D/ma" "$D/mb"; do unmount_if_mounted "$m"; done
  for p in $PA $PB; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf --one-file-system "$D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
mkdir -p "$D/sa" "$D/sb" "$D/ma" "$D/mb"
"$A" mount "$D/sa" "$D/ma" --cache "$CACHE" "$@" & PA=$!
if [ "$B" = bindfs ]; then
  bindfs -f "$D/sb" "$D/mb" & PB=$!
else
  "$B" mount "$D/sb" "$D/mb" --cache "$CACHE" "$@" & PB=$!
fi
for _ in $(seq 200); do
  is_mounted "$D/ma" && is_mounted "$D/mb" && break
  kill -0 "$PA" 2>/dev/null && kill -0 "$PB" 2>/dev/null || fail "a server exited before its mount came up"
  sleep 0.05
done
is_mounted "$D/ma" && is_mounted "$D/mb" || fail "the mounts did not come up"
start_busy_loops "$CONTEND" || fail "cannot start the busy loops"
echo "pairedbench: A=$A B=$B, --cache $CACHE $*, ${ROUNDS:-100} rounds of ${BLK:-200}${SPIN:+, $CONTEND busy loops throughout}"
python3 "$HERE/paired_ops.py" "$D/ma" "$D/mb" "${ROUNDS:-100}" "${BLK:-200}"
