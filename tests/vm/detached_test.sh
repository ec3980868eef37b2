#!/usr/bin/env bash
# Detached VMs and exec (ctest label vm): `ocivm run -d`, ps, exec (exit
# statuses, stdin, separate streams, a pty with resize and Ctrl-C, 16 at
# once), logs, kill, stop, wait, rm, and a supervisor killed with -9; all
# checked from the host as a user sees them.
#   detached_test.sh OCIVM DEMO_IMAGE
set -uo pipefail
OCIVM=${1:?ocivm binary}
DEMO=${2:?demo image directory}
. "$(dirname "$0")/../lib/check.sh"
. "$(dirname "$0")/../lib/ocivm_cli.sh"

[ "$(id -u)" -eq 0 ] || fail "the vm tests must run as root"
need qemu-system-x86_64 qemu-system-x86
need script util-linux
need python3 python3
[ -x "$DEMO/bin/busybox" ] || fail "demo image $DEMO not built (make build)"

WORK=${TMPDIR:-/tmp}/ocivm-detached-$$
mkdir -p "$WORK"
export OCIVM_RUNTIME_DIR=$WORK/run
P=dt$$  # VM names of this run
cleanup() {
  # Whatever a failed check left running goes, with its state.
  for n in $("$OCIVM" ps -a -q 2>/dev/null); do "$OCIVM" rm -f "$n" >/dev/null 2>&1; done
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT


# --- run -d: returns with the name once the guest is ready
PORT=$(free_port)
ocx start run -d --name $P-a -p $PORT:80 "$DEMO" -- sh -c 'echo to-stdout; echo to-stderr >&2; exec sleep 3600'
expect start 0 "$P-a" "run -d prints the VM's name and exits 0"
ocx ps ps --format json
check "ps --format json: valid JSON listing the VM as running" \
  [ "$(json_field "$WORK/ps.out" "[v['state'] for v in j if v['name']=='$P-a']")" = "['running']" ]
check "ps --format json: the command and pids" \
  [ "$(json_field "$WORK/ps.out" "[(v['command'][0], v['pids']['supervisor']>0, v['pids']['qemu']>0) for v in j if v['name']=='$P-a']")" = "[('sh', True, True)]" ]
check "ps --format json: the port forward" \
  [ "$(json_field "$WORK/ps.out" "[v['ports'] for v in j if v['name']=='$P-a']")" = "[['127.0.0.1:$PORT->80/tcp']]" ]
ocx ps-table ps
check "ps: the table lists it with its port" grep -q "^$P-a  *running .*127.0.0.1:$PORT->80/tcp" "$WORK/ps-table.out"
"$OCIVM" inspect $P-a > "$WORK/inspect-a.json"
check "state.json names the VM" [ "$(json_field "$OCIVM_RUNTIME_DIR/vms/$P-a/state.json" "j['name']")" = "$P-a" ]
check "inspect: run -d has a user network by default, the guest at 10.0.2.15/24" \
  [ "$(json_field "$WORK/inspect-a.json" "(j[0]['network']['mode'] in ('passt', 'slirp'), j[0]['network']['address'])")" = "(True, '10.0.2.15/24')" ]
ocx addr exec $P-a cat /proc/net/fib_trie
check "the guest's interface has that address" grep -q "10.0.2.15" "$WORK/addr.out"

# --- exec: exit statuses as podman's
ocx e0 exec $P-a true;                  expect e0 0 "" "exec true: 0"
ocx e3 exec $P-a sh -c 'exit 3';        expect e3 3 "" "exec exit 3: 3"
ocx e126 exec $P-a /etc/passwd;         expect e126 126 "" "exec of a non-executable file: 126"
check "exec 126 says why" grep -q "not executable" "$WORK/e126.err"
ocx e127 exec $P-a no-such-command;     expect e127 127 "" "exec of a missing command: 127"
check "exec 127 says why" grep -q "no-such-command: command not found" "$WORK/e127.err"
ocx e137 exec $P-a sh -c 'kill -9 $$';  expect e137 137 "" "exec killed by SIGKILL: 137"
ocx streams exec $P-a sh -c 'echo out; echo err >&2'
expect streams 0 "out" "exec: stdout on stdout"
check "exec: stderr on stderr" [ "$(cat "$WORK/streams.err")" = "err" ]
ocx envw exec -e FOO=bar -w /tmp/newdir $P-a sh -c 'echo $FOO $(pwd) $(hostname)'
expect envw 0 "bar /tmp/newdir $P-a" "exec -e, -w (created), hostname is the VM's name"
ocx user exec -u 65534:65534 $P-a id -u
expect user 0 "65534" "exec -u"
ocx nosuch exec $P-nosuch true
check "exec into a VM that does not exist: 125 and why" \
  bash -c "[ $(rc nosuch) = 125 ] && grep -q \"no VM named '$P-nosuch'\" '$WORK/nosuch.err'"

# --- -i: 10 MB through stdin and back, byte for byte
head -c 10485760 /dev/urandom > "$WORK/in.bin"
"$OCIVM" exec -i $P-a cat < "$WORK/in.bin" > "$WORK/back.bin" 2> "$WORK/cat.err"
check "exec -i: 10 MB stdin round trip, exit 0" [ $? = 0 ]
check "exec -i: 10 MB come back unchanged" cmp -s "$WORK/in.bin" "$WORK/back.bin"
check "exec -i: the guest saw the same bytes" \
  [ "$("$OCIVM" exec -i $P-a md5sum < "$WORK/in.bin" | cut -d' ' -f1)" = "$(md5sum < "$WORK/in.bin" | cut -d' ' -f1)" ]

# --- 2 MiB in 16-byte writes to a reader that stalls first: far beyond the
# credit window and a pipe's buffer, in frames of a few bytes; nothing
# deadlocks, nothing is lost
timeout 300 "$OCIVM" exec $P-a sh -c 'dd if=/dev/zero bs=16 count=131072 2>/dev/null' 2> "$WORK/bytes.err" |
  (sleep 4; wc -c) > "$WORK/bytes.out"
small_rc=${PIPESTATUS[0]}
check "exec: 2 MiB in 16-byte writes to a stalled reader all arrive, exit 0 (rc $small_rc)" \
  bash -c "[ $small_rc = 0 ] && [ \"\$(tr -d ' ' < '$WORK/bytes.out')\" = 2097152 ]"
[ "$small_rc" = 0 ] || sed 's/^/  err| /' "$WORK/bytes.err"

# --- -t under script: a pty, its size, a resize, Ctrl-C
# Inside script's pty: the size is set, the exec starts; 3 s later the
# size changes (SIGWINCH to ocivm exec); the guest reports both sizes, then
# waits for Ctrl-C, which the test types into the pty.
cat > "$WORK/tty.sh" <<EOF
stty rows 40 cols 100
( for _ in \$(seq 600); do grep -q '^40 100' "$WORK/typescript" 2>/dev/null && break; sleep 0.1; done
  stty rows 50 cols 132 < /dev/tty; pkill -WINCH -f "exec -it $P-a" ) &
exec "$OCIVM" exec -it $P-a sh -c 'tty; stty size; while [ "\$(stty size)" = "40 100" ]; do sleep 0.2; done; stty size; trap "echo got-sigint; exit 9" INT; echo waiting; while :; do sleep 1; done'
EOF
# Ctrl-C is typed once the guest says it waits for it (script -f flushes).
( until_grep '^waiting' "$WORK/typescript"; printf '\003' ) |
  timeout 180 script -qfec "bash $WORK/tty.sh" "$WORK/typescript" > "$WORK/tty.out" 2>&1
tty_rc=$?
tr -d '\r' < "$WORK/tty.out" > "$WORK/tty.txt"
check "exec -t: the command has a pty" grep -q '^/dev/pts/' "$WORK/tty.txt"
check "exec -t: the terminal's size" grep -qx '40 100' "$WORK/tty.txt"
check "exec -t: a resize reaches the command" grep -qx '50 132' "$WORK/tty.txt"
check "exec -it: Ctrl-C reaches the command" grep -q 'got-sigint$' "$WORK/tty.txt"
check "exec -it: its exit status comes back (9)" [ "$tty_rc" = 9 ]
[ "$tty_rc" = 9 ] || sed 's/^/  tty| /' "$WORK/tty.txt" | head -20

# --- 16 execs at once, each with its own output and status; a barrier in
# the guest proves they run at the same time (each waits for all 16)
pids=()
for i in $(seq 16); do
  timeout 300 "$OCIVM" exec $P-a sh -c "mkdir -p /tmp/barrier; touch /tmp/barrier/$i
    while [ \$(ls /tmp/barrier | wc -l) -lt 16 ]; do sleep 0.2; done; echo s$i; exit $i" > "$WORK/c$i.out" 2>&1 &
  pids+=($!)
done
good=0
for i in $(seq 16); do
  wait ${pids[$((i-1))]}; r=$?
  [ "$r" = "$i" ] && [ "$(cat "$WORK/c$i.out")" = "s$i" ] && good=$((good + 1))
done
check "16 concurrent execs: each its own output and exit status ($good of 16)" [ "$good" = 16 ]

# --- logs: the main command's streams, apart
ocx logs logs $P-a
expect logs 0 "to-stdout" "logs: the command's stdout"
check "logs: its stderr on stderr" [ "$(cat "$WORK/logs.err")" = "to-stderr" ]

# --- kill, wait: the signal reaches the main command, wait reports it
timeout 120 "$OCIVM" wait $P-a > "$WORK/wait.out" 2>&1 &
waiter=$!
ocx kill kill -s TERM $P-a
expect kill 0 "$P-a" "kill -s TERM prints the name"
wait $waiter
check "wait prints the exit status (143 after SIGTERM)" [ "$(cat "$WORK/wait.out")" = 143 ]
ocx psa ps -a --format json
check "ps -a: the VM has exited with 143" \
  [ "$(json_field "$WORK/psa.out" "[(v['state'], v['exit_code']) for v in j if v['name']=='$P-a']")" = "[('exited', 143)]" ]
ocx ps2 ps -q
check "ps (without -a) no longer lists it" bash -c "! grep -qx '$P-a' '$WORK/ps2.out'"
ocx reuse run -d --name $P-a "$DEMO" -- true
check "the name of an exited VM is taken until rm: 125" \
  bash -c "[ $(rc reuse) = 125 ] && grep -q 'ocivm rm $P-a' '$WORK/reuse.err'"
ocx rm rm $P-a
expect rm 0 "$P-a" "rm of an exited VM"
check "rm: its state is gone" [ ! -e "$OCIVM_RUNTIME_DIR/vms/$P-a" ]

# --- stop: SIGTERM, then the VM ends; a command that ignores it is killed
ocx b run -d --name $P-b "$DEMO" -- sh -c 'trap "" TERM; echo armed; while :; do sleep 1; done'
expect b 0 "$P-b" "run -d (a command that ignores SIGTERM)"
# The shell must have set its trap before the stop (under TCG it takes a while).
for _ in $(seq 100); do "$OCIVM" logs $P-b 2>/dev/null | grep -q armed && break; sleep 0.1; done
ocx rmrun rm $P-b
check "rm of a running VM without -f is refused" \
  bash -c "[ $(rc rmrun) = 125 ] && grep -q 'is running' '$WORK/rmrun.err'"
ocx stop stop -t 2 $P-b
expect stop 0 "$P-b" "stop -t 2 returns once the VM is gone"
ocx waitb wait $P-b
expect waitb 0 "137" "a command that ignored SIGTERM was killed: wait says 137"
ocx rmb rm $P-b

# --- --rm with -d; a short command; a command that cannot start
ocx c run -d --rm --name $P-c "$DEMO" -- sleep 3600
expect c 0 "$P-c" "run -d --rm"
ocx stopc stop -t 0 $P-c
check "stop -t 0 of a --rm VM: its state is gone" [ ! -e "$OCIVM_RUNTIME_DIR/vms/$P-c" ]
ocx short run -d --name $P-s "$DEMO" -- sh -c 'echo quick; exit 4'
expect short 0 "$P-s" "run -d of a command that ends at once still starts it"
ocx waits wait $P-s
expect waits 0 "4" "wait: its exit status"
ocx logss logs $P-s
expect logss 0 "quick" "logs after the VM has exited"
"$OCIVM" rm $P-s > /dev/null
ocx bad run -d --name $P-x "$DEMO" -- no-such-command
check "run -d of a command that is not there: 127 and why" \
  bash -c "[ $(rc bad) = 127 ] && grep -q 'no-such-command' '$WORK/bad.err' && [ -z \"\$(cat '$WORK/bad.out')\" ]"
"$OCIVM" rm $P-x > /dev/null 2>&1

# --- QEMU dies under a running VM: the exec learns at once, the state says why
ocx q run -d --name $P-q "$DEMO" -- sleep 3600
expect q 0 "$P-q" "run -d (its QEMU to be killed)"
"$OCIVM" inspect $P-q > "$WORK/inspect-q.json"
qpid=$(json_field "$WORK/inspect-q.json" "j[0]['pids']['qemu']")
timeout 120 "$OCIVM" exec $P-q sh -c 'echo inflight; exec sleep 3600' > "$WORK/qlost.out" 2> "$WORK/qlost.err" &
execpid=$!
until_grep inflight "$WORK/qlost.out"
kill -9 "$qpid"
wait $execpid; qlost_rc=$?
check "exec while QEMU is killed: 125 and why" \
  bash -c "[ $qlost_rc = 125 ] && grep -q 'QEMU has exited' '$WORK/qlost.err'"
"$OCIVM" wait $P-q > /dev/null 2>&1
ocx psq ps -a --format json
check "ps -a: the VM exited with 125, and the reason names QEMU's death" \
  bash -c "json=\$(python3 -c \"import json,sys; j=json.load(open(sys.argv[1])); print([(v['state'], v['exit_code'], 'QEMU was killed' in v['exit_reason']) for v in j if v['name']=='$P-q'])\" '$WORK/psq.out'); [ \"\$json\" = \"[('exited', 125, True)]\" ]"
"$OCIVM" rm $P-q > /dev/null

# --- logs -f follows until the VM exits
ocx f run -d --name $P-f "$DEMO" -- sh -c 'echo one; while [ ! -e /tmp/go ]; do sleep 0.2; done; echo two'
expect f 0 "$P-f" "run -d (for logs -f)"
timeout 120 "$OCIVM" logs -f $P-f > "$WORK/follow.out" 2>&1 &
follower=$!
until_grep one "$WORK/follow.out"
"$OCIVM" exec $P-f touch /tmp/go
wait $follower; follow_rc=$?
check "logs -f: what came later, then its end with the VM's (rc $follow_rc)" \
  bash -c "[ $follow_rc = 0 ] && [ \"\$(tr '\n' ' ' < '$WORK/follow.out')\" = 'one two ' ]"
"$OCIVM" rm $P-f > /dev/null

# --- the supervisor killed with -9: ps shows dead, rm cleans everything
ocx d run -d --name $P-d "$DEMO" -- sleep 3600
expect d 0 "$P-d" "run -d (to be killed)"
"$OCIVM" inspect $P-d > "$WORK/inspect.json"
sup=$(json_field "$WORK/inspect.json" "j[0]['pids']['supervisor']")
qemu=$(json_field "$WORK/inspect.json" "j[0]['pids']['qemu']")
check "inspect: pids, image, state" \
  [ "$(json_field "$WORK/inspect.json" "(j[0]['state'], j[0]['image'], j[0]['detached'])")" = "('running', '$DEMO', True)" ]
timeout 120 "$OCIVM" exec $P-d sh -c 'echo inflight; exec sleep 3600' > "$WORK/lost.out" 2> "$WORK/lost.err" &
execpid=$!
until_grep inflight "$WORK/lost.out"
kill -9 "$sup"
start=$(date +%s%N)
wait $execpid; lost_rc=$?
lost_ms=$(( ($(date +%s%N) - start) / 1000000 ))
check "a running exec learns its VM is gone: 125 and why (after ${lost_ms} ms)" \
  bash -c "[ $lost_rc = 125 ] && grep -q 'lost the connection' '$WORK/lost.err'"
for _ in $(seq 50); do [ -d /proc/$qemu ] && grep -q . /proc/$qemu/cmdline 2>/dev/null || break; sleep 0.1; done
check "kill -9 of the supervisor: its QEMU goes too" bash -c "! grep -q . /proc/$qemu/cmdline 2>/dev/null"
ocx psd ps -a --format json
check "ps -a: the VM is dead" [ "$(json_field "$WORK/psd.out" "[v['state'] for v in j if v['name']=='$P-d']")" = "['dead']" ]
ocx execd exec $P-d true
check "exec into a dead VM: 125 and why" bash -c "[ $(rc execd) = 125 ] && grep -q 'not running (dead)' '$WORK/execd.err'"
ocx rmd rm $P-d
expect rmd 0 "$P-d" "rm of a dead VM"
# Everything the supervisor started is in its session (QEMU, share
# servers, passt): nothing of it may be left.
for _ in $(seq 100); do [ -z "$(pgrep -s "$sup")" ] && break; sleep 0.1; done
check "nothing of it is left: no state, no process of its session" \
  bash -c "[ ! -e '$OCIVM_RUNTIME_DIR/vms/$P-d' ] && [ -z \"\$(pgrep -s $sup)\" ]"

finish
