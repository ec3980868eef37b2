#!/usr/bin/env bash
# execbench: what a command costs in a VM that lives on, against what it
# costs without one, in the same run:
#   exec:  `ocivm exec NAME true` into a detached VM (run -d), EXECS times
#          (default 50): p50 and p95, each timed from launch to exit;
#   fresh: `ocivm run --rm DEMO -- true`, FRESH times (default 5): p50.
# Prints exec p50 / fresh p50 (the target: at most 0.05).
# Then, when bench/netbench.sh is there, the forwarded throughput part:
# 100 MB from the guest to the host through -p, passt against QEMU's user
# network (see that script).
#   bench/execbench.sh [OCIVM] [DEMO_IMAGE]
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
OCIVM=${1:-$HERE/../build/ocivm}
DEMO=${2:-$HERE/../build/demo}
EXECS=${EXECS:-50}
FRESH=${FRESH:-5}
fail() { echo "execbench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root"
[ -x "$OCIVM" ] || fail "$OCIVM missing: make build"
[ -x "$DEMO/bin/busybox" ] || fail "demo image $DEMO missing: make build"
DEMO=$(cd "$DEMO" && pwd)

WORK=$(scratch_dir execbench) || fail "cannot make a scratch directory in /var/tmp"
export OCIVM_RUNTIME_DIR=$WORK/run
NAME=execbench-$$
trap '"$OCIVM" rm -f $NAME >/dev/null 2>&1; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT

ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f\n", (b - a) * 1000 }'; }
pct() { # pct P < values: the P-th percentile (nearest rank)
  sort -n | awk -v p="$1" '{a[NR]=$1} END {r=int((p*NR+99)/100); if (r<1) r=1; print a[r]}'
}

"$OCIVM" run -d --name $NAME "$DEMO" -- sleep 100000 > /dev/null 2> "$WORK/start.err" ||
  { cat "$WORK/start.err" >&2; fail "run -d failed"; }
"$OCIVM" exec $NAME true || fail "the first exec failed"
: > "$WORK/exec.ms"
for _ in $(seq "$EXECS"); do
  t0=$(now); "$OCIVM" exec $NAME true || fail "exec failed"; t1=$(now)
  ms "$t0" "$t1" >> "$WORK/exec.ms"
done
"$OCIVM" rm -f $NAME > /dev/null
: > "$WORK/fresh.ms"
for _ in $(seq "$FRESH"); do
  t0=$(now); "$OCIVM" run --rm "$DEMO" -- true 2> /dev/null || fail "run --rm failed"; t1=$(now)
  ms "$t0" "$t1" >> "$WORK/fresh.ms"
done
e50=$(pct 50 < "$WORK/exec.ms"); e95=$(pct 95 < "$WORK/exec.ms")
f50=$(pct 50 < "$WORK/fresh.ms")
printf '%-44s %10s %10s\n' "" "p50 ms" "p95 ms"
printf '%-44s %10s %10s\n' "ocivm exec NAME true ($EXECS times)" "$e50" "$e95"
printf '%-44s %10s %10s\n' "ocivm run --rm DEMO -- true ($FRESH times)" "$f50" "$(pct 95 < "$WORK/fresh.ms")"
printf 'exec p50 / fresh run p50: %s (target: at most 0.05)\n' "$(awk -v a="$e50" -v b="$f50" 'BEGIN { printf "%.3f", a / b }')"

if [ -x "$HERE/netbench.sh" ]; then
  echo
  "$HERE/netbench.sh" "$OCIVM" "$DEMO"
fi
