#!/usr/bin/env bash
# clonebench: what a snapshot saves (issue 12), against a boot, in one run
# (TCG on this machine):
#   (a) restore-to-exec: `run --from-snapshot S -d` until the first
#       `exec true` returns, CLONES times (default 20): p50, p95; against a
#       cold `run -d --root erofs` until its first exec, COLD times (default 5);
#   (b) memory: the total PSS of 10 running clones' QEMUs against the PSS of
#       the one VM they were cloned from (512 MiB guests);
#   (c) boot snapshots: `ocivm run --root erofs DEMO -- true`, the first
#       (cold) run against the runs after it, which restore the VM the first
#       one saved (RUNS times, default 5), and against --no-snapshot-cache.
#   (d) the stream transport of snapshot-capable VMs' -v shares against
#       vhost-user, on metadata and small reads in the guest
#       (bench/streambench.sh, run at the end).
# Targets: (a) at most 0.2, (b) at most 2, (c) at most 0.3; (d) has none.
#   bench/clonebench.sh [OCIVM] [DEMO_IMAGE]
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
OCIVM=${1:-$HERE/../build/ocivm}
DEMO=${2:-$HERE/../build/demo}
CLONES=${CLONES:-20}
COLD=${COLD:-5}
RUNS=${RUNS:-5}
fail() { echo "clonebench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root"
[ -x "$OCIVM" ] || fail "$OCIVM missing: make build"
[ -x "$DEMO/bin/busybox" ] || fail "demo image $DEMO missing: make build"
command -v mkfs.erofs > /dev/null || fail "mkfs.erofs missing: apt-get install erofs-utils"
DEMO=$(cd "$DEMO" && pwd)

WORK=$(scratch_dir clonebench) || fail "cannot make a scratch directory in /var/tmp"
export OCIVM_RUNTIME_DIR=$WORK/run OCIVM_HOME=$WORK/home
P=cb$$
cleanup() {
  for n in $("$OCIVM" ps -a -q 2>/dev/null); do "$OCIVM" rm -f "$n" > /dev/null 2>&1; done
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f\n", (b - a) * 1000 }'; }
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {r=int((p*NR+99)/100); if (r<1) r=1; print a[r]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
pss_kib() { awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup"; }
qemu_pid() { "$OCIVM" inspect "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["pids"]["qemu"])'; }

# Warm-up: the kernel probe, the initramfs and the EROFS image are built once.
"$OCIVM" run --rm --root erofs "$DEMO" -- true 2> /dev/null || fail "a first run failed"

# (a) cold start-to-exec
: > "$WORK/cold.ms"
for i in $(seq "$COLD"); do
  t0=$(now)
  "$OCIVM" run -d --root erofs --no-snapshot-cache --name $P-cold$i "$DEMO" -- sleep 100000 > /dev/null 2>&1 || fail "run -d failed"
  "$OCIVM" exec $P-cold$i true || fail "exec failed"
  t1=$(now)
  ms "$t0" "$t1" >> "$WORK/cold.ms"
  [ "$i" = "$COLD" ] || "$OCIVM" rm -f $P-cold$i > /dev/null
done
TEMPLATE=$P-cold$COLD
"$OCIVM" snapshot create $TEMPLATE $P-snap > /dev/null || fail "snapshot create failed"
"$OCIVM" snapshot inspect $P-snap > "$WORK/snap.json"
: > "$WORK/clone.ms"
for i in $(seq "$CLONES"); do
  t0=$(now)
  "$OCIVM" run --from-snapshot $P-snap -d --name $P-c$i > /dev/null 2>&1 || fail "run --from-snapshot failed"
  "$OCIVM" exec $P-c$i true || fail "exec in a clone failed"
  t1=$(now)
  ms "$t0" "$t1" >> "$WORK/clone.ms"
done
c50=$(pct 50 < "$WORK/clone.ms"); c95=$(pct 95 < "$WORK/clone.ms")
k50=$(pct 50 < "$WORK/cold.ms"); k95=$(pct 95 < "$WORK/cold.ms")

# (b) memory: 10 clones (the others gone: each clone's share of the
# snapshot's pages is counted among these 10 only) against the VM they came from
for i in $(seq 11 "$CLONES"); do "$OCIVM" rm -f $P-c$i > /dev/null; done
one=$(pss_kib "$(qemu_pid $TEMPLATE)")
total=0
for i in $(seq 10); do total=$((total + $(pss_kib "$(qemu_pid $P-c$i)"))); done
for i in $(seq 10); do "$OCIVM" rm -f $P-c$i > /dev/null; done
"$OCIVM" rm -f $TEMPLATE > /dev/null

# (c) boot snapshots: a plain run, the first (cold, saves), the later ones
# (restore), and --no-snapshot-cache runs (always cold) in between
"$OCIVM" snapshot prune > /dev/null
t0=$(now); "$OCIVM" run --rm --root erofs "$DEMO" -- true 2> /dev/null || fail "the first run failed"; t1=$(now)
first=$(ms "$t0" "$t1")
: > "$WORK/cached.ms"; : > "$WORK/nocache.ms"
for _ in $(seq "$RUNS"); do
  t0=$(now); "$OCIVM" run --rm --root erofs --log-level info "$DEMO" -- true 2> "$WORK/cached.err" || fail "a cached run failed"; t1=$(now)
  grep -q "restored from snapshot boot-" "$WORK/cached.err" || fail "a second run did not restore the boot snapshot"
  ms "$t0" "$t1" >> "$WORK/cached.ms"
  t0=$(now); "$OCIVM" run --rm --root erofs --no-snapshot-cache "$DEMO" -- true 2> /dev/null || fail "a cold run failed"; t1=$(now)
  ms "$t0" "$t1" >> "$WORK/nocache.ms"
done
b50=$(median < "$WORK/cached.ms"); n50=$(median < "$WORK/nocache.ms")

echo "clonebench: TCG, 512 MiB guests; snapshot: $(python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))[0]; print("%.0f MiB of RAM saved, %d KiB of device state, VM paused %.0f ms" % (s["ram_bytes"]/2**20, s["state_bytes"]/1024, s["timings_ms"]["paused"]))' "$WORK/snap.json")"
printf '%-58s %10s %10s\n' "" "p50 ms" "p95 ms"
printf '%-58s %10s %10s\n' "(a) run --from-snapshot -d + first exec ($CLONES clones)" "$c50" "$c95"
printf '%-58s %10s %10s\n' "    run -d --root erofs --no-snapshot-cache + first exec ($COLD)" "$k50" "$k95"
printf '    restore-to-exec / cold start-to-exec: %s (target: at most 0.2)\n' "$(ratio "$c50" "$k50")"
printf '(b) PSS of 10 clones: %d MiB; of the VM they came from: %d MiB; ratio %s (target: at most 2)\n' \
  $((total / 1024)) $((one / 1024)) "$(ratio "$total" "$one")"
printf '%-58s %10s\n' "(c) run --rm --root erofs DEMO -- true: first (cold, saves)" "$first"
printf '%-58s %10s\n' "    the same, restoring the boot snapshot (median of $RUNS)" "$b50"
printf '%-58s %10s\n' "    the same, --no-snapshot-cache (median of $RUNS)" "$n50"
printf '    cached / first: %s; cached / --no-snapshot-cache: %s (target: at most 0.3)\n' \
  "$(ratio "$b50" "$first")" "$(ratio "$b50" "$n50")"

if [ -x "$HERE/streambench.sh" ]; then
  echo
  echo "(d) stream transport against vhost-user:"
  "$HERE/streambench.sh" "$OCIVM" "$DEMO"
fi
