#pragma once
// The mount tables of /proc/self/mountinfo and /proc/PID/mountinfo, read with
// libmount (the one parser of that format in ocivm: it undoes the kernel's
// octal escapes, so a mount point with a space, tab, newline or backslash in
// its name comes out as it is on disk). Only the table is read, never the
// mounts themselves, so none of this blocks on a FUSE mount that is not
// served yet.
#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace ocivm {

struct MountEntry {
    int id = 0;               // the mount's id, unique within its namespace
    dev_t dev = 0;            // st_dev of files on the mount
    std::string target;       // the mount point
    std::string fs_type;      // e.g. "fuse.ocivm"
    std::string source;
    std::string vfs_options;  // the per-mount flags, e.g. "ro,nosuid,nodev,relatime"
};

// Every mount of this process's namespace, in the kernel's order (a mount
// comes after the mount it was made on). Throws Error when the table cannot
// be read (no /proc).
std::vector<MountEntry> self_mounts();

// The same for the namespace of process PID. std::nullopt when the process
// is gone: it has exited (no /proc/PID), or it is a zombie (its mount
// namespace is already released). Throws Error on any other failure (e.g.
// EACCES: another user's process, without root).
std::optional<std::vector<MountEntry>> mounts_of(pid_t pid);

// The topmost mount whose mount point is exactly `path` (absolute, resolved);
// std::nullopt when nothing is mounted there. Throws as self_mounts().
std::optional<MountEntry> find_mount(const std::string& path);

}  // namespace ocivm
