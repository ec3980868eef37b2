#!/usr/bin/env bash
# Builds the test initramfs: static busybox, the virtio-fs modules of the
# guest kernel (dependencies resolved from modules.dep) and an init that
# mounts the virtio-fs tag "share" on /mnt and runs /mnt/$ocivm_cmd.
#   build-initramfs.sh KERNEL_RELEASE OUTPUT
set -euo pipefail
KREL=${1:?kernel release, e.g. 6.1.0-56-amd64}
OUT=${2:?output file}
MODDIR=/lib/modules/$KREL
for need in /bin/busybox "$MODDIR/modules.dep"; do
  [ -e "$need" ] || { echo "build-initramfs: $need missing: apt-get install busybox-static linux-image-amd64" >&2; exit 1; }
done
file /bin/busybox 2>/dev/null | grep -q "statically linked" || ldd /bin/busybox 2>&1 | grep -q "not a dynamic" ||
  { echo "build-initramfs: /bin/busybox is not static: apt-get install busybox-static" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,mnt,tmp,lib/modules}
cp /bin/busybox "$root/bin/busybox"

# modules in dependency order (deps first), each once
declare -A seen=()
order=()
add_module() {
  local path=$1 deps
  [ -n "${seen[$path]:-}" ] && return
  seen[$path]=1
  deps=$(awk -v m="$path:" '$1 == m { $1=""; print }' "$MODDIR/modules.dep")
  for d in $deps; do add_module "$d"; done
  order+=("$path")
}
for m in virtio_pci virtiofs virtio_console; do
  p=$(awk -F: -v m="/$m.ko" 'index($1, m) && substr($1, length($1)-length(m)+1) == m {print $1; exit}' "$MODDIR/modules.dep")
  [ -n "$p" ] || { echo "build-initramfs: module $m not in $MODDIR" >&2; exit 1; }
  add_module "$p"
done
: > "$root/lib/modules/order"
for p in "${order[@]}"; do
  name=$(basename "$p")
  case "$p" in
    *.ko.xz) xz -dc "$MODDIR/$p" > "$root/lib/modules/${name%.xz}"; name=${name%.xz} ;;
    *.ko.zst) zstd -qdc "$MODDIR/$p" > "$root/lib/modules/${name%.zst}"; name=${name%.zst} ;;
    *) cp "$MODDIR/$p" "$root/lib/modules/$name" ;;
  esac
  echo "$name" >> "$root/lib/modules/order"
done

cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m || echo "OCIVM-INIT: insmod $m failed"; done
cmd=$(sed -n 's/.*ocivm_cmd=\([^ ]*\).*/\1/p' /proc/cmdline)
opts=$(sed -n 's/.*ocivm_mountopts=\([^ ]*\).*/\1/p' /proc/cmdline)
if mount -t virtiofs share /mnt ${opts:+-o $opts}; then
  echo "OCIVM-INIT: mounted"
  cd /mnt
  sh "/mnt/$cmd" > /dev/console 2>&1
  echo "OCIVM-EXIT: $?"
  cd /
  umount /mnt
else
  echo "OCIVM-EXIT: mount-failed"
fi
sync
poweroff -f
INIT
chmod 755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT"
