#pragma once
// Who keeps a mount busy (the bootc report: an install failing at its final
// unmount with EBUSY, because a process still had files mmap'd, and nothing
// said which). Read from /proc/*/{fd,cwd,root,exe,maps,mountinfo},
// /sys/block/loop*/loop/backing_file and /proc/swaps; mount tables parsed
// with libmount.
#include <sys/types.h>

#include <string>
#include <vector>

namespace ocivm::disk {

struct Holder {
    pid_t pid = 0;      // 0: the kernel (loop, swap, mounts)
    std::string comm;   // process name
    std::string kind;   // fd | cwd | root | exe | mmap | mount-namespace | loop | swap | submount | bind-mount
    std::string what;   // the file, device or mount point
};

struct MountInfo {
    std::string target;  // mount point
    std::string source, fstype;
    dev_t dev = 0;
    int id = 0;
};

// The mount whose mount point is `path` (absolute); throws Error when PATH
// is not a mount point.
MountInfo mount_at(const std::string& path);

// Everything holding the mount at PATH; the mount's own submounts and bind
// mounts elsewhere included.
std::vector<Holder> find_holders(const std::string& path);

// Mount points strictly below PATH, deepest first.
std::vector<std::string> submounts(const std::string& path);

// A readable table, and JSON.
std::string holders_table(const std::vector<Holder>& h);
std::string holders_json(const std::vector<Holder>& h);

}  // namespace ocivm::disk
