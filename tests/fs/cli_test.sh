#!/usr/bin/env bash
# `ocivm mount` as a user sees it: bad input gives one line "ocivm: error: ..."
# and exit 125; signals unmount; help and version work.
set -uo pipefail
OCIVM=${1:?usage: cli_test.sh PATH-TO-OCIVM}
if [ "$(id -u)" -ne 0 ]; then echo "FAIL: cli_test.sh mounts file systems and must run as root"; exit 1; fi
command -v unshare >/dev/null || { echo "FAIL: unshare missing: apt-get install util-linux"; exit 1; }
. "$(dirname "$0")/../lib/mounts.sh"
. "$(dirname "$0")/../lib/proc.sh"

work=${TMPDIR:-/tmp}/ocivm-clitest-$$
mkdir -p "$work/src" "$work/mnt" "$work/busy"
echo data > "$work/src/f"
: > "$work/file"
cleanup() {
  umount -l "$work/busy" 2>/dev/null; umount -l "$work/mnt" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
passed=0; failed=0

# expect_error NAME PATTERN -- CMD...: exit 125, exactly one stderr line
# starting "ocivm: error:" and matching PATTERN, nothing on stdout.
expect_error() {
  local name=$1 pattern=$2; shift 3
  local out err rc
  out=$("$@" 2>"$work/stderr"); rc=$?
  err=$(cat "$work/stderr")
  if [ $rc -eq 125 ] && [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] &&
     [[ $err == "ocivm: error: "* ]] && [[ $err =~ $pattern ]] && [ -z "$out" ]; then
    passed=$((passed+1)); echo "ok   $name: $err"
  else
    failed=$((failed+1)); echo "FAIL $name: exit $rc, stdout '$out', stderr '$err'"
  fi
}
check() {
  local name=$1; shift
  if "$@"; then passed=$((passed+1)); echo "ok   $name"; else failed=$((failed+1)); echo "FAIL $name"; fi
}

expect_error "no arguments" "needs SOURCE and MOUNTPOINT" -- "$OCIVM" mount
expect_error "missing source" "does not exist" -- "$OCIVM" mount "$work/nope" "$work/mnt"
expect_error "source is a file" "not a directory" -- "$OCIVM" mount "$work/file" "$work/mnt"
expect_error "missing mount point" "mkdir -p" -- "$OCIVM" mount "$work/src" "$work/nomnt"
mount -t tmpfs tmpfs "$work/busy"
expect_error "busy mount point" "busy" -- "$OCIVM" mount "$work/src" "$work/busy"
umount "$work/busy"
expect_error "unknown flag" "unknown option '--bogus'" -- "$OCIVM" mount --bogus "$work/src" "$work/mnt"
expect_error "bad cache mode" "invalid --cache 'sometimes'" -- "$OCIVM" mount --cache sometimes "$work/src" "$work/mnt"
expect_error "flag without value" "needs a value" -- "$OCIVM" mount "$work/src" "$work/mnt" --cache
expect_error "bad thread count" "invalid value '0' for --threads" -- "$OCIVM" mount --threads 0 "$work/src" "$work/mnt"
expect_error "bad log level" "unknown log level" -- "$OCIVM" mount --log-level loud "$work/src" "$work/mnt"
expect_error "unknown command" "unknown command 'frobnicate'" -- "$OCIVM" frobnicate
expect_error "no /dev/fuse" "modprobe fuse" -- unshare -m sh -c "mount -t tmpfs tmpfs /dev && exec \"$OCIVM\" mount \"$work/src\" \"$work/mnt\""

expect_error "fsd without --shared-dir" "needs --shared-dir" -- "$OCIVM" fsd --socket-path "$work/s.sock"
expect_error "fsd without a socket" "exactly one of --socket-path" -- "$OCIVM" fsd --shared-dir "$work/src"
expect_error "fsd with a missing share" "not an existing directory" -- "$OCIVM" fsd --shared-dir "$work/nope" --socket-path "$work/s.sock"
expect_error "fsd bad --seccomp" "invalid --seccomp" -- "$OCIVM" fsd --shared-dir "$work/src" --socket-path "$work/s.sock" --seccomp maybe
expect_error "trace summary of a missing file" "cannot read trace file" -- "$OCIVM" trace summary "$work/none.jsonl"
# ocivm run's -v is checked before any image or VM is looked at.
expect_error "run -v without a GUEST path" "use HOST:GUEST\\[:OPTIONS\\] .*nodev\\|dev, nosuid\\|suid, noexec\\|exec" -- "$OCIVM" run -v "$work/src" some-image -- true
expect_error "run -v with a relative GUEST path" "an absolute GUEST path" -- "$OCIVM" run -v "$work/src:data" some-image -- true
expect_error "run -v with an unknown option" "unknown option 'nodevv'; use ro, rw, nodev, dev, nosuid, suid, noexec, exec or writeback" -- "$OCIVM" run -v "$work/src:/data:ro,nodevv" some-image -- true
# --writeback needs the page cache and something to write
expect_error "mount --writeback --cache never" "--writeback: .*--cache never bypasses for file data; use --cache auto or always" -- "$OCIVM" mount --writeback --cache never "$work/src" "$work/mnt"
expect_error "mount --writeback --readonly" "--writeback: a read-only share has no writes to cache" -- "$OCIVM" mount --writeback --readonly "$work/src" "$work/mnt"
expect_error "fsd --writeback --cache metadata" "--writeback: .*--cache metadata bypasses" -- "$OCIVM" fsd --writeback --cache metadata --shared-dir "$work/src" --socket-path "$work/s.sock"
expect_error "run -v :ro,writeback" "invalid --volume '.*:/data:ro,writeback': writeback: a read-only share has no writes to cache" -- "$OCIVM" run -v "$work/src:/data:ro,writeback" some-image -- true
expect_error "run --cache never -v :writeback" "writeback: .*--cache never bypasses" -- "$OCIVM" run --cache never -v "$work/src:/data:writeback" some-image -- true
check "fsd --writeback --cache metadata leaves no socket behind" [ ! -e "$work/s.sock" ]
expect_error "run -v of a missing HOST directory" "volume .*/nope is not an existing directory" -- "$OCIVM" run -v "$work/nope:/data" some-image -- true
check "fsd --print-capabilities prints libvirt's JSON" bash -c "\"$OCIVM\" fsd --print-capabilities | grep -q '\"type\": \"fs\"'"
check "--version prints the version" bash -c "\"$OCIVM\" --version | grep -q '^ocivm version [0-9]'"
check "help lists mount" bash -c "\"$OCIVM\" help | grep -q 'mount SOURCE MOUNTPOINT'"
check "mount --help explains --cache" bash -c "\"$OCIVM\" mount --help | grep -q -- '--cache MODE'"
check "mount, fsd and run --help explain writeback" bash -c "\"$OCIVM\" mount --help | grep -q -- '--writeback' && \"$OCIVM\" fsd --help | grep -q -- '--writeback' && \"$OCIVM\" run --help | grep -q 'the guest caches writes'"
check "help mount = mount --help" bash -c "diff <(\"$OCIVM\" help mount) <(\"$OCIVM\" mount --help)"


# SIGINT unmounts and exits 0
"$OCIVM" mount "$work/src" "$work/mnt" & pid=$!
check "mounts" wait_mounted "$work/mnt"
check "serves" grep -q data "$work/mnt/f"
kill -INT $pid; wait $pid; rc=$?
check "SIGINT: exit 0 (got $rc)" test $rc -eq 0
check "SIGINT: unmounted" wait_unmounted "$work/mnt"

# SIGTERM while a process holds a file open: the server still exits and the
# mount is gone from the namespace
"$OCIVM" mount "$work/src" "$work/mnt" & pid=$!
wait_mounted "$work/mnt"
sleep 30 < "$work/mnt/f" & holder=$!
sleep 0.2
kill -TERM $pid
for _ in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.05; done
check "SIGTERM with a busy mount: server exits" bash -c "! kill -0 $pid 2>/dev/null"
check "SIGTERM with a busy mount: detached" wait_unmounted "$work/mnt"
kill $holder 2>/dev/null; wait $holder 2>/dev/null; wait $pid 2>/dev/null


# The server is a confined process of its own; it inherits no stray fd of
# ours (fd 7 here), and kill -9 of ocivm mount takes the server with it,
# even after a non-root user's request made a worker switch its fsuid.
chmod 0777 "$work/src"
chmod o+x "$work" "$(dirname "$work")"  # the test's own directories, for nobody to reach the mount
"$OCIVM" mount "$work/src" "$work/mnt" 7< /etc/hostname & pid=$!
check "mount with an extra fd open: mounts" wait_mounted "$work/mnt"
su nobody -s /bin/sh -c "touch $work/mnt/by-nobody" 2>/dev/null
check "a non-root user's file is created through the mount" [ -e "$work/src/by-nobody" ]
server=""
for p in $(descendants $pid); do
  [ "$(awk '$1 == "NSpid:" { print NF }' /proc/$p/status 2>/dev/null)" = 3 ] && server=$p
done
check "ocivm mount's server is PID 1 of a namespace of its own" [ -n "$server" ]
stray=$(for f in /proc/$server/fd/*; do readlink "$f"; done 2>/dev/null | grep -c '^/etc/hostname$')
check "the server holds no fd it inherited by accident" [ "$stray" = 0 ]
all=$(descendants $pid)
kill -9 $pid; wait $pid 2>/dev/null
left=""
for _ in $(seq 50); do
  left=""; for p in $all; do [ -d /proc/$p ] && left="$left $p"; done
  [ -z "$left" ] && break; sleep 0.1
done
check "kill -9 of ocivm mount: its keeper and server are gone" [ -z "$left" ]
umount -l "$work/mnt" 2>/dev/null

# --rlimit-nofile caps the nodes the kernel can make the server hold (one
# O_PATH fd each): with a cap of 100 and 300 names kept looked up under
# --cache always, some lookups fail with EMFILE and the server stays up.
expect_error "--rlimit-nofile below the minimum" "too low: a server needs at least 64" -- "$OCIVM" mount --rlimit-nofile 10 "$work/src" "$work/mnt"
expect_error "--rlimit-nofile above nr_open" "choose a lower --rlimit-nofile" -- "$OCIVM" mount --rlimit-nofile $(( $(cat /proc/sys/fs/nr_open) + 1 )) "$work/src" "$work/mnt"
mkdir "$work/src/many"
for i in $(seq 300); do : > "$work/src/many/f$i"; done
"$OCIVM" mount --cache always --rlimit-nofile 100 "$work/src" "$work/mnt" & pid=$!
check "--rlimit-nofile 100: mounts" wait_mounted "$work/mnt"
emfile=0; found=0
for i in $(seq 300); do
  if err=$(stat "$work/mnt/many/f$i" 2>&1 >/dev/null); then found=$((found+1))
  elif [[ $err == *"Too many open files"* ]]; then emfile=$((emfile+1)); fi
done
check "--rlimit-nofile 100: lookups past the cap fail with EMFILE ($found found, $emfile EMFILE)" \
  bash -c "[ $emfile -gt 0 ] && [ $found -gt 0 ] && [ $found -lt 100 ] && [ $((found + emfile)) -eq 300 ]"
check "--rlimit-nofile 100: the server still answers (STATFS needs no new fd)" stat -f "$work/mnt"
kill -INT $pid; wait $pid
check "--rlimit-nofile 100: unmounted" wait_unmounted "$work/mnt"

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
