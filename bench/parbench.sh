#!/usr/bin/env bash
# parbench: parallel service inside a VM, `ocivm fsd` against Debian's C
# virtiofsd, same kernel and initramfs, interleaved in one run. In the guest
# (bench/parbench_guest.cpp) 4 reader processes time random 4 KiB O_DIRECT
# reads of a 64 MiB file while one writer writes 256 MiB and fsyncs it; the
# table gives the readers' latency over the window the fsync ran in (p50,
# p99, max), the total time, and ratios ocivm / virtiofsd.
#
#   bench/parbench.sh [OCIVM]
#
# Environment (defaults in brackets):
#   MODES ["auto never"]   cache modes, each run against both servers
#   REPS [3]               repetitions (medians), servers alternating order
#   SMP [2]                guest vCPUs
#   READERS [4] WRITE_MIB [256] READ_MIB [64] MIN_READS [500]
#   FSD_THREAD_POOL_SIZE       passed to `ocivm fsd --thread-pool-size` when set
#   VIRTIOFSD_THREAD_POOL_SIZE passed to virtiofsd --thread-pool-size when set
#                              (unset: its own default, 0 on Debian 12's build:
#                              requests handled in the queue's thread; with a
#                              pool, Debian 12's build is killed by its own
#                              seccomp filter: sched_getaffinity, from glib)
#   TIMEOUT [900]          seconds one VM may run before it is killed
#   KEEP=1                 keep the work directory (logs, consoles)
#
# Why random O_DIRECT reads of a file hot in the host's page cache: each read
# is one READ request (the guest cannot answer it from its cache in any cache
# mode; both servers drop O_DIRECT on the host side) and costs the host
# nothing but a copy, so a read's latency is how long the request waited for
# the server, e.g. behind the writer's FSYNC. The written file is on
# /var/tmp, a disk, so the fsync does real work.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
OCIVM=${1:-$HERE/../build/ocivm}
MODES=${MODES:-auto never}
REPS=${REPS:-3}
SMP=${SMP:-2}
READERS=${READERS:-4}
WRITE_MIB=${WRITE_MIB:-256}
READ_MIB=${READ_MIB:-64}
MIN_READS=${MIN_READS:-500}
TIMEOUT=${TIMEOUT:-900}
FSD_THREAD_POOL_SIZE=${FSD_THREAD_POOL_SIZE:-}
VIRTIOFSD_THREAD_POOL_SIZE=${VIRTIOFSD_THREAD_POOL_SIZE:-}
SERVERS="ocivm virtiofsd"
VIRTIOFSD=/usr/lib/qemu/virtiofsd
fail() { echo "parbench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root"
[ -x "$OCIVM" ] || fail "$OCIVM is not an executable: build it first (make build)"
[ -x "$VIRTIOFSD" ] || fail "$VIRTIOFSD missing: apt-get install qemu-system-x86"
command -v qemu-system-x86_64 >/dev/null || fail "apt-get install qemu-system-x86"
command -v g++ >/dev/null || fail "g++ missing (the guest helper is built static): apt-get install g++"
for m in $MODES; do
  case $m in never|auto|always) ;; *) fail "cache mode $m: the C virtiofsd has only never (none), auto, always" ;; esac
done
guest_kernel || fail "no kernel: apt-get install linux-image-amd64"

WORK=$(scratch_dir parbench) || fail "cannot make a scratch directory in /var/tmp"
FSD_PID="" QEMU_PID=""
cleanup() {
  # Only what this script started, by PID: timeout passes the signal on to QEMU.
  [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null && wait "$QEMU_PID" 2>/dev/null
  [ -n "$FSD_PID" ] && kill "$FSD_PID" 2>/dev/null && wait "$FSD_PID" 2>/dev/null
  if [ -n "${KEEP:-}" ]; then echo "parbench: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
INITRD=$WORK/initrd.img
"$HERE/../tests/vm/build-initramfs.sh" "$KREL" "$INITRD" || fail "building the initramfs"

SHARE=$WORK/share
mkdir -p "$SHARE/.bench"
g++ -std=c++20 -O2 -static -Wall -Wextra -Werror "$HERE/parbench_guest.cpp" -o "$SHARE/.bench/parbench-guest" ||
  fail "building the guest helper (static: apt-get install g++ libc6-dev)"
dd if=/dev/urandom of="$SHARE/read-data" bs=1M count="$READ_MIB" status=none || fail "writing the read file"
cat > "$SHARE/.bench/run.sh" <<GUEST
/mnt/.bench/parbench-guest --read-file /mnt/read-data --write-file /mnt/write-data \
  --readers $READERS --write-mib $WRITE_MIB --min-reads $MIN_READS
echo "PARBENCH-EXIT \$?"
GUEST

KEYS="win_p50_us win_p99_us win_max_us win_reads fsync_s write_s total_s reads all_p99_us"
declare -A V   # V[server,mode,key] = space-separated values, one per repetition

# run SERVER MODE REP: boots one VM, appends its figures to V
run() {
  local server=$1 mode=$2 rep=$3 dir=$WORK/$1-$2-$3
  mkdir -p "$dir"
  local sock=$dir/fs.sock
  # Same start for every run: no written file, nothing dirty on the host,
  # the read file in the host's page cache.
  rm -f "$SHARE/write-data"
  sync
  cat "$SHARE/read-data" > /dev/null
  if [ "$server" = ocivm ]; then
    "$OCIVM" fsd --socket-path "$sock" --shared-dir "$SHARE" --cache "$mode" --log-level info \
      ${FSD_THREAD_POOL_SIZE:+--thread-pool-size "$FSD_THREAD_POOL_SIZE"} > "$dir/fsd.log" 2>&1 &
  else
    local m=$mode; [ "$m" = never ] && m=none
    "$VIRTIOFSD" --socket-path="$sock" -o source="$SHARE" -o cache="$m" \
      ${VIRTIOFSD_THREAD_POOL_SIZE:+--thread-pool-size="$VIRTIOFSD_THREAD_POOL_SIZE"} > "$dir/fsd.log" 2>&1 &
  fi
  FSD_PID=$!
  for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
  [ -S "$sock" ] || { cat "$dir/fsd.log" >&2; fail "$server did not create $sock"; }
  # TCG like the other guest benchmarks (no KVM on the machines they run on);
  # -smp $SMP: one vCPU per host core, enough for readers that mostly wait
  # and a writer that copies, without more vCPU threads than cores.
  timeout --kill-after=5 "$TIMEOUT" qemu-system-x86_64 -accel tcg -machine q35 -m 1G -smp "$SMP" \
    -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
    -kernel "$KERNEL" -initrd "$INITRD" -append "console=ttyS0 quiet panic=-1 ocivm_cmd=.bench/run.sh" \
    -chardev socket,id=fs0,path="$sock" -device vhost-user-fs-pci,chardev=fs0,tag=share \
    -display none -monitor none -serial file:"$dir/console.log" -no-reboot > "$dir/qemu.log" 2>&1 &
  QEMU_PID=$!
  # A server that dies leaves the guest waiting for ever (hung tasks): stop
  # QEMU then. A server also ends when QEMU disconnects at power-off, just
  # before QEMU itself exits, hence the grace period before the kill.
  local first=""
  wait -n -p first "$QEMU_PID" "$FSD_PID"
  if [ "$first" = "$FSD_PID" ]; then
    FSD_PID=""
    for _ in $(seq 100); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$QEMU_PID" 2>/dev/null; then
      echo "parbench: $server exited while the guest was running; stopping QEMU" \
        "(a seccomp kill shows in: dmesg | grep 'type=1326')" >&2
      kill "$QEMU_PID" 2>/dev/null
    fi
  fi
  wait "$QEMU_PID" 2>/dev/null
  QEMU_PID=""
  sleep 0.5
  [ -n "$FSD_PID" ] && { kill "$FSD_PID" 2>/dev/null; wait "$FSD_PID" 2>/dev/null; }
  FSD_PID=""
  local line
  line=$(tr -d '\r' < "$dir/console.log" | grep -a '^PARBENCH ' | tail -1)
  if [ -z "$line" ] || ! tr -d '\r' < "$dir/console.log" | grep -aq '^PARBENCH-EXIT 0'; then
    tr -d '\r' < "$dir/console.log" | grep -a 'PARBENCH\|OCIVM' >&2
    KEEP=1
    fail "$server cache=$mode rep $rep did not finish; see $dir"
  fi
  local k v
  for k in $KEYS; do
    v=$(echo "$line" | tr ' ' '\n' | sed -n "s/^$k=//p")
    V[$server,$mode,$k]="${V[$server,$mode,$k]:-} $v"
  done
  echo "  rep $rep/$REPS $server cache=$mode: $line" >&2
}

med() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

echo "parbench: $(nproc) cores, kernel $KREL under TCG -smp $SMP, $READERS readers (random 4 KiB O_DIRECT of $READ_MIB MiB)," \
  "1 writer ($WRITE_MIB MiB + fsync), share on $(findmnt -no FSTYPE -T "$WORK") ($WORK), $(date -u +%F)"
echo "parbench: ocivm fsd --thread-pool-size ${FSD_THREAD_POOL_SIZE:-(not given: its default)};" \
  "virtiofsd --thread-pool-size ${VIRTIOFSD_THREAD_POOL_SIZE:-(not given: its default)}"
for mode in $MODES; do
  for rep in $(seq 1 "$REPS"); do
    # Alternating order, so neither server always runs first.
    if [ $((rep % 2)) -eq 1 ]; then order="ocivm virtiofsd"; else order="virtiofsd ocivm"; fi
    for server in $order; do run "$server" "$mode" "$rep"; done
  done
done

printf '\nmedian of %s; latencies of the reads the fsync overlapped, in ms; ratio = ocivm / virtiofsd (below 1.0: ocivm better, except the two read counts, where more is better)\n\n' "$REPS"
printf '| figure |'; for mode in $MODES; do printf ' ocivm %s | virtiofsd %s | ratio |' "$mode" "$mode"; done
printf '\n|---|'; for mode in $MODES; do printf -- '---|---|---|'; done; printf '\n'
row() {  # row LABEL KEY SCALE FORMAT
  local label=$1 key=$2 scale=$3 fmt=$4 mode o v
  printf '| %s |' "$label"
  for mode in $MODES; do
    o=$(echo "${V[ocivm,$mode,$key]}" | med); v=$(echo "${V[virtiofsd,$mode,$key]}" | med)
    printf " $fmt | $fmt | %s |" "$(echo "$o / $scale" | bc -l)" "$(echo "$v / $scale" | bc -l)" \
      "$(echo "$v" | awk -v o="$o" '{ if ($1 > 0) printf "%.2f", o / $1; else print "n/a" }')"
  done
  printf '\n'
}
row "readers p50 during fsync (ms)" win_p50_us 1000 %.2f
row "readers p99 during fsync (ms)" win_p99_us 1000 %.2f
row "readers max during fsync (ms)" win_max_us 1000 %.2f
row "reads the fsync overlapped" win_reads 1 %.0f
row "readers p99 over the run (ms)" all_p99_us 1000 %.2f
row "reads in all" reads 1 %.0f
row "write (s)" write_s 1 %.2f
row "fsync (s)" fsync_s 1 %.2f
row "total (s)" total_s 1 %.2f
