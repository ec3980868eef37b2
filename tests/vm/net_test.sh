#!/usr/bin/env bash
# Networking of `ocivm run` (ctest label vm): real VMs booting the demo
# image (busybox: httpd, wget, nc), checked from the host as a user sees
# them. Only loopback in the host's own namespace; the bridge runs inside
# two network namespaces this test makes (removed by its trap, and by
# leakcheck.sh should the trap not run).
#   1. three VMs at once, two with passt and one with slirp, each serving a
#      page from busybox httpd on guest port 80 through -p 127.0.0.1:PORT:80
#      (same guest port, different host ports), each fetching a page from
#      a server on the host's 127.0.0.1 through its gateway 10.0.2.2
#   2. a host port in use: exit 125 with a clear message, before boot
#      (passt and slirp); -p with --network none; a malformed -p; user
#      without passt installed (slirp, one warning); passt without a
#      default route refused
#   3. --network bridge in namespace A: the guest reaches a server in A
#      (its gateway) and one in namespace B (routed and masqueraded), -p
#      forwards from A's loopback and from B; nothing left afterwards;
#      after a kill -9 of ocivm, the next ocivm removes the nft table;
#      run -d in A and a kill -9 of its supervisor: an ocivm in namespace B
#      leaves the record and B's table of the same name alone, `ocivm rm`
#      in A removes A's table
#   4. --network bridge as a user: refused, exit 125
#   net_test.sh OCIVM DEMO_IMAGE
set -uo pipefail
OCIVM=${1:?ocivm binary}
DEMO=${2:?demo image directory}
. "$(dirname "$0")/../lib/check.sh"

[ "$(id -u)" -eq 0 ] || fail "the vm tests must run as root"
need qemu-system-x86_64 qemu-system-x86
need passt passt
need nft nftables
need ip iproute2
need curl curl
need python3 python3
need setpriv util-linux
need ss iproute2
[ -x "$DEMO/bin/busybox" ] || fail "demo image $DEMO not built (make build)"

WORK=${TMPDIR:-/tmp}/ocivm-nettest-$$
mkdir -p "$WORK"
export OCIVM_RUNTIME_DIR=$WORK/run
# The namespaces carry the test's tag: leakcheck.sh finds them by it; and
# so does every process the test starts (the check that no passt is left
# looks for it), run by ctest or not.
export OCIVM_TEST_TAG=${OCIVM_TEST_TAG:-adhoc.vm_net.$$}
TAG=$OCIVM_TEST_TAG
NSA=ocivm-t.$TAG.a
NSB=ocivm-t.$TAG.b
BG=()
cleanup() {
  local p
  # the servers' pids are in files: serve runs in a command substitution
  for p in "${BG[@]}" $(cat "$WORK"/*.spid 2>/dev/null); do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  ip netns del "$NSA" 2>/dev/null
  ip netns del "$NSB" 2>/dev/null
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

# serve NAME BIND [NETNS]: an HTTP server of $WORK/NAME on BIND, port
# chosen by the kernel (no race with other tests), pid in NAME.spid; prints
# the port.
serve() {
  local name=$1 bind=$2 ns=${3:-} port
  mkdir -p "$WORK/$name"
  echo "page-of-$name" > "$WORK/$name/index.html"
  local -a pre=()
  [ -n "$ns" ] && pre=(ip netns exec "$ns")
  "${pre[@]}" python3 -u -c '
import functools, http.server, sys
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
s = http.server.ThreadingHTTPServer((sys.argv[1], 0), h)
print(s.server_port, flush=True)
s.serve_forever()' "$bind" "$WORK/$name" > "$WORK/$name.port" 2> "$WORK/$name.log" &
  echo $! > "$WORK/$name.spid"
  for _ in $(seq 100); do
    port=$(head -1 "$WORK/$name.port" 2>/dev/null)
    [ -n "$port" ] && { echo "$port"; return 0; }
    sleep 0.1
  done
  fail "the test's HTTP server $name did not start: $(cat "$WORK/$name.log")"
}

# free_ports N: N distinct TCP ports nothing listens on now (random picks;
# a VM that still finds its port taken is started again with new ones).
free_ports() {
  local n=$1 p got=()
  while [ ${#got[@]} -lt "$n" ]; do
    p=$((20000 + RANDOM % 30000))
    [[ " ${got[*]} " == *" $p "* ]] && continue
    [ -z "$(ss -Htan "sport = :$p")" ] && got+=("$p")
  done
  echo "${got[@]}"
}

# wait_page URL WANT UNTIL [NETNS]: polls until URL serves WANT, at the
# latest until $SECONDS reaches UNTIL (VMs booting at once share one
# deadline, so a broken network fails the test in minutes, not hours).
wait_page() {
  local url=$1 want=$2 until=$3 ns=${4:-} got=
  local -a pre=()
  [ -n "$ns" ] && pre=(ip netns exec "$ns")
  while :; do
    got=$("${pre[@]}" curl -s --max-time 3 "$url" 2>/dev/null)
    [ "$got" = "$want" ] && return 0
    [ "$SECONDS" -ge "$until" ] && break
    sleep 0.5
  done
  echo "  $url served '$got', want '$want'" >&2
  return 1
}

# stop_guest PORT PID [NETNS]: the guest's `nc -l -p 81` ends its command
# once something connects; repeated until ocivm (PID) has exited. When that
# does not work (the forward is broken), two SIGTERMs: the first goes to
# the command, the second stops the VM.
stop_guest() {
  local port=$1 pid=$2 ns=${3:-}
  local -a pre=()
  [ -n "$ns" ] && pre=(ip netns exec "$ns")
  for _ in $(seq 15); do
    kill -0 "$pid" 2>/dev/null || return 0
    "${pre[@]}" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && echo stop >&3 && sleep 1" 2>/dev/null
    sleep 1
  done
  kill -TERM "$pid" 2>/dev/null; sleep 2; kill -TERM "$pid" 2>/dev/null
  return 1
}

json_field() { # JSON-FILE PYTHON-EXPR (j is the parsed document)
  python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"
}

show() { echo "  --- $1: rc=$(cat "$WORK/$1.rc" 2>/dev/null)"; sed 's/^/  out| /' "$WORK/$1.out" | head -20
         grep -v "KVM is not usable" "$WORK/$1.err" | sed 's/^/  err| /' | head -30; }

# The guest: fetch the host's page through the gateway, serve its own page
# on 80, wait for the stop connection on 81.
guest_cmd() {  # guest_cmd HOST-URL... PAGE
  local page=${*: -1} urls=("${@:1:$#-1}") s="grep nameserver /etc/resolv.conf; echo hostname: \$(hostname); " u i=0
  for u in "${urls[@]}"; do
    i=$((i + 1))
    s+="timeout 30 wget -O /tmp/f$i $u 2>/dev/null && echo fetched: \$(cat /tmp/f$i); "
  done
  echo "$s mkdir -p /www && echo $page > /www/index.html && httpd -p 80 -h /www && echo serving && nc -l -p 81 > /dev/null; echo guest-done"
}

# ---------------------------------------------------------------- 1
SP=$(serve host 127.0.0.1) || fail "${SP#FAIL: }"
HOSTPAGE=page-of-host
# start_vm NAME MODE PAGE: in the background, ports in $NAME.ports ("HTTP STOP")
start_vm() {
  local name=$1 mode=$2 page=$3 try hp cp
  for try in 1 2 3; do
    read -r hp cp <<< "$(free_ports 2)"
    echo "$hp $cp" > "$WORK/$name.ports"
    timeout 300 "$OCIVM" run --name "$name" --network "$mode" -p "127.0.0.1:$hp:80" -p "$cp:81" "$DEMO" \
      -- sh -c "$(guest_cmd "http://10.0.2.2:$SP/index.html" "$page")" > "$WORK/$name.out" 2> "$WORK/$name.err" &
    echo $! > "$WORK/$name.pid"
    BG+=($!)
    # Until both forwards listen (passt or QEMU bound them) or ocivm has
    # exited; a port taken between the pick and the bind: pick again.
    local i
    for i in $(seq 600); do
      [ -n "$(ss -Htln "sport = :$hp")" ] && [ -n "$(ss -Htln "sport = :$cp")" ] && return 0
      kill -0 "$(cat "$WORK/$name.pid")" 2>/dev/null || break
      sleep 0.1
    done
    if grep -q "already in use" "$WORK/$name.err"; then
      wait "$(cat "$WORK/$name.pid")" 2>/dev/null
      echo "  ($name: port taken meanwhile, again with other ports)"
      continue
    fi
    show "$name"
    fail "$name: its forwards 127.0.0.1:$hp and :$cp did not come to listen within 60 s"
  done
  fail "$name: no free ports after 3 tries"
}
start_vm pa passt guest-page-pa
start_vm pb passt guest-page-pb
start_vm sl slirp guest-page-sl
until=$((SECONDS + 180))
for v in pa pb sl; do
  read -r hp cp < "$WORK/$v.ports"
  mode=$([ $v = sl ] && echo slirp || echo passt)
  check "$v ($mode): the guest's httpd on port 80 answers on the host's 127.0.0.1:$hp" \
    wait_page "http://127.0.0.1:$hp/" "guest-page-$v" $until
  check "$v ($mode): ocivm records the mode, the guest address and both forwards in network.json" \
    [ "$(json_field "$WORK/run/vms/$v/network.json" "(j['mode'], j['address'], j['gateway'], sorted(j['ports']) ==
                      sorted(['127.0.0.1:$hp->80/tcp', '127.0.0.1:$cp->81/tcp']))")" = "('$mode', '10.0.2.15/24', '10.0.2.2', True)" ]
done
listeners() { ss -Htln "sport = :$1" | awk '{print $4}' | sort -u | tr '\n' ' '; }
for v in pa sl; do
  read -r hp cp < "$WORK/$v.ports"
  mode=$([ $v = sl ] && echo slirp || echo passt)
  check "$mode: -p 127.0.0.1:$hp:80 listens on 127.0.0.1 only (got: $(listeners "$hp"))" \
    [ "$(listeners "$hp")" = "127.0.0.1:$hp " ]
  check "$mode: -p $cp:81 (no address) listens on 127.0.0.1 only, by default (got: $(listeners "$cp"))" \
    [ "$(listeners "$cp")" = "127.0.0.1:$cp " ]
done
for v in pa pb sl; do
  read -r hp cp < "$WORK/$v.ports"
  stop_guest "$cp" "$(cat "$WORK/$v.pid")"
  wait "$(cat "$WORK/$v.pid")"
  echo $? > "$WORK/$v.rc"
  mode=$([ $v = sl ] && echo slirp || echo passt)
  if [ "$(cat "$WORK/$v.rc")" = 0 ] && grep -q guest-done "$WORK/$v.out"; then
    ok "$v ($mode): the guest command ended on the stop connection, exit 0"
  else bad "$v ($mode): the guest command ended on the stop connection, exit 0"; show $v; fi
  check "$v ($mode): the guest fetched the host's page from 127.0.0.1 through 10.0.2.2" \
    grep -qx "fetched: $HOSTPAGE" "$WORK/$v.out"
  check "$v ($mode): /etc/resolv.conf names 10.0.2.3, the network's DNS forwarder" \
    grep -qx "nameserver 10.0.2.3" "$WORK/$v.out"
  check "$v ($mode): the guest's host name is the VM's name" grep -qx "hostname: $v" "$WORK/$v.out"
done
check "no passt is left once its VM has stopped" bash -c "! grep -qx '$TAG' <(for p in \$(pgrep -x passt.avx2; pgrep -x passt); do tr '\0' '\n' < /proc/\$p/environ | sed -n 's/^OCIVM_TEST_TAG=//p'; done 2>/dev/null)"

# ---------------------------------------------------------------- 2
for mode in passt slirp; do
  "$OCIVM" run --name "busy-$mode" --network $mode -p "127.0.0.1:$SP:80" "$DEMO" -- true \
    > "$WORK/busy-$mode.out" 2> "$WORK/busy-$mode.err"
  echo $? > "$WORK/busy-$mode.rc"
  if [ "$(cat "$WORK/busy-$mode.rc")" = 125 ] && grep -q "port $SP on 127.0.0.1 is already in use" "$WORK/busy-$mode.err"; then
    ok "$mode: a host port in use is refused with exit 125, naming the port"
  else bad "$mode: a host port in use is refused with exit 125, naming the port"; show "busy-$mode"; fi
  check "$mode: ... before the VM was started (no console log, no QEMU log)" \
    bash -c "[ ! -e '$WORK/run/vms/busy-$mode/console.log' ] && [ ! -e '$WORK/run/vms/busy-$mode/qemu.log' ]"
done
"$OCIVM" run --name busy-default -p "127.0.0.1:$SP:80" "$DEMO" -- true > "$WORK/busy-default.out" 2> "$WORK/busy-default.err"
echo $? > "$WORK/busy-default.rc"
check "-p without --network gets a user network (its port check refuses the busy port, exit 125)" \
  bash -c "[ \$(cat '$WORK/busy-default.rc') = 125 ] && grep -q 'port $SP on 127.0.0.1 is already in use' '$WORK/busy-default.err'"
"$OCIVM" run --rm --network none -p 8080:80 "$DEMO" -- true > "$WORK/nonet.out" 2> "$WORK/nonet.err"
echo $? > "$WORK/nonet.rc"
check "-p with --network none: exit 125 saying a network is needed" \
  bash -c "[ \$(cat '$WORK/nonet.rc') = 125 ] && grep -q -- '-p needs a network' '$WORK/nonet.err'"
"$OCIVM" run --rm --network passt -p 80 "$DEMO" -- true > "$WORK/badp.out" 2> "$WORK/badp.err"; echo $? > "$WORK/badp.rc"
check "a malformed -p: exit 125 naming the form" \
  bash -c "[ \$(cat '$WORK/badp.rc') = 125 ] && grep -qF '[IP:]HOSTPORT:GUESTPORT[/tcp|/udp]' '$WORK/badp.err'"
"$OCIVM" run --rm --network passt --subnet 10.50.0.0/24 "$DEMO" -- true > "$WORK/subnet.out" 2> "$WORK/subnet.err"
echo $? > "$WORK/subnet.rc"
check "--subnet without bridge: exit 125 saying it is for bridge" \
  bash -c "[ \$(cat '$WORK/subnet.rc') = 125 ] && grep -q -- '--subnet is for --network bridge only' '$WORK/subnet.err'"
"$OCIVM" run --rm --network wifi "$DEMO" -- true > "$WORK/badn.out" 2> "$WORK/badn.err"; echo $? > "$WORK/badn.rc"
check "an unknown --network: exit 125 listing the modes" \
  bash -c "[ \$(cat '$WORK/badn.rc') = 125 ] && grep -q 'none, user, passt, slirp or bridge' '$WORK/badn.err'"

# user without passt (a PATH without it): QEMU's user network, one warning line
mkdir -p "$WORK/nopasst-bin"
ln -s "$(command -v qemu-system-x86_64)" "$WORK/nopasst-bin/qemu-system-x86_64"
env PATH="$WORK/nopasst-bin" "$OCIVM" run --rm --network user "$DEMO" \
  -- sh -c "timeout 30 wget -O /tmp/f http://10.0.2.2:$SP/index.html 2>/dev/null && echo fetched: \$(cat /tmp/f)" \
  > "$WORK/nopasst.out" 2> "$WORK/nopasst.err"; echo $? > "$WORK/nopasst.rc"
if [ "$(cat "$WORK/nopasst.rc")" = 0 ] && grep -qx "fetched: $HOSTPAGE" "$WORK/nopasst.out"; then
  ok "user without passt installed: QEMU's user network, the guest reaches the host's 127.0.0.1"
else bad "user without passt installed: QEMU's user network, the guest reaches the host's 127.0.0.1"; show nopasst; fi
check "... with one warning line naming the package" \
  bash -c "[ \$(grep -c 'warning: passt is not installed.*apt-get install passt' '$WORK/nopasst.err') = 1 ]"
# passt needs a default route (its outbound interface): a namespace with only lo
unshare -n sh -c "ip link set lo up && exec '$OCIVM' run --rm --network passt '$DEMO' -- true" \
  > "$WORK/noroute.out" 2> "$WORK/noroute.err"; echo $? > "$WORK/noroute.rc"
check "passt without a default route: exit 125 saying so and naming slirp" \
  bash -c "[ \$(cat '$WORK/noroute.rc') = 125 ] && grep -q 'no IPv4 default route.*--network slirp' '$WORK/noroute.err'"

# ---------------------------------------------------------------- 3
fwd_before=$(cat /proc/sys/net/ipv4/ip_forward)
ip netns add "$NSA" || fail "cannot create network namespace $NSA"
ip netns add "$NSB" || fail "cannot create network namespace $NSB"
ip -n "$NSA" link add eth0 type veth peer name eth0 netns "$NSB" || fail "cannot create the test's veth pair"
ip -n "$NSA" addr add 192.168.211.1/24 dev eth0
ip -n "$NSB" addr add 192.168.211.2/24 dev eth0
for ns in "$NSA" "$NSB"; do ip -n "$ns" link set lo up; ip -n "$ns" link set eth0 up; done
APORT=$(serve in-a 0.0.0.0 "$NSA") || fail "${APORT#FAIL: }"
BPORT=$(serve in-b 192.168.211.2 "$NSB") || fail "${BPORT#FAIL: }"
# A fresh namespace: every port is free, fixed numbers are fine.
ip netns exec "$NSA" timeout 300 "$OCIVM" run --name br --network bridge --subnet 10.123.0.0/24 \
  -p 127.0.0.1:8080:80 -p 0.0.0.0:8081:80 -p 127.0.0.1:8082:81 "$DEMO" \
  -- sh -c "$(guest_cmd "http://10.123.0.1:$APORT/index.html" "http://192.168.211.2:$BPORT/index.html" guest-page-br)" \
  > "$WORK/br.out" 2> "$WORK/br.err" &
BRPID=$!
BG+=($BRPID)
check "bridge: the guest's httpd answers on namespace A's 127.0.0.1:8080 (DNAT from output)" \
  wait_page http://127.0.0.1:8080/ guest-page-br $((SECONDS + 120)) "$NSA"
check "bridge: ... and from namespace B on A's 192.168.211.1:8081 (DNAT from prerouting)" \
  wait_page http://192.168.211.1:8081/ guest-page-br $((SECONDS + 20)) "$NSB"
BRT=$(json_field "$WORK/run/vms/br/network.json" "j['nft_table']")
BRD=$(json_field "$WORK/run/vms/br/network.json" "j['host_device']")
check "bridge: one nft table for the VM, named after it and its state directory ($BRT)" \
  bash -c "[[ '$BRT' =~ ^ocivm-br-[0-9a-f]{8}$ ]] && [ \"\$(ip netns exec '$NSA' nft list tables | grep ocivm)\" = 'table ip $BRT' ]"
check "bridge: the table's comment is the VM's state directory" \
  bash -c "ip netns exec '$NSA' nft list table ip '$BRT' | grep -qxF \$'\\tcomment \"$WORK/run/vms/br\"'"
check "bridge: the host's veth end $BRD has the state directory as its alias" \
  bash -c "ip -n '$NSA' -o link show '$BRD' | grep -qF 'alias $WORK/run/vms/br'"
check "bridge: network.json names the namespace the table is in (A's)" \
  [ "$(json_field "$WORK/run/vms/br/network.json" "(j['host_netns']['dev'], j['host_netns']['ino'])")" = \
    "$(ip netns exec "$NSA" stat -L -c '(%d, %i)' /proc/self/ns/net)" ]
check "bridge: the host's veth end holds the gateway 10.123.0.1/30" \
  bash -c "ip -n '$NSA' -o addr | grep -E 'ocivm[0-9a-f]{8}' | grep -q 10.123.0.1/30"
check "bridge: network.json has the guest address, the device and the forwards" \
  bash -c "grep -q '\"address\":\"10.123.0.2/30\".*\"host_device\":\"ocivm' '$WORK/run/vms/br/network.json' && grep -q '0.0.0.0:8081->80/tcp' '$WORK/run/vms/br/network.json'"
stop_guest 8082 $BRPID "$NSA"
wait $BRPID; echo $? > "$WORK/br.rc"
if [ "$(cat "$WORK/br.rc")" = 0 ] && grep -q guest-done "$WORK/br.out"; then ok "bridge: the guest command ended, exit 0"
else bad "bridge: the guest command ended, exit 0"; show br; fi
check "bridge: the guest reached a server in namespace A through its gateway" grep -qx "fetched: page-of-in-a" "$WORK/br.out"
check "bridge: the guest reached namespace B (routed and masqueraded)" grep -qx "fetched: page-of-in-b" "$WORK/br.out"
check "bridge: B saw the guest as A's address 192.168.211.1 (masquerade)" grep -q '^192.168.211.1 .*GET /index.html' "$WORK/in-b.log"
check "bridge: resolv.conf got a name server (the host's, not a loopback one)" \
  bash -c "grep -q '^nameserver ' '$WORK/br.out' && ! grep -q '^nameserver 127\.' '$WORK/br.out'"
check "bridge: no nft table left in A after the VM" bash -c "! ip netns exec '$NSA' nft list tables | grep -q ocivm"
check "bridge: no veth end left in A after the VM" bash -c "! ip -n '$NSA' -o link | grep -qE 'ocivm[0-9a-f]{8}'"
check "bridge: ocivm turned on ip_forward in its own namespace (A)" [ "$(ip netns exec "$NSA" cat /proc/sys/net/ipv4/ip_forward)" = 1 ]
check "bridge: ... and never in the test's own namespace" [ "$(cat /proc/sys/net/ipv4/ip_forward)" = "$fwd_before" ]

# kill -9 of ocivm: the namespace, tap and veth go with it; the table is
# the one thing left, and the next ocivm's clean-up of stale VMs removes it.
ip netns exec "$NSA" "$OCIVM" run --name k9 --network bridge --subnet 10.124.0.0/24 "$DEMO" -- sleep 600 \
  > "$WORK/k9.out" 2> "$WORK/k9.err" &
K9=$!
BG+=($K9)
K9T=
for _ in $(seq 100); do
  K9T=$(json_field "$WORK/run/vms/k9/network.json" "j['nft_table']" 2>/dev/null)
  [ -n "$K9T" ] && ip netns exec "$NSA" nft list table ip "$K9T" > /dev/null 2>&1 && break
  sleep 0.2
done
check "kill -9: the VM's table was there while it ran" bash -c "ip netns exec '$NSA' nft list table ip '$K9T' > /dev/null"
sleep 1
kill -9 $K9; wait $K9 2>/dev/null
for _ in $(seq 50); do ip -n "$NSA" -o link | grep -qE 'ocivm[0-9a-f]{8}' || break; sleep 0.2; done
check "kill -9: the veth pair went with ocivm's namespace fd" bash -c "! ip -n '$NSA' -o link | grep -qE 'ocivm[0-9a-f]{8}'"
ip netns exec "$NSA" "$OCIVM" run --rm "$DEMO" -- true > "$WORK/after.out" 2> "$WORK/after.err"
echo $? > "$WORK/after.rc"
check "kill -9: the next ocivm ran" [ "$(cat "$WORK/after.rc")" = 0 ]
check "kill -9: ... and removed the killed VM's nft table" bash -c "! ip netns exec '$NSA' nft list tables | grep -q ocivm-k9"

# run -d, then kill -9 of its supervisor: the table stays in A with the
# record. An ocivm in B (whose start cleans up after killed VMs) must not
# take the record for its own namespace's: B's table of the same name stays,
# and so does the record, so that `ocivm rm` in A can remove A's table.
ip netns exec "$NSA" "$OCIVM" run -d --name dk --network bridge --subnet 10.125.0.0/24 "$DEMO" -- sleep 600 \
  > "$WORK/dk.out" 2> "$WORK/dk.err" < /dev/null
echo $? > "$WORK/dk.rc"
if [ "$(cat "$WORK/dk.rc")" = 0 ]; then ok "run -d --network bridge in A"; else bad "run -d --network bridge in A"; show dk; fi
DKT=$(json_field "$WORK/run/vms/dk/network.json" "j['nft_table']")
check "run -d: the VM's table is in A" bash -c "ip netns exec '$NSA' nft list table ip '$DKT' > /dev/null"
ip netns exec "$NSA" "$OCIVM" inspect dk > "$WORK/dk.json"
DKSUP=$(json_field "$WORK/dk.json" "j[0]['pids']['supervisor']")
[ "${DKSUP:-0}" -gt 0 ] || fail "inspect dk: no supervisor pid: $(cat "$WORK/dk.json")"
kill -9 "$DKSUP"
# (a zombie has no command line: gone, whoever reaps it)
for _ in $(seq 100); do grep -q . "/proc/$DKSUP/cmdline" 2>/dev/null || break; sleep 0.1; done
check "run -d: the supervisor is gone after kill -9" bash -c "! grep -q . /proc/$DKSUP/cmdline 2>/dev/null"
ip netns exec "$NSB" nft add table ip "$DKT" || fail "cannot add table $DKT to namespace $NSB"
ip netns exec "$NSB" "$OCIVM" run --rm "$DEMO" -- true > "$WORK/inb.out" 2> "$WORK/inb.err"
echo $? > "$WORK/inb.rc"
check "an ocivm in B ran (and cleaned up after killed VMs)" [ "$(cat "$WORK/inb.rc")" = 0 ]
check "... and left B's table of the killed VM's name alone" bash -c "ip netns exec '$NSB' nft list table ip '$DKT' > /dev/null"
check "... and the record, for A" [ -e "$WORK/run/vms/dk/network.json" ]
check "... and A's table" bash -c "ip netns exec '$NSA' nft list table ip '$DKT' > /dev/null"
ip netns exec "$NSA" "$OCIVM" rm dk > "$WORK/rmdk.out" 2> "$WORK/rmdk.err"
echo $? > "$WORK/rmdk.rc"
if [ "$(cat "$WORK/rmdk.rc")" = 0 ]; then ok "ocivm rm in A of the killed VM"; else bad "ocivm rm in A of the killed VM"; show rmdk; fi
check "... removed its nft table from A" bash -c "! ip netns exec '$NSA' nft list tables | grep -q '$DKT'"
check "... and its state directory" [ ! -e "$WORK/run/vms/dk" ]
ip netns exec "$NSB" nft delete table ip "$DKT"

# ---------------------------------------------------------------- 4
setpriv --reuid=65534 --regid=65534 --clear-groups "$OCIVM" run --rm --network bridge "$DEMO" -- true \
  > "$WORK/user.out" 2> "$WORK/user.err"
echo $? > "$WORK/user.rc"
check "bridge as a user: refused with exit 125, saying it needs root and what to use" \
  bash -c "[ \$(cat '$WORK/user.rc') = 125 ] && grep -q 'needs root' '$WORK/user.err' && grep -q 'network user' '$WORK/user.err'"

finish
