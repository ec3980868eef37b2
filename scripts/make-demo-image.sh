#!/usr/bin/env bash
# Builds the offline demo image: a root file system made of Debian's static
# busybox, with /etc/os-release, passwd and group, so that
# `ocivm run build/demo -- sh -c 'uname -r; cat /etc/os-release; id'` works
# with no network.   make-demo-image.sh OUTPUT_DIR
set -euo pipefail
OUT=${1:?output directory}
BB=/bin/busybox
[ -x "$BB" ] || { echo "make-demo-image: $BB missing: apt-get install busybox-static" >&2; exit 1; }
if ! file -L "$BB" 2>/dev/null | grep -q "statically linked" && ! ldd "$BB" 2>&1 | grep -q "not a dynamic"; then
  echo "make-demo-image: $BB is not static: apt-get install busybox-static" >&2; exit 1
fi
tmp="$OUT.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"/{bin,sbin,usr/bin,usr/sbin,etc,root,home/user,tmp,proc,sys,dev,run,var/tmp}
chmod 1777 "$tmp/tmp" "$tmp/var/tmp"
chmod 700 "$tmp/root"
cp "$BB" "$tmp/bin/busybox"
for applet in $("$BB" --list-full); do
  [ "$applet" = bin/busybox ] && continue
  mkdir -p "$tmp/$(dirname "$applet")"
  ln -sf /bin/busybox "$tmp/$applet"
done
version=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || echo unknown)
cat > "$tmp/etc/os-release" <<OS
PRETTY_NAME="ocivm demo (Debian busybox-static $version)"
NAME="ocivm demo"
ID=ocivm-demo
ID_LIKE=debian
VERSION_ID="1"
HOME_URL="https://github.com/ocivm/ocivm"
OS
cat > "$tmp/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
user:x:1000:1000:demo user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
cat > "$tmp/etc/group" <<'GR'
root:x:0:
daemon:x:1:
wheel:x:10:user
users:x:100:user
user:x:1000:
nogroup:x:65534:
GR
echo demo > "$tmp/etc/hostname"
chown -R 1000:1000 "$tmp/home/user"
rm -rf "$OUT"
mv "$tmp" "$OUT"
trap - EXIT
