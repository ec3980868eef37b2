#pragma once
// The guest kernel: which one, its release and module tree, and what QEMU
// boots. A bzImage costs ~3 s of decompression under TCG at every boot, so
// ocivm decompresses it once into a cached vmlinux and boots that through
// its PVH entry point when the kernel has one.
#include <string>

namespace ocivm::vm {

struct Kernel {
    std::string source;       // the bzImage (or vmlinux) the user chose
    std::string boot_path;    // what QEMU's -kernel gets
    std::string release;      // e.g. 6.1.0-56-amd64
    std::string modules_dir;  // its /lib/modules/RELEASE
    bool pvh = false;         // boot_path is an uncompressed vmlinux with a PVH note
};

// spec: "" (the host's newest /boot/vmlinuz-* that has modules), a path, or
// "image" (the image's /usr/lib/modules/*/vmlinuz, as bootable container
// images ship). Throws Error with what to do when there is none.
Kernel resolve_kernel(const std::string& spec, const std::string& image_root,
                      const std::string& cache_dir);

// The release string in a bzImage's setup header ("" when it has none).
std::string bzimage_release(const std::string& path);

}  // namespace ocivm::vm
