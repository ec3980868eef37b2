#!/usr/bin/env bash
# leakcheck.sh checks itself (ctest label fs, as root): a test that leaves a
# mount behind fails and the mount is taken down, also when the mount
# point's name or the TMPDIR holds a space, a tab, a newline or a
# backslash (mountinfo escapes those; the old awk on field 5 compared the
# escaped form, so it missed such mounts or could not unmount them); a
# test that leaves nothing passes.
#   leakcheck_test.sh
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/check.sh"
. "$HERE/mounts.sh"
[ "$(id -u)" -eq 0 ] || { echo "FAIL: leakcheck_test.sh mounts file systems and must run as root"; exit 1; }

WORK=${TMPDIR:-/tmp}/ocivm-leakself-$$
mkdir -p "$WORK"
other=
cleanup() {
  [ -n "$other" ] && kill -9 "$other" 2>/dev/null
  local -a left
  local m
  mounts_under "$WORK" left
  for m in "${left[@]}"; do umount -l "$m" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

weird=$'a b\tc\nd\\e'

# inner BASE NAME CMD: leakcheck.sh NAME CMD with TMPDIR=BASE; its exit
# status in $rc, its stderr in $WORK/NAME.err
inner() {
  local base=$1 name=$2; shift 2
  mkdir -p "$base"
  TMPDIR=$base "$HERE/leakcheck.sh" "$name" bash -c "$1" _ "$weird" > /dev/null 2> "$WORK/$name.err"
  rc=$?
}

inner "$WORK/clean" clean 'mkdir "$TMPDIR/$1" && mount -t tmpfs t "$TMPDIR/$1" && umount "$TMPDIR/$1"'
check "a test that unmounts what it mounted passes (exit $rc)" [ $rc -eq 0 ]
check "... and is not reported" bash -c "! grep -q LEAK '$WORK/clean.err'"

inner "$WORK/named" named 'mkdir "$TMPDIR/$1" && mount -t tmpfs t "$TMPDIR/$1" &&
                            mkdir "$TMPDIR/$1/sub dir" && mount -t tmpfs t "$TMPDIR/$1/sub dir"'
check "a leaked mount named '$weird' fails the test (exit $rc)" [ $rc -ne 0 ]
check "... is reported" grep -q "LEAK: the test left mounts behind" "$WORK/named.err"
check "... and is unmounted, with the one below it" no_mounts_under "$WORK/named"

inner "$WORK/in $weird" spaced 'mkdir "$TMPDIR/m" && mount -t tmpfs t "$TMPDIR/m"'
check "a mount leaked in a TMPDIR named 'in $weird' fails the test (exit $rc)" [ $rc -ne 0 ]
check "... is reported" grep -q "LEAK: the test left mounts behind" "$WORK/spaced.err"
check "... and is unmounted" no_mounts_under "$WORK/in $weird"

# --- network: a namespace named with the test's tag, and a bridged VM's
# veth end and nft table whose owner (alias, comment: the VM's state
# directory) lies below the test's TMPDIR fail the test and are removed;
# ocivm objects of another owner (a user's VM started meanwhile, a test
# running beside it) are neither reported nor touched. Each case runs in a
# network namespace of its own (unshare -n), where leakcheck.sh judges it:
# its devices and tables are never seen by, nor mistaken for, another
# test's; afterwards what is left there is listed in NAME.links and
# NAME.tables.
inner_net() {  # inner_net NAME CMD
  local name=$1
  mkdir -p "$WORK/$name"
  unshare -n bash -c 'TMPDIR=$1 "$2" "$3" bash -c "$4"; rc=$?
    ip -o link show > "$5.links"; nft list tables > "$5.tables"; exit $rc' \
    _ "$WORK/$name" "$HERE/leakcheck.sh" "$name" "$2" "$WORK/$name" > /dev/null 2> "$WORK/$name.err"
  rc=$?
}
inner_net netleak 'ip netns add "ocivm-t.$OCIVM_TEST_TAG.x" &&
  ip link add ocivm0badf00d type veth peer name ocvleakpeer && ip link set ocivm0badf00d alias "$TMPDIR/run/vms/x" &&
  printf "table ip ocivm-leakself-0badf00d {\n comment \"%s\"\n}\n" "$TMPDIR/run/vms/x" | nft -f - &&
  ip link add ocivm0000beef type veth peer name ocvuserpeer && ip link set ocivm0000beef alias /run/ocivm/vms/web &&
  printf "table ip ocivm-web-0000beef {\n comment \"/run/ocivm/vms/web\"\n}\n" | nft -f - &&
  printf "table ip ocivm-other-0000cafe {\n}\n" | nft -f -'
check "a leaked network namespace, veth end and nft table fail the test (exit $rc)" [ $rc -ne 0 ]
check "... the namespace is reported" grep -q "LEAK: the test left network namespaces behind" "$WORK/netleak.err"
check "... the device and table are reported" \
  bash -c "grep 'LEAK: the test left network devices or nft tables behind' '$WORK/netleak.err' | grep -q 'link:ocivm0badf00d' &&
           grep 'network devices' '$WORK/netleak.err' | grep -q 'nft:ip:ocivm-leakself-0badf00d'"
check "... and all three are removed" bash -c "! ip netns list | grep -q 'ocivm-t\..*netleak' &&
  ! grep -q 'ocivm0badf00d' '$WORK/netleak.links' && ! grep -q ocivm-leakself '$WORK/netleak.tables'"
check "another owner's device and tables are not reported" \
  bash -c "! grep -E 'ocivm0000beef|ocivm-web|ocivm-other' '$WORK/netleak.err'"
check "... nor removed" bash -c "grep -q 'ocivm0000beef' '$WORK/netleak.links' &&
  grep -qx 'table ip ocivm-web-0000beef' '$WORK/netleak.tables' && grep -qx 'table ip ocivm-other-0000cafe' '$WORK/netleak.tables'"
inner_net netok 'ip netns add "ocivm-t.$OCIVM_TEST_TAG.x" && ip netns del "ocivm-t.$OCIVM_TEST_TAG.x"'
check "a test that removes its namespace passes (exit $rc)" [ $rc -eq 0 ]
# --- end network

# The final check judges its own suite only (one build directory's tests):
# another checkout's make test running beside it keeps its processes and
# directories. (It used to kill every tagged process on the machine.)
mkdir -p "$WORK/final/ocivm-t.othersuite.t.abcdef"
env OCIVM_TEST_TAG=othersuite.t.1.abcdef sleep 120 & other=$!
OCIVM_TEST_SUITE=mysuite TMPDIR="$WORK/final" "$HERE/leakcheck.sh" --final > /dev/null 2> "$WORK/final.err"; rc=$?
check "--final of one suite passes while another suite's test runs (exit $rc)" [ $rc -eq 0 ]
check "... leaves that test's process alone" kill -0 "$other"
check "... and its directory" [ -d "$WORK/final/ocivm-t.othersuite.t.abcdef" ]
OCIVM_TEST_SUITE=othersuite TMPDIR="$WORK/final" "$HERE/leakcheck.sh" --final > /dev/null 2> "$WORK/final.err"; rc=$?
check "--final of that suite reports its leftovers (exit $rc)" [ $rc -ne 0 ]
check "... kills its process" bash -c "! kill -0 $other 2>/dev/null"
check "... and removes its directory" [ ! -e "$WORK/final/ocivm-t.othersuite.t.abcdef" ]
wait "$other" 2>/dev/null; other=
check "a bad suite name is refused" bash -c "! OCIVM_TEST_SUITE='a b' '$HERE/leakcheck.sh' --final 2>/dev/null"

finish
