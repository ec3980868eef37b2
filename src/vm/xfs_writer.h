#pragma once
// Fills a disk image's partition with an xfs file system holding a directory
// tree, without mounting anything on the host. mkfs.xfs -p (a protofile)
// cannot keep hard links, xattrs, times or the sticky bit (xfsprogs 6.1), and
// no library writes xfs from user space, so the work happens in an ocivm VM:
// its root is the host's own (read-only, for mkfs.xfs, mount and GNU cp),
// the tree is a read-only virtio-fs share, the image a writable virtio-blk
// disk; the guest runs mkfs.xfs, mounts, `cp -a` and unmounts. Slow under
// TCG (no KVM), but exact. See docs/disks.md. `ocivm disk create --fs xfs`
// hands this to disk::create_disk (disk does not depend on vm).
#include <string>

namespace ocivm::vm {

// IMAGE: a raw disk image whose first partition is the target; LABEL: the
// xfs label (at most 12 bytes).
void write_xfs_in_vm(const std::string& image, const std::string& rootfs, const std::string& label);

}  // namespace ocivm::vm
