#!/usr/bin/env bash
# Snapshots and clones (ctest label vm): `ocivm snapshot create` of a
# running VM with an EROFS root, three clones at once from it, each with
# the snapshot's file and running process, its own host name, MAC,
# machine-id and forward of the same guest port; the snapshot's RAM file
# unchanged by them; refusals (another QEMU, another machine, VMs that
# cannot be saved); kill -9 of a clone; snapshot --stop, ls, inspect, rm.
#   snapshot_test.sh OCIVM DEMO_IMAGE
set -uo pipefail
OCIVM=${1:?ocivm binary}
DEMO=${2:?demo image directory}
. "$(dirname "$0")/../lib/check.sh"
. "$(dirname "$0")/../lib/ocivm_cli.sh"

[ "$(id -u)" -eq 0 ] || fail "the vm tests must run as root"
need qemu-system-x86_64 qemu-system-x86
need mkfs.erofs erofs-utils
need passt passt
need python3 python3
[ -x "$DEMO/bin/busybox" ] || fail "demo image $DEMO not built (make build)"

WORK=${TMPDIR:-/tmp}/ocivm-snapshot-$$
mkdir -p "$WORK"
export OCIVM_RUNTIME_DIR=$WORK/run OCIVM_HOME=$WORK/home
P=sn$$  # VM and snapshot names of this run
SNAPS=$OCIVM_HOME/snapshots
cleanup() {
  for n in $("$OCIVM" ps -a -q 2>/dev/null); do "$OCIVM" rm -f "$n" >/dev/null 2>&1; done
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

http_get() { python3 -c 'import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode().strip())' "$1" 2>&1; }

# ask VM: the in-memory value of the template's "keeper" process (it answers
# in /tmp/answer when /tmp/ask appears)
ask() {
  "$OCIVM" exec "$1" sh -c 'rm -f /tmp/answer; touch /tmp/ask; for i in $(seq 100); do [ -s /tmp/answer ] && break; sleep 0.1; done; cat /tmp/answer; rm -f /tmp/answer' 2>&1
}

# --- the VM to save: it writes a random value into a file of its root (the
# RAM overlay), keeps another only in the memory of a running process (the
# keeper), and serves HTTP on port 8080
ocx tmpl run -d --root erofs --name $P-t "$DEMO" -- sh -c \
  'cat /proc/sys/kernel/random/uuid > /root/f
   (x=$(cat /proc/sys/kernel/random/uuid)
    while :; do [ -e /tmp/ask ] && { rm /tmp/ask; echo "$x" > /tmp/answer; }; sleep 0.1; done) &
   mkdir -p /www; exec httpd -f -p 8080 -h /www'
expect tmpl 0 "$P-t" "run -d --root erofs: the VM to snapshot runs"
check "the VM has written its file" until_ok "$OCIVM" exec $P-t test -s /root/f
FILE_VALUE=$("$OCIVM" exec $P-t cat /root/f)
KEPT=$(ask $P-t)
BOOT_ID=$("$OCIVM" exec $P-t cat /proc/sys/kernel/random/boot_id)
check "the keeper answers with its value" [ -n "$KEPT" -a "$KEPT" != "$FILE_VALUE" ]
# Its clock an hour behind: a clone must take the host's, not the snapshot's.
"$OCIVM" exec $P-t date -s "@$(( $(date +%s) - 3600 ))" > /dev/null 2>&1
ocx stale exec $P-t date +%s
check "the VM's clock is an hour behind before the snapshot" [ $(( $(date +%s) - $(out stale) )) -ge 3500 ]
ocx snap snapshot create $P-t $P-s
expect snap 0 "$P-s" "snapshot create prints the snapshot's name"
for f in snapshot.json vmstate ram kernel initrd root.erofs; do
  check "the snapshot holds $f" [ -s "$SNAPS/$P-s/$f" ]
done
check "the snapshot's RAM file is sparse (it holds what the guest used, not all 512 MiB)" \
  [ "$(stat -c %b "$SNAPS/$P-s/ram")" -lt $((400 * 2048)) ]
ocx ls snapshot ls --format json
check "snapshot ls --format json: the snapshot, its VM, image, memory and network" \
  [ "$(json_field "$WORK/ls.out" "[(s['source'], s['image'], s['memory'], s['network'], s['machine']) for s in j if s['name']=='$P-s']")" = "[('$P-t', '$DEMO', '512M', 'user', 'microvm')]" ]
ocx lsq snapshot ls -q
check "snapshot ls -q: the name" grep -qx "$P-s" "$WORK/lsq.out"
ocx insp snapshot inspect $P-s
check "snapshot inspect: the QEMU binary it needs and the command" \
  [ "$(json_field "$WORK/insp.out" "(j[0]['qemu']['path'] != '', j[0]['qemu']['size'] > 0, j[0]['command'][0])")" = "(True, True, 'sh')" ]
ocx after exec $P-t sh -c 'echo written-after > /root/g; cat /root/f'
expect after 0 "$FILE_VALUE" "the VM runs on after the snapshot (exec answers)"
sha256sum "$SNAPS/$P-s/ram" > "$WORK/ram.sum"

# --- three clones at once, each forwarding its own host port to guest port 8080
declare -A PORT
for i in 1 2 3; do
  PORT[$i]=$(free_port)
  ocx clone$i run --from-snapshot $P-s -d --name $P-c$i -p "${PORT[$i]}:8080" --log-level info &
done
wait
for i in 1 2 3; do
  expect clone$i 0 "$P-c$i" "clone $i: run --from-snapshot -d prints its name"
done
check "a clone logs its restore phases" grep -q "restored from snapshot $P-s: QEMU up .* state loaded .* hello" "$WORK/clone1.err"
declare -A MAC MID
for i in 1 2 3; do
  c=$P-c$i
  ocx f$i exec $c cat /root/f;          expect f$i 0 "$FILE_VALUE" "clone $i: has the file the VM wrote (its random value)"
  ocx g$i exec $c cat /root/g
  check "clone $i: does not see what the VM wrote after the snapshot" [ "$(rc g$i)" = 1 ]
  check "clone $i: the VM's running process, with the value it holds in memory" [ "$(ask $c)" = "$KEPT" ]
  ocx b$i exec $c cat /proc/sys/kernel/random/boot_id
  expect b$i 0 "$BOOT_ID" "clone $i: the same kernel, resumed (the VM's boot id), not a new boot"
  ocx h$i exec $c hostname;            expect h$i 0 "$c" "clone $i: its host name is its own name"
  ocx id$i exec $c sh -c 'cat /sys/class/net/eth0/address; cat /etc/machine-id'
  MAC[$i]=$(sed -n 1p "$WORK/id$i.out"); MID[$i]=$(sed -n 2p "$WORK/id$i.out")
  ocx t$i exec $c date +%s
  check "clone $i: its clock is the host's (within 5 s), not the snapshot's (an hour behind)" \
    [ $(( $(out t$i) - $(date +%s) )) -le 5 -a $(( $(date +%s) - $(out t$i) )) -le 5 ]
  ocx w$i exec $c sh -c "echo $c > /www/who"
  check "clone $i: host port ${PORT[$i]} reaches its own guest port 8080" [ "$(http_get "http://127.0.0.1:${PORT[$i]}/who")" = "$c" ]
  "$OCIVM" inspect $c > "$WORK/inspect$i.json"
  check "clone $i: inspect names the snapshot and the restore's phases" \
    [ "$(json_field "$WORK/inspect$i.json" "(j[0]['snapshot'], sorted(j[0]['restore']))")" = "('$P-s', ['hello_ms', 'resume_ms', 'spawn_ms', 'state_load_ms', 'total_ms'])" ]
done
ocx tid exec $P-t cat /sys/class/net/eth0/address
check "each clone has its own MAC (and none the VM's)" \
  [ "$(printf '%s\n' "${MAC[@]}" "$(out tid)" | grep -c .)" = 4 -a "$(printf '%s\n' "${MAC[@]}" "$(out tid)" | sort -u | grep -c .)" = 4 ]
check "each clone has its own machine-id" \
  [ "$(printf '%s\n' "${MID[@]}" | grep -cE '^[0-9a-f]{32}$')" = 3 -a "$(printf '%s\n' "${MID[@]}" | sort -u | grep -c .)" = 3 ]
ocx r1 exec $P-c1 sh -c 'head -c 16 /dev/urandom | od -An -tx1'
ocx r2 exec $P-c2 sh -c 'head -c 16 /dev/urandom | od -An -tx1'
check "clones draw different random numbers" [ -n "$(out r1)" -a "$(out r1)" != "$(out r2)" ]
check "the snapshot's RAM file is unchanged after the clones ran" sha256sum --quiet -c "$WORK/ram.sum"

# --- a snapshot of a clone (its RAM: the snapshot's file, privately mapped,
# plus the pages it wrote): a clone of that has what the clone wrote
ocx cw exec $P-c1 sh -c 'echo written-in-clone > /root/h'
ocx sc snapshot create $P-c1 $P-sc
expect sc 0 "$P-sc" "a clone can be snapshotted"
ocx clone5 run --from-snapshot $P-sc -d --name $P-c5
expect clone5 0 "$P-c5" "a clone of the clone's snapshot"
ocx h5 exec $P-c5 cat /root/f /root/h
expect h5 0 "$FILE_VALUE
written-in-clone" "it has the first snapshot's file and what the clone wrote"
check "it runs the snapshot's process, with its value" [ "$(ask $P-c5)" = "$KEPT" ]
ocx rm5 rm -f $P-c5
# --- what cannot be saved, or restored here
ocx dup snapshot create $P-t $P-s;   refused dup "exists" "a snapshot name in use is refused"
ocx badn snapshot create $P-t 'a/b'; refused badn "invalid snapshot name" "a snapshot name with '/' is refused"
ocx nosuch snapshot create $P-none $P-y; refused nosuch "no such VM\|no VM" "snapshot of a VM that does not exist"
"$OCIVM" exec $P-c2 sleep 5 > /dev/null 2>&1 &
EXEC_PID=$!
until_ok "$OCIVM" exec $P-c2 pidof sleep
ocx busy snapshot create $P-c2 $P-busy; refused busy "exec sessions running" "a VM with an exec running is refused"
wait $EXEC_PID
ocx vfs run -d --name $P-v "$DEMO" -- sleep 100000
ocx novfs snapshot create $P-v $P-y;  refused novfs "does not have an EROFS root" "a VM with a virtio-fs root is refused, saying how to start one"
ocx bridge run -d --root erofs --network bridge --name $P-br "$DEMO" -- sleep 100000
ocx nobr snapshot create $P-br $P-y;  refused nobr "is bridged" "a bridged VM is refused"
"$OCIVM" rm -f $P-v $P-br > /dev/null 2>&1
ocx q35 run --from-snapshot $P-s --machine q35 -d --name $P-q
refused q35 "is of a microvm machine, not q35" "a clone on another machine type is refused"
cp -a "$SNAPS/$P-s" "$SNAPS/$P-other"
python3 - "$SNAPS/$P-other/snapshot.json" "$P-other" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); j['name'] = sys.argv[2]; j['qemu']['size'] += 1
json.dump(j, open(sys.argv[1], 'w'))
PY
ocx otherq run --from-snapshot $P-other -d --name $P-o
refused otherq "taken with another QEMU binary" "a snapshot of another QEMU binary is refused, saying so"
check "... and nothing was started for it" bash -c "! '$OCIVM' ps -a -q | grep -qx '$P-o'"
ocx noimg run --from-snapshot $P-s demo true
refused noimg "takes no IMAGE" "--from-snapshot with an IMAGE is a usage error"
ocx nomem run --from-snapshot $P-s -m 1G
refused nomem "cannot be given with --from-snapshot" "--from-snapshot with --memory is a usage error"
ocx nosnap run --from-snapshot $P-nothing -d
refused nosnap "no snapshot named" "a missing snapshot is named"

# --- kill -9 of a clone's supervisor: its QEMU and passt go, rm cleans up
"$OCIVM" inspect $P-c3 > "$WORK/c3.json"
SUP=$(json_field "$WORK/c3.json" "j[0]['pids']['supervisor']")
QPID=$(json_field "$WORK/c3.json" "j[0]['pids']['qemu']")
PASST=$(pgrep -P "$SUP" -x passt || pgrep -P "$SUP" -x passt.avx2 || echo 0)
check "the clone's network is its own passt (a child of its supervisor)" [ "$PASST" != 0 ]
kill -9 "$SUP"
for _ in $(seq 100); do gone "$QPID" && break; sleep 0.1; done
check "kill -9 of a clone's supervisor: its QEMU goes" gone "$QPID"
for _ in $(seq 100); do gone "$PASST" && break; sleep 0.1; done
check "kill -9 of a clone's supervisor: its passt goes" gone "$PASST"
ocx ps3 ps -a
check "ps shows the clone as dead" grep -q "^$P-c3  *dead" "$WORK/ps3.out"
ocx rm3 rm $P-c3
expect rm3 0 "$P-c3" "rm removes the dead clone"
check "... and its state directory" [ ! -e "$OCIVM_RUNTIME_DIR/vms/$P-c3" ]
check "the other clones still answer" bash -c "'$OCIVM' exec $P-c1 true && '$OCIVM' exec $P-c2 true"

# --- snapshot --stop: the VM is saved and stopped; a clone of that one has
# what it wrote after the first snapshot
ocx stop snapshot create --stop $P-t $P-s2
expect stop 0 "$P-s2" "snapshot create --stop"
ocx waitt wait $P-t
expect waitt 0 "0" "the VM stopped after the snapshot, status 0"
ocx ps4 ps -a --format json
check "ps says why it stopped" \
  grep -q "snapshot create --stop" "$WORK/ps4.out"
ocx clone4 run --from-snapshot $P-s2 -d --name $P-c4
expect clone4 0 "$P-c4" "a clone of the second snapshot"
ocx g4 exec $P-c4 cat /root/f /root/g
expect g4 0 "$FILE_VALUE
written-after" "it has both files"
ocx rms snapshot rm $P-s $P-s2 $P-other $P-sc
expect rms 0 "$P-s
$P-s2
$P-other
$P-sc" "snapshot rm removes them"
check "clones keep running after their snapshot is removed" "$OCIVM" exec $P-c4 true
ocx ls2 snapshot ls -q
expect ls2 0 "" "snapshot ls is empty again"
ocx rmall rm -f $P-c1 $P-c2 $P-c4 $P-t
check "rm -f of the clones" [ "$(rc rmall)" = 0 ]
check "no VM of the test is left" [ -z "$("$OCIVM" ps -a -q)" ]

# --- a VM without a network, its clone attached (not -d): the clone's
# output is what its command wrote after the restore, and its exit status
ocx nt run -d --root erofs --network none --name $P-n "$DEMO" -- sh -c \
  'echo before-the-snapshot; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo after-$(hostname); echo err-after >&2; exit 7'
expect nt 0 "$P-n" "a VM without a network runs"
check "its first line reaches its log (before the snapshot)" until_ok bash -c "'$OCIVM' logs $P-n | grep -q before-the-snapshot"
ocx ns snapshot create $P-n $P-sn
expect ns 0 "$P-sn" "... and is saved"
ocx nonet run --from-snapshot $P-sn -d -p "$(free_port):80" --name $P-np
refused nonet "has no network device" "its clones cannot forward ports"
"$OCIVM" run --from-snapshot $P-sn --name $P-fg > "$WORK/fg.out" 2> "$WORK/fg.err" < /dev/null &
FG=$!
check "an attached clone takes exec" until_ok "$OCIVM" exec $P-fg true
"$OCIVM" exec $P-fg touch /tmp/go
wait $FG; echo $? > "$WORK/fg.rc"
expect fg 7 "after-$P-fg" "the attached clone exits with its command's status and prints what it wrote after the restore"
check "... its stderr too" grep -qx "err-after" "$WORK/fg.err"
"$OCIVM" rm -f $P-n $P-fg > /dev/null 2>&1
"$OCIVM" snapshot rm $P-sn > /dev/null

# --- boot snapshots: plain runs with an EROFS root boot once per set of
# options; the runs after restore that boot, each with its own command,
# environment, name, exit status and output
ocx prune0 snapshot prune
ocx b1 run --rm --root erofs --name $P-b1 -e X=one --log-level info "$DEMO" -- sh -c 'echo $X $(hostname); exit 3'
expect b1 3 "one $P-b1" "first plain --root erofs run: its output and exit status"
check "... it booted and saved a boot snapshot" grep -q "boot snapshot saved" "$WORK/b1.err"
ocx b2 run --rm --root erofs --name $P-b2 -e X=two --log-level info "$DEMO" -- sh -c \
  'echo $X $(hostname); head -c 300000 /dev/zero | tr "\\0" x; echo; echo to-stderr >&2; exit 5'
check "the second run restores the boot snapshot instead of booting" grep -q "restored from snapshot boot-" "$WORK/b2.err"
check "... with its own command, environment and host name, and exit status" \
  [ "$(rc b2)" = 5 -a "$(sed -n 1p "$WORK/b2.out")" = "two $P-b2" ]
check "... all of its output (300000 bytes on stdout, stderr apart)" \
  [ "$(sed -n 2p "$WORK/b2.out" | tr -d '\n' | wc -c)" = 300000 -a "$(grep -c to-stderr "$WORK/b2.err")" = 1 ]
ocx b3 run --rm --root erofs --no-snapshot-cache --log-level info "$DEMO" -- echo cold
check "--no-snapshot-cache boots (restores nothing)" \
  bash -c "[ \"\$(cat $WORK/b3.out)\" = cold ] && ! grep -q 'restored from snapshot' $WORK/b3.err"
ocx b4 run --rm --root erofs -m 256M --log-level info "$DEMO" -- echo other-options
check "other VM options (memory) boot, not restore" \
  bash -c "[ \"\$(cat $WORK/b4.out)\" = other-options ] && ! grep -q 'restored from snapshot' $WORK/b4.err"
# -d with a forward, restoring the boot snapshot the first such run saved
# (user network, 512 MiB): the forward is each run's own
ocx bd0 run -d --root erofs --name $P-bd0 -p "$(free_port):8080" --log-level info "$DEMO" -- sleep 100000
check "a first run -d -p saves a boot snapshot" grep -q "boot snapshot saved" "$WORK/bd0.err"
"$OCIVM" rm -f $P-bd0 > /dev/null
BP=$(free_port)
ocx bd run -d --root erofs --name $P-bd -p "$BP:8080" --log-level info "$DEMO" -- sh -c \
  'mkdir -p /www; hostname > /www/who; exec httpd -f -p 8080 -h /www'
check "run -d -p restores a boot snapshot too" \
  bash -c "[ \"\$(cat $WORK/bd.out)\" = $P-bd ] && grep -q 'restored from snapshot boot-' $WORK/bd.err"
check "... and its forward reaches its own command" until_ok bash -c "[ \"\$(python3 -c 'import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())' http://127.0.0.1:$BP/who)\" = $P-bd ]"
"$OCIVM" rm -f $P-bd > /dev/null
# A damaged boot snapshot: the run warns, removes it and boots
for d in "$OCIVM_HOME"/cache/boot-snapshots/*/; do : > "$d/vmstate"; done
ocx bad run --rm --root erofs --log-level info "$DEMO" -- echo still-runs
check "a damaged boot snapshot does not fail the run" [ "$(rc bad)" = 0 -a "$(out bad)" = still-runs ]
check "... it says so, and that it removed it" grep -q "cannot restore the boot snapshot .*removed it from the cache, booting instead" "$WORK/bad.err"
ocx bad2 run --rm --root erofs --log-level info "$DEMO" -- echo again
check "... the next run boots and saves a good one" \
  bash -c "[ \"\$(cat $WORK/bad2.out)\" = again ] && grep -q 'boot snapshot saved' $WORK/bad2.err"
ocx prune snapshot prune
check "snapshot prune removes them all (user and no network, 256M)" grep -q "^removed 3 boot snapshots" "$WORK/prune.out"
check "... and leaves none" [ -z "$(ls "$OCIVM_HOME/cache/boot-snapshots" 2>/dev/null)" ]
ocx b5 run --rm --root erofs --log-level info "$DEMO" -- echo again
check "after prune, a run boots again" \
  bash -c "[ \"\$(cat $WORK/b5.out)\" = again ] && grep -q 'boot snapshot saved' $WORK/b5.err"
check "no VM of the test is left" [ -z "$("$OCIVM" ps -a -q)" ]
finish
