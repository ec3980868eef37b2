#!/usr/bin/env bash
# netbench: forwarded throughput from the guest to the host through -p,
#   ocivm:    --network passt (passt over a socketpair, MTU 65520)
#   peer:     --network slirp (QEMU's own user network, hostfwd)
# on the same demo image and kernel: the guest writes SIZE_MB (default
# 100) MiB into its tmpfs and serves it with busybox httpd on port 80; the
# host fetches it with curl from 127.0.0.1:PORT, FETCHES times per VM
# (default 3), in ROUNDS VMs per back end (default 2), the back ends
# interleaved. Prints the median MiB/s of each and the ratio passt / slirp
# (issue 11's acceptance: at least 1).
#   bench/netbench.sh [OCIVM] [DEMO_IMAGE]
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
OCIVM=${1:-$HERE/../build/ocivm}
DEMO=${2:-$HERE/../build/demo}
SIZE_MB=${SIZE_MB:-100}
FETCHES=${FETCHES:-3}
ROUNDS=${ROUNDS:-2}
fail() { echo "netbench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root"
[ -x "$OCIVM" ] || fail "$OCIVM missing: make build"
[ -x "$DEMO/bin/busybox" ] || fail "demo image $DEMO missing: make build"
command -v passt > /dev/null || fail "passt missing: apt-get install passt"
command -v curl > /dev/null || fail "curl missing: apt-get install curl"
command -v ss > /dev/null || fail "ss missing: apt-get install iproute2"

WORK=$(scratch_dir netbench) || fail "cannot make a scratch directory in /var/tmp"
export OCIVM_RUNTIME_DIR=$WORK/run
VM=
trap '[ -n "$VM" ] && kill "$VM" 2>/dev/null; wait 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT

free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 30000))
    [ -z "$(ss -Htan "sport = :$p")" ] && { echo "$p"; return; }
  done
}

# one_vm MODE: boots a VM serving the file, fetches it FETCHES times,
# appends each MiB/s to $WORK/MODE.rates.
one_vm() {
  local mode=$1 hp cp i out size secs
  hp=$(free_port); cp=$(free_port)
  [ "$hp" = "$cp" ] && cp=$(free_port)
  "$OCIVM" run --rm --network "$mode" -p "127.0.0.1:$hp:80" -p "127.0.0.1:$cp:81" "$DEMO" -- sh -c \
    "dd if=/dev/zero of=/tmp/big bs=1M count=$SIZE_MB 2>/dev/null && httpd -p 80 -h /tmp && nc -l -p 81 > /dev/null" \
    > "$WORK/vm.out" 2> "$WORK/vm.err" &
  VM=$!
  for i in $(seq 600); do
    curl -sfI --max-time 2 "http://127.0.0.1:$hp/big" > /dev/null 2>&1 && break
    kill -0 $VM 2>/dev/null || fail "the $mode VM ended before serving: $(tail -5 "$WORK/vm.err")"
    sleep 0.5
  done
  for i in $(seq "$FETCHES"); do
    out=$(curl -s --max-time 600 -o /dev/null -w '%{size_download} %{time_total}' "http://127.0.0.1:$hp/big") ||
      fail "$mode: the fetch failed"
    read -r size secs <<< "$out"
    [ "$size" = $((SIZE_MB << 20)) ] || fail "$mode: fetched $size bytes, want $((SIZE_MB << 20))"
    echo "scale=2; $size / 1048576 / $secs" | bc >> "$WORK/$mode.rates"
  done
  for i in $(seq 30); do
    kill -0 $VM 2>/dev/null || break
    bash -c "exec 3<>/dev/tcp/127.0.0.1/$cp && echo stop >&3 && sleep 1" 2>/dev/null
  done
  wait $VM || fail "the $mode VM failed: $(tail -5 "$WORK/vm.err")"
  VM=
}

: > "$WORK/passt.rates"; : > "$WORK/slirp.rates"
for r in $(seq "$ROUNDS"); do
  one_vm passt
  one_vm slirp
done
P=$(median < "$WORK/passt.rates"); S=$(median < "$WORK/slirp.rates")
accel=kvm
grep -q "KVM is not usable" "$WORK/vm.err" && accel=tcg
echo "netbench: $SIZE_MB MiB guest -> host through -p 127.0.0.1:PORT:80 (busybox httpd, curl), median of $((ROUNDS * FETCHES)) fetches, $accel"
printf "%-52s %10s\n" "back end" "MiB/s"
printf "%-52s %10.1f\n" "ocivm --network passt (socketpair, MTU 65520)" "$P"
printf "%-52s %10.1f\n" "peer: --network slirp (QEMU user network, hostfwd)" "$S"
printf "%-52s %10.2f\n" "ratio passt / slirp (target >= 1)" "$(echo "scale=4; $P / $S" | bc)"
echo "all passt: $(tr '\n' ' ' < "$WORK/passt.rates")"
echo "all slirp: $(tr '\n' ' ' < "$WORK/slirp.rates")"
