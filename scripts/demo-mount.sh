#!/usr/bin/env bash
# `make run` until `ocivm run` lands: serve a demo directory through
# `ocivm mount`, list and read it through the mount, unmount.
set -euo pipefail
OCIVM=${1:-build/ocivm}
work=$(mktemp -d /tmp/ocivm-demo.XXXXXX)
trap 'umount "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/src/etc" "$work/src/bin" "$work/mnt"
printf 'NAME="ocivm demo"\nID=ocivm-demo\n' > "$work/src/etc/os-release"
echo "hello from a directory served by ocivm's FUSE server" > "$work/src/hello.txt"
ln -s ../hello.txt "$work/src/bin/hello-link"

"$OCIVM" mount "$work/src" "$work/mnt" --cache auto &
pid=$!
for _ in $(seq 100); do
  # From the mount table (findmnt): a stat would wait for the server.
  findmnt -n -M "$work/mnt" -t fuse.ocivm > /dev/null && break
  kill -0 $pid 2>/dev/null || { echo "ocivm mount exited early" >&2; exit 1; }
  sleep 0.05
done
echo "\$ ocivm mount $work/src $work/mnt"
echo "\$ ls -lR $work/mnt"
ls -lR "$work/mnt"
echo "\$ cat $work/mnt/hello.txt $work/mnt/etc/os-release"
cat "$work/mnt/hello.txt" "$work/mnt/etc/os-release"
echo "\$ umount $work/mnt"
umount "$work/mnt"
wait $pid
echo "ocivm mount exited with status $?"
