#pragma once
// Reads /proc/self/mountinfo (without touching the mounts themselves, so it
// never blocks on a FUSE mount that is not served yet).
#include <sys/types.h>

#include <optional>
#include <string>

namespace ocivm {

struct MountEntry {
    dev_t dev = 0;          // st_dev of files on the mount
    std::string fs_type;    // e.g. "fuse.ocivm"
    std::string source;
};

// The topmost mount whose mount point is exactly `path` (absolute, resolved).
std::optional<MountEntry> find_mount(const std::string& path);

}  // namespace ocivm
