#!/usr/bin/env bash
# VM tests (ctest label vm): boots Debian's kernel under QEMU (KVM when
# /dev/kvm works, TCG otherwise) with a vhost-user-fs-pci device served by
# `ocivm fsd`, and checks from inside the guest:
#   - the host-mount POSIX suite (compiled statically) in cache modes never
#     and metadata;
#   - find + stat + checksum of every file of a tree equal the host's;
#   - killing QEMU ends fsd and leaves no socket; killing fsd leaves the host
#     (QEMU, other processes) unharmed.
#   vm_test.sh OCIVM GUEST_POSIX_TESTS CACHE_DIR
set -uo pipefail
OCIVM=${1:?ocivm binary}
GUEST_TESTS=${2:?guest_posix_tests binary}
CACHE_DIR=${3:?directory for the initramfs}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib/check.sh"
[ "$(id -u)" -eq 0 ] || fail "the vm tests run fsd with a namespace sandbox and must run as root"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 missing: apt-get install qemu-system-x86"
command -v cpio >/dev/null || fail "cpio missing: apt-get install cpio"
KREL=""
for v in /boot/vmlinuz-*; do
  r=${v#/boot/vmlinuz-}
  [ -f "/lib/modules/$r/modules.dep" ] && KREL=$r
done
[ -n "$KREL" ] || fail "no kernel with modules in /boot: apt-get install linux-image-amd64"
KERNEL=/boot/vmlinuz-$KREL
mkdir -p "$CACHE_DIR"
INITRD=$CACHE_DIR/initrd-$KREL.img
if [ ! -s "$INITRD" ] || [ "$HERE/build-initramfs.sh" -nt "$INITRD" ]; then
  "$HERE/build-initramfs.sh" "$KREL" "$INITRD" || fail "building the initramfs"
fi
# KVM only when it really runs a guest: under nested virtualisation /dev/kvm
# can exist and still fail (QEMU aborts setting MSRs, or the guest hangs).
kvm_works() {
  [ -w /dev/kvm ] || return 1
  local log=$CACHE_DIR/kvm-probe.log
  rm -f "$log"
  # QEMU itself in the background (not under timeout(1): $! would be
  # timeout's pid, and killing it would orphan a spinning QEMU); the loop
  # below bounds the wait and kills QEMU, the process we mean.
  qemu-system-x86_64 -accel kvm -cpu host -machine q35 -m 256 -display none \
    -monitor none -serial file:"$log" -kernel "$KERNEL" -no-reboot \
    -append "console=ttyS0 earlyprintk=ttyS0 panic=-1 rdinit=/nonexistent" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    grep -aq "Linux version" "$log" 2>/dev/null && { kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; return 0; }
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  return 1
}
if [ "${OCIVM_ACCEL:-}" != tcg ] && kvm_works 2>/dev/null; then
  ACCEL=(-accel kvm -cpu host)
else
  echo "warning: KVM is not usable here (no /dev/kvm, or it fails to run a guest); running under TCG (slow)"
  ACCEL=(-accel tcg)
fi

WORK=${TMPDIR:-/tmp}/ocivm-vmtest-$$
mkdir -p "$WORK"
# The shares live on a tmpfs, like the guest's reference directory, so the
# POSIX suite compares like with like (directory sizes, statfs).
mount -t tmpfs -o size=2g ocivm-vmtest "$WORK" || fail "cannot mount a tmpfs on $WORK"
cleanup() {
  pkill -9 -f "$WORK/" 2>/dev/null
  sleep 0.2
  [ -n "${KEEP:-}" ] || { umount -l "$WORK"; rm -rf "$WORK"; }
}
trap cleanup EXIT

# A tree to compare: nested directories, files of many sizes, symlinks, a
# hard link, an empty file.
make_tree() {
  local t=$1
  mkdir -p "$t"
  for d in $(seq 1 12); do
    mkdir -p "$t/dir$d/sub"
    for f in $(seq 1 20); do
      head -c $(( (d * 997 + f * 131) % 70000 )) /dev/urandom > "$t/dir$d/file$f"
    done
    ln -s "file1" "$t/dir$d/link"
    echo "$d" > "$t/dir$d/sub/leaf"
  done
  : > "$t/empty"
  ln "$t/dir1/file1" "$t/hardlink"
  chmod 0751 "$t/dir2"; chmod 0600 "$t/dir3/file3"; chown 1234:5678 "$t/dir4/file4"
}

# start_vm NAME SHARE CACHE SCRIPT: fsd + QEMU in the background; sets
# FSD_PID, QEMU_PID, CONSOLE.
start_vm() {
  local name=$1 share=$2 cache=$3 script=$4 extra=${5:-}
  local dir=$WORK/$name
  mkdir -p "$dir"
  CONSOLE=$dir/console.log
  SOCK=$dir/fs.sock
  "$OCIVM" fsd --socket-path "$SOCK" --shared-dir "$share" --cache "$cache" --log-level info $extra \
    > "$dir/fsd.log" 2>&1 &
  FSD_PID=$!
  for _ in $(seq 200); do [ -S "$SOCK" ] && break; sleep 0.05; done
  [ -S "$SOCK" ] || { cat "$dir/fsd.log"; return 1; }
  qemu-system-x86_64 "${ACCEL[@]}" -machine q35 -m 1G -smp 1 \
    -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
    -kernel "$KERNEL" -initrd "$INITRD" \
    -append "console=ttyS0 quiet panic=-1 ocivm_cmd=$script" \
    -chardev socket,id=fs0,path="$SOCK" -device vhost-user-fs-pci,chardev=fs0,tag=share \
    -display none -monitor none -serial file:"$CONSOLE" -no-reboot \
    > "$dir/qemu.log" 2>&1 &
  QEMU_PID=$!
}

# wait_pid PID SECONDS: 0 when it exited in time
wait_pid() {
  local pid=$1 secs=$2
  for _ in $(seq $((secs * 10))); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}
wait_console() {  # wait_console PATTERN SECONDS
  for _ in $(seq $(($2 * 10))); do grep -aq "$1" "$CONSOLE" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}

# --- POSIX suite and tree comparison, in two cache modes -------------------
for cache in never metadata; do
  share=$WORK/share-$cache
  mkdir -p "$share/.ocivm"
  cp "$GUEST_TESTS" "$share/.ocivm/guest_posix_tests"
  make_tree "$share/tree"
  cat > "$share/.ocivm/posix.sh" <<'GUEST'
mkdir -p /mnt/work
/mnt/.ocivm/guest_posix_tests --guest /mnt/work --gtest_brief=1 \
  --gtest_filter='-Rename.CrossDeviceIsEXDEV:Confinement.*:Readonly.*:Lifecycle.*:Xattr.UserAttributes'
rc=$?
echo "POSIX-EXIT: $rc"
rm -rf /mnt/work
cd /mnt/tree
find . | sort > /mnt/.ocivm/guest-find.txt
find . | sort | while read -r f; do stat -c '%n %s %a %u %g %h %F' "$f"; done > /mnt/.ocivm/guest-stat.txt
find . -type f | sort | while read -r f; do md5sum "$f"; done > /mnt/.ocivm/guest-sums.txt
ls -lR > /dev/null && echo "LS-OK"
exit $rc
GUEST
  # metadata runs under the seccomp allow-list: a missing syscall kills fsd
  extra=""; [ "$cache" = metadata ] && extra="--seccomp kill"
  start_vm "posix-$cache" "$share" "$cache" .ocivm/posix.sh "$extra" || { bad "$cache: fsd did not start"; continue; }
  if ! wait_pid "$QEMU_PID" 600; then
    bad "$cache: the guest did not finish within 600 s"; kill -9 "$QEMU_PID"
  fi
  tr -d '\r' < "$CONSOLE" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g' | grep -a -E "FAILED|Failure|PASSED|POSIX-EXIT|native .* vs mount" |
    cut -c1-240 | sed "s/^/  [guest $cache] /"
  grep -aq "POSIX-EXIT: 0" "$CONSOLE" && ok "$cache: POSIX suite in the guest" || bad "$cache: POSIX suite in the guest"
  grep -aq "LS-OK" "$CONSOLE" && ok "$cache: ls -lR in the guest" || bad "$cache: ls -lR in the guest"
  (cd "$share/tree" && LC_ALL=C find . | LC_ALL=C sort > "$WORK/host-find.txt"
   LC_ALL=C find . | LC_ALL=C sort | while read -r f; do stat -c '%n %s %a %u %g %h %F' "$f"; done > "$WORK/host-stat.txt"
   LC_ALL=C find . -type f | LC_ALL=C sort | while read -r f; do md5sum "$f"; done > "$WORK/host-sums.txt")
  for k in find stat sums; do
    if [ -s "$WORK/host-$k.txt" ] && cmp -s "$WORK/host-$k.txt" "$share/.ocivm/guest-$k.txt"; then
      ok "$cache: guest $k of the tree equals the host's ($(wc -l < "$WORK/host-$k.txt") lines)"
    else
      bad "$cache: guest $k differs from the host's"; diff "$WORK/host-$k.txt" "$share/.ocivm/guest-$k.txt" | head -5
    fi
  done
  if wait_pid "$FSD_PID" 10; then
    wait "$FSD_PID"; rc=$?
    [ $rc -eq 0 ] && ok "$cache: fsd exited 0 when QEMU powered off" || bad "$cache: fsd exited $rc"
  else
    bad "$cache: fsd still running after QEMU exited"
  fi
done

# --- killing QEMU ends fsd, leaves no socket --------------------------------
share=$WORK/share-kill
mkdir -p "$share/.ocivm"; make_tree "$share/tree"
cat > "$share/.ocivm/busy.sh" <<'GUEST'
echo GUEST-BUSY
while :; do cat /mnt/tree/dir1/* > /dev/null; ls -lR /mnt/tree > /dev/null; done
GUEST
if start_vm kill-qemu "$share" auto .ocivm/busy.sh && wait_console GUEST-BUSY 120; then
  sleep 1
  kill -9 "$QEMU_PID"
  if wait_pid "$FSD_PID" 10; then ok "kill -9 QEMU: fsd exited"; else bad "kill -9 QEMU: fsd still running"; fi
  [ -e "$SOCK" ] && bad "kill -9 QEMU: socket $SOCK left behind" || ok "kill -9 QEMU: no socket left"
  pgrep -f "$SOCK" >/dev/null && bad "kill -9 QEMU: processes left" || ok "kill -9 QEMU: no process left"
else
  bad "kill -9 QEMU: the guest did not start"
fi

# --- killing fsd: the host is unharmed --------------------------------------
cat > "$share/.ocivm/reader.sh" <<'GUEST'
echo GUEST-READING
i=0
while [ $i -lt 1000000 ]; do
  cat /mnt/tree/empty || { echo "GUEST-READ-FAILED"; break; }
  i=$((i+1))
done
GUEST
if start_vm kill-fsd "$share" never .ocivm/reader.sh && wait_console GUEST-READING 120; then
  sleep 1
  kill -9 "$FSD_PID"
  sleep 2
  if kill -0 "$QEMU_PID" 2>/dev/null; then
    ok "kill -9 fsd: QEMU keeps running (the guest's file requests stop being answered)"
  else
    wait "$QEMU_PID"; echo "  QEMU exited with $? after losing its back end"; ok "kill -9 fsd: QEMU ended cleanly"
  fi
  kill -9 "$QEMU_PID" 2>/dev/null
  wait_pid "$QEMU_PID" 10 && ok "kill -9 fsd: nothing left running" || bad "kill -9 fsd: QEMU could not be stopped"
  grep -aq "Kernel panic" "$CONSOLE" && bad "kill -9 fsd: guest kernel panicked" || ok "kill -9 fsd: no guest panic"
else
  bad "kill -9 fsd: the guest did not start"
fi

# --- the livelock detector: a guest looping on stat under cache=never ------
cat > "$share/.ocivm/loop.sh" <<'GUEST'
mkdir -p /mnt/var/log/journal
: > /mnt/var/log/journal/x
echo "LOOP-PID: $$"
i=0
# "[" is a shell builtin: one process, like journald, stats the same path
while [ $i -lt 10000 ]; do [ -e /mnt/var/log/journal/x ]; i=$((i+1)); done
echo "LOOP-DONE"
GUEST
if start_vm livelock "$share" never .ocivm/loop.sh && wait_pid "$QEMU_PID" 300; then
  wait_pid "$FSD_PID" 10
  log=$WORK/livelock/fsd.log
  loop_pid=$(tr -d '\r' < "$CONSOLE" | sed -n 's/.*LOOP-PID: \([0-9]*\).*/\1/p' | head -1)
  n=$(grep -c "stuck in a request loop" "$log")
  [ "$n" -eq 1 ] && ok "livelock: exactly one warning" || bad "livelock: $n warnings (want 1)"
  grep "stuck in a request loop" "$log" | head -1 | cut -c1-400 | sed 's/^/  /'
  grep "stuck in a request loop" "$log" | grep -q "/var/log/journal/x" && ok "livelock: the warning names the path" || bad "livelock: path not named"
  [ -n "$loop_pid" ] && grep "stuck in a request loop" "$log" | grep -q "pids: $loop_pid " &&
    ok "livelock: the warning names the looping pid ($loop_pid)" || bad "livelock: pid '$loop_pid' not named first"
else
  bad "livelock: the guest did not finish"
fi
for cache in never metadata; do
  n=$(grep -c "stuck in a request loop" "$WORK/posix-$cache/fsd.log")
  [ "$n" -eq 0 ] && ok "$cache: no livelock warning for the POSIX suite and tree walk" || bad "$cache: $n false livelock warnings"
done

finish
