#!/usr/bin/env bash
# bootbench: time from launch to the command's exit status for
#   ocivm:    ocivm run --rm DEMO -- true
#   baseline: hand-assembled the usual way: Debian's C virtiofsd (cache=auto)
#             serving the same image, QEMU q35 + vhost-user-fs-pci, the same
#             kernel (/boot/vmlinuz-*, as shipped: compressed), and a busybox
#             initramfs (gzip) that loads the virtio-fs modules, mounts the
#             share and runs its `true`, then powers off.
# Interleaved, REPS repetitions each (default 10); prints each median and
# the ratio ocivm/baseline. With PREVIOUS=OTHER_OCIVM (e.g. the previous
# commit's build), that one runs interleaved too, with its own ratio.
#   [PREVIOUS=OCIVM] bench/bootbench.sh [OCIVM] [DEMO_IMAGE]
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
OCIVM=${1:-$HERE/../build/ocivm}
DEMO=${2:-$HERE/../build/demo}
REPS=${REPS:-10}
VIRTIOFSD=/usr/lib/qemu/virtiofsd
fail() { echo "bootbench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root"
[ -x "$VIRTIOFSD" ] || fail "$VIRTIOFSD missing: apt-get install qemu-system-x86"
[ -x "$OCIVM" ] || fail "$OCIVM missing: make build"
[ -x "$DEMO/bin/busybox" ] || fail "demo image $DEMO missing: make build"
DEMO=$(cd "$DEMO" && pwd)
guest_kernel || fail "no kernel: apt-get install linux-image-amd64"

WORK=$(scratch_dir bootbench) || fail "cannot make a scratch directory in /var/tmp"
trap 'pkill -9 -f "$WORK/" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT

# The baseline's initramfs: busybox, virtio-fs modules (deps from modules.dep).
root=$WORK/initramfs
mkdir -p "$root"/{bin,dev,proc,sys,mnt,lib}
cp /bin/busybox "$root/bin/busybox"
copy_virtiofs_modules "$MODDIR" "$root/lib" || fail "cannot put the virtio-fs modules into the initramfs"
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t devtmpfs dev /dev
for m in $($B cat /lib/order); do $B insmod /lib/$m; done
$B mount -t virtiofs share /mnt && $B chroot /mnt /bin/true && echo "BASELINE-EXIT: $?"
$B poweroff -f
INIT
chmod 755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initrd.img"

baseline() {
  local sock=$WORK/fs.sock log=$WORK/baseline.log
  rm -f "$sock"
  local t0; t0=$(now)
  "$VIRTIOFSD" --socket-path="$sock" -o source="$DEMO" -o cache=auto > "$WORK/virtiofsd.log" 2>&1 &
  local fsd=$!
  for _ in $(seq 500); do [ -S "$sock" ] && break; sleep 0.01; done
  qemu-system-x86_64 "${ACCEL[@]}" -machine q35 -m 512M -smp 1 \
    -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
    -chardev socket,id=fs0,path="$sock" -device vhost-user-fs-pci,chardev=fs0,tag=share \
    -kernel "$KERNEL" -initrd "$WORK/initrd.img" -append "console=ttyS0 quiet panic=-1" ${BASELINE_DEBUG:+-d guest_errors} \
    -display none -monitor none -serial file:"$log" -no-reboot > "$WORK/qemu.err" 2>&1
  local t1; t1=$(now)
  wait $fsd 2>/dev/null
  grep -q "BASELINE-EXIT: 0" "$log" || fail "the baseline VM did not run true: $(cat "$log" "$WORK/qemu.err" "$WORK/virtiofsd.log" | tail -n 8)"
  echo "$t1 - $t0" | bc
}
PREVIOUS=${PREVIOUS:-}
ocivm() {
  local bin=${1:-$OCIVM}
  local t0; t0=$(now)
  "$bin" run --rm "$DEMO" -- true 2> "$WORK/ocivm.err" || fail "ocivm run ($bin) failed: $(cat "$WORK/ocivm.err")"
  local t1; t1=$(now)
  echo "$t1 - $t0" | bc
}

# One warm-up of each (caches: ocivm's vmlinux/initramfs, the page cache);
# the baseline uses KVM exactly when ocivm finds it usable.
ocivm > /dev/null
ACCEL=(-accel kvm -cpu host)
grep -q "KVM is not usable" "$WORK/ocivm.err" && ACCEL=(-accel tcg)
baseline > /dev/null
[ -n "$PREVIOUS" ] && ocivm "$PREVIOUS" > /dev/null
: > "$WORK/b.times"; : > "$WORK/o.times"; : > "$WORK/p.times"
for i in $(seq "$REPS"); do
  baseline >> "$WORK/b.times"
  ocivm >> "$WORK/o.times"
  [ -n "$PREVIOUS" ] && ocivm "$PREVIOUS" >> "$WORK/p.times"
done
B=$(median < "$WORK/b.times"); O=$(median < "$WORK/o.times")
accel=${ACCEL[1]}
echo "bootbench: launch to exit status of \`true\`, median of $REPS, ocivm under $accel"
printf "%-54s %10s\n" "setup" "median s"
printf "%-54s %10.2f\n" "baseline: C virtiofsd cache=auto, q35, bzImage, busybox" "$B"
printf "%-54s %10.2f\n" "ocivm run --rm demo -- true" "$O"
printf "%-54s %10.2f\n" "ratio ocivm / baseline (target <= 0.6)" "$(echo "scale=4; $O / $B" | bc)"
if [ -n "$PREVIOUS" ]; then
  P=$(median < "$WORK/p.times")
  printf "%-54s %10.2f\n" "previous build: $PREVIOUS" "$P"
  printf "%-54s %10.2f\n" "ratio this build / previous build" "$(echo "scale=4; $O / $P" | bc)"
  echo "all previous: $(tr '\n' ' ' < "$WORK/p.times")"
fi
echo "all baseline: $(tr '\n' ' ' < "$WORK/b.times")"
echo "all ocivm:    $(tr '\n' ' ' < "$WORK/o.times")"
