#!/usr/bin/env bash
# The rootless importer (label fs, no VM): `ocivm image import` run by an
# unprivileged user parses the image in a child confined inside a user
# namespace of its own (mapping only the user's uid and gid), with its own
# network, IPC and mount namespaces, a read-only view of the host but the
# store, no capabilities, no_new_privs and a seccomp filter. Seen from the
# host while the importer waits for the store's lock (which the test
# holds), then the import's result: the same store a user's import always
# made (owners it cannot apply in user.containers.override_stat); the
# user's disk writer of that image, confined the same way. Last, a
# host where the user cannot have a user namespace (a parent namespace with
# user.max_user_namespaces 0): the import still works, with the warning
# naming what is not confined, and the filter still on.
#   rootless_import_test.sh OCIVM
set -uo pipefail
OCIVM=${1:?ocivm binary}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib/check.sh"
. "$HERE/../lib/proc.sh"
MAKE_LAYOUT=$HERE/../../scripts/make-oci-layout.sh

[ "$(id -u)" -eq 0 ] || { echo "FAIL: the rootless import test runs as root (it becomes an unprivileged user itself)"; exit 1; }
for tool in setpriv unshare nsenter flock; do
  command -v $tool >/dev/null || { echo "FAIL: $tool missing: apt-get install util-linux"; exit 1; }
done
command -v getfattr >/dev/null || { echo "FAIL: getfattr missing: apt-get install attr"; exit 1; }
command -v python3 >/dev/null || { echo "FAIL: python3 missing: apt-get install python3"; exit 1; }
[ -x "$MAKE_LAYOUT" ] || { echo "FAIL: $MAKE_LAYOUT is missing"; exit 1; }
# nobody, as tests/security/rootless_test.sh: the test creates no users.
RUID=65534
RGID=$(getent passwd $RUID | cut -d: -f4)
[ -n "$RGID" ] || { echo "FAIL: no user with uid $RUID (nobody) in the passwd database"; exit 1; }
AS_USER=(setpriv --reuid=$RUID --regid=$RGID --clear-groups --inh-caps=-all)

# /tmp (world-searchable), not a TMPDIR that may be root's 0700 directory:
# the user must reach the binary, the layout and the store.
WORK=$(mktemp -d /tmp/ocivm-rootless-import.$$.XXXXXX) || { echo "FAIL: cannot create a directory in /tmp"; exit 1; }
chmod 755 "$WORK"
PIDS=""   # every process the test started (killed on exit)
cleanup() {
  exec 9>&- 2>/dev/null
  for p in $PIDS; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

cp "$OCIVM" "$WORK/ocivm" || { echo "FAIL: cannot copy the binary"; exit 1; }
chmod 755 "$WORK/ocivm"
# The image: files of root, of a stranger and of the user, a device node, a
# private directory and a symlink, packed by root with numeric owners.
R=$WORK/rootfs
mkdir -p "$R/etc" "$R/dev" "$R/home/nobody" "$R/root"
echo "root's" > "$R/etc/hello"
echo "a stranger's" > "$R/etc/stranger"; chown 1234:5678 "$R/etc/stranger"
echo "the user's" > "$R/home/nobody/mine"; chown -R $RUID:$RGID "$R/home/nobody"
mknod -m 644 "$R/dev/null" c 1 3
# A fifo of root's: no user.* xattr can hold its owner (the kernel takes
# them on files and directories only); the import once failed on it.
mkfifo -m 600 "$R/dev/initctl"
chmod 700 "$R/root"
ln -s ../etc/hello "$R/home/link"
"$MAKE_LAYOUT" "$R" "$WORK/layout" rootless:1 >/dev/null || { echo "FAIL: make-oci-layout.sh failed"; exit 1; }
chmod -R a+rX "$WORK/layout"

own_ns() { local a; a=$(readlink "/proc/$1/ns/$2") && [ -n "$a" ] && [ "$a" != "$(readlink /proc/self/ns/$2)" ]; }
host_ns() { [ "$(readlink "/proc/$1/ns/$2")" = "$(readlink /proc/self/ns/$2)" ]; }
# Mount points the process may write (mountinfo's options start rw).
rw_mounts() { awk '{ split($6, o, ","); if (o[1] == "rw") print $5 }' "/proc/$1/mountinfo" | tr '\n' ' ' | sed 's/ $//'; }
shared_mounts() { awk '{ for (i = 7; $i != "-"; i++) if ($i ~ /^shared:/) print $5 }' "/proc/$1/mountinfo" | tr '\n' ' '; }

# new_store NAME: an empty store of the user's, and its lock held by us
# (fd 9) so the importer stops at its first step. Sets STORE, LOCK_INO.
new_store() {
  STORE=$WORK/$1
  mkdir -m 700 "$STORE" && : > "$STORE/lock" && chmod 600 "$STORE/lock" && chown -R $RUID:$RGID "$STORE" || exit 1
  exec 9<> "$STORE/lock"
  flock -x 9
  LOCK_INO=$(stat -c %i "$STORE/lock")
}
# wait_importer CLI: the pid waiting for our lock (empty if CLI ended first).
wait_importer() {
  local w
  for _ in $(seq 600); do
    w=$(awk -v i="$LOCK_INO" '$2 == "->" && $3 == "FLOCK" { n = split($7, a, ":"); if (a[n] == i) print $6 }' /proc/locks)
    [ -n "$w" ] && { echo "$w"; return; }
    [ -d "/proc/$1" ] || return
    sleep 0.05
  done
}

# --- a user's import, in its user namespace ---------------------------------
new_store store
"${AS_USER[@]}" env OCIVM_HOME="$STORE" "$WORK/ocivm" image import --log-level info "oci:$WORK/layout" \
  > "$WORK/import.out" 2> "$WORK/import.err" &
CLI=$!; PIDS="$PIDS $CLI"
IMP=$(wait_importer $CLI)
if [ -z "$IMP" ]; then
  bad "no importer waited for the store's lock; ocivm said: $(tr '\n' ' ' < "$WORK/import.err")"
  finish
fi
PIDS="$PIDS $IMP"
KEEPER=$(field $IMP PPid)
check "the importer (pid $IMP) is the child of its keeper (pid $KEEPER), the CLI's child" [ "$(field "$KEEPER" PPid)" = "$CLI" ]
for ns in user net ipc mnt pid; do
  check "importer: its own $ns namespace" own_ns $IMP $ns
done
check "importer: PID 1 of its PID namespace (NSpid $(status_line $IMP NSpid))" \
  [ "$(status_line $IMP NSpid | awk '{ print $NF }')" = 1 ]
check "importer: its root shows the store and the layout only (not /etc/passwd, /home or /tmp's other files)" \
  bash -c "[ -d /proc/$IMP/root$STORE ] && [ -d /proc/$IMP/root$WORK/layout ] && [ ! -e /proc/$IMP/root/etc/passwd ] &&
           [ ! -e /proc/$IMP/root/home ] && [ ! -e /proc/$IMP/root$WORK/rootfs ]"
check "the CLI keeps the host's user and network namespaces" bash -c "$(declare -f host_ns); host_ns $CLI user && host_ns $CLI net"
check "importer: uid $RUID in the host's view ($(status_line $IMP Uid))" [ "$(status_line $IMP Uid)" = "$RUID $RUID $RUID $RUID" ]
check "importer: gid $RGID in the host's view ($(status_line $IMP Gid))" [ "$(status_line $IMP Gid)" = "$RGID $RGID $RGID $RGID" ]
check "importer: its user namespace maps uid $RUID to itself alone ($(tr -s ' ' < /proc/$IMP/uid_map))" \
  [ "$(tr -s ' ' < /proc/$IMP/uid_map | sed 's/^ //')" = "$RUID $RUID 1" ]
check "importer: and gid $RGID alone ($(tr -s ' ' < /proc/$IMP/gid_map))" \
  [ "$(tr -s ' ' < /proc/$IMP/gid_map | sed 's/^ //')" = "$RGID $RGID 1" ]
check "importer: setgroups denied" [ "$(cat /proc/$IMP/setgroups)" = deny ]
check "importer: no capabilities, even in its namespace (CapEff $(field $IMP CapEff))" [ "$(field $IMP CapEff)" = 0000000000000000 ]
check "importer: an empty bounding set (CapBnd $(field $IMP CapBnd))" [ "$(field $IMP CapBnd)" = 0000000000000000 ]
check "importer: NoNewPrivs: 1" [ "$(field $IMP NoNewPrivs)" = 1 ]
check "importer: Seccomp: 2 (filter)" [ "$(field $IMP Seccomp)" = 2 ]
check "importer: writes only the store (rw mounts: $(rw_mounts $IMP))" [ "$(rw_mounts $IMP)" = "$STORE" ]
check "importer: no mount shared with the host's ($(shared_mounts $IMP))" [ -z "$(shared_mounts $IMP)" ]
flock -u 9; exec 9>&-
wait $CLI; rc=$?
check "the import ends with exit 0 ($(tr '\n' ' ' < "$WORK/import.err"))" [ $rc -eq 0 ]
check "it prints the image's name and digest ($(cat "$WORK/import.out"))" grep -q "^rootless:1 sha256:[0-9a-f]\{64\}$" "$WORK/import.out"
check "its log says what confined it" grep -q "image import: no network; capabilities cut to CapEff 0; no_new_privs; its own PID and mount namespaces, a root that shows only $STORE (writable), $WORK/layout" "$WORK/import.err"

# What a user's import always made: what it may apply applied, the rest in
# the override xattr; a device node an empty placeholder.
ROOT=$(echo "$STORE"/roots/*)
ovr() { getfattr --only-values --absolute-names -n user.containers.override_stat "$1" 2>/dev/null; }
check "the root is there ($ROOT)" [ -d "$ROOT/etc" ]
check "all of it belongs to the user" bash -c "[ -z \"\$(find '$ROOT' ! -uid $RUID)\" ]"
check "root's file: content, and 0:0 in the override xattr ($(ovr "$ROOT/etc/hello"))" \
  bash -c "[ \"\$(cat '$ROOT/etc/hello')\" = \"root's\" ] && [ \"$(ovr "$ROOT/etc/hello")\" = 0:0:0644:file ]"
check "a stranger's file: 1234:5678 in the override xattr ($(ovr "$ROOT/etc/stranger"))" \
  [ "$(ovr "$ROOT/etc/stranger")" = 1234:5678:0644:file ]
check "the user's own file: chowned, no override xattr" \
  bash -c "[ \"\$(stat -c %u:%g '$ROOT/home/nobody/mine')\" = $RUID:$RGID ] && ! getfattr -n user.containers.override_stat '$ROOT/home/nobody/mine' >/dev/null 2>&1"
check "the device node: an empty 0600 file carrying char-1-3 ($(stat -c '%F %a' "$ROOT/dev/null"), $(ovr "$ROOT/dev/null"))" \
  bash -c "[ \"\$(stat -c '%F %a %s' '$ROOT/dev/null')\" = 'regular empty file 600 0' ] && [ \"$(ovr "$ROOT/dev/null")\" = 0:0:0644:char-1-3 ]"
check "the fifo of root's: a fifo of the user's ($(stat -c '%F %u' "$ROOT/dev/initctl" 2>&1))" \
  [ "$(stat -c '%F %u' "$ROOT/dev/initctl" 2>/dev/null)" = "fifo $RUID" ]
check "root's private directory: mode 700 and 0:0 in the override xattr ($(ovr "$ROOT/root"))" \
  bash -c "[ \"\$(stat -c %a '$ROOT/root')\" = 700 ] && [ \"$(ovr "$ROOT/root")\" = 0:0:0700:dir ]"
check "the symlink is a symlink to ../etc/hello" [ "$(readlink "$ROOT/home/link")" = ../etc/hello ]
check "the store's tmp/ is empty" bash -c "[ -z \"\$(ls -A '$STORE/tmp')\" ]"
"${AS_USER[@]}" env OCIVM_HOME="$STORE" "$WORK/ocivm" image ls > "$WORK/ls.out" 2>&1
check "the user lists it ($(tr '\n' ' ' < "$WORK/ls.out"))" grep -q "rootless:1" "$WORK/ls.out"

# --- a user's disk writer, in its user namespace -----------------------------
# Stopped in a mkfs.ext4 of the test's (first on PATH, in a directory
# outside /usr, which the writer's root shows as that file alone), which
# waits for a file.
REAL_MKFS=$(PATH=/usr/sbin:/sbin:/usr/bin:/bin command -v mkfs.ext4) || { bad "mkfs.ext4 missing: apt-get install e2fsprogs"; finish; }
mkdir -p "$WORK/bin" "$WORK/out" && chown $RUID:$RGID "$WORK/out"
printf '#!/bin/sh\n: > %s\nwhile [ ! -e %s ]; do sleep 0.05; done\nexec %s "$@"\n' \
  "'$WORK/out/mkfs-ready'" "'$WORK/out/mkfs-go'" "'$REAL_MKFS'" > "$WORK/bin/mkfs.ext4"
chmod 755 "$WORK/bin/mkfs.ext4"
"${AS_USER[@]}" env OCIVM_HOME="$STORE" PATH="$WORK/bin:$PATH" "$WORK/ocivm" disk create --log-level info rootless:1 "$WORK/out/disk.raw" \
  > "$WORK/disk.out" 2> "$WORK/disk.err" &
CLI=$!; PIDS="$PIDS $CLI"
for _ in $(seq 600); do { [ -e "$WORK/out/mkfs-ready" ] || [ ! -d /proc/$CLI ]; } && break; sleep 0.05; done
W=$(awk '{ print $1 }' /proc/$CLI/task/$CLI/children 2>/dev/null)
if [ -n "$W" ] && [ -e "$WORK/out/mkfs-ready" ]; then
  PIDS="$PIDS $W"
  for ns in user net mnt pid; do
    check "disk writer (pid $W): its own $ns namespace" own_ns $W $ns
  done
  check "disk writer: its user namespace maps uid $RUID alone" [ "$(tr -s ' ' < /proc/$W/uid_map | sed 's/^ //')" = "$RUID $RUID 1" ]
  check "disk writer: no capabilities (CapEff $(field $W CapEff)), NoNewPrivs 1, Seccomp 2" \
    [ "$(field $W CapEff)" = 0000000000000000 -a "$(field $W NoNewPrivs)" = 1 -a "$(field $W Seccomp)" = 2 ]
  check "disk writer: writes only OUTPUT's directory (rw mounts: $(rw_mounts $W))" [ "$(rw_mounts $W)" = "$WORK/out" ]
  check "disk writer: its root shows /usr and OUTPUT's directory, not /etc/passwd nor the store's names.json" \
    bash -c "[ -d /proc/$W/root/usr/bin ] && [ -d /proc/$W/root$WORK/out ] && [ -e /etc/passwd ] && [ -e '$STORE/names.json' ] &&
             [ ! -e /proc/$W/root/etc/passwd ] && [ ! -e /proc/$W/root$STORE/names.json ]"
else
  bad "the user's disk writer never reached its mkfs.ext4: $(tr '\n' ' ' < "$WORK/disk.err")"
  kill -9 $CLI 2>/dev/null
fi
: > "$WORK/out/mkfs-go"
wait $CLI; rc=$?
check "the user's disk create ends with exit 0 and a PARTUUID ($(tr '\n' ' ' < "$WORK/disk.err"))" \
  bash -c "[ $rc -eq 0 ] && grep -qE '^[0-9a-f-]{36}$' '$WORK/disk.out'"
check "and the disk holds the image ($(stat -c %s "$WORK/out/disk.raw" 2>&1) bytes)" [ -s "$WORK/out/disk.raw" ]

# --- no user namespace to be had ---------------------------------------------
# A user namespace of root's, mapping root and the user, in which
# user.max_user_namespaces is 0: the user's unshare(CLONE_NEWUSER) fails
# there as where a sysctl forbids it.
unshare -U sleep 1000 &
HOLD=$!; PIDS="$PIDS $HOLD"
for _ in $(seq 200); do
  [ "$(readlink /proc/$HOLD/ns/user)" != "$(readlink /proc/self/ns/user)" ] && break
  sleep 0.05
done
# One write per map (the kernel takes a map in a single write).
map_ids() {  # map_ids FILE ID
  python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY); os.write(fd, sys.argv[2].encode())' \
    "$1" "0 0 1
$2 $2 1
"
}
map_ids /proc/$HOLD/uid_map $RUID && map_ids /proc/$HOLD/gid_map $RGID ||
  { bad "cannot map the test's user namespace"; finish; }
new_store nouserns
nsenter -U -t $HOLD sh -c 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"' sh \
  setpriv --reuid=$RUID --regid=$RGID --clear-groups env OCIVM_HOME="$STORE" "$WORK/ocivm" image import "oci:$WORK/layout" \
  > "$WORK/nouserns.out" 2> "$WORK/nouserns.err" &
CLI=$!; PIDS="$PIDS $CLI"
IMP=$(wait_importer $CLI)
if [ -n "$IMP" ]; then
  PIDS="$PIDS $IMP"
  check "without a user namespace: the importer (pid $IMP) still has NoNewPrivs: 1 and Seccomp: 2" \
    [ "$(field $IMP NoNewPrivs)" = 1 -a "$(field $IMP Seccomp)" = 2 ]
  check "and no capabilities" [ "$(field $IMP CapEff)" = 0000000000000000 ]
  check "and, as the warning says, the network namespace it was started in" \
    [ "$(readlink /proc/$IMP/ns/net)" = "$(readlink /proc/$CLI/ns/net)" ]
else
  bad "without a user namespace: no importer waited for the store's lock: $(tr '\n' ' ' < "$WORK/nouserns.err")"
fi
flock -u 9; exec 9>&-
wait $CLI; rc=$?
check "without a user namespace the import still works (exit $rc)" [ $rc -eq 0 ]
check "and warns, at the default log level, naming the cause and what is not confined ($(tr '\n' ' ' < "$WORK/nouserns.err"))" \
  bash -c "grep -q 'ocivm: warning: image import: cannot create a user namespace' '$WORK/nouserns.err' &&
           grep -q 'host.s PID, network, IPC and mount namespaces' '$WORK/nouserns.err' &&
           grep -q 'max_user_namespaces' '$WORK/nouserns.err'"
check "and stores the same image" bash -c "[ \"\$(cat '$WORK/nouserns.out')\" = \"\$(cat '$WORK/import.out')\" ]"
kill -9 $HOLD 2>/dev/null; wait $HOLD 2>/dev/null

finish
