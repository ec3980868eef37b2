# Mount-table helpers for the shell tests, on findmnt (util-linux: libmount
# reads /proc/self/mountinfo and undoes the kernel's escapes). Its raw
# output (-r) escapes every space, tab, newline and backslash in a field as
# \xHH, so a line is one mount, a field holds no blank, and printf %b gives
# the name back byte for byte. Nothing here stats a mount point: a FUSE
# mount whose server has not answered yet would block that (mountpoint(1)
# does).
#
# Each function returns 2, with a message, when findmnt cannot list the
# mounts, so a check that something is NOT mounted never passes because
# nothing could be looked at.

command -v findmnt >/dev/null || { echo "FAIL: findmnt missing: apt-get install util-linux" >&2; exit 1; }

mounts_unreadable_() { echo "FAIL: findmnt cannot list the mounts of this namespace" >&2; return 2; }

# mount_targets VAR [FSTYPE]: VAR=(the mount point of every mount, or of
# every FSTYPE mount, in the kernel's order).
mount_targets() {
  local -n mt_out_=$1
  local want_=${2:-} raw_ type_ target_ m_
  mt_out_=()
  raw_=$(findmnt -rn -o FSTYPE,TARGET) || { mounts_unreadable_; return; }
  while read -r type_ target_; do
    [ -n "$type_" ] || continue
    [ -z "$want_" ] || [ "$type_" = "$want_" ] || continue
    printf -v m_ '%b' "$target_"
    mt_out_+=("$m_")
  done <<< "$raw_"
}

# mounted_at DIR [FSTYPE]: 0 when a file system (of FSTYPE) is mounted
# exactly at DIR, 1 when none is, 2 when the mounts cannot be listed.
mounted_at() {
  local -a ma_all_
  mount_targets ma_all_ "${2:-}" || return 2
  local m_
  for m_ in "${ma_all_[@]}"; do [ "$m_" = "$1" ] && return 0; done
  return 1
}

# not_mounted_at DIR [FSTYPE]: the negation, failing when it cannot look.
not_mounted_at() { mounted_at "$@"; [ $? -eq 1 ]; }

# mounts_under DIR VAR: VAR=(the mount points at or below DIR, deepest
# first: the order to unmount them in).
mounts_under() {
  local -n mu_out_=$2
  local -a mu_all_
  mu_out_=()
  mount_targets mu_all_ || return 2
  local m_
  for m_ in "${mu_all_[@]}"; do
    if [ "$m_" = "$1" ] || [[ $m_ == "$1"/* ]]; then mu_out_+=("$m_"); fi
  done
  [ ${#mu_out_[@]} -gt 0 ] || return 0
  # A mount point sorts after its parent's, so reversed it comes first.
  mapfile -d '' -t mu_out_ < <(printf '%s\0' "${mu_out_[@]}" | LC_ALL=C sort -rz)
}

# no_mounts_under DIR: 0 when nothing is mounted at or below DIR; 1 (saying
# what is) when something is; 2 when the mounts cannot be listed.
no_mounts_under() {
  local -a nm_left_
  mounts_under "$1" nm_left_ || return 2
  [ ${#nm_left_[@]} -eq 0 ] && return 0
  printf 'still mounted: %q\n' "${nm_left_[@]}" >&2
  return 1
}

# no_mount_mentions STRING: 0 when no mount's target, source or root (within
# its file system) contains STRING; 1 (saying which does) when one does; 2
# when the mounts cannot be listed.
no_mount_mentions() {
  local raw_ m_ f_
  local -a fields_
  raw_=$(findmnt -rn -o TARGET,SOURCE,FSROOT) || { mounts_unreadable_; return; }
  while read -r -a fields_; do
    for f_ in "${fields_[@]}"; do
      printf -v m_ '%b' "$f_"
      if [[ $m_ == *"$1"* ]]; then
        printf 'a mount still names %q: %q\n' "$1" "$m_" >&2
        return 1
      fi
    done
  done <<< "$raw_"
  return 0
}

# wait_mounted DIR / wait_unmounted DIR: until DIR is (no longer) an ocivm
# FUSE mount, 10 s at most (from the mount table: a stat would wait on a
# server not yet answering).
wait_mounted() { for _ in $(seq 200); do mounted_at "$1" fuse.ocivm && return 0; sleep 0.05; done; return 1; }
wait_unmounted() {
  local rc
  for _ in $(seq 200); do
    mounted_at "$1" fuse.ocivm; rc=$?
    [ $rc -eq 1 ] && return 0
    [ $rc -eq 2 ] && return 1
    sleep 0.05
  done
  return 1
}
