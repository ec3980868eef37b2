#!/usr/bin/env bash
# The rootless sandbox (label fs, no VM): `ocivm fsd` and `ocivm mount` run
# by an unprivileged user confine their server in a user namespace of its
# own. fsd is driven by our own vhost-user front end (read_share: INIT,
# LOOKUP, OPEN, READ); the test checks the server from the host's side
# (/proc/PID/status and ns/*), that it sees nothing but the share, that
# SIGTERM and kill -9 of the process we started leave no process behind,
# that `ocivm mount` works through fusermount3 and ends when told to, and
# that the two failures a user can meet say what to do.
#   rootless_test.sh OCIVM READ_SHARE
set -uo pipefail
OCIVM=${1:?ocivm binary}
READ_SHARE=${2:?read_share binary}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib/check.sh"
. "$HERE/../lib/proc.sh"
. "$HERE/../lib/mounts.sh"

[ "$(id -u)" -eq 0 ] || { echo "FAIL: the rootless test runs as root (it becomes an unprivileged user itself)"; exit 1; }
for tool in setpriv unshare; do
  command -v $tool >/dev/null || { echo "FAIL: $tool missing: apt-get install util-linux"; exit 1; }
done
command -v fusermount3 >/dev/null || { echo "FAIL: fusermount3 missing: apt-get install fuse3"; exit 1; }
[ -c /dev/fuse ] || { echo "FAIL: no /dev/fuse: modprobe fuse"; exit 1; }
# nobody: fusermount3 needs a user name for the uid, and the test must not
# create users. Processes are followed by pid, not by uid.
RUID=65534
RGID=$(getent passwd $RUID | cut -d: -f4)
[ -n "$RGID" ] || { echo "FAIL: no user with uid $RUID (nobody) in the passwd database"; exit 1; }
AS_USER=(setpriv --reuid=$RUID --regid=$RGID --clear-groups --inh-caps=-all)

# The user must reach the binaries, the socket and the share in WORK. The
# suite's wrapper (tests/lib/leakcheck.sh) gives the test a TMPDIR of its
# own, root's and 0700: the user gets search permission on it (never
# read) while the test runs, and its mode is put back at the end.
BASE=${TMPDIR:-/tmp}
WORK=$(mktemp -d "$BASE/ocivm-rootless.$$.XXXXXX") || { echo "FAIL: cannot create a directory in $BASE"; exit 1; }
chmod 755 "$WORK"
BASE_MODE=$(stat -c %a "$BASE")
PIDS=""   # every process the test started (killed on exit)
cleanup() {
  exec 7>&- 8>&- 2>/dev/null
  for p in $PIDS; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  mounted_at "$WORK/mnt" && umount -l "$WORK/mnt"
  rm -rf "$WORK"
  [ "$(stat -c %a "$BASE")" = "$BASE_MODE" ] || chmod "$BASE_MODE" "$BASE"
}
trap cleanup EXIT
"${AS_USER[@]}" test -x "$WORK" || chmod o+x "$BASE"
"${AS_USER[@]}" test -x "$WORK" ||
  { echo "FAIL: uid $RUID cannot reach $WORK: give it search permission on every directory above, or set TMPDIR elsewhere"; exit 1; }

# The binaries are copied where the user can run them (a build directory
# under /work or /root need not be reachable by nobody).
cp "$OCIVM" "$WORK/ocivm" && cp "$READ_SHARE" "$WORK/read_share" || { echo "FAIL: cannot copy the binaries"; exit 1; }
chmod 755 "$WORK/ocivm" "$WORK/read_share"
mkdir "$WORK/share" "$WORK/run" "$WORK/mnt"
CONTENT="served to a rootless front end by $$"
printf '%s' "$CONTENT" > "$WORK/share/file"
mkdir "$WORK/share/dir"
chown -R $RUID:$RGID "$WORK/share" "$WORK/run" "$WORK/mnt"
# ocivm starts in a directory that is not the share (what its keeper's
# working directory holds is checked below).
cd "$WORK"

# child_of PID: PID's only child (from the children lists of all its
# threads); nothing, and a message, when it has several.
child_of() {
  local -a kids
  # Each file is "PID PID ..." (one line or none): split on any blank.
  read -r -d '' -a kids < <(cat /proc/"$1"/task/*/children 2>/dev/null)
  if [ ${#kids[@]} -gt 1 ]; then
    echo "  pid $1 has ${#kids[@]} children (${kids[*]}), not one" >&2
    return 1
  fi
  echo "${kids[@]}"
}

# start_fsd NAME: an fsd as the user on $WORK/run/NAME.sock and a front end
# that reads "file" through it and holds the session while fd 7 is open.
# Sets KEEPER (the pid we started), SERVER (its confined child), FE.
start_fsd() {
  local sock=$WORK/run/$1.sock
  "${AS_USER[@]}" "$WORK/ocivm" fsd --socket-path "$sock" --shared-dir "$WORK/share" --log-level info \
    > "$WORK/$1.fsd.log" 2>&1 &
  KEEPER=$!; PIDS="$PIDS $KEEPER"
  for _ in $(seq 300); do
    [ -S "$sock" ] && break
    [ -d /proc/$KEEPER ] || break
    sleep 0.1
  done
  rm -f "$WORK/hold"; mkfifo -m 600 "$WORK/hold"
  "${AS_USER[@]}" "$WORK/read_share" "$sock" file < "$WORK/hold" > "$WORK/$1.read" 2> "$WORK/$1.fe.log" &
  FE=$!; PIDS="$PIDS $FE"
  exec 7> "$WORK/hold"
  for _ in $(seq 300); do
    [ -s "$WORK/$1.read" ] && break
    [ -d /proc/$FE ] || break
    sleep 0.1
  done
  SERVER=$(child_of $KEEPER)
  # confined once the seccomp filter is on (the server's last step)
  for _ in $(seq 100); do
    [ -n "$SERVER" ] && [ "$(field $SERVER Seccomp)" = 2 ] && break
    sleep 0.1
    SERVER=$(child_of $KEEPER)
  done
  PIDS="$PIDS $SERVER"
}

# --- ocivm fsd as a user ---------------------------------------------------
start_fsd a
check "fsd as uid $RUID served the file to the front end ($(cat "$WORK/a.fe.log" "$WORK/a.fsd.log" | tail -3 | tr '\n' ' '))" \
  [ "$(cat "$WORK/a.read")" = "$CONTENT" ]
if [ -z "$SERVER" ] || [ ! -d "/proc/$SERVER" ]; then
  bad "fsd forked no confined server; its log: $(tr '\n' ' ' < "$WORK/a.fsd.log")"
  finish
fi
ok "fsd forked its server (pid $SERVER)"
own_ns() { local a; a=$(readlink "/proc/$1/ns/$2") && [ -n "$a" ] && [ "$a" != "$(readlink /proc/self/ns/$2)" ]; }
for ns in user mnt pid net ipc uts; do
  check "server: its own $ns namespace" own_ns $SERVER $ns
done
check "server: PID 1 of its PID namespace ($(status_line $SERVER NSpid))" [ "$(status_line $SERVER NSpid | awk '{print $NF}')" = 1 ]
check "server: uid $RUID in the host's view ($(status_line $SERVER Uid))" [ "$(status_line $SERVER Uid)" = "$RUID $RUID $RUID $RUID" ]
check "server: gid $RGID in the host's view ($(status_line $SERVER Gid))" [ "$(status_line $SERVER Gid)" = "$RGID $RGID $RGID $RGID" ]
check "server: its user namespace maps only uid $RUID ($(tr -s ' ' < /proc/$SERVER/uid_map))" \
  [ "$(tr -s ' ' < /proc/$SERVER/uid_map | sed 's/^ //')" = "$RUID $RUID 1" ]
check "server: NoNewPrivs: 1" [ "$(field $SERVER NoNewPrivs)" = 1 ]
check "server: Seccomp: 2 (filter)" [ "$(field $SERVER Seccomp)" = 2 ]
# In a user namespace that maps one uid, chown, setuid, setgid, mknod and
# setfcap do nothing a file server needs; fowner is moot for the owner of
# every file it can affect. Kept: dac_override (1), dac_read_search (2),
# fsetid (4), in the user namespace only.
want_caps=$(printf %016x $(( (1 << 1) | (1 << 2) | (1 << 4) )))
check "server: only dac_override, dac_read_search, fsetid (CapEff $(field $SERVER CapEff))" [ "$(field $SERVER CapEff)" = "$want_caps" ]
check "server: CapBnd equals CapEff (nothing to regain)" [ "$(field $SERVER CapBnd)" = "$(field $SERVER CapEff)" ]
share_list=$(ls -A "$WORK/share")
check "server: its root is the share (/proc/PID/root lists: $(ls -A /proc/$SERVER/root 2>&1 | tr '\n' ' '))" \
  [ "$(ls -A /proc/$SERVER/root 2>&1)" = "$share_list" ]
check "server: its mount table is the share alone ($(wc -l < /proc/$SERVER/mountinfo) mounts)" [ "$(wc -l < /proc/$SERVER/mountinfo)" -eq 1 ]
check "server: no host path by name (/proc/PID/root$WORK)" [ ! -e "/proc/$SERVER/root$WORK" ]
check "server: its /proc has processes only (no sys/)" \
  bash -c "[ -e /proc/$SERVER/cwd/../../1 ] && [ ! -e /proc/$SERVER/cwd/../../sys ]"
check "keeper: uid $RUID, NoNewPrivs: 1, no capabilities" \
  [ "$(field $KEEPER Uid)" = $RUID -a "$(field $KEEPER NoNewPrivs)" = 1 -a "$(field $KEEPER CapEff)" = 0000000000000000 ]
# The keeper shares the server's mount namespace. Where it was started
# (here: $WORK) is in the copy of the host's mount tree the server
# detached; a working directory there keeps that whole copy alive (in a
# user namespace its mounts are locked together), and with it every host
# file system unmounted meanwhile. Its working directory must be the share.
check "keeper: its working directory is the share, not the host's tree" \
  [ "$(stat -L -c %d:%i /proc/$KEEPER/cwd 2>&1)" = "$(stat -c %d:%i "$WORK/share")" ]

# kill -9 of the process we started: the server goes with it.
kill -9 $KEEPER
wait $KEEPER 2>/dev/null
check "kill -9 of fsd: no server process left" gone $KEEPER $SERVER
exec 7>&-
wait $FE 2>/dev/null

# SIGTERM: the keeper passes it on to its server (PID 1 ignores it).
start_fsd b
check "second fsd served the file" [ "$(cat "$WORK/b.read")" = "$CONTENT" ]
kill -TERM $KEEPER
wait $KEEPER 2>/dev/null; rc=$?
check "SIGTERM to fsd: it ends by SIGTERM (status 143, got $rc)" [ $rc -eq 143 ]
check "SIGTERM to fsd: no server process is left" gone $KEEPER $SERVER
exec 7>&-
wait $FE 2>/dev/null

# --- ocivm mount as a user (fusermount3) ----------------------------------
"${AS_USER[@]}" "$WORK/ocivm" mount "$WORK/share" "$WORK/mnt" > "$WORK/mount.log" 2>&1 &
MOUNT=$!; PIDS="$PIDS $MOUNT"
mounted() { mounted_at "$WORK/mnt"; }
for _ in $(seq 300); do
  mounted && break
  [ -d /proc/$MOUNT ] || break
  sleep 0.1
done
check "ocivm mount as uid $RUID: mounted ($(tail -2 "$WORK/mount.log" | tr '\n' ' '))" mounted
mserver=$(child_of "$(child_of $MOUNT)")
PIDS="$PIDS $mserver"
confined() { [ -n "$1" ] && [ "$(field "$1" Seccomp)" = 2 ] && [ "$(field "$1" Uid)" = $RUID ] && own_ns "$1" user; }
check "mount's server (pid ${mserver:-none}): own user namespace, seccomp, uid $RUID" confined "$mserver"
check "the file reads through the mount" [ "$("${AS_USER[@]}" cat "$WORK/mnt/file")" = "$CONTENT" ]
# What a user does to their own tree, each call within the seccomp list.
"${AS_USER[@]}" sh -c "cd '$WORK/mnt' && echo new > new && mkdir d2 && mv new d2/moved && chmod 600 d2/moved &&
  ln -s moved d2/link && touch -d 2001-01-01 d2/moved && cat d2/link && rm d2/link && ls -l d2 >/dev/null" \
  > "$WORK/ops.out" 2>&1
check "create, mkdir, rename, chmod, symlink, utimes, unlink through the mount ($(tr '\n' ' ' < "$WORK/ops.out"))" \
  [ "$(cat "$WORK/ops.out")" = new ]
check "the new file on the host: owned by uid $RUID, mode 600" \
  [ "$(stat -c %u:%a "$WORK/share/d2/moved" 2>&1)" = "$RUID:600" ]
check "the mount's server still serves (no system call outside its list)" \
  [ -d /proc/$mserver -a "$("${AS_USER[@]}" cat "$WORK/mnt/file" 2>&1)" = "$CONTENT" ]
kill -TERM $MOUNT
ended=0
for _ in $(seq 200); do
  [ -d /proc/$MOUNT ] || { ended=1; break; }
  sleep 0.1
done
[ $ended = 1 ] || kill -9 $MOUNT
wait $MOUNT 2>/dev/null; rc=$?
check "SIGTERM to ocivm mount: it unmounts and ends (status $rc)" [ $ended = 1 -a $rc -eq 0 ]
check "nothing mounted on the mount point" not_mounted_at "$WORK/mnt"
check "no server process of ocivm mount left" gone $mserver

# The user unmounts it: the server sees the connection end, and ocivm
# mount with it.
"${AS_USER[@]}" "$WORK/ocivm" mount "$WORK/share" "$WORK/mnt" > "$WORK/mount2.log" 2>&1 &
MOUNT=$!; PIDS="$PIDS $MOUNT"
for _ in $(seq 300); do
  mounted && break
  [ -d /proc/$MOUNT ] || break
  sleep 0.1
done
mserver=$(child_of "$(child_of $MOUNT)")
PIDS="$PIDS $mserver"
"${AS_USER[@]}" fusermount3 -u "$WORK/mnt" > "$WORK/fusermount.log" 2>&1; fm=$?
check "fusermount3 -u by the user ($(tr '\n' ' ' < "$WORK/fusermount.log"))" [ $fm -eq 0 ]
ended=0
for _ in $(seq 200); do
  [ -d /proc/$MOUNT ] || { ended=1; break; }
  sleep 0.1
done
[ $ended = 1 ] || kill -9 $MOUNT
wait $MOUNT 2>/dev/null; rc=$?
check "after fusermount3 -u, ocivm mount ends (status $rc) and its server with it" \
  bash -c "[ $ended = 1 ] && [ $rc -eq 0 ] && [ ! -d /proc/${mserver:-none} ]"

# Without fusermount3 a user cannot mount FUSE: the error says so.
mkdir "$WORK/nobin"
"${AS_USER[@]}" env PATH="$WORK/nobin" "$WORK/ocivm" mount "$WORK/share" "$WORK/mnt" > "$WORK/nofm.log" 2>&1
rc=$?
check "ocivm mount as a user without fusermount3: exit 125 ($rc)" [ $rc -eq 125 ]
check "and the error names fusermount3 and the package fuse3 ($(tr '\n' ' ' < "$WORK/nofm.log"))" \
  bash -c "grep -q fusermount3 '$WORK/nofm.log' && grep -q fuse3 '$WORK/nofm.log'"
check "and nothing is mounted" not_mounted_at "$WORK/mnt"

# Inside a container whose /proc has a path covered (Docker mounts
# /proc/sys read-only), a user namespace may not mount a new /proc: the
# error must say why and what to do, not only "Operation not permitted".
unshare -m --propagation private sh -c '
  mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys || exit 99
  exec "$@"' sh "${AS_USER[@]}" "$WORK/ocivm" fsd --socket-path "$WORK/run/c.sock" --shared-dir "$WORK/share" \
  > "$WORK/c.fsd.log" 2>&1 &
KEEPER=$!; PIDS="$PIDS $KEEPER"
for _ in $(seq 300); do
  [ -S "$WORK/run/c.sock" ] && break
  [ -d /proc/$KEEPER ] || break
  sleep 0.1
done
"${AS_USER[@]}" "$WORK/read_share" "$WORK/run/c.sock" file < /dev/null > /dev/null 2>&1
wait $KEEPER; rc=$?
check "fsd as a user under a /proc with a covered path: exit 125 ($rc)" [ $rc -eq 125 ]
check "and the error explains the covered /proc ($(tr '\n' ' ' < "$WORK/c.fsd.log"))" \
  grep -q "fully visible" "$WORK/c.fsd.log"

finish
