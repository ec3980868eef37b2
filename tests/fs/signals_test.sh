#!/usr/bin/env bash
# SIGINT and SIGTERM end the share servers a user runs in the foreground,
# `ocivm mount` and `ocivm fsd`, cleanly: nothing mounted, no socket file,
# no confined server or keeper left, and the exit status the docs give:
#   ocivm mount  0 (README: "Exit status 0 after a clean unmount")
#   ocivm fsd    before a front end connects: ended by that signal (130,
#                143), its socket file removed; afterwards: the keeper
#                ends the server with SIGKILL and still ends by the
#                signal it was sent (130, 143), not 137 (docs/virtiofs.md)
# Each signal is sent to the process we started, as kill(1) or a service
# manager does, and to its process group, as a terminal's Ctrl-C does. The
# servers killed are checked to be the confined ones, with the exact
# capability set docs/security.md gives for their share.
#   signals_test.sh OCIVM READ_SHARE
set -uo pipefail
OCIVM=${1:?usage: signals_test.sh PATH-TO-OCIVM PATH-TO-READ_SHARE}
READ_SHARE=${2:?usage: signals_test.sh PATH-TO-OCIVM PATH-TO-READ_SHARE}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib/check.sh"
. "$HERE/../lib/proc.sh"
. "$HERE/../lib/mounts.sh"
[ "$(id -u)" -eq 0 ] || { echo "FAIL: signals_test.sh mounts file systems and must run as root"; exit 1; }
command -v pgrep >/dev/null || { echo "FAIL: pgrep missing: apt-get install procps"; exit 1; }
[ -x "$READ_SHARE" ] || { echo "FAIL: $READ_SHARE is not the read_share front end (build target read_share)"; exit 1; }

# Job control: every command started with & is a process group of its own
# (as in a terminal), and SIGINT is not ignored in it (a script's
# background jobs ignore it otherwise, which no user's Ctrl-C meets).
set -m

WORK=${TMPDIR:-/tmp}/ocivm-sigtest-$$
mkdir -p "$WORK/src" "$WORK/mnt"
CONTENT="served to the signal test by $$"
printf '%s' "$CONTENT" > "$WORK/src/file"
PIDS=""  # everything started here, for the clean-up
cleanup() {
  local p
  for p in $PIDS; do [ -d "/proc/$p" ] && kill -9 "$p" 2>/dev/null; done
  exec 7>&- 2>/dev/null
  wait 2>/dev/null
  mounted_at "$WORK/mnt" && umount -l "$WORK/mnt"
  rm -rf "$WORK"
}
trap cleanup EXIT

# confined_server PID: the descendant of PID that is PID 1 of a PID
# namespace of its own, once its seccomp filter (its last step) is on.
confined_server() {
  local p
  for _ in $(seq 100); do
    for p in $(descendants "$1"); do
      [ "$(awk '$1 == "NSpid:" { print NF }' "/proc/$p/status" 2>/dev/null)" = 3 ] &&
        [ "$(field "$p" Seccomp)" = 2 ] && { echo "$p"; return 0; }
    done
    sleep 0.1
  done
  return 1
}
# check_confined WHAT PID WANT-CAPS: PID serves from a confined server with
# exactly WANT-CAPS (effective and bounding); sets $server and $all (PID's
# descendants, also added to PIDS for the clean-up).
check_confined() {
  local what=$1 pid=$2 want=$3
  server=$(confined_server "$pid")
  check "$what: a confined server (pid ${server:-none})" [ -n "$server" ]
  all=$(descendants "$pid"); PIDS="$PIDS $all"
  check "$what: the server keeps exactly the documented capabilities ($want; CapEff $(field "${server:-0}" CapEff))" \
    caps_are "$server" CapEff "$want"
  check "$what: CapBnd is the same set (nothing to regain)" caps_are "$server" CapBnd "$want"
}
# send SIG pid|group PID
send() { if [ "$2" = group ]; then kill -s "$1" -- "-$3"; else kill -s "$1" "$3"; fi; }
signum() { kill -l "$1"; }

# docs/security.md, "capabilities kept" (root): bit numbers of
# linux/capability.h.
caps_hex() { local m=0 b; for b in "$@"; do m=$((m | (1 << b))); done; printf '%016x' $m; }
CHOWN=0 DAC_OVERRIDE=1 DAC_READ_SEARCH=2 FOWNER=3 FSETID=4 SETGID=6 SETUID=7 MKNOD=27 SETFCAP=31
caps_are() { [ -n "$1" ] && [ "$(field "$1" "$2")" = "$3" ]; }  # caps_are PID CapEff|CapBnd HEX
CAPS_READONLY=$(caps_hex $DAC_OVERRIDE $DAC_READ_SEARCH)
CAPS_NODEV_NOSUID=$(caps_hex $CHOWN $DAC_OVERRIDE $DAC_READ_SEARCH $FOWNER $SETGID $SETUID)
CAPS_WRITABLE=$(caps_hex $CHOWN $DAC_OVERRIDE $DAC_READ_SEARCH $FOWNER $SETGID $SETUID $MKNOD $FSETID $SETFCAP)

# --- ocivm mount ------------------------------------------------------------
# mount_case SIG pid|group [--readonly]
mount_case() {
  local sig=$1 to=$2 ro=${3:-} what pid server all rc want
  what="ocivm mount${ro:+ $ro}, SIG$sig to its $to"
  want=$([ -n "$ro" ] && echo "$CAPS_READONLY" || echo "$CAPS_WRITABLE")
  "$OCIVM" mount $ro "$WORK/src" "$WORK/mnt" > "$WORK/mount.out" 2> "$WORK/mount.err" &
  pid=$!; PIDS="$PIDS $pid"
  check "$what: mounted" wait_mounted "$WORK/mnt"
  check "$what: serves the file" [ "$(cat "$WORK/mnt/file" 2>&1)" = "$CONTENT" ]
  check_confined "$what" $pid "$want"
  send "$sig" "$to" $pid
  wait $pid; rc=$?
  check "$what: exit status 0 (got $rc; stderr: $(tr '\n' ' ' < "$WORK/mount.err"))" [ $rc -eq 0 ]
  check "$what: no error printed" bash -c "! grep -q 'error' '$WORK/mount.err'"
  check "$what: unmounted" wait_unmounted "$WORK/mnt"
  check "$what: no keeper or server left" gone $all
  check "$what: nothing on stdout" [ ! -s "$WORK/mount.out" ]
}
mount_case INT pid
mount_case TERM pid --readonly
# A terminal's Ctrl-C reached the server's keeper too, which killed the
# server with SIGKILL and died so: "ocivm: error: the file-system server
# ... stopped (exit 137)", exit 125, before the keeper had a process group
# of its own.
mount_case INT group
mount_case TERM group --readonly

# Regression (attack review): the confined server opened the host-load
# probe inside its sandbox, whose /proc has no /proc/pressure or loadavg, so
# it never saw a busy host and kept spinning through one. Its exit log
# names the probe's source.
want_load=psi; [ -r /proc/pressure/cpu ] && head -c1 /proc/pressure/cpu >/dev/null 2>&1 || want_load=loadavg
"$OCIVM" mount --log-level info "$WORK/src" "$WORK/mnt" > "$WORK/mount.out" 2> "$WORK/mount.err" &
pid=$!; PIDS="$PIDS $pid"
check "mount --log-level info: mounted" wait_mounted "$WORK/mnt"
check "mount --log-level info: serves the file" [ "$(cat "$WORK/mnt/file" 2>&1)" = "$CONTENT" ]
kill -TERM $pid; wait $pid
check "mount --log-level info: unmounted" wait_unmounted "$WORK/mnt"
check "the confined server watches the host's load through $want_load (log: $(grep -o 'host load from [a-z]*' "$WORK/mount.err" | sort -u | tr '\n' ' '))" \
  grep -q "polling, thread 0 (host load from $want_load)" "$WORK/mount.err"

# --- ocivm fsd, no front end yet ---------------------------------------------
# fsd_waiting_case SIG pid|group
fsd_waiting_case() {
  local sig=$1 to=$2 what pid rc sock=$WORK/wait-$1-$2.sock
  what="ocivm fsd waiting for its front end, SIG$sig to its $to"
  "$OCIVM" fsd --socket-path "$sock" --shared-dir "$WORK/src" > "$WORK/fsd.out" 2> "$WORK/fsd.err" &
  pid=$!; PIDS="$PIDS $pid"
  for _ in $(seq 200); do [ -S "$sock" ] && break; [ -d /proc/$pid ] || break; sleep 0.05; done
  check "$what: listening on its socket" [ -S "$sock" ]
  send "$sig" "$to" $pid
  wait $pid; rc=$?
  check "$what: ended by the signal (status $((128 + $(signum $sig))), got $rc)" [ $rc -eq $((128 + $(signum $sig))) ]
  # It used to die with the socket file still there.
  check "$what: its socket file is removed" [ ! -e "$sock" ]
  check "$what: nothing on stdout" [ ! -s "$WORK/fsd.out" ]
}
fsd_waiting_case INT pid
fsd_waiting_case TERM pid
fsd_waiting_case INT group
fsd_waiting_case TERM group
# A closed terminal or a service manager's reload: 129 (docs/virtiofs.md).
fsd_waiting_case HUP pid

# --- ocivm fsd serving a front end ---------------------------------------------
# fsd_serving_case SIG pid|group WANT-CAPS [FSD-OPTION...]
fsd_serving_case() {
  local sig=$1 to=$2 want=$3 what pid fe server all rc sock=$WORK/serve-$1-$2.sock
  shift 3
  what="ocivm fsd${*:+ $*} serving, SIG$sig to its $to"
  "$OCIVM" fsd --socket-path "$sock" --shared-dir "$WORK/src" "$@" > "$WORK/fsd.out" 2> "$WORK/fsd.err" &
  pid=$!; PIDS="$PIDS $pid"
  for _ in $(seq 200); do [ -S "$sock" ] && break; [ -d /proc/$pid ] || break; sleep 0.05; done
  # The front end reads the file, then holds the session while fd 7 is open.
  rm -f "$WORK/hold"; mkfifo -m 600 "$WORK/hold"
  "$READ_SHARE" "$sock" file < "$WORK/hold" > "$WORK/fe.out" 2> "$WORK/fe.err" &
  fe=$!; PIDS="$PIDS $fe"
  exec 7> "$WORK/hold"
  for _ in $(seq 200); do [ -s "$WORK/fe.out" ] && break; [ -d /proc/$fe ] || break; sleep 0.05; done
  check "$what: the front end read the file ($(tr '\n' ' ' < "$WORK/fe.err"))" [ "$(cat "$WORK/fe.out")" = "$CONTENT" ]
  check "$what: the socket file went when the front end connected" [ ! -e "$sock" ]
  check_confined "$what" $pid "$want"
  send "$sig" "$to" $pid
  wait $pid; rc=$?
  local want_rc=$((128 + $(signum "$sig")))
  check "$what: fsd ends by SIG$sig as asked, not the SIGKILL it gave the server (status $want_rc, got $rc)" [ $rc -eq $want_rc ]
  check "$what: no keeper or server left" gone $pid $all
  exec 7>&-
  wait $fe 2>/dev/null
  check "$what: nothing on stdout" [ ! -s "$WORK/fsd.out" ]
}
fsd_serving_case INT pid "$CAPS_WRITABLE"
fsd_serving_case TERM group "$CAPS_WRITABLE"
# What `ocivm run` gives a writable -v share: no mknod, fsetid, setfcap.
fsd_serving_case TERM pid "$CAPS_NODEV_NOSUID" --nodev --nosuid
fsd_serving_case INT group "$CAPS_READONLY" --readonly
fsd_serving_case HUP pid "$CAPS_WRITABLE"

finish
