# tree_listing DIR: what a copy of a tree must keep, one fact per line,
# sorted: each entry's path, type, mode, owner, symlink target, link count
# and mtime (ns); each xattr as "path name=value" (symlinks' own, not their
# targets'); each file's md5. lost+found is left out, and so are the
# trusted.SGI_ACL_* attributes xfs lists as its own copy of POSIX ACLs (the
# ACLs themselves are compared as system.posix_acl_*).
tree_listing() {
  local d
  d=$(cd "$1" && pwd) || return 1
  (cd "$d" && find . -path ./lost+found -prune -o -printf '%p %y %m %U:%G %l %n %T@\n' | grep -v '^\. ' | sort)
  (cd "$d" && getfattr -R -h -d -m - --absolute-names . 2>/dev/null |
    awk '/^# file: /{f=substr($0,9); next} /^$/{next} /^trusted\.SGI_ACL_/{next} {print f, $0}' |
    grep -v '^\./lost+found' | sort)
  (cd "$d" && find . -type f ! -path './lost+found/*' -print0 | sort -z | xargs -0 -r md5sum)
}

# make_test_tree DIR: a tree with everything a disk writer must keep: modes
# (setuid, sticky), owners (ids above 16 bits), hard links, symlinks (fast,
# slow, dangling), device nodes (8- and 32-bit numbers), a fifo, a socket,
# xattrs (in the inode and too big for it), ACLs (access and default), holes,
# a directory that must grow many times, empty and block-sized files, times
# with nanoseconds, before 1970 and after 2038.
make_test_tree() {
  local d=$1
  mkdir -p "$d/etc" "$d/home/u" "$d/dev" "$d/deep/a/b/c"
  printf 'hello\n' > "$d/etc/hello"; chmod 640 "$d/etc/hello"; chown 12:34 "$d/etc/hello"
  head -c 300000 /dev/urandom > "$d/deep/a/b/c/blob"
  ln "$d/etc/hello" "$d/home/u/hardlink"
  ln -s ../etc/hello "$d/home/u/symlink"
  ln -s /absolute/nowhere "$d/dangling"
  mknod "$d/dev/null" c 1 3; mknod "$d/dev/loop7" b 7 7; mkfifo "$d/dev/fifo"
  chown 1000:1000 "$d/home/u"; chmod 4755 "$d/deep/a/b/c/blob"; chmod 1777 "$d/deep"
  setfattr -n user.note -v "a note" "$d/etc/hello"
  setfattr -n trusted.marker -v yes "$d/deep/a"
  touch -d '2001-02-03 04:05:06.123456789' "$d/etc/hello"
  # what stresses our ext4 writer: a directory that must grow many times, holes,
  # a slow symlink (too long for the inode), a 32-bit device number, a socket,
  # ids above 16 bits, ACLs, an xattr too big for the inode, times before 1970
  # and after 2038, empty and block-sized files
  mkdir -p "$d/many"
  for i in $(seq 1500); do : > "$d/many/entry-with-a-rather-long-name-$i"; done
  truncate -s 40M "$d/sparse"; printf 'middle' | dd of="$d/sparse" bs=1 seek=20000000 conv=notrunc status=none
  printf 'end' >> "$d/sparse"
  ln -s "/$(printf 'long/%.0s' $(seq 40))target" "$d/slowlink"
  mknod "$d/dev/big" c 259 200000  # a minor above 8 bits (xfs keeps 18: below 262144)
  perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Local => $ARGV[0], Listen => 1) or die "socket: $!"' "$d/dev/sock"
  : > "$d/empty"; head -c 4096 /dev/urandom > "$d/block"; chown 100000:200000 "$d/block"
  setfacl -m u:1234:rwx,g:55:r "$d/block"; setfacl -d -m u:1234:rx "$d/deep/a/b"
  setfattr -n user.big -v "0x$(head -c 3000 /dev/urandom | od -An -tx1 | tr -d ' \n')" "$d/empty"
  touch -d '1960-05-06 07:08:09.5' "$d/empty"; touch -d '2100-01-02 03:04:05.25' "$d/block"
  touch -h -d '2010-01-01 00:00:00.75' "$d/slowlink"; touch -d '2011-01-01 00:00:00.125' "$d/many"
}
