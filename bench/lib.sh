# Shared by the bench/*.sh scripts: timing, medians, the Debian test tree.
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }
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
