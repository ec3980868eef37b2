#!/usr/bin/env bash
# Stream shares (ctest label vm, issue 12 item 4): the -v shares of a
# --root erofs VM go over a virtio-serial port (ocivm fsd --transport
# stream, relayed by ocivm-init), so the VM can be snapshotted with them:
# reads and writes both ways, a file held open across the snapshot is
# readable in every clone, clones write to the same host directory, a
# clone whose share server is killed answers (EIO) instead of hanging.
#   stream_share_test.sh OCIVM DEMO_IMAGE
set -uo pipefail
OCIVM=${1:?ocivm binary}
DEMO=${2:?demo image directory}
. "$(dirname "$0")/../lib/check.sh"
. "$(dirname "$0")/../lib/ocivm_cli.sh"

[ "$(id -u)" -eq 0 ] || fail "the vm tests must run as root"
need qemu-system-x86_64 qemu-system-x86
need mkfs.erofs erofs-utils
need python3 python3
[ -x "$DEMO/bin/busybox" ] || fail "demo image $DEMO not built (make build)"

WORK=${TMPDIR:-/tmp}/ocivm-stream-$$
mkdir -p "$WORK"
export OCIVM_RUNTIME_DIR=$WORK/run OCIVM_HOME=$WORK/home
P=ss$$  # VM and snapshot names of this run
SHARE=$WORK/share RO=$WORK/ro
mkdir -p "$SHARE" "$RO"
cleanup() {
  for n in $("$OCIVM" ps -a -q 2>/dev/null); do "$OCIVM" rm -f "$n" >/dev/null 2>&1; done
  for s in $("$OCIVM" snapshot ls -q 2>/dev/null); do "$OCIVM" snapshot rm "$s" >/dev/null 2>&1; done
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT


echo held-content > "$SHARE/held"
echo from-host > "$SHARE/hostfile"
echo read-only > "$RO/r"

# --- the VM to save: it holds /data/held open on fd 3 and reads it only
# once /tmp/go appears (in a clone, after the restore)
ocx tmpl run -d --root erofs --name $P-t -v "$SHARE:/data" -v "$RO:/ro:ro" "$DEMO" -- sh -c \
  'exec 3< /data/held; while [ ! -e /tmp/go ]; do sleep 0.2; done; cat <&3 > /tmp/out; exec sleep 100000'
expect tmpl 0 "$P-t" "run -d --root erofs -v: the VM runs"
ocx mnt exec $P-t sh -c 'grep " /data " /proc/mounts | cut -d" " -f1,3'
expect mnt 0 "ocivm.fs.0 fuse.ocivm" "the share is a FUSE mount relayed over port ocivm.fs.0 (not virtiofs)"
ocx rd exec $P-t cat /data/hostfile
expect rd 0 "from-host" "the guest reads a host file"
ocx wr exec $P-t sh -c 'echo from-guest > /data/guestfile && mkdir /data/dir && echo x > /data/dir/y && mv /data/dir/y /data/dir/z && ls /data/dir'
expect wr 0 "z" "the guest creates, renames and lists"
check "the host sees the guest's file" [ "$(cat "$SHARE/guestfile" 2>/dev/null)" = from-guest ]
echo changed-on-host > "$SHARE/hostfile2"
ocx rd2 exec $P-t cat /data/hostfile2
expect rd2 0 "changed-on-host" "the guest sees a file the host wrote while it runs"
ocx big exec $P-t sh -c 'dd if=/dev/urandom of=/data/big bs=64k count=48 2>/dev/null && md5sum /data/big | cut -d" " -f1'
check "3 MiB written by the guest arrive whole on the host" [ "$(out big)" = "$(md5sum "$SHARE/big" | cut -d' ' -f1)" ]
ocx ro exec $P-t sh -c 'cat /ro/r; echo x > /ro/w'
check "a second share, read-only: readable, not writable" [ "$(rc ro)" != 0 -a "$(out ro)" = read-only -a ! -e "$RO/w" ]

# --- snapshot with its shares
ocx snap snapshot create $P-t $P-s
expect snap 0 "$P-s" "snapshot create of a VM with -v shares (stream) succeeds"
ocx insp snapshot inspect $P-s
check "the snapshot records its shares" \
  [ "$(json_field "$WORK/insp.out" "[(s['host'], s['guest'], s['readonly']) for s in j[0]['shares']]")" = "[('$SHARE', '/data', False), ('$RO', '/ro', True)]" ]
ocx after exec $P-t sh -c 'cat /data/held; echo written-after > /data/after'
expect after 0 "held-content" "the VM itself still uses its share after the snapshot"

# --- three clones at once
for i in 1 2 3; do
  ocx clone$i run --from-snapshot $P-s -d --name $P-c$i &
done
wait
for i in 1 2 3; do
  c=$P-c$i
  expect clone$i 0 "$c" "clone $i starts"
  ocx go$i exec $c sh -c 'touch /tmp/go; for i in $(seq 100); do [ -s /tmp/out ] && break; sleep 0.1; done; cat /tmp/out'
  expect go$i 0 "held-content" "clone $i: the file held open across the snapshot is readable"
  ocx cw$i exec $c sh -c "echo $c > /data/from-$c && cat /data/after /data/hostfile /ro/r"
  expect cw$i 0 "written-after
from-host
read-only" "clone $i: reads the host directory as it is now (a file written after the snapshot too)"
  check "clone $i: its new file appears on the host" [ "$(cat "$SHARE/from-$c" 2>/dev/null)" = "$c" ]
done
check "clone 1's relay rebuilt: it found its nodes and opened the held file again (console counters)" \
  grep -q "fuse relay: ocivm.fs.0: rebuilt for a new server: nodes found again [1-9][0-9]*, stale 0; handles opened again [1-9]" \
  "$OCIVM_RUNTIME_DIR/vms/$P-c1/console.log"
ocx seen exec $P-c2 cat /data/from-$P-c1
expect seen 0 "$P-c1" "a clone sees another clone's file (one host directory)"
ocx vol run --from-snapshot $P-s -d --name $P-x -v "$SHARE:/other"
refused vol "cannot be given with --from-snapshot" "a clone cannot change the shares (-v refused)"

# --- a snapshot of a clone (its relay rebuilt once already) and a clone
# of that: a file a background process of the clone holds open reads there
echo held-two > "$SHARE/held2"
ocx bg exec $P-c2 sh -c '(exec 4< /data/held2; while [ ! -e /tmp/go2 ]; do sleep 0.2; done; cat <&4 > /tmp/out2; exec sleep 100000) > /dev/null 2>&1 < /dev/null &'
expect bg 0 "" "a background process in clone 2 holds /data/held2 open"
ocx snap2 snapshot create $P-c2 $P-s2
expect snap2 0 "$P-s2" "snapshot create of a clone with stream shares"
ocx clone4 run --from-snapshot $P-s2 -d --name $P-c4
expect clone4 0 "$P-c4" "a clone of the clone starts"
ocx go4 exec $P-c4 sh -c 'touch /tmp/go2; for i in $(seq 100); do [ -s /tmp/out2 ] && break; sleep 0.1; done; cat /tmp/out2 /data/from-'$P-c1
expect go4 0 "held-two
$P-c1" "the clone of the clone reads the file held open across both snapshots, and the host directory"

# --- nothing is done twice across a snapshot: a writer appends numbered
# lines to /data/LOG in a loop while the VM is saved (the relay pauses: what
# it sent is answered first, what the kernel sends meanwhile waits in the
# guest), then the source and 2 clones (or, after --stop, the 2 clones) go
# on from where it was. Every number written before the fork is in the host
# file once; afterwards once per writer; none is missing.
WRITER='exec 3>>/data/$0; i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); echo $i >&3; done; exec sleep 100000'
appends() { # TAG LOG STOPFLAG: snapshot the writer VM (with STOPFLAG), clone it twice, stop all writers
  local tag=$1 log=$2 stopflag=$3
  # --cache never: the server opens the host file O_APPEND, so an append
  # done twice is a line twice (with the page cache the guest's kernel
  # picks the offset, and a repeated write would land on itself); clones
  # keep the source's cache mode.
  ocx w$tag run -d --root erofs --cache never --name $P-w$tag -v "$SHARE:/data" "$DEMO" -- sh -c "$WRITER" "$log"
  expect w$tag 0 "$P-w$tag" "$tag: the writer VM runs"
  for i in $(seq 100); do [ "$(cat "$SHARE/$log" 2>/dev/null | wc -l)" -gt 200 ] && break; sleep 0.1; done
  ocx ws$tag snapshot create $stopflag $P-w$tag $P-ws$tag
  expect ws$tag 0 "$P-ws$tag" "$tag: snapshot create $stopflag while the guest appends to a shared file"
  for i in 1 2; do ocx wc$tag$i run --from-snapshot $P-ws$tag -d --name $P-w$tag-$i & done
  wait
  for i in 1 2; do expect wc$tag$i 0 "$P-w$tag-$i" "$tag: clone $i of the writer starts"; done
  sleep 2
  local vms="$P-w$tag-1 $P-w$tag-2"
  [ -z "$stopflag" ] && vms="$P-w$tag $vms"
  for v in $vms; do
    ocx stop-$v exec $v sh -c 'touch /tmp/stop; sleep 0.5; grep -c "" /data/'"$log"' > /dev/null'
    check "$tag: the writer in $v stops" [ "$(rc stop-$v)" = 0 ]
  done
}
verify_appends() { # TAG LOG WRITERS
  python3 - "$SHARE/$2" "$3" > "$WORK/verify$1.out" <<'PY'
import collections, sys
lines = open(sys.argv[1]).read().split("\n")[:-1]
writers = int(sys.argv[2])
bad = [l for l in lines if not l.isdigit()]
nums = [int(l) for l in lines if l.isdigit()]
c = collections.Counter(nums)
top = max(nums) if nums else 0
once = 0
while c.get(once + 1) == 1: once += 1
print("lines", len(lines), "torn", len(bad), "max", top, "before-fork", once,
      "most", max(c.values()) if c else 0, "missing", [k for k in range(1, top + 1) if k not in c][:5])
PY
  local tag=$1 writers=$3 v; v=$(cat "$WORK/verify$1.out")
  echo "  $tag: $v"
  set -- $v
  check "$tag: the log has whole lines only" [ "$4" = 0 ]
  check "$tag: no number is missing (what the source had not finished reached the clones)" [ "${12}" = "[]" ]
  check "$tag: a number appears at most once per writer (none was done twice)" [ "${10}" -le "$writers" ]
  check "$tag: the lines before the fork are there once each" [ "$8" -gt 100 ]
}
appends live log-live ""
verify_appends live log-live 3
appends stop log-stop --stop
verify_appends stop log-stop 2
held=0
for c in $P-wlive-1 $P-wlive-2 $P-wstop-1 $P-wstop-2; do
  CON=$OCIVM_RUNTIME_DIR/vms/$c/console.log
  check "$c: its relay rebuilt and opened the writer's file again (console counters)" \
    grep -q "fuse relay: ocivm.fs.0: rebuilt for a new server: nodes found again [1-9][0-9]*, stale 0; handles opened again [1-9][0-9]*, stale 0" "$CON"
  grep -q "fuse relay: ocivm.fs.0: rebuilt .* held over the pause [1-9]" "$CON" && held=$((held + 1))
done
# Whether the writer had sent its next append before QEMU stopped the VM
# is a race per snapshot; over two snapshots (four clones) it happens.
check "the writer's next append was held over the pause and sent by a clone (console counters)" [ $held -gt 0 ]
ocx wrm rm -f $P-wlive $P-wlive-1 $P-wlive-2 $P-wstop $P-wstop-1 $P-wstop-2
check "rm -f of the writer VMs" [ "$(rc wrm)" = 0 ]

# --- a guest whose relay does not pause (stopped with SIGSTOP) cannot be
# saved: the snapshot is refused in time, saying why, and the VM goes on
# (comm is cut at 15 characters: ocivm-fuse-rela)
RELAYS='for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = ocivm-fuse-rela ] && kill -'
ocx rstop exec $P-t sh -c "${RELAYS}STOP \${p#/proc/}; done; true"
start=$(date +%s)
check "the guest's relays are stopped" [ "$(rc rstop)" = 0 ]
ocx nopause snapshot create $P-t $P-np
refused nopause "did not pause it in time" "snapshot create of a VM whose relay does not pause is refused, saying why"
check "... within the deadline (one for all shares)" [ $(( $(date +%s) - start )) -lt 20 ]
check "... and leaves no snapshot behind" [ ! -e "$OCIVM_HOME/snapshots/$P-np" ]
ocx rcont exec $P-t sh -c "${RELAYS}CONT \${p#/proc/}; done; true"
ocx npalive exec $P-t cat /data/hostfile
expect npalive 0 "from-host" "... and its share works again once the relay runs"

# --- a clone whose share server dies: requests fail, nothing hangs
"$OCIVM" inspect $P-c1 > "$WORK/c1.json"
SUP=$(json_field "$WORK/c1.json" "j[0]['pids']['supervisor']")
# The server of /data, by its directory (not the lowest pid: that may be /ro's).
FSD=$(pgrep -P "$SUP" -f -- " fsd .*--shared-dir $SHARE --" | head -1)
check "the clone's /data server is a child of its supervisor" [ -n "$FSD" ]
[ -n "$FSD" ] && kill -9 $FSD
sleep 1
start=$(date +%s)
timeout 60 "$OCIVM" exec $P-c1 cat /data/held > "$WORK/dead.out" 2> "$WORK/dead.err" < /dev/null
echo $? > "$WORK/dead.rc"
check "after kill -9 of its share server, a read in the clone returns (an error) instead of hanging" \
  [ "$(rc dead)" != 124 -a "$(rc dead)" != 0 ]
check "... within seconds" [ $(( $(date +%s) - start )) -lt 30 ]
ocx alive exec $P-c1 true
expect alive 0 "" "exec still works in that clone"
ocx others exec $P-c2 cat /data/held
expect others 0 "held-content" "the other clones' shares are unaffected"

# --- a VM whose share server died cannot be saved (what it was sending is lost)
"$OCIVM" inspect $P-t > "$WORK/t.json"
TSUP=$(json_field "$WORK/t.json" "j[0]['pids']['supervisor']")
TFSD=$(pgrep -P "$TSUP" -f -- " fsd .*--shared-dir $SHARE --" | head -1)
[ -n "$TFSD" ] && kill -9 $TFSD
sleep 0.5
ocx snapdead snapshot create $P-t $P-dead
refused snapdead "did not answer" "snapshot create of a VM whose share server died is refused, saying why"
check "... and leaves no snapshot behind" [ ! -e "$OCIVM_HOME/snapshots/$P-dead" ]
ocx talive exec $P-t true
expect talive 0 "" "... and the VM runs on"

# --- a snapshot whose shared directory is gone cannot be cloned
ocx rmall rm -f $P-c1 $P-c2 $P-c3 $P-c4 $P-t
check "rm -f of the VMs" [ "$(rc rmall)" = 0 ]
# --- a clone serves the directory the snapshot recorded, not wherever its
# path leads now: a share root replaced by a symbolic link is refused
OTHER=$WORK/other
mkdir -p "$OTHER"
echo secret > "$OTHER/secret"
mv "$SHARE" "$SHARE.moved" && ln -s "$OTHER" "$SHARE"
ocx link run --from-snapshot $P-s -d --name $P-l
refused link "symbolic link" "a clone whose share root became a symbolic link (to another directory) is refused"
check "... and starts no VM" [ -z "$("$OCIVM" ps -a -q)" ]
rm "$SHARE" && mkdir "$SHARE"
ocx swap run --from-snapshot $P-s -d --name $P-l2
refused swap "another directory now" "a clone whose share root is another directory by that name is refused"
rmdir "$SHARE" && mv "$SHARE.moved" "$SHARE"
rm -rf "$RO"
ocx gone run --from-snapshot $P-s -d --name $P-g
refused gone "no longer a directory" "a clone of a snapshot whose shared directory is gone is refused, naming it"
ocx rms snapshot rm $P-s $P-s2 $P-wslive $P-wsstop
expect rms 0 "$P-s
$P-s2
$P-wslive
$P-wsstop" "snapshot rm"
check "no VM of the test is left" [ -z "$("$OCIVM" ps -a -q)" ]
check "no share server of the test is left" bash -c "! pgrep -f -- '--shared-dir[ ]$WORK' >/dev/null"
finish
