#!/usr/bin/env bash
# Runs one test and fails it if it left anything behind: every ctest test
# runs under this wrapper (CMakeLists.txt), so the suite checks itself.
#
#   leakcheck.sh NAME CMD [ARG...]
#
# The test gets a private TMPDIR and an environment tag (OCIVM_TEST_TAG)
# that every process it starts inherits (ocivm's children, QEMU, share
# servers, even inside their own PID namespaces). Afterwards, anything still
# carrying the tag is a leak: processes (killed), mounts and loop devices
# under the TMPDIR (detached), socket files there. Tests run in parallel;
# each one is judged only by what carries its own tag.
#   leakcheck.sh --final   checks that no tagged process, mount or loop
#                          device of any test of this suite is left (the
#                          suite's last test)
#
# A suite is one build directory's tests (CMake sets OCIVM_TEST_SUITE to a
# hash of it): tags and directories start with it, so the final check of
# one suite never judges, kills or removes what another suite running on
# the same machine (another checkout's make test) is still doing.
set -uo pipefail

tagged_pids() {  # tagged_pids PATTERN: pids whose environment has it
  local p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = "$$" ] || [ "$p" = "$BASHPID" ] && continue
    { tr '\0' '\n' < "/proc/$p/environ"; } 2>/dev/null | grep -qx -- "$1" && echo "$p"
  done
}

# mounts_under DIR VAR (findmnt: names with spaces or newlines come out whole)
. "$(dirname "$0")/mounts.sh"

loops_under() {  # loop devices whose backing file is below DIR
  losetup -l -n -O NAME,BACK-FILE 2>/dev/null | awk -v d="$1" 'index($2, d "/") == 1 { print $1 }'
}

# --- network (tests/vm/net_test.sh): the network namespaces a test makes
# carry its tag in their name (ocivm-t.TAG.*). A bridged VM's host-side veth
# end (ocivmXXXXXXXX) and nft table (ip ocivm-*) carry the VM's state
# directory (the link's alias, the table's comment): those in this namespace
# whose state directory lies below the test's TMPDIR are its leaks. Nothing
# else is judged: tests run in parallel, and a user may run VMs meanwhile.
netns_tagged() {  # netns_tagged PREFIX
  ip netns list 2>/dev/null | awk '{print $1}' | grep -F -- "ocivm-t.$1" 2>/dev/null
}
net_objects_under() {  # net_objects_under DIR-PREFIX: "link NAME", "nft FAMILY TABLE"
  # ocivm writes the owner as it can be carried: '"', '\' and control
  # characters as '?', at most 255 (alias) or 128 (comment) bytes
  local p t fam c
  p=$(printf '%s' "$1" | tr '"\\\001-\037\177' '[?*]')
  ip -o link show 2>/dev/null | awk -v p="${p:0:255}" '{
    name = $2; sub(/:$/, "", name); sub(/@.*/, "", name)
    if (name !~ /^ocivm[0-9a-f]+$/ || length(name) != 13) next
    i = index($0, "\\    alias "); if (!i) next
    a = substr($0, i + 11); j = index(a, "\\"); if (j) a = substr(a, 1, j - 1)
    if (index(a, p) == 1) print "link " name }'
  nft list tables 2>/dev/null | awk '$1 == "table" && $3 ~ /^ocivm-/ {print $2, $3}' | while read -r fam t; do
    c=$(nft list table "$fam" "$t" 2>/dev/null | sed -n 's/^\tcomment "\(.*\)"$/\1/p' | head -1)
    [[ "$c" == "${p:0:128}"* ]] && echo "nft $fam $t"
  done
}
check_net() {  # check_net TAG-PREFIX DIR-PREFIX
  local ns new o
  ns=$(netns_tagged "$1")
  report "network namespaces" $ns
  for o in $ns; do ip netns del "$o" 2>/dev/null; done
  new=$(net_objects_under "$2")
  [ -z "$new" ] && return 0
  report "network devices or nft tables" $(echo "$new" | tr ' ' ':')
  while read -r kind a b; do
    case $kind in
      link) ip link del "$a" 2>/dev/null ;;
      nft) nft delete table "$a" "$b" 2>/dev/null ;;
    esac
  done <<< "$new"
}
# --- end network

report() {  # report KIND LIST...
  local kind=$1; shift
  [ $# -eq 0 ] && return 0
  echo "LEAK: the test left $kind behind: $*" >&2
  leaked=1
}

check_and_clean() {  # check_and_clean TAG-PATTERN DIR-PREFIX
  local pids loops socks m
  local -a mounts
  # Processes first: they may hold the mounts.
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    pids=$(tagged_pids "$1")
    [ -z "$pids" ] && break
    sleep 0.3  # a process on its way out (a server whose VM just stopped)
  done
  if [ -n "$pids" ]; then
    for p in $pids; do
      echo "  pid $p: $({ tr '\0' ' ' < /proc/$p/cmdline; } 2>/dev/null | cut -c1-160)" >&2
    done
    report "processes" $pids
    kill -9 $pids 2>/dev/null
    sleep 0.3
  fi
  socks=$(find "$2" -type s 2>/dev/null | head -20)
  report "socket files" $socks
  loops=$(loops_under "$2")
  report "loop devices" $loops
  for l in $loops; do losetup -d "$l" 2>/dev/null; done
  # Not knowing is a failure too: the test may have left a mount.
  mounts_under "$2" mounts || leaked=1
  report "mounts" "${mounts[@]}"
  for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null; done
}

suite=${OCIVM_TEST_SUITE:-adhoc}
case $suite in *[!a-zA-Z0-9_-]*|'') echo "leakcheck: bad OCIVM_TEST_SUITE '$suite'" >&2; exit 1;; esac
leaked=0
if [ "${1:-}" = "--final" ]; then
  # Whatever a test's own check could not clean (a directory its wrapper
  # left because something was still mounted there, a tagged process).
  left=$(ls -d "${TMPDIR:-/tmp}"/ocivm-t."$suite".* 2>/dev/null)
  for d in $left; do
    name=${d##*/ocivm-t.$suite.}; name=${name%.*}
    check_and_clean "OCIVM_TEST_TAG=$suite\.$name\..*\.${d##*.}" "$d"
  done
  # any process of this suite's tests, whatever its directory
  check_and_clean "OCIVM_TEST_TAG=$suite\..*" "${TMPDIR:-/tmp}/ocivm-t.$suite.none"
  check_net "$suite." "${TMPDIR:-/tmp}/ocivm-t.$suite."  # network: of any of this suite's tests
  report "temporary directories" $left
  for d in $left; do rm -rf "$d"; done
  [ $leaked -eq 0 ] && echo "no test left a process, mount, loop device, socket or network namespace behind"
  exit $leaked
fi

name=${1:?test name}; shift
base=${TMPDIR:-/tmp}
dir=$(mktemp -d "$base/ocivm-t.$suite.$name.XXXXXX") || { echo "leakcheck: cannot create a directory in $base" >&2; exit 1; }
tag="$suite.$name.$$.${dir##*.}"
OCIVM_TEST_TAG=$tag TMPDIR=$dir "$@"
rc=$?
check_and_clean "OCIVM_TEST_TAG=$tag" "$dir"
check_net "$tag" "$dir/"  # network
[ $leaked -eq 0 ] && rm -rf "$dir"
if [ $leaked -ne 0 ]; then
  echo "FAIL: $name left the above behind (cleaned up now)" >&2
  [ $rc -eq 0 ] && rc=1
fi
exit $rc
