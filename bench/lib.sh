# Shared by the bench/*.sh scripts: timing, medians, the Debian test tree.
now() { date +%s.%N; }
# median [PLACES]: the median of the numbers on stdin, one a line; the mean
# of the middle two printed with PLACES decimals (default 3).
median() { sort -n | awk -v p="${1:-3}" '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else printf "%.*f\n", p, (a[NR/2]+a[NR/2+1])/2}'; }
# ratio_of A B: A / B rounded to two places (bc's scale=2 truncates: 0.9668
# came out .96); prints nothing when either is empty or B is not above 0.
ratio_of() { [ -n "${1:-}" ] && [ -n "${2:-}" ] && awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2f\n", a / b }'; }
# scratch_dir NAME [BASE]: prints a new directory BASE/ocivm-NAME.XXXXXX
# (default BASE /var/tmp), made by mktemp so nobody can have made it
# first, and named as the mount table names it (BASE may run through a
# symlink). Fails if it cannot be made.
scratch_dir() {
  local d
  d=$(mktemp -d "${2:-/var/tmp}/ocivm-$1.XXXXXX") || return 1
  (cd "$d" && pwd -P)
}
in_own_session() { [ "$(ps -o sid= -p "$1" | tr -d ' ')" = "$1" ]; }
# is_mounted PATH: something is mounted at PATH, from the mount table (no
# stat: a FUSE mount whose server does not answer would block it). PATH
# without spaces or backslashes, which the table escapes.
is_mounted() { awk -v p="$1" '$5 == p { f = 1 } END { exit !f }' /proc/self/mountinfo; }
# unmount_if_mounted PATH: unmounts PATH, lazily if it is busy.
unmount_if_mounted() { is_mounted "$1" || return 0; umount "$1" 2>/dev/null || umount -l "$1"; }
# start_busy_loops N: N processes spinning on a CPU, each in a session of
# its own, as programs started elsewhere would be (with autogroup
# scheduling a session shares one CPU share: docs/benchmarks.md, session
# 12). A loop makes its own session, so it cannot fork away from $!, and
# it dies with the calling script, even a SIGKILLed one. Appends their pids
# to SPIN (the caller kills them); returns 1 if one is not in its own
# session.
start_busy_loops() {
  local p
  for _ in $(seq "$1"); do
    setpriv --pdeathsig KILL python3 -c 'import os, sys
if os.getppid() != int(sys.argv[1]): sys.exit(0)  # the script died before the death signal was set
os.setsid()
while True: pass' "$$" & SPIN="${SPIN:-} $!"
  done
  for p in $SPIN; do
    # Until its setsid() has run, a loop is still in the caller's session.
    for _ in $(seq 100); do in_own_session "$p" && break; sleep 0.02; done
    in_own_session "$p" || { echo "busy loop $p is not in a session of its own" >&2; return 1; }
  done
}
# make_debian_tree DIR: ~300-400 MB of this Debian machine's own files
# (/etc, /usr/bin, /usr/sbin, small libraries up to ~300 MB in all).
make_debian_tree() {
  local root=$1
  mkdir -p "$root/usr/lib/x86_64-linux-gnu"
  cp -a /etc "$root/etc"
  cp -a /usr/bin /usr/sbin "$root/usr/"
  (cd /usr/lib/x86_64-linux-gnu && find . -maxdepth 1 -type f -size -8M -printf '%s %p\n' | sort -n) |
    awk -v limit=$((300 << 20)) -v have="$(du -sb "$root" | cut -f1)" '{ have += $1; if (have > limit) exit; print $2 }' |
    (cd /usr/lib/x86_64-linux-gnu && xargs -r cp -a --parents -t "$root/usr/lib/x86_64-linux-gnu")
}

# make_small_tree DIR: the VM benchmarks' tree, 70 directories of 99 files
# of 1-8 KiB each (7,000 entries), in DIR (made).
make_small_tree() {
  local root=$1 d f
  mkdir -p "$root"
  for d in $(seq 1 70); do
    mkdir "$root/d$d"
    for f in $(seq 1 99); do head -c $(( 1024 + (d * 131 + f * 71) % 7168 )) /dev/zero > "$root/d$d/f$f"; done
  done
}

# copy_virtiofs_modules MODDIR LIBDIR: virtio_pci and virtiofs with the
# modules they depend on (modules.dep), decompressed, into LIBDIR, and
# their names in load order in LIBDIR/order. Returns 1 naming a missing one.
copy_virtiofs_modules() {
  local moddir=$1 lib=$2 m rel name
  local -A seen=()
  local order=()
  _add_module() {
    local r=$1 d
    [ -n "${seen[$r]:-}" ] && return
    seen[$r]=1
    for d in $(awk -v m="$r:" '$1 == m { $1=""; print }' "$moddir/modules.dep"); do _add_module "$d"; done
    order+=("$r")
  }
  for m in virtio_pci virtiofs; do
    rel=$(awk -F: -v m="/$m.ko" 'index($1, m) && substr($1, length($1)-length(m)+1) == m {print $1; exit}' "$moddir/modules.dep")
    [ -n "$rel" ] || { echo "module $m missing in $moddir" >&2; return 1; }
    _add_module "$rel"
  done
  for rel in "${order[@]}"; do
    name=$(basename "$rel")
    case "$rel" in
      *.ko.xz) xz -dc "$moddir/$rel" > "$lib/${name%.xz}"; name=${name%.xz} ;;
      *.ko.zst) zstd -qdc "$moddir/$rel" > "$lib/${name%.zst}"; name=${name%.zst} ;;
      *) cp "$moddir/$rel" "$lib/$name" ;;
    esac
    echo "$name" >> "$lib/order"
  done
}

# guest_kernel: sets KREL, KERNEL and MODDIR to the newest /boot/vmlinuz-*
# whose modules are installed (the guest kernel of the VM benchmarks);
# returns 1 when there is none.
guest_kernel() {
  local v r
  KREL=""
  for v in /boot/vmlinuz-*; do r=${v#/boot/vmlinuz-}; [ -f "/lib/modules/$r/modules.dep" ] && KREL=$r; done
  [ -n "$KREL" ] || return 1
  KERNEL=/boot/vmlinuz-$KREL
  MODDIR=/lib/modules/$KREL
}
