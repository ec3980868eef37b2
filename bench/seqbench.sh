#!/usr/bin/env bash
# seqbench: sequential write and read of one large file inside a VM over
# virtio-fs, through `ocivm fsd` and Debian's C virtiofsd, each with and
# without the writeback cache (`--writeback` / `-o writeback`), cache mode
# auto, same kernel and initramfs as guestbench, the four servers
# interleaved in every round. The guest times itself (/proc/uptime): the
# write is `dd bs=BS conv=fsync` (its time includes getting every byte to
# the host), the read a `dd` after dropping the guest's page cache. Prints
# the median MB/s of the rounds and the ratios the issue asks for.
# BS is the size of the writer's write() calls: 1M (the default) is the
# best case for a write-through cache (each call is one 1 MiB request);
# programs that write through stdio or a small buffer (compilers, linkers,
# tar, loggers) call write() with 4-64 KiB, and each such call is one
# round trip to the server without the writeback cache.
#   [SIZE_MB=1024] [BS=1M|256K|64K|4K] [ROUNDS=3] [MEM=1G] [CONFIGS="ocivm ocivm-wb virtiofsd virtiofsd-wb"]
#   bench/seqbench.sh [OCIVM]
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
OCIVM=${1:-$HERE/../build/ocivm}
SIZE_MB=${SIZE_MB:-1024}
ROUNDS=${ROUNDS:-3}
BS=${BS:-1M}
MEM=${MEM:-1G}
VIRTIOFSD=/usr/lib/qemu/virtiofsd
fail() { echo "seqbench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root"
[ -x "$OCIVM" ] || fail "$OCIVM is not an executable (make build)"
[ -x "$VIRTIOFSD" ] || fail "$VIRTIOFSD missing: apt-get install qemu-system-x86"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 missing: apt-get install qemu-system-x86"
command -v bc >/dev/null || fail "bc missing: apt-get install bc"
[[ $SIZE_MB =~ ^[1-9][0-9]*$ ]] || fail "SIZE_MB must be a positive number of MiB, not '$SIZE_MB'"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || fail "ROUNDS must be a positive number, not '$ROUNDS'"
[[ $BS =~ ^[1-9][0-9]{0,5}[KM]$ ]] || fail "BS must be a size in K or M (4K, 64K, 1M), not '$BS'"
case $BS in
  *K) BS_BYTES=$((${BS%K} * 1024)) ;;
  *M) BS_BYTES=$((${BS%M} * 1048576)) ;;
esac
[ "$BS_BYTES" -le $((SIZE_MB * 1048576)) ] && [ $((SIZE_MB * 1048576 % BS_BYTES)) -eq 0 ] ||
  fail "BS=$BS must divide SIZE_MB=$SIZE_MB MiB"
guest_kernel || fail "no kernel: apt-get install linux-image-amd64"

# On disk, not tmpfs: the host side writes into its page cache as a real
# share would. Room for the file twice over.
avail_mb=$(df -Pm /var/tmp | awk 'NR == 2 { print $4 }')
[ "$avail_mb" -gt $((SIZE_MB * 2)) ] || fail "/var/tmp has $avail_mb MiB free; $((SIZE_MB * 2)) needed for SIZE_MB=$SIZE_MB"
WORK=$(scratch_dir seqbench) || fail "cannot make a scratch directory in /var/tmp"
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
INITRD=$WORK/initrd.img
"$HERE/../tests/vm/build-initramfs.sh" "$KREL" "$INITRD" || fail "building the initramfs"

SHARE=$WORK/share
mkdir -p "$SHARE/.bench"
cat > "$SHARE/.bench/seq.sh" <<GUEST
up() { read a b < /proc/uptime; echo \$a; }
s=\$(up); dd if=/dev/zero of=/mnt/seq.bin bs=$BS_BYTES count=$((SIZE_MB * 1048576 / BS_BYTES)) conv=fsync 2>/dev/null; r=\$?; e=\$(up)
[ \$r = 0 ] && echo "PHASE write \$s \$e"
sync; echo 3 > /proc/sys/vm/drop_caches
[ "\$(stat -c %s /mnt/seq.bin)" = $((SIZE_MB * 1048576)) ] || echo "seqbench: /mnt/seq.bin has the wrong size"
s=\$(up); dd if=/mnt/seq.bin of=/dev/null bs=1048576 2>/dev/null; r=\$?; e=\$(up)
[ \$r = 0 ] && echo "PHASE read \$s \$e"
rm -f /mnt/seq.bin
echo BENCH-DONE
GUEST

CONFIGS=${CONFIGS:-ocivm ocivm-wb virtiofsd virtiofsd-wb}
declare -A MBS  # [config,phase,round]

# run CONFIG ROUND: boots one VM, fills MBS
run() {
  local cfg=$1 round=$2 dir=$WORK/$1-$2
  mkdir -p "$dir"
  local sock=$dir/fs.sock
  case $cfg in
    ocivm) "$OCIVM" fsd --socket-path "$sock" --shared-dir "$SHARE" --cache auto > "$dir/fsd.log" 2>&1 & ;;
    ocivm-wb) "$OCIVM" fsd --socket-path "$sock" --shared-dir "$SHARE" --cache auto --writeback > "$dir/fsd.log" 2>&1 & ;;
    virtiofsd) "$VIRTIOFSD" --socket-path="$sock" -o source="$SHARE" -o cache=auto -o no_writeback > "$dir/fsd.log" 2>&1 & ;;
    virtiofsd-wb) "$VIRTIOFSD" --socket-path="$sock" -o source="$SHARE" -o cache=auto -o writeback > "$dir/fsd.log" 2>&1 & ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
  [ -S "$sock" ] || { echo "seqbench: $cfg did not create its socket; see $dir/fsd.log" >&2; KEEP=1; }
  # Bounded: a guest that hangs ends the round (reported below), not the bench.
  timeout --kill-after=5 "${TIMEOUT:-900}" qemu-system-x86_64 -accel tcg -machine q35 -m "$MEM" -smp 1 \
    -object memory-backend-memfd,id=mem,size="$MEM",share=on -numa node,memdev=mem \
    -kernel "$KERNEL" -initrd "$INITRD" -append "console=ttyS0 quiet panic=-1 ocivm_cmd=.bench/seq.sh" \
    -chardev socket,id=fs0,path="$sock" -device vhost-user-fs-pci,chardev=fs0,tag=share \
    -display none -monitor none -serial file:"$dir/console.log" -no-reboot > "$dir/qemu.log" 2>&1
  # The server exits when QEMU disconnects; one that does not is stopped.
  for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""
  rm -f "$SHARE/seq.bin"
  if ! grep -aq BENCH-DONE "$dir/console.log"; then
    echo "seqbench: $cfg round $round did not finish; see $dir" >&2; tail -5 "$dir/console.log" >&2; KEEP=1
    FAILED=$((FAILED + 1))
  fi
  local p v
  for p in write read; do
    v=$(tr -d '\r' < "$dir/console.log" |
        awk -v p="$p" -v mb="$SIZE_MB" '$1 == "PHASE" && $2 == p && $4 > $3 { printf "%.1f", mb / ($4 - $3) }')
    MBS[$cfg,$p,$round]=${v:-nan}
  done
  echo "  round $round $cfg: write ${MBS[$cfg,write,$round]} MB/s, read ${MBS[$cfg,read,$round]} MB/s" >&2
}

# median_or_nan VALUE...: lib.sh's median (one decimal) of the values that are not nan; nan if none is.
median_or_nan() { local v; v=$(printf '%s\n' "$@" | grep -v -e nan -e '^$'); if [ -n "$v" ]; then median 1 <<<"$v"; else echo nan; fi; }
ratio() { if [ "$1" = nan ] || [ "$2" = nan ]; then echo nan; else ratio_of "$1" "$2"; fi; }

FAILED=0
echo "seqbench: $(nproc) cores, kernel $KREL under TCG, guest ${MEM}, ${SIZE_MB} MiB written in ${BS} calls, $ROUNDS rounds, $(date -u +%F)"
for round in $(seq "$ROUNDS"); do
  for cfg in $CONFIGS; do run "$cfg" "$round"; done
done

declare -A MED
printf '\n| server | write MB/s | read MB/s |\n|---|---|---|\n'
for cfg in $CONFIGS; do
  for p in write read; do
    vals=()
    for round in $(seq "$ROUNDS"); do vals+=("${MBS[$cfg,$p,$round]}"); done
    MED[$cfg,$p]=$(median_or_nan "${vals[@]}")
  done
  case $cfg in
    ocivm) name="ocivm fsd" ;; ocivm-wb) name="ocivm fsd --writeback" ;;
    virtiofsd) name="virtiofsd" ;; virtiofsd-wb) name="virtiofsd -o writeback" ;;
  esac
  printf '| %s | %s | %s |\n' "$name" "${MED[$cfg,write]}" "${MED[$cfg,read]}"
done
printf '\nmedian of %s rounds, MB/s (higher is better)\n\n' "$ROUNDS"
printf '| ratio | write | read |\n|---|---|---|\n'
# ratio_row LABEL A B: A's medians over B's, when CONFIGS had both.
ratio_row() {
  [ -n "${MED[$2,write]:-}" ] && [ -n "${MED[$3,write]:-}" ] || return 0
  printf '| %s | %s | %s |\n' "$1" "$(ratio "${MED[$2,write]}" "${MED[$3,write]}")" "$(ratio "${MED[$2,read]}" "${MED[$3,read]}")"
}
ratio_row "ocivm --writeback / ocivm" ocivm-wb ocivm
ratio_row "ocivm --writeback / virtiofsd -o writeback" ocivm-wb virtiofsd-wb
ratio_row "ocivm / virtiofsd" ocivm virtiofsd
printf '\nAcceptance (issue 10): ocivm --writeback write >= 2x ocivm write and >= virtiofsd -o writeback write\n'
if [ "$FAILED" -gt 0 ]; then
  echo "seqbench: $FAILED round(s) did not finish: the medians above leave them out; see the kept work directory" >&2
  exit 1
fi
