#!/usr/bin/env bash
# streambench: a -v share over the stream transport (--root erofs: FUSE
# frames on a virtio-serial port, relayed by ocivm-init) against the same
# share over vhost-user (virtio-fs, the default root), one run each on the
# same machine, both with --cache never so that every operation is a
# request. In the guest (bench/streambench_guest.cpp): N stat, N
# create+unlink, N 4 KiB O_DIRECT reads; the table gives microseconds per
# operation and the ratio stream / vhost-user. Not part of `make test`.
#
#   bench/streambench.sh [OCIVM [DEMO_IMAGE]]
#
# Environment: N [2000] operations per workload; KEEP=1 keeps the work dir.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OCIVM=${1:-$HERE/../build/ocivm}
DEMO=${2:-$HERE/../build/demo}
N=${N:-2000}
fail() { echo "streambench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root (--root erofs needs it)"
[ -x "$OCIVM" ] || fail "$OCIVM is not an executable: build it first (make build)"
[ -x "$DEMO/bin/busybox" ] || fail "demo image $DEMO not built (make build)"
command -v g++ >/dev/null || fail "g++ missing (the guest helper is built static): apt-get install g++"
command -v mkfs.erofs >/dev/null || fail "mkfs.erofs missing: apt-get install erofs-utils"

WORK=$(mktemp -d /var/tmp/ocivm-streambench-XXXXXX)
export OCIVM_RUNTIME_DIR=$WORK/run OCIVM_HOME=$WORK/home
cleanup() {
  for n in $("$OCIVM" ps -a -q 2>/dev/null); do "$OCIVM" rm -f "$n" >/dev/null 2>&1; done
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/bin" "$WORK/stream" "$WORK/vhost"
g++ -O2 -static -Wall -Wextra -Werror -x c++ "$HERE/streambench_guest.cpp" -o "$WORK/bin/streambench-guest" ||
  fail "building the guest helper (static: apt-get install g++ libc6-dev)"

run_one() { # NAME ROOT_FLAGS...: the guest's lines in $WORK/NAME.out
  local name=$1; shift
  "$OCIVM" run --rm --cache never "$@" -v "$WORK/$name:/data" -v "$WORK/bin:/bench:ro" "$DEMO" -- \
    /bench/streambench-guest /data "$N" > "$WORK/$name.out" 2> "$WORK/$name.err" ||
    { cat "$WORK/$name.err" >&2; fail "the $name run failed"; }
}
run_one stream --root erofs
run_one vhost
accel=KVM
grep -q "running under TCG" "$WORK/stream.err" && accel=TCG
echo "streambench: $N operations each, --cache never, $(nproc) CPUs, host kernel $(uname -r), $accel, $(date -u +%F)"
printf '%-16s %14s %14s %8s\n' workload "stream us/op" "vhost us/op" ratio
for w in stat create+unlink read-4k; do
  s=$(awk -v w=$w '$1 == w {print $2}' "$WORK/stream.out")
  v=$(awk -v w=$w '$1 == w {print $2}' "$WORK/vhost.out")
  [ -n "$s" ] && [ -n "$v" ] || fail "no $w result (see $WORK, KEEP=1)"
  printf '%-16s %14s %14s %8s\n' "$w" "$s" "$v" "$(awk -v a="$s" -v b="$v" 'BEGIN {printf "%.2f", a / b}')"
done
