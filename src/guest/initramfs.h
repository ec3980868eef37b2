#pragma once
// The guest's initramfs: ocivm-init (embedded in the ocivm binary) as /init,
// the kernel modules virtio-fs, virtio-serial and overlayfs need (with their
// dependencies from modules.dep, in load order), written as cpio newc with
// libarchive and cached by the hash of all of these inputs. Each run appends
// a small second cpio holding /ocivm/config (the kernel unpacks both).
#include <string>
#include <vector>

namespace ocivm::guest {

// The modules ocivm-init loads, by name; built-in ones are skipped.
const char* const* required_modules();

// Returns the cached base initramfs for this module tree, building it when
// its inputs changed. Throws Error when a module is missing.
// extra_modules: more modules by name (e.g. a disk root's virtio_blk, ext4).
std::string base_initramfs(const std::string& modules_dir, const std::string& cache_dir,
                           const std::vector<std::string>& extra_modules = {});

// Writes base + a cpio with /ocivm/config = config_text to out.
void write_run_initramfs(const std::string& base, const std::string& config_text, const std::string& out);

// The ocivm-init binary embedded at build time.
std::string embedded_init();

}  // namespace ocivm::guest
