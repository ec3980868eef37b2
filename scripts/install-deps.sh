#!/usr/bin/env bash
# Installs every Debian package ocivm needs to build, run, test and benchmark.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake pkg-config
  libspdlog-dev libfmt-dev libgtest-dev libgmock-dev
  # make deb and the pkg test: dpkg-buildpackage, dh, man to read the pages
  dpkg-dev debhelper man-db
  # run: /dev/fuse mounts when not root
  fuse3
  # benchmarks: bindfs is the libfuse passthrough a user would pick today;
  # perf counts a server's context switches and system calls (placementbench)
  bindfs linux-perf
  # util-linux gives mount/umount/unshare used by tests and make run, and
  # findmnt, the tests' reader of mount tables
  util-linux attr acl perl
  # VM tests and benchmarks: QEMU (with Debian's C virtiofsd as the peer),
  # Debian's kernel and its modules, a static busybox for the initramfs
  qemu-system-x86 linux-image-amd64 busybox-static cpio bc
  # fsd --seccomp
  libseccomp-dev
  # ocivm run: initramfs (cpio via libarchive), OCI image config (JSON),
  # kernel decompression (xz, gzip) for the cached vmlinux, sha256 cache keys
  libarchive-dev nlohmann-json3-dev liblzma-dev zlib1g-dev libssl-dev
  # image import: ISA-L's gzip inflate (2-4x zlib's speed) for gzip layers
  libisal-dev
  # the --systemd test boots the host's own root (systemd, procps for ps)
  systemd procps
  # registry tests: the test registry helpers and image builders
  python3
  # imagebench's peer
  umoci
  # make systemdbench builds its Debian systemd root with debootstrap
  debootstrap
  # mount tables (src/util/mountinfo), disks and unmounting: libmount,
  # sfdisk, mkfs.ext4 + libext2fs (our ext4 writer), qemu-img, debugfs and
  # e2fsck (the round-trip test)
  libmount-dev fdisk e2fsprogs libext2fs-dev comerr-dev qemu-utils
  # ocivm run --root erofs: mkfs.erofs builds the image root as an EROFS disk
  erofs-utils
  # disk create --fs xfs: mkfs.xfs runs in the VM from the host root
  xfsprogs
  # image import containers-storage:NAME (podman image save) and its test
  podman
  # ocivm pull: HTTPS to registries (libcurl); zstd layers are read by
  # libarchive, zstd makes the test's zstd layer. The registry tests run
  # Debian's docker-registry (distribution 2.8), push with skopeo, and make
  # their htpasswd file with apache2-utils.
  libcurl4-openssl-dev libzstd-dev zstd docker-registry skopeo apache2-utils openssl curl
  # networking (docs/networking.md): passt for --network user (rootless),
  # nft and ip for --network bridge, and the vm_net test's namespaces
  passt nftables iproute2
  # make fuzz: clang 14 with libFuzzer and the sanitizer runtimes
  clang libclang-rt-14-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1
  fi
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || echo "install-deps: apt-get update failed; trying with the current package lists" >&2
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
