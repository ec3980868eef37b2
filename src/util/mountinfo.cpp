#include "util/mountinfo.h"

#include <libmount/libmount.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

#include "util/error.h"

namespace ocivm {

namespace {

struct TableUnref {
    void operator()(libmnt_table* t) const { mnt_unref_table(t); }
};
struct IterFree {
    void operator()(libmnt_iter* i) const { mnt_free_iter(i); }
};
using Table = std::unique_ptr<libmnt_table, TableUnref>;
using Iter = std::unique_ptr<libmnt_iter, IterFree>;

std::string str(const char* s) { return s ? s : ""; }

// Reads one mountinfo file into `out`; returns 0, or the errno of the
// failure (libmount returns -errno; anything else it returns is an I/O
// failure as far as the caller can tell).
int read_table(const std::string& file, std::vector<MountEntry>& out) {
    Table t(mnt_new_table());
    if (!t) return ENOMEM;
    // The table's format is left to libmount's guess: a /proc file is always
    // mountinfo, and forcing MNT_FMT_MOUNTINFO is not in its public API.
    if (int rc = mnt_table_parse_file(t.get(), file.c_str()); rc != 0) return rc < 0 ? -rc : EIO;
    Iter it(mnt_new_iter(MNT_ITER_FORWARD));
    if (!it) return ENOMEM;
    out.reserve(static_cast<size_t>(mnt_table_get_nents(t.get())));
    libmnt_fs* fs = nullptr;
    while (mnt_table_next_fs(t.get(), it.get(), &fs) == 0) {
        MountEntry e;
        e.id = mnt_fs_get_id(fs);
        e.dev = mnt_fs_get_devno(fs);
        e.target = str(mnt_fs_get_target(fs));
        e.fs_type = str(mnt_fs_get_fstype(fs));
        e.source = str(mnt_fs_get_source(fs));
        e.vfs_options = str(mnt_fs_get_vfs_options(fs));
        out.push_back(std::move(e));
    }
    return 0;
}

[[noreturn]] void no_table(const std::string& file, int err) {
    throw_errno("cannot read the mount table " + file, err,
                err == ENOENT ? "mount /proc first (mount -t proc proc /proc)"
                              : "check that /proc is mounted and readable (run as root for other users' processes)");
}

}  // namespace

std::vector<MountEntry> self_mounts() {
    const std::string file = "/proc/self/mountinfo";
    std::vector<MountEntry> out;
    if (int err = read_table(file, out)) no_table(file, err);
    return out;
}

std::optional<std::vector<MountEntry>> mounts_of(pid_t pid) {
    if (pid <= 0) throw Error("mounts_of: invalid pid " + std::to_string(pid) + "; give a process id above 0");
    const std::string file = "/proc/" + std::to_string(pid) + "/mountinfo";
    std::vector<MountEntry> out;
    int err = read_table(file, out);
    if (err == 0) return out;
    // ENOENT/ESRCH: the process has exited; EINVAL: a zombie, whose mount
    // namespace is released before it is reaped. A missing /proc is not a
    // gone process, though.
    if ((err == ENOENT || err == ESRCH || err == EINVAL) && ::access("/proc/self/mountinfo", R_OK) == 0)
        return std::nullopt;
    no_table(file, err);
}

std::optional<MountEntry> find_mount(const std::string& path) {
    std::optional<MountEntry> found;
    for (auto& m : self_mounts())
        if (m.target == path) found = std::move(m);  // later entries are mounted on top of earlier ones
    return found;
}

}  // namespace ocivm
