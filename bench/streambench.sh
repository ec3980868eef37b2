#!/usr/bin/env bash
# streambench: a -v share over the stream transport (--root erofs: FUSE
# frames on a virtio-serial port, relayed by ocivm-init) against the same
# share over vhost-user (virtio-fs, the default root), ROUNDS (default 3)
# alternating pairs of runs on the same machine, both with --cache never
# so that every operation is a request; the table gives the medians and
# the range of the per-pair ratios. In the guest (bench/streambench_guest.cpp): N stat, N
# create+unlink, N 4 KiB O_DIRECT reads; the table gives microseconds per
# operation and the ratio stream / vhost-user. Not part of `make test`.
#
#   bench/streambench.sh [OCIVM [DEMO_IMAGE]]
#
# Environment: N [2000] operations per workload; KEEP=1 keeps the work dir.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
OCIVM=${1:-$HERE/../build/ocivm}
DEMO=${2:-$HERE/../build/demo}
N=${N:-2000}
ROUNDS=${ROUNDS:-3}
fail() { echo "streambench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root (--root erofs needs it)"
[ -x "$OCIVM" ] || fail "$OCIVM is not an executable: build it first (make build)"
[ -x "$DEMO/bin/busybox" ] || fail "demo image $DEMO not built (make build)"
command -v g++ >/dev/null || fail "g++ missing (the guest helper is built static): apt-get install g++"
command -v mkfs.erofs >/dev/null || fail "mkfs.erofs missing: apt-get install erofs-utils"

WORK=$(scratch_dir streambench) || fail "cannot make a scratch directory in /var/tmp"
export OCIVM_RUNTIME_DIR=$WORK/run OCIVM_HOME=$WORK/home
cleanup() {
  for n in $("$OCIVM" ps -a -q 2>/dev/null); do "$OCIVM" rm -f "$n" >/dev/null 2>&1; done
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/bin" "$WORK/stream" "$WORK/vhost"
g++ -O2 -static -Wall -Wextra -Werror -x c++ "$HERE/streambench_guest.cpp" -o "$WORK/bin/streambench-guest" ||
  fail "building the guest helper (static: apt-get install g++ libc6-dev)"

run_one() { # NAME ROUND ROOT_FLAGS...: the guest's lines in $WORK/NAME.ROUND.out
  local name=$1 round=$2; shift 2
  rm -rf "${WORK:?}/$name"; mkdir -p "$WORK/$name"
  "$OCIVM" run --rm --no-snapshot-cache --cache never "$@" -v "$WORK/$name:/data" -v "$WORK/bin:/bench:ro" "$DEMO" -- \
    /bench/streambench-guest /data "$N" > "$WORK/$name.$round.out" 2> "$WORK/$name.$round.err" ||
    { cat "$WORK/$name.$round.err" >&2; fail "the $name run failed"; }
}
for r in $(seq "$ROUNDS"); do  # alternating, so a drift of the machine hits both
  if [ $((r % 2)) = 1 ]; then run_one stream "$r" --root erofs; run_one vhost "$r"
  else run_one vhost "$r"; run_one stream "$r" --root erofs; fi
done
accel=KVM
grep -q "running under TCG" "$WORK/stream.1.err" && accel=TCG
echo "streambench: $N operations each, $ROUNDS alternating pairs, --cache never, $(nproc) CPUs, host kernel $(uname -r), $accel, $(date -u +%F)"
printf '%-16s %14s %14s %8s %14s\n' workload "stream us/op" "vhost us/op" ratio "pair ratios"
for w in stat create+unlink read-4k; do
  : > "$WORK/$w.s"; : > "$WORK/$w.v"; : > "$WORK/$w.r"
  for r in $(seq "$ROUNDS"); do
    s=$(awk -v w=$w '$1 == w {print $2}' "$WORK/stream.$r.out")
    v=$(awk -v w=$w '$1 == w {print $2}' "$WORK/vhost.$r.out")
    [ -n "$s" ] && [ -n "$v" ] || fail "no $w result in round $r (see $WORK, KEEP=1)"
    echo "$s" >> "$WORK/$w.s"; echo "$v" >> "$WORK/$w.v"
    ratio_of "$s" "$v" >> "$WORK/$w.r"
  done
  printf '%-16s %14s %14s %8s %14s\n' "$w" "$(median 1 < "$WORK/$w.s")" "$(median 1 < "$WORK/$w.v")" \
    "$(median 1 < "$WORK/$w.r")" "$(sort -n "$WORK/$w.r" | sed -n '1p;$p' | paste -sd-)"
done
