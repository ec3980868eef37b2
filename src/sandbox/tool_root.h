#pragma once
// A confined tool's root (sandbox::confine_tool): built by the tool itself,
// PID 1 of its PID namespace, in its private mount namespace. Copies of the
// host's mounts it may see are taken first (detached, open_tree, each with
// the attributes it gets), then an empty tmpfs is mounted over a directory
// of the host's tree (only in this namespace), the copies are attached in
// it at their own paths, and the tmpfs becomes "/", read-only.
//
// As root this is what keeps a tool that was taken over from reading host
// secrets into an image (the importer keeps dac_read_search to read an
// image's own 0000 files) or writing host files (uid 0 needs no capability
// to write root's own: /etc/passwd, or /proc/sys/kernel/core_pattern, which
// runs a program as root on the next crash), and from opening a disk's
// device node. docs/security.md, "The importer and the disk writer".
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "util/unique_fd.h"

namespace ocivm::sandbox {

class ToolRoot {
public:
    explicit ToolRoot(std::string who) : who_(std::move(who)) {}
    ToolRoot(const ToolRoot&) = delete;
    ToolRoot& operator=(const ToolRoot&) = delete;

    enum class Access {
        Write,  // read-write, nodev, nosuid, noexec
        Read,   // read-only, nodev, nosuid, noexec
        Run,    // read-only, nodev, nosuid: programs and their libraries
    };
    // A copy of the mount at `path` (absolute, below "/", no symbolic link
    // in it: a component swapped for one since the caller's realpath fails
    // here), with its submounts. A path given twice gets one copy with the
    // most either asked for (Write and Run: writable and executable).
    void add(const std::string& path, Access access);
    // A program outside /usr: the file itself (a symbolic link at `path`
    // followed), read-only and executable, at `path`.
    void add_program(const std::string& path);
    // /dev/null, zero, full, random and urandom: libraries and the disk
    // writer's programs open them (the child's stdin, qemu-img's
    // /dev/null); none of them reaches host data. A host without one (a
    // minimal container's /dev) simply has none here.
    void add_harmless_devices();
    // What running programs from /usr takes: /usr, the merged-usr links as
    // symbolic links (or copies of the directories where they are none),
    // the dynamic linker's cache, mke2fs's defaults, and /etc/mtab as
    // Debian has it (mkfs.ext4 looks for mounts of what it formats there).
    void add_system();

    // Mounts the tmpfs, attaches every copy and a /proc of this PID
    // namespace (subset=pid, read-only) in it, makes it "/" (read-only) and
    // the working directory "/". With host_proc_fallback (a user's tool),
    // where the kernel refuses a proc of its own (a container's masked
    // /proc) its own directory of the host's /proc is attached instead,
    // read-only, with /proc/self leading there: then it returns false.
    bool enter(bool host_proc_fallback);

private:
    struct Copy {
        std::string path;
        UniqueFd tree;
        bool dir = false;
        bool write = false, exec = false;
    };
    UniqueFd copy_of(const std::string& path, int at_fd, bool write, bool exec);
    // Sets `attrs` on a detached copy (and its submounts when recursive).
    void restrict_copy(int tree, uint64_t attrs, bool recursive, const std::string& path);
    // Attaches a detached copy at `path` below `top` (mount_point).
    void attach(int top, int tree, const std::string& path, bool dir);
    // The directory or empty file at `path` below `top`, made in the tmpfs
    // where it is missing; inside a copy of the host's it must be there
    // (nothing is ever made on a host file system).
    UniqueFd mount_point(int top, const std::string& path, bool dir);

    std::string who_;
    std::vector<Copy> copies_;
    std::vector<std::pair<std::string, std::string>> links_;  // name below "/", target
    dev_t tmpfs_dev_ = 0;
};

}  // namespace ocivm::sandbox
