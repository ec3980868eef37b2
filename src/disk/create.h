#pragma once
// A bootable-style GPT disk image from a root file system, without
// mounting anything: sfdisk writes the partition table, mkfs.ext4 makes an
// empty file system in the partition's bytes (-E offset), populate_ext4
// (disk/ext4.h) fills it through libext2fs, qemu-img converts to qcow2 when
// asked.
#include <cstdint>
#include <functional>
#include <string>

namespace ocivm::disk {

struct DiskOptions {
    std::string format = "raw";  // raw | qcow2
    std::string fs = "ext4";
    std::string label = "ocivm-root";
    uint64_t size = 0;  // bytes of the whole disk; 0: content + headroom
    // For --fs xfs: writes ROOTFS as xfs with LABEL into the first partition
    // of the raw IMAGE (the cli passes vm::write_xfs_in_vm; see docs/disks.md).
    std::function<void(const std::string& image, const std::string& rootfs, const std::string& label)> write_xfs;
    // The programs run, by name (looked up in PATH) or by path: the
    // confined ext4 writer gets them as the absolute paths its root shows.
    std::string sfdisk = "sfdisk", mkfs_ext4 = "mkfs.ext4", qemu_img = "qemu-img";
};

struct DiskResult {
    uint64_t size = 0;
    std::string partuuid;  // of the root partition
};

DiskResult create_disk(const std::string& rootfs, const std::string& output, const DiskOptions& o,
                       const std::function<void(const std::string&)>& progress = {});

// Bytes the tree occupies (allocated blocks, plus an inode's worth per entry).
uint64_t tree_size(const std::string& root);

}  // namespace ocivm::disk
