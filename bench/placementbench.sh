#!/usr/bin/env bash
# placementbench: how much where a FUSE server runs decides what a client
# waits for on a contended host (docs/benchmarks.md, session 12). With
# autogroup scheduling (the kernel's default where there is no systemd
# slice) a session's processes share one CPU share, so a server in its
# client's session and the same server in a session of its own compete for
# the CPUs differently.
#
#   placementbench.sh OCIVM [PLACEMENT...]
#
# PLACEMENT (default: all four, in this order, round after round):
#   ocivm-client    `ocivm mount` in this script's session, beside the client
#   ocivm-own       `ocivm mount` in a session of its own (setsid)
#   bindfs-client   `bindfs -f` in this script's session
#   bindfs-own      bindfs daemonized (its default: a session of its own)
# Environment: SAMPLES (10 per placement), CYCLES (500 per sample),
#   CONTEND (2 busy loops, each in a session of its own, throughout),
#   CACHE (always: the ocivm side's --cache), OCIVM_ARGS (more options for
#   `ocivm mount`, e.g. "--threads 1"; split on blanks), SERVER_CPUS and
#   CLIENT_CPUS (taskset CPU lists for the server and the client, e.g. 0
#   and 0 for one CPU, 1 and 0 for a different one; default: any CPU),
#   VERBOSE (1: each sample's figures, and ocivm's polling statistics,
#   which `ocivm mount --log-level info` prints at exit; 0, the default:
#   the tables only).
#
# Each sample mounts a fresh server, so each places its threads anew, and
# times CYCLES cycles of create 4 KiB / stat / open+read / unlink in one
# Python client, with `perf stat` counting the server's context switches and
# system calls. Prints per placement the median µs per cycle (min, max) and
# the mean switches and calls per cycle. A second table splits a cycle by
# the kernel's scheduler statistics (/proc/PID/task/TID/schedstat, read by
# the client just before and after its timed loop): the time the client
# and the server's threads ran, and the time they were runnable but waited
# for a CPU. "neither" is the cycle less those four: at least the time
# nobody was runnable (a handover in flight, a wait on the disk), less
# where they overlap (the server's threads running or waiting at the same
# time as the client or as each other), so it can be negative. Run as root.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
OCIVM=${1:?usage: placementbench.sh OCIVM [ocivm-client|ocivm-own|bindfs-client|bindfs-own ...]}
shift
PLACES=("$@")
[ ${#PLACES[@]} -gt 0 ] || PLACES=(ocivm-client ocivm-own bindfs-client bindfs-own)
SAMPLES=${SAMPLES:-10}
CYCLES=${CYCLES:-500}
CONTEND=${CONTEND:-2}
CACHE=${CACHE:-always}
read -r -a OCIVM_ARGS <<<"${OCIVM_ARGS:-}"
SERVER_CPUS=${SERVER_CPUS:-} CLIENT_CPUS=${CLIENT_CPUS:-}
VERBOSE=${VERBOSE:-0}
fail() { echo "placementbench: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (perf stat on another process, mounts)"
[ -x "$OCIVM" ] || fail "no ocivm binary at $OCIVM; build it with 'make build'"
command -v python3 >/dev/null || fail "python3 missing: apt-get install python3"
command -v bindfs >/dev/null || fail "bindfs missing: apt-get install bindfs"
command -v perf >/dev/null || fail "perf missing: apt-get install linux-perf"
perf stat -e context-switches,raw_syscalls:sys_enter true >/dev/null 2>&1 ||
  fail "perf stat cannot count context switches and system calls here (kernel.perf_event_paranoid? tracefs?)"
[[ $SAMPLES =~ ^[1-9][0-9]{0,3}$ ]] || fail "SAMPLES must be 1 to 9999, not '$SAMPLES'"
[[ $CYCLES =~ ^[1-9][0-9]{0,5}$ ]] || fail "CYCLES must be 1 to 999999, not '$CYCLES'"
[[ $CONTEND =~ ^[0-9]+$ ]] && [ "$CONTEND" -le 64 ] || fail "CONTEND must be 0 to 64 busy loops, not '$CONTEND'"
[[ $VERBOSE =~ ^[01]$ ]] || fail "VERBOSE must be 0 or 1, not '$VERBOSE'"
# pin_prefix ARRAY NAME: sets ARRAY to the command prefix that runs on the
# CPU list in variable NAME (taskset), or to nothing when NAME is empty.
pin_prefix() {
  local -n prefix=$1
  local list=${!2}
  prefix=()
  [ -n "$list" ] || return 0
  taskset -c "$list" true 2>/dev/null || fail "$2: taskset refuses the CPU list '$list'"
  prefix=(taskset -c "$list")
}
pin_prefix ON_SERVER SERVER_CPUS
pin_prefix ON_CLIENT CLIENT_CPUS
for p in "${PLACES[@]}"; do
  case $p in ocivm-client|ocivm-own|bindfs-client|bindfs-own) ;; *) fail "unknown placement '$p'";; esac
done

D=$(scratch_dir placementbench "${TMPDIR:-/tmp}") || fail "cannot make a scratch directory in ${TMPDIR:-/tmp}"
SRV="" PID="" SPIN=""
stop_server() {
  unmount_if_mounted "$D/m"
  if [ -n "$SRV" ]; then kill "$SRV" 2>/dev/null; wait "$SRV" 2>/dev/null; SRV=""; fi
  # A daemonized bindfs is nobody's child here: the unmount ends it.
}
cleanup() {
  trap '' INT TERM HUP  # a second signal must not cut the cleanup short
  for p in $SPIN; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  stop_server
  rm -rf --one-file-system "$D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
MYSID=$(ps -o sid= -p $$ | tr -d ' ')
mkdir -p "$D/s" "$D/m"

# Mounts PLACE's server; sets SRV (the process this script started, if
# any) and PID (the process that serves, counted by perf stat: a daemonized
# bindfs is found by its command line, ocivm mount's sandboxed server is
# its keeper's child).
start_server() {
  local place=$1
  rm -rf "${D:?}/s" && mkdir "$D/s"
  # --log-level info: the polling statistics at exit, for VERBOSE.
  local mount=("$OCIVM" mount "$D/s" "$D/m" --cache "$CACHE" --log-level info "${OCIVM_ARGS[@]}")
  case $place in
    ocivm-client) "${ON_SERVER[@]}" "${mount[@]}" >"$D/server.log" 2>&1 & SRV=$! ;;
    ocivm-own) "${ON_SERVER[@]}" setsid "${mount[@]}" >"$D/server.log" 2>&1 & SRV=$! ;;
    bindfs-client) "${ON_SERVER[@]}" bindfs -f "$D/s" "$D/m" >"$D/server.log" 2>&1 & SRV=$! ;;
    bindfs-own) "${ON_SERVER[@]}" bindfs "$D/s" "$D/m" >"$D/server.log" 2>&1 || fail "bindfs did not mount: $(cat "$D/server.log")" ;;
  esac
  for _ in $(seq 200); do
    is_mounted "$D/m" && break
    [ -z "$SRV" ] || kill -0 "$SRV" 2>/dev/null || fail "$place exited before mounting: $(cat "$D/server.log")"
    sleep 0.05
  done
  is_mounted "$D/m" || fail "$place did not mount"
  # ocivm's mount is in the table before its server is forked: look again.
  PID=""
  for _ in $(seq 100); do
    case $place in
      ocivm-*) local keeper; keeper=$(pgrep -n -P "$SRV") && PID=$(pgrep -n -P "$keeper") ;;
      bindfs-client) PID=$SRV ;;
      bindfs-own) PID=$(pgrep -u 0 -n -f "^bindfs $D/s $D/m\$") ;;
    esac
    [ -n "$PID" ] && break
    sleep 0.05
  done
  [ -n "$PID" ] || fail "cannot find $place's serving process"
  # The point of the run: check the placement rather than trust it.
  local sid; sid=$(ps -o sid= -p "$PID" | tr -d ' ')
  case $place in
    *-client) [ "$sid" = "$MYSID" ] || fail "$place's server $PID is not in this script's session" ;;
    *-own) [ -n "$sid" ] && [ "$sid" != "$MYSID" ] || fail "$place's server $PID is in this script's session" ;;
  esac
}

# The client prints µs per cycle, then its own and the server's threads'
# run and wait times in ns over its timed loop (a server thread that ends
# within the loop is not counted; ocivm's and bindfs's serving threads live
# as long as the mount).
CLIENT='import glob, os, sys, time
def threads(pid):
    out = {}
    for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try: run, wait, _ = open(f).read().split()
        except OSError: continue
        out[f] = (int(run), int(wait))
    return out
def mine():
    run, wait, _ = open("/proc/thread-self/schedstat").read().split()
    return int(run), int(wait)
d, n, server = sys.argv[1], int(sys.argv[2]), sys.argv[3]; data = b"x" * 4096
s0 = threads(server); r0, w0 = mine(); t = time.perf_counter()
for i in range(n):
    p = f"{d}/f{i}"
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644); os.write(fd, data); os.close(fd)
    os.stat(p)
    fd = os.open(p, os.O_RDONLY); os.read(fd, 8192); os.close(fd)
    os.unlink(p)
el = time.perf_counter() - t; r1, w1 = mine(); s1 = threads(server)
sr = sum(v[0] - s0.get(k, (0, 0))[0] for k, v in s1.items())
sw = sum(v[1] - s0.get(k, (0, 0))[1] for k, v in s1.items())
print(el / n * 1e6, r1 - r0, w1 - w0, sr, sw)'

start_busy_loops "$CONTEND" || fail "cannot start the busy loops"

echo "placementbench: $OCIVM, --cache $CACHE${OCIVM_ARGS[*]:+ ${OCIVM_ARGS[*]}}, $SAMPLES samples of $CYCLES cycles" \
  "per placement, $CONTEND busy loops, server on CPUs ${SERVER_CPUS:-any}, client on ${CLIENT_CPUS:-any}"
: >"$D/results"
for _ in $(seq "$SAMPLES"); do
  for place in "${PLACES[@]}"; do
    start_server "$place"
    out=$(perf stat -x, -e context-switches,raw_syscalls:sys_enter -p "$PID" -- \
          "${ON_CLIENT[@]}" python3 -c "$CLIENT" "$D/m" "$CYCLES" "$PID" 2>&1) || fail "$place: the client failed: $out"
    read -r us crun cwait srun swait <<<"$(sed -n '1p' <<<"$out")"
    cs=$(awk -F, '/context-switches/ {print $1}' <<<"$out")
    sc=$(awk -F, '/sys_enter/ {print $1}' <<<"$out")
    [[ $us =~ ^[0-9.]+$ && $crun =~ ^[0-9]+$ && $cwait =~ ^[0-9]+$ && $srun =~ ^[0-9]+$ && $swait =~ ^[0-9]+$ &&
       $cs =~ ^[0-9]+$ && $sc =~ ^[0-9]+$ ]] || fail "$place: unexpected client or perf output: $out"
    echo "$place $us $cs $sc $crun $cwait $srun $swait" >>"$D/results"
    [ "$VERBOSE" = 0 ] || awk -v n="$CYCLES" '{printf "  %s: %.0f us/cycle, switches %.1f, calls %.1f, client ran %.0f waited %.0f, server ran %.0f waited %.0f\n",
      $1, $2, $3 / n, $4 / n, $5 / n / 1000, $6 / n / 1000, $7 / n / 1000, $8 / n / 1000}' <<<"$place $us $cs $sc $crun $cwait $srun $swait"
    stop_server
    [ "$VERBOSE" = 0 ] || sed "s/^/  $place: /" "$D/server.log" | grep -i polling || true
    is_mounted "$D/m" && fail "$place: $D/m is still mounted"
  done
done

printf '%-14s %28s %22s %20s\n' placement "us/cycle median (min-max)" "context switches/cycle" "system calls/cycle"
for place in "${PLACES[@]}"; do
  awk -v p="$place" '$1 == p {print $2, $3, $4}' "$D/results" | sort -n |
    awk -v p="$place" -v n="$CYCLES" '{u[NR] = $1; c += $2; s += $3}
      END {med = NR % 2 ? u[(NR + 1) / 2] : (u[NR / 2] + u[NR / 2 + 1]) / 2
           printf "%-14s %28s %22.1f %20.1f\n", p, sprintf("%.0f (%.0f-%.0f)", med, u[1], u[NR]), c / NR / n, s / NR / n}'
done

echo
printf '%-14s %12s %14s %16s %14s %16s %10s\n' placement "us/cycle" "client ran" "client waited" "server ran" "server waited" "neither"
for place in "${PLACES[@]}"; do
  awk -v p="$place" -v n="$CYCLES" '$1 == p {k++; u += $2; cr += $5; cw += $6; sr += $7; sw += $8}
    END {u /= k; cr /= k * n * 1000; cw /= k * n * 1000; sr /= k * n * 1000; sw /= k * n * 1000
         printf "%-14s %12.0f %14.0f %16.0f %14.0f %16.0f %10.0f\n", p, u, cr, cw, sr, sw, u - cr - cw - sr - sw}' "$D/results"
done
echo "(means over the samples, µs per cycle; \"neither\" is the cycle less the four others: the time nobody"
echo " was runnable, less where they overlap, the server's threads running or waiting at the same time as"
echo " the client or as each other, so it can be negative)"
