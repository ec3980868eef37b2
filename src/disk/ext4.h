#pragma once
// Fills an empty ext4 file system (just made by mkfs.ext4, inside a disk
// image at a byte offset) with a directory tree, through libext2fs and
// without mounting anything. Metadata goes through libext2fs; file data is
// allocated as whole extents and copied with copy_file_range straight to the
// blocks' place in the image, so the kernel moves it in large pieces (mkfs.ext4
// -d writes it one 4 KiB block at a time, which made it no faster than
// loop-mount + cp -a). Keeps modes, owners, nanosecond times, xattrs (POSIX
// ACLs included), hard links, symlinks, device nodes, fifos, sockets and
// holes of sparse files.
#include <cstdint>
#include <functional>
#include <string>

namespace ocivm::disk {

struct Ext4Stats {
    uint64_t entries = 0;     // inodes written (hard links counted once)
    uint64_t data_bytes = 0;  // file bytes copied
};

// IMAGE: the disk image file; OFFSET: where the file system starts in it.
// PROGRESS, when set, is called with the file bytes copied so far.
Ext4Stats populate_ext4(const std::string& image, uint64_t offset, const std::string& rootfs,
                        const std::function<void(uint64_t)>& progress = {});

}  // namespace ocivm::disk
