#!/usr/bin/env bash
# diskbench: `ocivm disk create` of a ~300 MB Debian root file system against
# the usual way (a fresh ext4 on a loop device, mount, cp -a, unmount), both
# ending in a GPT disk image with one ext4 root partition; mkfs.ext4 -d (the
# e2fsprogs way without a mount) as a third row. Interleaved, REPS
# repetitions (default 3), medians, ratio. The tree is the imagebench one:
# this machine's own /etc, /usr/bin, /usr/sbin and libraries.
#   bench/diskbench.sh [OCIVM]
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
OCIVM=${1:-$HERE/../build/ocivm}
REPS=${REPS:-3}
fail() { echo "diskbench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root (the peer loop-mounts)"
[ -x "$OCIVM" ] || fail "$OCIVM missing: make build"
WORK=$(scratch_dir diskbench) || fail "cannot make a scratch directory in /var/tmp"
trap 'umount "$WORK/mnt" 2>/dev/null; for l in $(losetup -j "$WORK/peer.raw" -O NAME -n 2>/dev/null); do losetup -d $l; done; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT

root=$WORK/rootfs
make_debian_tree "$root"
size_mb=$(du -sm "$root" | cut -f1)
files=$(find "$root" | wc -l)

# the same disk size for both: what ocivm chooses
"$OCIVM" disk create "$root" "$WORK/probe.raw" > /dev/null || fail "ocivm disk create failed"
disk_bytes=$(stat -c %s "$WORK/probe.raw"); rm -f "$WORK/probe.raw"
part_bytes=$((disk_bytes - 2 * 1048576))
peer() {
  rm -f "$WORK/peer.raw"
  truncate -s "$disk_bytes" "$WORK/peer.raw"
  printf 'label: gpt\nstart=2048, size=%d, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root\n' $((part_bytes / 512)) |
    sfdisk --quiet "$WORK/peer.raw" || fail "sfdisk failed"
  # the partition through a loop device at its offset (partition nodes need udev)
  local loop; loop=$(losetup -f --show -o 1048576 --sizelimit "$part_bytes" "$WORK/peer.raw") || fail "losetup failed"
  mkfs.ext4 -q -F -I 256 -b 4096 "$loop" || fail "mkfs failed"
  mkdir -p "$WORK/mnt"; mount "$loop" "$WORK/mnt" || fail "mount failed"
  cp -a "$root/." "$WORK/mnt/"
  umount "$WORK/mnt"; losetup -d "$loop"
  sync -f "$WORK/peer.raw"
}
# mkfs.ext4 -d: e2fsprogs' own populate-from-directory (what ocivm used
# first; it writes file data one block at a time), same disk, same partition
mkfsd() {
  rm -f "$WORK/mkfsd.raw"
  truncate -s "$disk_bytes" "$WORK/mkfsd.raw"
  printf 'label: gpt\nstart=2048, size=%d, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root\n' $((part_bytes / 512)) |
    sfdisk --quiet "$WORK/mkfsd.raw" || fail "sfdisk failed"
  mkfs.ext4 -q -F -I 256 -b 4096 -d "$root" -E offset=1048576 "$WORK/mkfsd.raw" $((part_bytes / 1024))k || fail "mkfs.ext4 -d failed"
  sync -f "$WORK/mkfsd.raw"
}
ours() { rm -f "$WORK/ours.raw"; "$OCIVM" disk create --size "$disk_bytes" "$root" "$WORK/ours.raw" > /dev/null || fail "ocivm disk create failed"; sync -f "$WORK/ours.raw"; }
: > "$WORK/peer.t"; : > "$WORK/ours.t"; : > "$WORK/mkfsd.t"
for i in $(seq "$REPS"); do
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
  t0=$(now); peer; t1=$(now); echo "$t1 - $t0" | bc >> "$WORK/peer.t"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
  t0=$(now); ours; t1=$(now); echo "$t1 - $t0" | bc >> "$WORK/ours.t"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
  t0=$(now); mkfsd; t1=$(now); echo "$t1 - $t0" | bc >> "$WORK/mkfsd.t"
  rm -f "$WORK/peer.raw" "$WORK/ours.raw" "$WORK/mkfsd.raw"
done
P=$(median < "$WORK/peer.t"); O=$(median < "$WORK/ours.t"); M=$(median < "$WORK/mkfsd.t")
echo "diskbench: ${size_mb} MB tree, ${files} entries, $((disk_bytes >> 20)) MiB disk; median of $REPS, cold page cache, synced"
printf "%-52s %10s\n" "way" "median s"
printf "%-52s %10.3f\n" "loop + mkfs.ext4 + mount + cp -a + umount (peer)" "$P"
printf "%-52s %10.3f\n" "sfdisk + mkfs.ext4 -d (no mount)" "$M"
printf "%-52s %10.3f\n" "ocivm disk create" "$O"
printf "%-52s %10.2f\n" "speed-up (target >= 1.5)" "$(echo "scale=4; $P / $O" | bc)"
echo "all peer: $(tr '\n' ' ' < "$WORK/peer.t")"
echo "all ours: $(tr '\n' ' ' < "$WORK/ours.t")"
echo "all mkfs.ext4 -d: $(tr '\n' ' ' < "$WORK/mkfsd.t")"
