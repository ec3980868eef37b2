#!/usr/bin/env bash
# The share servers of a running `ocivm run` are confined (label vm):
# their own mount, PID and network namespaces, NoNewPrivs, seccomp filter
# mode, a reduced capability set, nothing of the host in their mount table;
# and nothing is left when ocivm is killed with -9.
#   sandbox_test.sh OCIVM DEMO_ROOTFS
set -uo pipefail
OCIVM=${1:?ocivm binary}
DEMO=${2:?demo root file system}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib/check.sh"
. "$HERE/../lib/proc.sh"

[ "$(id -u)" -eq 0 ] || { echo "FAIL: the sandbox test runs as root"; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "FAIL: qemu-system-x86_64 missing: apt-get install qemu-system-x86"; exit 1; }
command -v findmnt >/dev/null || { echo "FAIL: findmnt missing: apt-get install util-linux"; exit 1; }

WORK=${TMPDIR:-/tmp}/ocivm-sandboxtest-$$
mkdir -p "$WORK/vol"
export OCIVM_RUNTIME_DIR=$WORK/run
RUN_PID=""
cleanup() {
  [ -n "$RUN_PID" ] && kill -9 "$RUN_PID" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# The command waits for a file the test writes, so the VM stays up while
# the test looks at its servers.
"$OCIVM" run --rm --name sbx-$$ -v "$WORK/vol:/vol" "$DEMO" -- \
  sh -c 'while [ ! -e /vol/go ]; do sleep 0.2; done; echo done' > "$WORK/out" 2> "$WORK/err" &
RUN_PID=$!


servers=""
for _ in $(seq 600); do
  servers=""
  for p in $(descendants "$RUN_PID"); do
    # a server is PID 1 of its own PID namespace: two numbers in NSpid
    [ "$(awk '$1 == "NSpid:" { print NF }' /proc/$p/status 2>/dev/null)" = 3 ] && servers="$servers $p"
  done
  # ready once confined: the seccomp filter is the server's last step
  if [ "$(echo $servers | wc -w)" -ge 2 ]; then
    ready=1
    for p in $servers; do [ "$(field $p Seccomp)" = 2 ] || ready=0; done
    [ $ready = 1 ] && break
  fi
  sleep 0.1
done
check "ocivm run has a server process for the root and one for the -v share" [ "$(echo $servers | wc -w)" -eq 2 ]

for p in $servers; do
  args=$(tr '\0' ' ' < /proc/$p/cmdline)
  case "$args" in *--readonly*) what="root share";; *) what="-v share";; esac
  for ns in mnt pid net ipc uts; do
    check "$what server: its own $ns namespace" [ "$(readlink /proc/$p/ns/$ns)" != "$(readlink /proc/self/ns/$ns)" ]
  done
  check "$what server: NoNewPrivs: 1" [ "$(field $p NoNewPrivs)" = 1 ]
  check "$what server: Seccomp: 2 (filter)" [ "$(field $p Seccomp)" = 2 ]
  capeff=$((16#$(field $p CapEff)))
  # findmnt --task reads /proc/PID/mountinfo (libmount); -r: one line a mount
  opts=$(findmnt --task "$p" -rn -o VFS-OPTIONS)
  sys_admin=$(( (capeff >> 21) & 1 ))
  check "$what server: no CAP_SYS_ADMIN (CapEff $(field $p CapEff))" [ "$sys_admin" -eq 0 ]
  check "$what server: CapBnd equals CapEff (nothing to regain)" [ "$(field $p CapBnd)" = "$(field $p CapEff)" ]
  if [ "$what" = "root share" ]; then
    # dac_override (1) and dac_read_search (2) only
    check "root share server: exactly dac_override and dac_read_search (CapEff $(field $p CapEff))" \
      [ "$(field $p CapEff)" = 0000000000000006 ]
    # uid 0 could write any file root owns in it otherwise
    check "root share server: its root is read-only for the kernel ($opts)" bash -c "echo ,$opts, | grep -q ,ro,"
  else
    # -v shares are nodev,nosuid by default, so docs/security.md's writable
    # set without mknod (27), fsetid (4), setfcap (31): chown (0),
    # dac_override (1), dac_read_search (2), fowner (3), setgid (6),
    # setuid (7), and nothing else.
    check "-v share server: exactly chown, dac_override, dac_read_search, fowner, setgid, setuid (CapEff $(field $p CapEff))" \
      [ "$(field $p CapEff)" = 00000000000000cf ]
  fi
  # Its mount table holds the share and what is mounted below it: no /proc,
  # no host root.
  mounts=$(findmnt --task "$p" -rn -o TARGET | wc -l)
  check "$what server: sees only its share ($mounts mount)" [ "$mounts" -eq 1 ]
  check "$what server: /proc of its own PID namespace is not reachable by path" [ ! -e "/proc/$p/root/proc/1/root/etc/hostname" ]
  # Its working directory is its own /proc/self/fd: that /proc holds the
  # process directories only (subset=pid), no sys/ or sysrq-trigger that a
  # uid-0 process could write without any capability.
  check "$what server: its /proc has processes only (no sys/, no sysrq-trigger)" \
    bash -c "[ -e /proc/$p/cwd/../../1 ] && [ ! -e /proc/$p/cwd/../../sys ] && [ ! -e /proc/$p/cwd/../../sysrq-trigger ]"
  check "$what server: its root is nodev,nosuid for the kernel ($opts)" bash -c "echo ,$opts, | grep -q ,nodev, && echo ,$opts, | grep -q ,nosuid,"
  keeper=$(field $p PPid)
  check "$what server's keeper: NoNewPrivs: 1, no capabilities" [ "$(field $keeper NoNewPrivs)" = 1 -a "$((16#$(field $keeper CapEff)))" -eq 0 ]
done

touch "$WORK/vol/go"
wait "$RUN_PID"; rc=$?; RUN_PID=""
check "the command finished (exit $rc)" [ $rc -eq 0 ]
check "the command's output" grep -qx done "$WORK/out"

# No process-wide umask 0 leaks from the file server into ocivm: the kernel
# cache and initramfs built by a fresh run are not world-writable, and
# neither is anything the guest's QEMU writes.
OCIVM_HOME=$WORK/home "$OCIVM" run --rm "$DEMO" -- true > /dev/null 2> "$WORK/fresh.err"
check "a run with a fresh cache works" [ $? -eq 0 ]
ww=$(find "$WORK/home" -perm -0002 ! -type l 2>/dev/null)
check "nothing in the fresh cache is world-writable${ww:+: $ww}" [ -z "$ww" -a -d "$WORK/home/cache" ]

# kill -9 of ocivm run takes QEMU and every share server with it.
"$OCIVM" run --rm --name sbx2-$$ "$DEMO" -- sleep 60 > /dev/null 2>&1 &
RUN_PID=$!
for _ in $(seq 600); do
  [ "$(descendants "$RUN_PID" | wc -l)" -ge 3 ] && break  # QEMU, keeper and server
  sleep 0.1
done
all=$(descendants "$RUN_PID")
check "ocivm run had QEMU, a keeper and a server before kill -9 ($(echo $all | wc -w))" [ "$(echo $all | wc -w)" -ge 3 ]
kill -9 "$RUN_PID"; wait "$RUN_PID" 2>/dev/null; RUN_PID=""
left=""
for _ in $(seq 50); do
  left=""
  for p in $all; do [ -d /proc/$p ] && left="$left $p"; done
  [ -z "$left" ] && break
  sleep 0.1
done
check "kill -9 of ocivm run: no QEMU or share server left ($(echo $all | wc -w) processes)" [ -z "$left" ]
check "kill -9 of ocivm run --rm leaves its state directory (ocivm could not remove it)" [ -d "$OCIVM_RUNTIME_DIR/vms/sbx2-$$" ]
"$OCIVM" run --rm "$DEMO" -- true > /dev/null 2>&1
check "the next ocivm run removes the stale state of the killed one" [ ! -e "$OCIVM_RUNTIME_DIR/vms/sbx2-$$" ]
check "and leaves none of its own (--rm)" [ -z "$(ls "$OCIVM_RUNTIME_DIR/vms")" ]
finish
