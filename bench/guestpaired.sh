#!/usr/bin/env bash
# guestpaired: two builds' `ocivm fsd` against each other inside ONE guest,
# with the machine's noise paired out (the guest-side counterpart of
# pairedbench.sh). One VM gets two virtio-fs devices over the same
# directory: tag "share" served by OCIVM_A, tag "b" by OCIVM_B, both with the
# same --cache. Each round runs the same blocks of work (find, stat, read
# and create+delete over a part of a ~7,000-entry tree) on one mount, then
# on the other, alternating which goes first; a slow moment of this shared
# machine or of TCG hits both. Prints, per phase and in total, the median
# of the per-round time ratios A/B (below 1.0: A faster) and its spread.
#   bench/guestpaired.sh OCIVM_A OCIVM_B
#   env: MODE (never), ROUNDS (12), DIRS (directories of the tree per block, 12),
#        ARGS_A, ARGS_B (more `ocivm fsd` options for each, e.g. "--seccomp none")
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
A=${1:?usage: guestpaired.sh OCIVM_A OCIVM_B}
B=${2:?usage: guestpaired.sh OCIVM_A OCIVM_B}
MODE=${MODE:-never}
ROUNDS=${ROUNDS:-12}
DIRS=${DIRS:-12}
fail() { echo "guestpaired: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root"
command -v qemu-system-x86_64 >/dev/null || fail "apt-get install qemu-system-x86"
command -v bc >/dev/null || fail "apt-get install bc"
guest_kernel || fail "no kernel: apt-get install linux-image-amd64"
for b in "$A" "$B"; do [ -x "$b" ] || fail "$b is not an executable"; done
WORK=$(scratch_dir guestpaired) || fail "cannot make a scratch directory in /var/tmp"
PIDS=""
trap 'for p in $PIDS; do kill -9 $p 2>/dev/null; done; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
INITRD=$WORK/initrd.img
"$HERE/../tests/vm/build-initramfs.sh" "$KREL" "$INITRD" || fail "building the initramfs"
# The tree of guestbench: 70 directories of 99 files (1-8 KiB).
SHARE=$WORK/share
mkdir -p "$SHARE/tree" "$SHARE/.bench"
make_small_tree "$SHARE/tree"
cat > "$SHARE/.bench/work.sh" <<GUEST
ROUNDS=$ROUNDS
DIRS=$DIRS
GUEST
cat >> "$SHARE/.bench/work.sh" <<'GUEST'
mkdir -p /mntb && mount -t virtiofs b /mntb || { echo "PAIRED-FAILED mount b"; exit 1; }
up() { read a b < /proc/uptime; echo $a; }
# block SIDE ROOT ROUND: the phases on directories that change each round
block() {
  side=$1; m=$2; r=$3
  first=$(( (r * DIRS) % 70 + 1 )); dirs=""
  i=0; while [ $i -lt $DIRS ]; do dirs="$dirs $m/tree/d$(( (first + i - 1) % 70 + 1 ))"; i=$((i+1)); done
  s=$(up); find $dirs > /dev/null; e=$(up); echo "T $r $side find $s $e"
  s=$(up); find $dirs | xargs stat -c %s > /dev/null; e=$(up); echo "T $r $side stat $s $e"
  s=$(up); find $dirs -type f | xargs cat > /dev/null; e=$(up); echo "T $r $side read $s $e"
  s=$(up); mkdir $m/scratch-$side; i=0; while [ $i -lt 300 ]; do : > $m/scratch-$side/f$i; i=$((i+1)); done
  rm -rf $m/scratch-$side; e=$(up); echo "T $r $side create+delete $s $e"
}
r=1
while [ $r -le $ROUNDS ]; do
  if [ $((r % 2)) = 1 ]; then block a /mnt $r; block b /mntb $r; else block b /mntb $r; block a /mnt $r; fi
  r=$((r+1))
done
echo PAIRED-DONE
GUEST
for side in a b; do
  bin=$A; args=${ARGS_A:-}; [ $side = b ] && { bin=$B; args=${ARGS_B:-}; }
  # shellcheck disable=SC2086 # ARGS_* are options, split on purpose
  "$bin" fsd --socket-path "$WORK/$side.sock" --shared-dir "$SHARE" --cache "$MODE" --log-level info $args > "$WORK/$side.log" 2>&1 &
  PIDS="$PIDS $!"
  disown $!  # bash would report the servers' kill -9 as news
done
for s in a b; do for _ in $(seq 200); do [ -S "$WORK/$s.sock" ] && break; sleep 0.05; done; done
echo "guestpaired: A=$A ${ARGS_A:-} B=$B ${ARGS_B:-}, --cache $MODE, $ROUNDS rounds of $DIRS directories, $(nproc) cores, TCG, $(date -u +%F)"
qemu-system-x86_64 -accel tcg -machine q35 -m 1G -smp 1 \
  -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
  -kernel "$KERNEL" -initrd "$INITRD" -append "console=ttyS0 quiet panic=-1 ocivm_cmd=.bench/work.sh" \
  -chardev socket,id=fs0,path="$WORK/a.sock" -device vhost-user-fs-pci,chardev=fs0,tag=share \
  -chardev socket,id=fs1,path="$WORK/b.sock" -device vhost-user-fs-pci,chardev=fs1,tag=b \
  -display none -monitor none -serial file:"$WORK/console.log" -no-reboot > "$WORK/qemu.log" 2>&1
grep -aq PAIRED-DONE "$WORK/console.log" || { tail -5 "$WORK/console.log" >&2; fail "the guest did not finish (KEEP=1 keeps $WORK)"; }
tr -d '\r' < "$WORK/console.log" | awk '
  $1 == "T" { t[$2, $3, $4] = $6 - $5; phases[$4] = 1; if ($2 > n) n = $2 }
  function med(v, k,   i, j, x) {  # median of v[1..k] (sorted in place)
    for (i = 2; i <= k; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
    return k % 2 ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2
  }
  END {
    printf "| phase | A/B median | A/B IQR | A s/round | B s/round |\n|---|---|---|---|---|\n"
    np = split("find stat read create+delete total", order, " ")
    for (q = 1; q <= np; q++) {
      p = order[q]; k = 0; sa = 0; sb = 0
      for (r = 1; r <= n; r++) {
        if (p == "total") { a = 0; b = 0; for (x in phases) { a += t[r, "a", x]; b += t[r, "b", x] } }
        else { a = t[r, "a", p]; b = t[r, "b", p] }
        if (b > 0) { ratio[++k] = a / b; sa += a; sb += b }
      }
      m = med(ratio, k)
      printf "| %s | %.3f | %.3f-%.3f | %.2f | %.2f |\n", p, m, ratio[int(k / 4) + 1], ratio[k - int(k / 4)], sa / k, sb / k
    }
  }'
