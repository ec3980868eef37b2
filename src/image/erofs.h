#pragma once
// An image's root file system as an EROFS image (mkfs.erofs, LZ4), for VMs
// whose root is a read-only block device instead of a virtio-fs share
// (`ocivm run --root erofs`): the base a snapshot can be taken of, as QEMU
// 7.2 cannot save a VM with a vhost-user-fs device.
//
// Built once per tree and cached under CACHE/erofs/KEY.erofs, KEY a SHA-256
// over every entry of the tree as lstat sees it (path, type, mode, owner,
// size, mtime, device, link target): a tree that changes gets a new image,
// an unchanged one is never rebuilt. The tree is walked without following
// a symbolic link; mkfs.erofs stores links as links.
#include <string>

namespace ocivm::image {

struct ErofsImage {
    std::string path;
    bool built = false;  // false: taken from the cache
};

// Throws Error when mkfs.erofs is missing (naming erofs-utils) or fails.
ErofsImage erofs_image(const std::string& rootfs, const std::string& cache_dir);

// The cache key of a tree (exposed for the tests).
std::string tree_key(const std::string& rootfs);

}  // namespace ocivm::image
