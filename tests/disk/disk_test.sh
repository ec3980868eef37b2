#!/usr/bin/env bash
# Disk and unmount tests (ctest label fs, as root): `ocivm holders` on a
# loop-mounted ext4 held every way a mount can be held, `ocivm umount`
# refusing (and naming the holders) while it is held and succeeding after,
# --lazy-after-sync, and `ocivm disk create` round trips.
#   disk_test.sh OCIVM
set -uo pipefail
OCIVM=${1:?ocivm binary}
. "$(dirname "$0")/../lib/check.sh"
. "$(dirname "$0")/../lib/tree.sh"
. "$(dirname "$0")/../lib/mounts.sh"
[ "$(id -u)" -eq 0 ] || fail "the disk tests mount file systems and must run as root"
for t in mkfs.ext4 e2fsck losetup unshare debugfs qemu-img getfattr setfattr setfacl perl; do
  command -v $t >/dev/null || fail "$t missing: apt-get install e2fsprogs util-linux qemu-utils attr acl perl"
done
WORK=${TMPDIR:-/tmp}/ocivm-disktest-$$
mkdir -p "$WORK"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  swapoff "$WORK"/m/swapfile 2>/dev/null
  for l in $(losetup -j "$WORK/m/loopfile" -O NAME -n 2>/dev/null); do losetup -d "$l"; done
  local -a left; local m
  mounts_under "$WORK" left
  for m in "${left[@]}"; do umount -l "$m" 2>/dev/null; done
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

M=$WORK/m
truncate -s 96M "$WORK/fs.img"
mkfs.ext4 -q -F "$WORK/fs.img"
mkdir -p "$M"
mount -o loop "$WORK/fs.img" "$M" || fail "cannot loop-mount an ext4 image"

# --- an idle mount has no holders
"$OCIVM" holders --format json "$M" > "$WORK/idle.json"
check "idle mount: no holders" [ "$(tr -d ' \n' < "$WORK/idle.json")" = "[]" ]

# --- every kind of holder
mkdir -p "$M/dir" "$M/sub" "$M/bind"
echo data > "$M/file"
cp /bin/sleep "$M/sleep"
lib=/lib/x86_64-linux-gnu/libdl.so.2   # a stub in glibc 2.36: harmless to preload
[ -f "$lib" ] || fail "$lib missing (libc6)"
cp "$lib" "$M/libheld.so"
truncate -s 8M "$M/loopfile"
( cd "$M/dir" && exec sleep 1000 ) & pid_cwd=$!; pids+=($pid_cwd)
sleep 1000 < "$M/file" & pid_fd=$!; pids+=($pid_fd)
LD_PRELOAD="$M/libheld.so" sleep 1000 < /dev/null & pid_mmap=$!; pids+=($pid_mmap)
"$M/sleep" 1000 < /dev/null & pid_exe=$!; pids+=($pid_exe)
unshare -m --propagation private sleep 1000 < /dev/null & pid_ns=$!; pids+=($pid_ns)
mkdir -p "$M/chroot/bin"; cp /bin/busybox "$M/chroot/bin/"
chroot "$M/chroot" /bin/busybox sleep 1000 < /dev/null & pid_root=$!; pids+=($pid_root)
loopdev=$(losetup -f --show "$M/loopfile")
mount -t tmpfs sub "$M/sub"
mkdir -p "$WORK/elsewhere"; mount --bind "$M/bind" "$WORK/elsewhere"
swap_ok=0
if dd if=/dev/zero of="$M/swapfile" bs=1M count=16 status=none && chmod 600 "$M/swapfile" && mkswap -q "$M/swapfile" >/dev/null 2>&1 && swapon "$M/swapfile" 2>/dev/null; then swap_ok=1; fi
sleep 0.5
"$OCIVM" holders --format json "$M" > "$WORK/held.json"
"$OCIVM" holders "$M" > "$WORK/held.txt"
J=$(tr -d ' \n' < "$WORK/held.json")
has() { echo "$J" | grep -q "$1"; }
check "holders: open fd, with pid and path" has "\"kind\":\"fd\",\"pid\":$pid_fd,\"what\":\"0$M/file\""
check "holders: cwd" has "\"kind\":\"cwd\",\"pid\":$pid_cwd,\"what\":\"$M/dir\""
check "holders: memory mapping without an fd (the bootc case)" has "\"kind\":\"mmap\",\"pid\":$pid_mmap,\"what\":\"$M/libheld.so\""
check "holders: executable" has "\"kind\":\"exe\",\"pid\":$pid_exe,\"what\":\"$M/sleep\""
check "holders: root directory" has "\"kind\":\"root\",\"pid\":$pid_root,"
check "holders: another mount namespace" has "\"kind\":\"mount-namespace\",\"pid\":$pid_ns,"
check "holders: loop device backed by a file on it" has "\"kind\":\"loop\",\"pid\":null,\"what\":\"${loopdev}backedby$M/loopfile\""
check "holders: submount" has "\"kind\":\"submount\",\"pid\":null,\"what\":\"$M/sub(tmpfs)\""
check "holders: bind mount elsewhere" has "\"kind\":\"bind-mount\",\"pid\":null,\"what\":\"$WORK/elsewhere\""
if [ $swap_ok = 1 ]; then
  check "holders: swap file" has "\"kind\":\"swap\",\"pid\":null,\"what\":\"$M/swapfile\""
else
  echo "note: swapon is not permitted here; the swap holder is not exercised"
fi
check "holders: the table names the command" grep -q "^$pid_mmap *sleep *mmap *$M/libheld.so" "$WORK/held.txt"
check "holders: no false holder (this shell's pid is not listed)" bash -c "! echo '$J' | grep -q '\"pid\":$$,'"

# --- ocivm umount refuses while held, names the holders, detaches nothing
start=$(date +%s%N)
"$OCIVM" umount --timeout 1s "$M" > "$WORK/umount1.out" 2> "$WORK/umount1.err"; rc=$?
check "umount while held: exit 1" [ $rc = 1 ]
check "umount while held: says busy and not detached" grep -q "is busy after 1.0 s; it was not detached and nothing was lost" "$WORK/umount1.err"
check "umount while held: names the mmap holder" grep -q "^$pid_mmap *sleep *mmap" "$WORK/umount1.err"
check "umount while held: the mount is still there" mounted_at "$M"
check "umount while held: the submount was taken down first (deepest first)" not_mounted_at "$M/sub"

# --- after the holders exit, it succeeds
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null; pids=()
losetup -d "$loopdev"
[ $swap_ok = 1 ] && swapoff "$M/swapfile"
umount "$WORK/elsewhere"
mount -t tmpfs sub2 "$M/sub"; mkdir -p "$M/sub/deeper"; mount -t tmpfs sub3 "$M/sub/deeper"
"$OCIVM" umount --timeout 5s "$M" 2> "$WORK/umount2.err"; rc=$?
check "umount after the holders exit: exit 0" [ $rc = 0 ]
check "umount: the mount and its submounts are gone" no_mounts_under "$M"

# --- --lazy-after-sync: remount read-only, freeze/thaw, detach, saying so
mount -o loop "$WORK/fs.img" "$M"
sleep 1000 < "$M/file" & p=$!; pids+=($p)
"$OCIVM" umount --timeout 0.5s --lazy-after-sync "$M" 2> "$WORK/lazy.err"; rc=$?
check "--lazy-after-sync: exit 0" [ $rc = 0 ]
check "--lazy-after-sync: says it remounted read-only" grep -q "remounted $M read-only" "$WORK/lazy.err"
check "--lazy-after-sync: says it froze and thawed" grep -q "froze and thawed $M" "$WORK/lazy.err"
check "--lazy-after-sync: says it detached" grep -q "detached $M" "$WORK/lazy.err"
check "--lazy-after-sync: the mount point is free" not_mounted_at "$M"
kill -9 $p; wait $p 2>/dev/null; pids=()
"$OCIVM" umount "$WORK/nowhere" 2> "$WORK/notmnt.err"; rc=$?
check "umount of a non-mount: exit 125, one line" bash -c "[ $rc = 125 ] && [ \$(wc -l < $WORK/notmnt.err) = 1 ]"

# --- ocivm disk create: round trip without mounting
SRC=$WORK/src
make_test_tree "$SRC"
"$OCIVM" disk create --log-level info "$SRC" "$WORK/disk.raw" > "$WORK/partuuid" 2> "$WORK/create.err"; rc=$?
check "disk create: exit 0" [ $rc = 0 ]
# dac_override, dac_read_search, fowner, sys_admin (trusted.* xattrs): 0x20000e
check "disk create: the writer runs with no network and CapEff 20000e" grep -q "disk create: no network; capabilities cut to CapEff 20000e; no_new_privs" "$WORK/create.err"
check "disk create: GPT with the root partition and the printed PARTUUID" bash -c "sfdisk -d $WORK/disk.raw | grep -qi 'uuid=$(cat "$WORK/partuuid")'"
check "disk create: e2fsck finds the file system clean" bash -c "dd if=$WORK/disk.raw of=$WORK/part.img bs=1M skip=1 status=none && e2fsck -fn $WORK/part.img >/dev/null 2>&1"
rm -f "$WORK/part.img"
mkdir -p "$WORK/rt"
mount -o loop,ro,offset=1048576 "$WORK/disk.raw" "$WORK/rt" || bad "disk create: the partition mounts"
check "disk create: the tree reads back exactly (content, mode, owner, xattrs, links, times)" diff <(tree_listing "$SRC") <(tree_listing "$WORK/rt")
check "disk create: holes stay holes (a 40 MB sparse file takes under 1 MB)" [ "$(stat -c %b "$WORK/rt/sparse")" -lt 2048 ]
umount "$WORK/rt"
mkdir -p "$WORK/big"; head -c 30000000 /dev/urandom > "$WORK/big/blob"
"$OCIVM" disk create --size 20M "$WORK/big" "$WORK/small.raw" 2> "$WORK/small.err"; rc=$?
check "disk create of a tree bigger than --size: exit 125, says to give a larger --size, no output file" \
  bash -c "[ $rc = 125 ] && [ \$(wc -l < $WORK/small.err) = 1 ] && grep -q 'larger --size' $WORK/small.err && [ ! -e $WORK/small.raw ] && [ -z \"\$(ls $WORK | grep small.raw)\" ]"
# The writer is PID 1 of its own PID namespace: temporary files named by
# pid (OUTPUT.tmp.1, OUTPUT.raw.1) would be every writer's, and another
# writer's (or a user's file of that name) would be overwritten.
echo canary > "$WORK/disk.qcow2.tmp.1"; echo canary > "$WORK/disk.qcow2.raw.1"
"$OCIVM" disk create --format qcow2 "$SRC" "$WORK/disk.qcow2" > /dev/null 2>&1
check "disk create --format qcow2: a qcow2 file" bash -c "qemu-img info $WORK/disk.qcow2 | grep -q 'file format: qcow2'"
check "disk create: files named as a pid-named temporary would be are left alone, and no temporary is left" \
  bash -c "[ \"\$(cat $WORK/disk.qcow2.tmp.1 $WORK/disk.qcow2.raw.1)\" = \"\$(printf 'canary\ncanary')\" ] &&
           [ \$(ls $WORK | grep -c '^disk.qcow2\\.') = 2 ]"
rm -f "$WORK/disk.qcow2.tmp.1" "$WORK/disk.qcow2.raw.1"
(cd / && "$OCIVM" disk create "$SRC" disk-in-root.raw) 2> "$WORK/inroot.err"; rc=$?
check "disk create into /: refused before anything is written (the writer would see the whole host)" \
  bash -c "[ $rc -ne 0 ] && grep -q 'is in /' $WORK/inroot.err && [ ! -e /disk-in-root.raw ] && [ -z \"\$(ls / | grep disk-in-root)\" ]"
rm -f /disk-in-root.raw /disk-in-root.raw.*
"$OCIVM" disk create "$SRC" "$SRC/inside.raw" 2> "$WORK/inside.err"; rc=$?
check "disk create with OUTPUT inside the tree: refused, nothing written ($(tr '\n' ' ' < "$WORK/inside.err"))" \
  bash -c "[ $rc -ne 0 ] && grep -q 'inside IMAGE' $WORK/inside.err && [ -z \"\$(ls $SRC | grep inside.raw)\" ]"
"$OCIVM" disk create "$WORK/missing" "$WORK/x.raw" 2> "$WORK/missing.err"; rc=$?
check "disk create of a missing image: exit 125, one line, no output file" bash -c "[ $rc = 125 ] && [ \$(wc -l < $WORK/missing.err) = 1 ] && [ ! -e $WORK/x.raw ]"

finish
