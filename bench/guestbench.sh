#!/usr/bin/env bash
# guestbench: the same guest workload on a ~7,000-entry tree through
# `ocivm fsd` and through Debian's C virtiofsd, in cache modes never, auto
# and always, same kernel and initramfs, interleaved in one run. Prints wall
# time per phase (from the guest's /proc/uptime), requests served, ratios.
# With PREVIOUS=OTHER_OCIVM (e.g. the previous commit's build) that fsd runs
# interleaved too, and a table compares this build with it.
#   [PREVIOUS=OCIVM] [SERVERS="ocivm previous virtiofsd"] [MODES="never auto always"] bench/guestbench.sh [OCIVM]
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
OCIVM=${1:-$HERE/../build/ocivm}
MODES=${MODES:-never auto always}
VIRTIOFSD=/usr/lib/qemu/virtiofsd
fail() { echo "guestbench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root"
PREVIOUS=${PREVIOUS:-}
SERVERS=${SERVERS:-ocivm ${PREVIOUS:+previous} virtiofsd}
case " $SERVERS " in *" virtiofsd "*) WITH_VIRTIOFSD=1 ;; *) WITH_VIRTIOFSD= ;; esac
[ -z "$WITH_VIRTIOFSD" ] || [ -x "$VIRTIOFSD" ] || fail "$VIRTIOFSD missing: apt-get install qemu-system-x86"
command -v qemu-system-x86_64 >/dev/null || fail "apt-get install qemu-system-x86"
guest_kernel || fail "no kernel: apt-get install linux-image-amd64"

WORK=$(scratch_dir guestbench) || fail "cannot make a scratch directory in /var/tmp"
trap 'pkill -9 -f "$WORK/" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
INITRD=$WORK/initrd.img
"$HERE/../tests/vm/build-initramfs.sh" "$KREL" "$INITRD" || fail "building the initramfs"

# The tree: 70 directories of 99 files (1-8 KiB), a static binary to exec.
SHARE=$WORK/share
mkdir -p "$SHARE/tree" "$SHARE/bin" "$SHARE/.bench"
make_small_tree "$SHARE/tree"
cp /bin/busybox "$SHARE/bin/busybox"
cat > "$SHARE/.bench/work.sh" <<'GUEST'
up() { read a b < /proc/uptime; echo $a; }
phase() { name=$1; shift; s=$(up); "$@" > /dev/null 2>&1; e=$(up); echo "PHASE $name $s $e"; }
phase find find /mnt/tree
phase stat sh -c 'find /mnt/tree | xargs stat -c %s'
phase ls-lR ls -lR /mnt/tree
phase read sh -c 'find /mnt/tree -type f | xargs cat'
phase exec sh -c 'i=0; while [ $i -lt 100 ]; do /mnt/bin/busybox true; i=$((i+1)); done'
phase create+delete sh -c 'mkdir /mnt/scratch; i=0; while [ $i -lt 2000 ]; do : > /mnt/scratch/f$i; i=$((i+1)); done; rm -rf /mnt/scratch'
echo BENCH-DONE
GUEST

PHASES="find stat ls-lR read exec create+delete"
declare -A T REQ

# run SERVER MODE: boots one VM; fills T[server,mode,phase], REQ[server,mode]
run() {
  local server=$1 mode=$2 dir=$WORK/$1-$2 pid
  mkdir -p "$dir"
  local sock=$dir/fs.sock
  if [ "$server" = ocivm ] || [ "$server" = ocivm-trace ] || [ "$server" = previous ]; then
    local bin=$OCIVM; [ "$server" = previous ] && bin=$PREVIOUS
    "$bin" fsd --socket-path "$sock" --shared-dir "$SHARE" --cache "$mode" --log-level info \
      ${TRACE:+--trace "$dir/trace.jsonl"} > "$dir/fsd.log" 2>&1 &
  else
    local m=$mode; [ "$m" = never ] && m=none
    "$VIRTIOFSD" --socket-path="$sock" -o source="$SHARE" -o cache="$m" \
      ${DEBUG:+-d} > "$dir/fsd.log" 2>&1 &
  fi
  pid=$!
  for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
  qemu-system-x86_64 -accel tcg -machine q35 -m 1G -smp 1 \
    -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
    -kernel "$KERNEL" -initrd "$INITRD" -append "console=ttyS0 quiet panic=-1 ocivm_cmd=.bench/work.sh" \
    -chardev socket,id=fs0,path="$sock" -device vhost-user-fs-pci,chardev=fs0,tag=share \
    -display none -monitor none -serial file:"$dir/console.log" -no-reboot > "$dir/qemu.log" 2>&1
  sleep 0.5; kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  grep -aq BENCH-DONE "$dir/console.log" || { echo "guestbench: $server/$mode did not finish; see $dir" >&2; tail -5 "$dir/console.log" >&2; }
  local total=0
  for p in $PHASES; do
    local v
    v=$(tr -d '\r' < "$dir/console.log" | awk -v p="$p" '$1=="PHASE" && $2==p {printf "%.2f", $4-$3}')
    T[$server,$mode,$p]=${v:-nan}
  done
  if [ "$server" != "${server#ocivm}" ] || [ "$server" = previous ]; then
    REQ[$server,$mode]=$(sed -n 's/.*served \([0-9]*\) requests.*/\1/p' "$dir/fsd.log" | tail -1)
  else
    REQ[$server,$mode]=$(grep -c "opcode:" "$dir/fsd.log")
  fi
  echo "  $server cache=$mode done" >&2
}

echo "guestbench: $(nproc) cores, kernel $KREL under TCG, $(find "$SHARE/tree" | wc -l) entries, $(date -u +%F)"
for mode in $MODES; do
  for server in $SERVERS; do run "$server" "$mode"; done
done
[ -n "${NO_COUNT:-}" ] && { for mode in $MODES; do for server in $SERVERS; do
  printf '%s %s:' "$server" "$mode"; for p in $PHASES; do printf ' %s %s' "$p" "${T[$server,$mode,$p]}"; done; echo; done; done; exit 0; }
# Requests served by the C virtiofsd: counted in a second, debug-logged run
# (its per-request log line), not timed.
declare -A VREQ
if [ -n "$WITH_VIRTIOFSD" ]; then
  for mode in $MODES; do
    DEBUG=1 run virtiofsd-count "$mode" 2>/dev/null || true
  done 2>/dev/null
fi

# phase_table PEER: the phases' times of ocivm and PEER per mode, and ratios
phase_table() {
  local peer=$1 p mode q o v
  printf '\n| phase |'; for mode in $MODES; do printf ' ocivm %s | %s %s | ratio |' "$mode" "$peer" "$mode"; done; printf '\n|---|'
  for mode in $MODES; do printf -- '---|---|---|'; done; printf '\n'
  for p in $PHASES total; do
    printf '| %s |' "$p"
    for mode in $MODES; do
      if [ "$p" = total ]; then
        o=0; v=0
        for q in $PHASES; do o=$(echo "$o + ${T[ocivm,$mode,$q]}" | bc); v=$(echo "$v + ${T[$peer,$mode,$q]}" | bc); done
      else
        o=${T[ocivm,$mode,$p]}; v=${T[$peer,$mode,$p]}
      fi
      printf ' %s s | %s s | %s |' "$o" "$v" "$(ratio_of "$o" "$v")"
    done
    printf '\n'
  done
}

# SERVERS without virtiofsd (e.g. "ocivm previous"): only the comparison below.
if [ -n "$WITH_VIRTIOFSD" ]; then
  phase_table virtiofsd
  printf '| requests |'
  for mode in $MODES; do printf ' %s | %s | %s |' "${REQ[ocivm,$mode]}" "${REQ[virtiofsd-count,$mode]}" "$(ratio_of "${REQ[ocivm,$mode]}" "${REQ[virtiofsd-count,$mode]}")"; done
  printf '\n\nratio = ocivm / virtiofsd (below 1.0: ocivm faster or fewer requests)\n'
fi

if [ -n "$PREVIOUS" ]; then
  printf '\nthis build against the previous one (%s), same run\n' "$PREVIOUS"
  phase_table previous
fi
