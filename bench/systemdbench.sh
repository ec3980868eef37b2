#!/usr/bin/env bash
# systemdbench (issue 10, the bcvk case): a Debian bookworm systemd root
# booted over virtio-fs to multi-user.target, through `ocivm fsd` and
# through Debian's C virtiofsd, in cache modes never and auto, with one and
# the same QEMU command line (TCG, q35, 2 vCPUs, memfd shared memory,
# vhost-user-fs-pci root). Then `ocivm run --systemd` of the same root, with
# its defaults, as a user runs it.
#
# The root: debootstrap --variant=minbase --include=systemd,systemd-sysv,
# dbus,udev bookworm (it needs the package mirror: a benchmark, never part
# of `make test`), cached under $CACHE (default /var/tmp/ocivm-systemd-root)
# and reused while $CACHE/complete exists. The build adds one unit,
# ocivm-bench-up.service (WantedBy= and After=multi-user.target, active only
# with ocivm_bench on the kernel command line), which
# prints the target's activation time and /proc/uptime on the console and
# powers off; then boots the root once (the C virtiofsd, cache=auto, clean
# shutdown) so that the one-time work of a first boot (ldconfig, hwdb,
# journal catalog, a new journal) is done before any timed boot. Each timed
# boot gets a fresh copy of that root: every boot starts from the same state.
#
# What is measured: the guest's CLOCK_MONOTONIC when multi-user.target
# became active (systemd's ActiveEnterTimestampMonotonic of the target, read
# by the unit; the kernel's decompression before it is not counted, nor the
# power-off after it). Requests: ocivm fsd's own count ("served N requests");
# the C virtiofsd's in a second, debug-logged boot that is not timed (one
# log line per request). Where systemd's requests go: a third, traced boot
# through ocivm fsd (--trace; not timed), summarised by `ocivm trace summary`
# and broken down further here (errors, xattr names, paths, per opcode), next
# to the C virtiofsd's opcode counts from its debug log.
#
#   [PREVIOUS=OTHER_OCIVM] [BARE=1] [REPS=2] [MODES="never auto"] [KARGS=...]
#     bench/systemdbench.sh [OCIVM]
# PREVIOUS: that build's fsd is timed too, interleaved; BARE=1: so is this
# build's fsd unconfined (--sandbox none --seccomp none). COUNT=0 skips the
# counting and tracing boots; RUN=0 skips `ocivm run --systemd`. KARGS:
# extra guest kernel arguments for every boot (e.g.
# systemd.journald.storage=volatile, bcvk's work-around). MIRROR: the
# Debian mirror for debootstrap. KEEP=1 keeps the work dir (logs, traces).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
OCIVM=${1:-$HERE/../build/ocivm}
REPS=${REPS:-2}
MODES=${MODES:-never auto}
COUNT=${COUNT:-1}
RUN=${RUN:-1}
KARGS=${KARGS:-}
CACHE=${CACHE:-/var/tmp/ocivm-systemd-root}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
TIMEOUT=${TIMEOUT:-300}
PREVIOUS=${PREVIOUS:-}
VIRTIOFSD=/usr/lib/qemu/virtiofsd
fail() { echo "systemdbench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root (debootstrap, and both servers serve the root's real owners)"
[ -x "$VIRTIOFSD" ] || fail "$VIRTIOFSD missing: apt-get install qemu-system-x86"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 missing: apt-get install qemu-system-x86"
command -v debootstrap >/dev/null || fail "debootstrap missing: apt-get install debootstrap"
[ -x /bin/busybox ] || fail "/bin/busybox missing: apt-get install busybox-static"
command -v python3 >/dev/null || fail "python3 missing: apt-get install python3"
[ -x "$OCIVM" ] || fail "$OCIVM missing: make build"
OCIVM=$(cd "$(dirname "$OCIVM")" && pwd)/$(basename "$OCIVM")
[ -z "$PREVIOUS" ] || [ -x "$PREVIOUS" ] || fail "PREVIOUS=$PREVIOUS is not an executable"
guest_kernel || fail "no kernel with modules: apt-get install linux-image-amd64"

WORK=$(scratch_dir systemdbench) || fail "cannot make a scratch directory in /var/tmp"
# Everything this script starts is killed by its pid; nothing is mounted.
SERVER_PID="" QEMU_PID="" RUN_PID=""
cleanup() {
  local p
  for p in $QEMU_PID $RUN_PID $SERVER_PID; do kill -9 "$p" 2>/dev/null; done
  for p in $QEMU_PID $RUN_PID $SERVER_PID; do wait "$p" 2>/dev/null; done
  [ -n "${KEEP:-}" ] && echo "systemdbench: work dir kept: $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the initramfs: virtio-fs modules, mount the root tag, switch_root to
# its /sbin/init (Debian's kernel has virtio-fs as a module, so
# rootfstype=virtiofs alone cannot mount the root).
build_initramfs() {
  local root=$WORK/initramfs rel d name
  mkdir -p "$root"/{bin,dev,proc,sys,newroot,lib}
  cp /bin/busybox "$root/bin/busybox"
  copy_virtiofs_modules "$MODDIR" "$root/lib" || fail "cannot put the virtio-fs modules into the initramfs"
  cat > "$root/init" <<'INIT'
#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t devtmpfs dev /dev
for m in $($B cat /lib/order); do $B insmod /lib/$m || echo "SYSTEMD-BENCH-FAIL insmod $m"; done
if ! $B mount -t virtiofs rootfs /newroot; then
  echo "SYSTEMD-BENCH-FAIL cannot mount the virtio-fs root"
  $B poweroff -f
fi
$B umount /proc
$B mount --move /dev /newroot/dev
exec $B switch_root /newroot /sbin/init
INIT
  chmod 755 "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initrd.img"
}

# boot SERVER MODE ROOT DIR [EXTRA_KARGS]: starts SERVER (ocivm, previous,
# ocivm-trace, ocivm-bare, virtiofsd, virtiofsd-count) on ROOT with cache MODE, then the
# one QEMU command line, waits for the power-off (TIMEOUT s at most). Logs
# in DIR: console.log, server.log, qemu.log (trace.jsonl for ocivm-trace).
boot() {
  local server=$1 mode=$2 root=$3 dir=$4 extra=${5:-} sock
  mkdir -p "$dir"
  sock=$dir/fs.sock
  case $server in
    ocivm|previous|ocivm-trace|ocivm-bare)
      local bin=$OCIVM; [ "$server" = previous ] && bin=$PREVIOUS
      local more=()
      [ "$server" = ocivm-trace ] && more=(--trace "$dir/trace.jsonl")
      [ "$server" = ocivm-bare ] && more=(--sandbox none --seccomp none)
      "$bin" fsd --socket-path "$sock" --shared-dir "$root" --cache "$mode" --log-level info \
        "${more[@]}" > "$dir/server.log" 2>&1 &
      ;;
    virtiofsd|virtiofsd-count)
      local m=$mode; [ "$m" = never ] && m=none
      local debug=(); [ "$server" = virtiofsd-count ] && debug=(-d)
      "$VIRTIOFSD" --socket-path="$sock" -o source="$root" -o cache="$m" "${debug[@]}" > "$dir/server.log" 2>&1 &
      ;;
    *) fail "unknown server $server" ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 400); do [ -S "$sock" ] && break; sleep 0.05; done
  [ -S "$sock" ] || { tail -5 "$dir/server.log" >&2; fail "$server did not create its socket; see $dir/server.log"; }
  qemu-system-x86_64 -accel tcg -machine q35 -m 1G -smp 2 \
    -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
    -chardev socket,id=fs0,path="$sock" -device vhost-user-fs-pci,chardev=fs0,tag=rootfs \
    -kernel "$KERNEL" -initrd "$WORK/initrd.img" \
    -append "console=ttyS0 loglevel=4 panic=-1 rw $extra $KARGS" \
    -nic none -display none -monitor none -serial file:"$dir/console.log" -no-reboot \
    > "$dir/qemu.log" 2>&1 &
  QEMU_PID=$!
  local waited=0
  while kill -0 "$QEMU_PID" 2>/dev/null; do
    if [ "$waited" -ge $((TIMEOUT * 10)) ]; then
      echo "systemdbench: $server cache=$mode did not power off within $TIMEOUT s; killing QEMU" >&2
      kill -9 "$QEMU_PID" 2>/dev/null
      break
    fi
    sleep 0.1; waited=$((waited + 1))
  done
  wait "$QEMU_PID" 2>/dev/null; QEMU_PID=""
  # fsd and virtiofsd exit when QEMU goes; a server that does not is killed.
  for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""
}

# up_time DIR: seconds of guest uptime at multi-user.target, or "" if the
# boot did not get there.
up_time() {
  tr -d '\r' < "$1/console.log" | awk '
    /SYSTEMD-BENCH-UP/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      if (v["target"] > 0) printf "%.2f\n", v["target"] / 1e6; else printf "%.2f\n", v["uptime"]; exit }'
}

# --- the root ---------------------------------------------------------------
ROOTFS=$CACHE/rootfs
# configure_root DIR: what the benchmark adds to the debootstrap root (done
# again on every run, so a change here reaches a cached root too).
configure_root() {
  local dir=$1
  echo bench > "$dir/etc/hostname"
  cat > "$dir/usr/local/sbin/ocivm-bench-up" <<'UP'
#!/bin/sh
# The boot is measured to here: multi-user.target's activation time (the
# guest's CLOCK_MONOTONIC, in microseconds) and /proc/uptime now.
read up idle < /proc/uptime
target=$(systemctl show -p ActiveEnterTimestampMonotonic --value multi-user.target)
echo "SYSTEMD-BENCH-UP target=${target:-0} uptime=$up" > /dev/console
if grep -q ocivm_bench_warmup /proc/cmdline; then
  # The warm-up boot's state is kept: shut down cleanly.
  systemctl --no-block poweroff
else
  # Timed boots run on a throw-away copy of the root: no need to wait for
  # every service to stop.
  sync
  systemctl poweroff -ff
fi
UP
  chmod 755 "$dir/usr/local/sbin/ocivm-bench-up"
  cat > "$dir/etc/systemd/system/ocivm-bench-up.service" <<'UNIT'
[Unit]
Description=systemdbench: report the time multi-user.target was reached
After=multi-user.target
# Only the benchmark's own boots: `ocivm run --systemd` of this root must
# boot it as any other, with its own command unit.
ConditionKernelCommandLine=ocivm_bench

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ocivm-bench-up

[Install]
WantedBy=multi-user.target
UNIT
  ln -sfn /etc/systemd/system/ocivm-bench-up.service "$dir/etc/systemd/system/multi-user.target.wants/ocivm-bench-up.service"
}

build_root() {
  echo "systemdbench: building the root in $CACHE (debootstrap from $MIRROR; a few minutes)" >&2
  rm -rf "$CACHE"
  mkdir -p "$(dirname "$CACHE")"
  # Not -p: a directory someone made between the rm and here is not ours.
  mkdir -m 755 "$CACHE" || fail "cannot create $CACHE"
  local tmp=$CACHE/rootfs.partial
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,udev bookworm "$tmp" "$MIRROR" \
    > "$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log" >&2; fail "debootstrap failed; log: $CACHE/debootstrap.log"; }
  configure_root "$tmp"
  echo "systemdbench: warm-up boot (first-boot work done once, kept in the root)" >&2
  boot virtiofsd auto "$tmp" "$WORK/warmup" "ocivm_bench ocivm_bench_warmup"
  [ -n "$(up_time "$WORK/warmup")" ] || { tail -30 "$WORK/warmup/console.log" >&2; fail "the warm-up boot did not reach multi-user.target; see the console above"; }
  mv "$tmp" "$ROOTFS"
  echo "debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,udev bookworm ($MIRROR), $(date -u +%FT%TZ), warm-up boot done" > "$CACHE/complete"
}

# The cache is a root file system this script writes into as root and
# boots: reuse it only if nobody else could have made or changed it. Only
# CACHE itself is checked: a CACHE= under a directory others may write to
# could be swapped after the check (the default is under sticky /var/tmp).
root_owned() { [ ! -L "$1" ] && [ "$(stat -c %u "$1")" = 0 ] && [ -z "$(find "$1" -maxdepth 0 -perm /022)" ]; }
if [ -e "$CACHE" ] || [ -L "$CACHE" ]; then
  root_owned "$CACHE" || fail "$CACHE is not root's alone (a symlink, another owner, or writable by others); remove it or set CACHE="
fi
build_initramfs
if [ -f "$CACHE/complete" ] && [ -x "$ROOTFS/sbin/init" ]; then
  echo "systemdbench: reusing the root in $ROOTFS ($(cat "$CACHE/complete"))" >&2
else
  build_root
fi
configure_root "$ROOTFS"

# fresh_root: a copy of the warmed-up root for one timed boot.
fresh_root() {
  rm -rf "$WORK/root"
  cp -a "$ROOTFS" "$WORK/root"
}

declare -A T REQ
run_one() {
  local server=$1 mode=$2 rep=$3 dir=$WORK/$1-$2-$3 t
  fresh_root
  boot "$server" "$mode" "$WORK/root" "$dir" ocivm_bench
  t=$(up_time "$dir")
  if [ -z "$t" ]; then
    echo "systemdbench: $server cache=$mode (rep $rep) did not reach multi-user.target; console tail:" >&2
    tail -15 "$dir/console.log" | tr -d '\r' | sed 's/^/  | /' >&2
    [ -s "$dir/qemu.log" ] && { echo "  QEMU said:" >&2; tail -5 "$dir/qemu.log" | sed 's/^/  | /' >&2; }
    t=nan
  fi
  T[$server,$mode]="${T[$server,$mode]:-} $t"
  case $server in
    ocivm|previous|ocivm-trace|ocivm-bare)
      REQ[$server,$mode]="${REQ[$server,$mode]:-} $(sed -n 's/.*served \([0-9]*\) requests.*/\1/p' "$dir/server.log" | tail -1)" ;;
    virtiofsd-count)
      REQ[$server,$mode]="${REQ[$server,$mode]:-} $(grep -c "opcode:" "$dir/server.log")" ;;
  esac
  echo "  $server cache=$mode rep $rep: multi-user.target at $t s" >&2
}

echo "systemdbench: $(nproc) cores, kernel $KREL under TCG (q35, 2 vCPUs, 1 GiB), $(du -sh "$ROOTFS" | cut -f1) root ($(find "$ROOTFS" -xdev | wc -l) entries), $(date -u +%F)${KARGS:+, kernel args: $KARGS}"
SERVERS="ocivm ${PREVIOUS:+previous} ${BARE:+ocivm-bare} virtiofsd"
for rep in $(seq 1 "$REPS"); do
  for mode in $MODES; do
    # Interleaved, and the order alternates from one repetition to the next.
    order=$SERVERS; [ $((rep % 2)) -eq 0 ] && order=$(echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' ')
    for server in $order; do run_one "$server" "$mode" "$rep"; done
  done
done
if [ "$COUNT" = 1 ]; then
  for mode in $MODES; do
    run_one virtiofsd-count "$mode" 1
    run_one ocivm-trace "$mode" 1
  done
fi

# --- ocivm run --systemd, as a user runs it: its defaults (microvm, 1 vCPU,
# 512M, the root read-only with cache=always under a tmpfs overlay,
# journald volatile), the cached root directory as IMAGE. Timed from launch
# to exit on the host; the command prints the guest's uptime when it runs.
RUN_UP="" RUN_TARGET="" RUN_WALL="" RUN_RC="" RUN_REQ=""
# run_systemd OUT [ARGS...]: one `ocivm run --systemd` of the root; sets
# RUN_RC, fills OUT.out and OUT.err, returns the wall time in RUN_WALL.
run_systemd() {
  local out=$1; shift
  local karg=() a t0 t1
  for a in $KARGS; do karg+=(--karg "$a"); done
  t0=$(now)
  "$OCIVM" run --rm --systemd "${karg[@]}" "$@" "$ROOTFS" -- sh -c \
    'read up idle < /proc/uptime; echo "uptime $up"; echo "target $(systemctl show -p ActiveEnterTimestampMonotonic --value multi-user.target)"' \
    > "$out.out" 2> "$out.err" &
  RUN_PID=$!
  wait "$RUN_PID"; RUN_RC=$?; RUN_PID=""
  t1=$(now)
  RUN_WALL=$(echo "$t1 - $t0" | bc)
  if [ "$RUN_RC" != 0 ] || ! grep -q '^uptime ' "$out.out"; then
    echo "systemdbench: ocivm run --systemd failed (exit $RUN_RC):" >&2
    tail -20 "$out.err" | sed 's/^/  | /' >&2
  fi
}
if [ "$RUN" = 1 ]; then
  run_systemd "$WORK/run"
  RUN_UP=$(sed -n 's/^uptime \([0-9.]*\)$/\1/p' "$WORK/run.out")
  # 0: multi-user.target was not active yet when the command ran (its unit
  # is Type=idle, wanted by the target, not ordered after it).
  RUN_TARGET=$(sed -n 's/^target \([0-9]*\)$/\1/p' "$WORK/run.out")
  [ -n "$RUN_TARGET" ] && [ "$RUN_TARGET" != 0 ] && RUN_TARGET=$(echo "scale=2; $RUN_TARGET / 1000000" | bc) || RUN_TARGET="not reached yet"
  RUN_T=$RUN_WALL RUN_C=$RUN_RC
  if [ "$COUNT" = 1 ]; then
    echo "  ocivm run --systemd (traced, for its request count)" >&2
    run_systemd "$WORK/run-trace" --trace "$WORK/run-trace.jsonl"
    RUN_REQ=$(grep -c '"op":' "$WORK/run-trace.jsonl" 2>/dev/null)
  fi
  RUN_WALL=$RUN_T RUN_RC=$RUN_C
  echo "  ocivm run --systemd: the command ran at ${RUN_UP:-?} s" >&2
fi

# --- the tables ---------------------------------------------------------------
med() { local v; v=$(echo "$@" | tr ' ' '\n' | grep -v -e '^$' -e nan); [ -n "$v" ] && echo "$v" | median; }
printf '\nboot to multi-user.target (guest seconds; each run, then the median)\n\n'
printf '| cache | ocivm fsd | C virtiofsd | ratio |\n|---|---|---|---|\n'
for mode in $MODES; do
  o=$(med ${T[ocivm,$mode]:-}); v=$(med ${T[virtiofsd,$mode]:-})
  printf '| %s | %s (%s) | %s (%s) | %s |\n' "$mode" "$o" "$(echo ${T[ocivm,$mode]:-} | tr ' ' ',')" \
    "$v" "$(echo ${T[virtiofsd,$mode]:-} | tr ' ' ',')" "$(ratio_of "$o" "$v")"
done
# against OTHER TITLE: this build's fsd against OTHER, ratio ocivm/OTHER
against() {
  local other=$1 o p mode
  printf '\n%s, same run\n\n| cache | ocivm fsd | %s | ratio |\n|---|---|---|---|\n' "$2" "$other"
  for mode in $MODES; do
    o=$(med ${T[ocivm,$mode]:-}); p=$(med ${T[$other,$mode]:-})
    printf '| %s | %s | %s (%s) | %s |\n' "$mode" "$o" "$p" "$(echo ${T[$other,$mode]:-} | tr ' ' ',')" "$(ratio_of "$o" "$p")"
  done
}
[ -n "$PREVIOUS" ] && against previous "this build against the previous one ($PREVIOUS)"
[ -n "${BARE:-}" ] && against ocivm-bare "ocivm fsd as it is against ocivm fsd --sandbox none --seccomp none (what confinement costs)"
if [ "$COUNT" = 1 ]; then
  printf '\nrequests served per boot (ocivm: median of its timed boots; C virtiofsd: its one untimed boot with -d, slower)\n\n| cache | ocivm fsd | C virtiofsd | ratio |\n|---|---|---|---|\n'
  for mode in $MODES; do
    o=$(med ${REQ[ocivm,$mode]:-}); v=$(med ${REQ[virtiofsd-count,$mode]:-})
    printf '| %s | %s | %s | %s |\n' "$mode" "$o" "$v" "$(ratio_of "$o" "$v")"
  done
fi
printf '\nratio = ocivm / virtiofsd (below 1.0: ocivm faster or fewer requests)\n'
if [ "$RUN" = 1 ]; then
  printf '\nocivm run --systemd (its defaults: microvm, 1 vCPU, 512M, cache=always, journald volatile), the same root:\n'
  printf '  the command ran at %s s of guest uptime (multi-user.target: %s); launch to exit %.2f s (exit %s)%s\n' \
    "${RUN_UP:-?}" "$RUN_TARGET" "$RUN_WALL" "$RUN_RC" "${RUN_REQ:+; $RUN_REQ requests (traced run)}"
fi

# --- what systemd asks for ----------------------------------------------------
if [ "$COUNT" = 1 ]; then
  for mode in $MODES; do
    dir=$WORK/ocivm-trace-$mode-1
    [ -s "$dir/trace.jsonl" ] || { echo "systemdbench: no trace for cache=$mode" >&2; continue; }
    printf '\n=== cache=%s: ocivm trace summary (traced boot, not timed) ===\n' "$mode"
    "$OCIVM" trace summary --top 15 "$dir/trace.jsonl" | sed '/^requests per second:/,/^$/d'
    printf -- '--- cache=%s: opcodes of ocivm fsd and of the C virtiofsd (its debug log), errors, and what each asked for ---\n' "$mode"
    python3 "$HERE/systemd_trace.py" "$dir/trace.jsonl" "$WORK/virtiofsd-count-$mode-1/server.log"
  done
  if [ -s "$WORK/run-trace.jsonl" ]; then
    printf '\n=== ocivm run --systemd (cache=always, overlay root): its opcodes ===\n'
    python3 "$HERE/systemd_trace.py" "$WORK/run-trace.jsonl"
  fi
fi
