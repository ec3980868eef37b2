#!/usr/bin/env bash
# `ocivm run` tests (ctest label vm): real VMs (KVM when it works, TCG
# otherwise) booting the demo image, checked from the host as a user sees
# them: exit codes, stdout/stderr, env, identity, the image left untouched,
# volumes, the timeout diagnosis, errors, concurrency, kill -9.
#   run_test.sh OCIVM DEMO_IMAGE
set -uo pipefail
OCIVM=${1:?ocivm binary}
DEMO=${2:?demo image directory}
. "$(dirname "$0")/../lib/check.sh"
. "$(dirname "$0")/../lib/tree.sh"
. "$(dirname "$0")/../lib/mounts.sh"

[ "$(id -u)" -eq 0 ] || fail "the vm tests must run as root"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 missing: apt-get install qemu-system-x86"
command -v script >/dev/null || fail "script missing: apt-get install util-linux"
[ -x "$DEMO/bin/busybox" ] || fail "demo image $DEMO not built (make build)"

WORK=${TMPDIR:-/tmp}/ocivm-runtest-$$
mkdir -p "$WORK"
export OCIVM_RUNTIME_DIR=$WORK/run
cleanup() { [ -n "${KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT

# run NAME ARGS...: runs ocivm, keeps stdout/stderr/rc in $WORK/NAME.{out,err,rc}
run() {
  local name=$1; shift
  "$OCIVM" run --rm "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" < /dev/null
  echo $? > "$WORK/$name.rc"
}
rc() { cat "$WORK/$1.rc"; }
out() { cat "$WORK/$1.out"; }
# stderr without the one TCG warning line a machine without KVM prints
errs() { sed '/^ocivm: warning: KVM is not usable/d' "$WORK/$1.err"; }
show() { echo "  --- $1: rc=$(rc "$1")"; sed 's/^/  out| /' "$WORK/$1.out" | head -20; sed 's/^/  err| /' "$WORK/$1.err" | head -40; }
expect_rc() { # NAME RC WHAT
  if [ "$(rc "$1")" = "$2" ]; then ok "$3"; else bad "$3 (exit $(rc "$1"), want $2)"; show "$1"; fi
}

# --- images from the store: a name after 'ocivm image import', an OCI layout directly
DEMO_OCI=${DEMO}-oci
[ -f "$DEMO_OCI/index.json" ] || fail "demo OCI layout $DEMO_OCI not built (make build)"
export OCIVM_HOME=$WORK/home
"$OCIVM" image import "oci:$DEMO_OCI" --name demo-store --log-level info > "$WORK/import.out" 2>&1
check "image import of the demo layout" grep -q "^demo-store:latest sha256:" "$WORK/import.out"
# chown, dac_override, dac_read_search, fowner, fsetid, mknod, setfcap: 0x8800001f
check "image import runs with no network and only what unpacking needs" \
  grep -q "image import: no network; capabilities cut to CapEff 8800001f; no_new_privs" "$WORK/import.out"
run byname demo-store -- cat /etc/hostname
check "ocivm run NAME runs the stored image" [ "$(out byname)" = demo ]
run bylayout "$DEMO_OCI" -- sh -c 'echo layout; exit 3'
expect_rc bylayout 3 "ocivm run OCI-LAYOUT-DIR runs it through the store"
run defcmd demo-store < /dev/null
expect_rc defcmd 0 "the image's own Cmd runs when none is given (/bin/sh, stdin at EOF)"
run unknown no-such-image -- true
check "an unknown image name: one-line error naming 'ocivm image import', exit 125" bash -c "[ \"\$(cat $WORK/unknown.rc)\" = 125 ] && grep -q \"ocivm image import\" $WORK/unknown.err"
unset OCIVM_HOME

# --- options after IMAGE belong to the command (podman's convention)
run after "$DEMO" echo --name x -e Y
check "options after IMAGE are the command's arguments" [ "$(out after)" = "--name x -e Y" ]

# --- exit codes
run e0 "$DEMO" -- true;                       expect_rc e0 0 "exit code 0"
run e1 "$DEMO" -- false;                      expect_rc e1 1 "exit code 1"
run e42 "$DEMO" -- sh -c 'exit 42';           expect_rc e42 42 "exit code 42"
run e137 "$DEMO" -- sh -c 'kill -9 $$';       expect_rc e137 137 "exit code 137 when the command is killed by SIGKILL"
run e127 "$DEMO" -- no-such-command;          expect_rc e127 127 "exit code 127 for a command that is not found"
check "127 says what was not found" grep -q "no-such-command: command not found" "$WORK/e127.err"
run e126 "$DEMO" -- /etc/passwd;              expect_rc e126 126 "exit code 126 for a file that is not executable"

# --- 1 MiB on stdout and on stderr, at the same time, complete and separate
run big "$DEMO" -- sh -c '(yes stdout-line | head -c 1048576) & (yes stderr-line | head -c 1048576 >&2); wait'
expect_rc big 0 "1 MiB streams: exit 0"
yes stdout-line | head -c 1048576 > "$WORK/want.out"
yes stderr-line | head -c 1048576 > "$WORK/want.err"
check "1 MiB on stdout arrives complete" cmp -s "$WORK/big.out" "$WORK/want.out"
check "1 MiB on stderr arrives complete and unmixed" cmp -s <(errs big) "$WORK/want.err"

# --- environment, working directory, user, hostname
printf 'FROM_FILE=file value\n# comment\n' > "$WORK/envfile"
run env -e FOO=bar -e 'SPACED=a b' --env-file "$WORK/envfile" "$DEMO" -- sh -c 'echo "$FOO|$SPACED|$FROM_FILE|$HOME|$PATH"'
check "env: -e, --env-file, HOME and PATH" [ "$(out env)" = "bar|a b|file value|/root|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" ]
run wd -w /srv/app "$DEMO" -- pwd
check "working directory (-w creates it)" [ "$(out wd)" = /srv/app ]
run user -u user "$DEMO" -- id
check "-u NAME takes uid, gid and groups from the image" [ "$(out user)" = "uid=1000(user) gid=1000(user) groups=10(wheel),100(users),1000(user)" ]
run uid -u 1234:100 "$DEMO" -- sh -c 'id -u; id -g; touch /tmp/f; stat -c %u:%g /tmp/f'
check "-u UID:GID numeric" [ "$(out uid | tr '\n' ' ')" = "1234 100 1234:100 " ]
run host --name rt-host-$$ "$DEMO" -- hostname
check "host name is the VM's name" [ "$(out host)" = "rt-host-$$" ]
run hostanon "$DEMO" -- hostname
check "an unnamed VM's host name is its generated name" bash -c "grep -Eqx 'ocivm-[0-9]+-[0-9a-f]{4}' '$WORK/hostanon.out'"

# --- the image stays byte-for-byte unchanged while the guest changes everything
IMG=$WORK/image
cp -a "$DEMO" "$IMG"
echo "original" > "$IMG/etc/motd"
mkdir -p "$IMG/data/sub" && echo keep > "$IMG/data/sub/file" && ln "$IMG/data/sub/file" "$IMG/data/hardlink"
snapshot() { (cd "$1" && find . -printf '%p %y %m %U:%G %s %T@ %l %n\n' | sort && find . -type f -print0 | sort -z | xargs -0 md5sum); }
snapshot "$IMG" > "$WORK/img.before"
run mutate "$IMG" -- sh -c '
  set -e
  echo changed > /etc/motd; rm /etc/passwd; mv /etc/os-release /etc/moved
  rm -rf /data/sub; echo new > /data/hardlink; mkdir /newdir; echo x > /newdir/f
  chmod 700 /home; chown 5:5 /etc/group; ln -s /nowhere /etc/link; rm /bin/ls
  touch -d @0 /etc/hostname; mv /usr /usr2
  cat /etc/motd; [ ! -e /etc/passwd ]; [ -e /etc/moved ]; [ ! -e /data/sub ]'
expect_rc mutate 0 "the guest writes, deletes and renames everywhere"
check "the guest sees its own changes" [ "$(out mutate)" = changed ]
snapshot "$IMG" > "$WORK/img.after"
check "the image directory is byte-for-byte unchanged" cmp -s "$WORK/img.before" "$WORK/img.after"

# --- --root erofs: the image as an EROFS disk, built once per tree, the
# same overlay semantics, the image on the host unchanged
need mkfs.erofs erofs-utils
export OCIVM_HOME=$WORK/home
run erofs1 --root erofs --log-level info "$IMG" -- sh -c 'ls /sys/fs/erofs; cat /etc/motd; echo new > /etc/motd; cat /etc/motd; exit 4'
expect_rc erofs1 4 "--root erofs: the command runs, its exit status comes back"
check "--root erofs: the root is an EROFS disk (vda), the guest writes over it" \
  [ "$(out erofs1 | tr '\n' ' ')" = "features vda original new " ]
check "--root erofs: the image was built once" grep -q "EROFS root .* built from $IMG" "$WORK/erofs1.err"
run erofs2 --root erofs --log-level info "$IMG" -- cat /etc/motd
check "--root erofs: an unchanged tree reuses its image" \
  bash -c "[ \"\$(cat $WORK/erofs2.out)\" = original ] && grep -q 'EROFS root .*(cached)' $WORK/erofs2.err"
snapshot "$IMG" > "$WORK/img.erofs"
check "--root erofs: the image directory is unchanged" cmp -s "$WORK/img.before" "$WORK/img.erofs"
cp -a "$IMG" "$WORK/image2" && echo changed > "$WORK/image2/etc/motd"
run erofs3 --root erofs --log-level info "$WORK/image2" -- cat /etc/motd
check "--root erofs: a changed tree gets a new image with the change" \
  bash -c "[ \"\$(cat $WORK/erofs3.out)\" = changed ] && grep -q 'EROFS root .* built from' $WORK/erofs3.err"
check "--root erofs: one image per tree in the cache" [ "$(ls "$WORK/home/cache/erofs" | grep -c '\.erofs$')" = 2 ]
run erofsbad --root ext9 "$IMG" -- true
check "--root with a bad value: 125 and the accepted values" \
  bash -c "[ \"\$(cat $WORK/erofsbad.rc)\" = 125 ] && grep -q 'use virtiofs or erofs' $WORK/erofsbad.err"
unset OCIVM_HOME

# --- volumes
VOL=$WORK/vol; mkdir -p "$VOL"; echo from-host > "$VOL/in"
run vol -v "$VOL:/data" "$DEMO" -- sh -c 'cat /data/in; echo from-guest > /data/out; mkdir /data/d; echo deep > /data/d/f'
expect_rc vol 0 "-v share: exit 0"
check "-v share: the guest reads host files" [ "$(out vol)" = from-host ]
check "-v share: the guest's writes are on the host" [ "$(cat "$VOL/out" 2>/dev/null)" = from-guest ] && [ "$(cat "$VOL/d/f" 2>/dev/null)" = deep ]
run volro -v "$VOL:/ro:ro" "$DEMO" -- sh -c 'cat /ro/in; echo x > /ro/new'
check "-v :ro: writing fails" [ "$(rc volro)" != 0 ]
check "-v :ro: the error is EROFS" grep -q "Read-only file system" "$WORK/volro.err"
check "-v :ro: nothing written on the host" [ ! -e "$VOL/new" ]
# writeback: the guest caches writes; all of them are on the host once
# ocivm run has returned (ocivm-init syncs before it reports the exit). The
# big file is a non-zero pattern: lost pages with the size still set would
# read back as zeros.
run volwb -v "$VOL:/wb:rw,writeback" "$DEMO" -- sh -c 'cat /wb/in; echo cached > /wb/wb-small; yes ocivm-wb | head -c 3145728 > /wb/wb-big; echo more >> /wb/wb-small'
expect_rc volwb 0 "-v :writeback: exit 0"
check "-v :writeback: the guest reads host files" [ "$(out volwb)" = from-host ]
wb_on_host() { [ "$(tr '\n' ' ' < "$VOL/wb-small")" = "cached more " ] && cmp -s "$VOL/wb-big" <(yes ocivm-wb | head -c 3145728); }
check "-v :writeback: everything the guest wrote is on the host when ocivm run returns" wb_on_host

# --- stdin and tty
printf 'line one\nline two\n' | "$OCIVM" run --rm -i "$DEMO" -- sh -c 'cat; echo done' > "$WORK/stdin.out" 2>/dev/null
check "-i forwards stdin to the command (and its end)" [ "$(cat "$WORK/stdin.out" | tr '\n' '|')" = "line one|line two|done|" ]
script -qec "stty cols 123 rows 45; exec $OCIVM run --rm -t $DEMO -- sh -c 'tty; stty size'" /dev/null > "$WORK/tty.out" 2>&1
check "-t gives the command a pty" grep -q "^/dev/pts/" "$WORK/tty.out"
check "-t passes the window size" grep -q "^45 123" "$WORK/tty.out"

# --- signals are forwarded to the command: SIGTERM, and Ctrl-C on a terminal
"$OCIVM" run --rm "$DEMO" -- sh -c 'trap "echo got-term; exit 6" TERM; echo ready; while :; do sleep 1; done' > "$WORK/term.out" 2> "$WORK/term.err" &
pid=$!
for _ in $(seq 600); do grep -q ready "$WORK/term.out" && break; sleep 0.1; done
kill -TERM $pid
wait $pid; trc=$?
check "SIGTERM reaches the command (exit 6, 'got-term')" [ "$trc" = 6 ] && grep -q got-term "$WORK/term.out"
( for _ in $(seq 600); do grep -q ready "$WORK/int.out" 2>/dev/null && break; sleep 0.1; done
  printf '\003'
  for _ in $(seq 300); do grep -q got-int "$WORK/int.out" 2>/dev/null && break; sleep 0.1; done ) |
  script -qec "exec $OCIVM run --rm $DEMO -- sh -c 'trap \"echo got-int; exit 5\" INT; echo ready; while :; do sleep 1; done'" /dev/null > "$WORK/int.out" 2>&1
irc=$?
check "Ctrl-C on the terminal reaches the command (exit 5, 'got-int')" [ "$irc" = 5 ] && grep -q got-int "$WORK/int.out"

# --- errors: one line, exit 125
one_error() { # NAME: exactly one "ocivm: error:" line, nothing else (besides the TCG warning), exit 125
  [ "$(rc "$1")" = 125 ] && [ "$(errs "$1" | wc -l)" = 1 ] && errs "$1" | grep -q "^ocivm: error: "
}
run noimg "$WORK/no-such-image" -- true
check "a missing image: one-line error, exit 125" one_error noimg
run badflag --no-such-flag "$DEMO" -- true
check "a bad flag: one-line error, exit 125" one_error badflag
run nokernel --kernel "$WORK/no-such-kernel" "$DEMO" -- true
check "a missing kernel: one-line error, exit 125" one_error nokernel
run badmem --memory lots "$DEMO" -- true
check "a bad --memory: one-line error, exit 125" one_error badmem
run nocmd "$DEMO"
check "no command and none in the image: one-line error, exit 125" one_error nocmd

# --- two runs at the same time
"$OCIVM" run --rm "$DEMO" -- sh -c 'for i in 1 2 3; do echo A$i; sleep 0.3; done; exit 11' > "$WORK/a.out" 2>/dev/null &
pa=$!
"$OCIVM" run --rm "$DEMO" -- sh -c 'for i in 1 2 3; do echo B$i; sleep 0.3; done; exit 22' > "$WORK/b.out" 2>/dev/null &
pb=$!
wait $pa; ra=$?; wait $pb; rb=$?
check "two runs at once: each gets its own exit code" [ "$ra" = 11 ] && [ "$rb" = 22 ]
check "two runs at once: each gets its own output" [ "$(tr '\n' ' ' < "$WORK/a.out")" = "A1 A2 A3 " ] && [ "$(tr '\n' ' ' < "$WORK/b.out")" = "B1 B2 B3 " ]

# --- kill -9 of ocivm leaves nothing behind
name=rt-kill-$$
"$OCIVM" run --name $name -v "$VOL:/data" "$DEMO" -- sh -c 'echo ready; sleep 1000' > "$WORK/kill.out" 2>/dev/null &
pid=$!
for _ in $(seq 600); do grep -q ready "$WORK/kill.out" && break; sleep 0.1; done
check "kill -9: the command was running" grep -q ready "$WORK/kill.out"
kill -9 $pid; wait $pid 2>/dev/null
sleep 1
check "kill -9 of ocivm: no QEMU left" bash -c "! pgrep -f '[q]emu-system.*$name' >/dev/null && ! pgrep -f '[r]un/vms/$name/' >/dev/null"
check "kill -9 of ocivm: no socket left" [ -z "$(find "$WORK/run" -type s 2>/dev/null)" ]
check "kill -9 of ocivm: no mount left" no_mount_mentions "$WORK"
run again --name $name "$DEMO" -- true
expect_rc again 0 "kill -9: the name can be used again"

# --- the timeout ends in a diagnosis: an image whose init never starts the command
HANG=$WORK/hang
cp -a "$DEMO" "$HANG"
rm -f "$HANG/sbin/init"
printf '#!/bin/sh\necho "hang-init: looping"\nwhile :; do ls -lR /etc > /dev/null; done\n' > "$HANG/sbin/init"
chmod 755 "$HANG/sbin/init"
start=$(date +%s)
run hang --systemd --timeout 20s --cache never "$HANG" -- true
elapsed=$(( $(date +%s) - start ))
expect_rc hang 125 "timeout: exit 125"
check "timeout: diagnosis within timeout + 10 s (took ${elapsed}s)" [ "$elapsed" -le 30 ]
check "timeout: says the command did not start" grep -q "did not start within 20 s" "$WORK/hang.err"
check "timeout: names the stage reached" grep -q "stage reached: systemd starting" "$WORK/hang.err"
check "timeout: shows the console" grep -q "| hang-init: looping" "$WORK/hang.err"
check "timeout: shows virtio-fs requests of the last 10 s" grep -q "virtio-fs (root.*requests in the last 10 s" "$WORK/hang.err"
check "timeout: top paths name the loop" grep -q "top paths:.*/etc" "$WORK/hang.err"
check "timeout: the livelock detector's verdict" grep -q "livelock detector (root)" "$WORK/hang.err"
check "timeout: nothing left running" bash -c "! pgrep -f '[q]emu-system.*$WORK' >/dev/null"

# --- ocivm run --disk: a disk made by ocivm disk create boots, root by PARTUUID
DISKIMG=$WORK/diskimg
cp -a "$DEMO" "$DISKIMG"; echo from-the-disk > "$DISKIMG/disk-marker"
"$OCIVM" disk create "$DISKIMG" "$WORK/disk.raw" > /dev/null 2>&1 || bad "disk create for --disk"
run disk --disk "$WORK/disk.raw" -- sh -c 'cat /disk-marker; echo x > /written; exit 9'
expect_rc disk 9 "run --disk: the command's exit code"
check "run --disk: the root is the disk's" [ "$(out disk)" = from-the-disk ]
"$OCIVM" disk create --format qcow2 "$DISKIMG" "$WORK/disk.qcow2" > /dev/null 2>&1
run diskq --disk "$WORK/disk.qcow2" -- cat /disk-marker
check "run --disk with a qcow2 disk" [ "$(out diskq)" = from-the-disk ]
run nodisk --disk "$WORK/no-such.raw" -- true
check "run --disk of a missing disk: one-line error, exit 125" one_error nodisk

# --- disk create --fs xfs: written inside a VM, read back exactly on the host, boots
for t in mkfs.xfs xfs_repair setfacl perl; do
  command -v $t >/dev/null || fail "$t missing: apt-get install xfsprogs acl perl"
done
grep -qw xfs /proc/filesystems || modprobe xfs 2>/dev/null ||
  fail "the host kernel cannot mount xfs (this test reads the disk back by mounting it): load the xfs module"
XSRC=$WORK/xsrc
cp -a "$DISKIMG" "$XSRC"; make_test_tree "$XSRC/t"
"$OCIVM" disk create --fs xfs "$XSRC" "$WORK/disk.xfs" > "$WORK/xfs.out" 2> "$WORK/xfs.err"; echo $? > "$WORK/xfs.rc"
expect_rc xfs 0 "disk create --fs xfs: exit 0"
check "disk create --fs xfs: stdout is the partition's PARTUUID alone" \
  bash -c "[ \$(wc -l < $WORK/xfs.out) = 1 ] && sfdisk -d $WORK/disk.xfs | grep -qi \"uuid=\$(cat $WORK/xfs.out)\""
check "disk create --fs xfs: xfs_repair -n finds it clean" \
  bash -c "dd if=$WORK/disk.xfs of=$WORK/xfs.part bs=1M skip=1 status=none && xfs_repair -n $WORK/xfs.part >/dev/null 2>&1"
rm -f "$WORK/xfs.part"
mkdir -p "$WORK/xrt"
if mount -o loop,ro,offset=1048576 "$WORK/disk.xfs" "$WORK/xrt"; then
  check "disk create --fs xfs: the tree reads back exactly (content, mode, owner, xattrs, ACLs, links, times, holes)" \
    diff <(tree_listing "$XSRC") <(tree_listing "$WORK/xrt")
  umount "$WORK/xrt"
else
  bad "disk create --fs xfs: the partition mounts on the host"
fi
run xdisk --disk "$WORK/disk.xfs" -- sh -c 'cat /disk-marker; exit 4'
expect_rc xdisk 4 "run --disk of an xfs disk: the command's exit code"
check "run --disk of an xfs disk: the root is the disk's" [ "$(out xdisk)" = from-the-disk ]

# --- --systemd: the host's own Debian root (it has systemd) as the image
command -v systemctl >/dev/null || fail "systemd missing on the host (its root is the --systemd test image): apt-get install systemd"
run sd --systemd --timeout 240s / -- sh -c 'cat /proc/1/comm; cat /etc/systemd/journald.conf.d/ocivm.conf; ps -e -o comm= | grep -c getty; echo to-stderr >&2; exit 7'
expect_rc sd 7 "--systemd: the command's exit status"
check "--systemd: PID 1 is systemd" [ "$(out sd | head -1)" = systemd ]
check "--systemd: journald is volatile" grep -q "^Storage=volatile" "$WORK/sd.out"
check "--systemd: no getty on the console" [ "$(out sd | tail -1)" = 0 ]
check "--systemd: stderr arrives on stderr" grep -q "^to-stderr" "$WORK/sd.err"

finish
