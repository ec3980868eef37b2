#include "sandbox/tool_root.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "sandbox/sandbox.h"
#include "util/error.h"
#include "util/log.h"
#include "util/open_beneath.h"

namespace ocivm::sandbox {

namespace {

uint64_t attrs_of(bool write, bool exec) {
    return MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID | (write ? 0 : MOUNT_ATTR_RDONLY) | (exec ? 0 : MOUNT_ATTR_NOEXEC);
}

}  // namespace

void ToolRoot::restrict_copy(int tree, uint64_t attrs, bool recursive, const std::string& path) {
    mount_attr attr{};
    attr.attr_set = attrs;
    if (::mount_setattr(tree, "", AT_EMPTY_PATH | (recursive ? AT_RECURSIVE : 0), &attr, sizeof attr) < 0)
        throw_errno(who_ + ": restricting the copy of " + path, errno);
}

void ToolRoot::attach(int top, int tree, const std::string& path, bool dir) {
    UniqueFd point = mount_point(top, path, dir);
    if (::move_mount(tree, "", point.get(), "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
        throw_errno(who_ + ": attaching the copy of " + path, errno);
}

UniqueFd ToolRoot::copy_of(const std::string& path, int at_fd, bool write, bool exec) {
    UniqueFd tree(::open_tree(at_fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | AT_EMPTY_PATH));
    if (!tree) throw_errno(who_ + ": copying the mount of " + path + " (open_tree)", errno, "ocivm needs Linux 5.12 or later");
    restrict_copy(tree.get(), attrs_of(write, exec), true, path);
    return tree;
}

void ToolRoot::add(const std::string& path, Access access) {
    if (path.empty() || path[0] != '/' || path == "/")
        throw Error(who_ + ": cannot be shown '" + path + "': an absolute path below / is needed");
    UniqueFd at(openat2_fd(AT_FDCWD, path, O_PATH, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS));
    if (!at) {
        int e = errno;
        throw_errno(who_ + ": opening " + path, e,
                    e == ELOOP ? "a component of it became a symbolic link; check who can change its parents"
                               : "check that it exists");
    }
    bool write = access == Access::Write, exec = access == Access::Run;
    // The same path twice (OUTPUT's directory is the tree's, a program's
    // directory is another copy's): one fresh copy with both rights, not
    // two stacked ones of which the last attached would win.
    auto same = std::find_if(copies_.begin(), copies_.end(), [&](const Copy& c) { return c.path == path; });
    if (same != copies_.end()) {
        write = write || same->write;
        exec = exec || same->exec;
        copies_.erase(same);
    }
    UniqueFd tree = copy_of(path, at.get(), write, exec);
    struct stat st;
    if (::fstat(tree.get(), &st) < 0) throw_errno(who_ + ": fstat " + path, errno);
    copies_.push_back({path, std::move(tree), S_ISDIR(st.st_mode), write, exec});
}

void ToolRoot::add_program(const std::string& path) {
    if (path.empty() || path[0] != '/') throw Error(who_ + ": program '" + path + "' is not an absolute path");
    if (std::any_of(copies_.begin(), copies_.end(), [&](const Copy& c) { return c.path == path; })) return;
    // The program's own name is kept (mkfs.ext4 is mke2fs by another name,
    // and tells the file system from it); its content is what the name
    // leads to.
    UniqueFd at(::open(path.c_str(), O_PATH | O_CLOEXEC));
    struct stat st;
    if (!at || ::fstat(at.get(), &st) < 0) throw_errno(who_ + ": opening the program " + path, errno);
    if (!S_ISREG(st.st_mode)) throw Error(who_ + ": the program " + path + " is not a file");
    copies_.push_back({path, copy_of(path, at.get(), false, true), false, false, true});
}

void ToolRoot::add_harmless_devices() {
    for (const char* dev : {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}) {
        UniqueFd t(::open_tree(AT_FDCWD, dev, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_SYMLINK_NOFOLLOW));
        struct stat st;
        if (!t || ::fstat(t.get(), &st) < 0 || !S_ISCHR(st.st_mode)) continue;
        restrict_copy(t.get(), MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, false, dev);
        copies_.push_back({dev, std::move(t), false, true, false});
    }
}

void ToolRoot::add_system() {
    add("/usr", Access::Run);
    for (const char* top : {"bin", "sbin", "lib", "lib32", "lib64", "libx32"}) {
        const std::string path = std::string("/") + top;
        struct stat st;
        if (::lstat(path.c_str(), &st) < 0) continue;
        if (S_ISLNK(st.st_mode)) {
            char target[PATH_MAX];
            ssize_t n = ::readlink(path.c_str(), target, sizeof target - 1);
            if (n > 0) links_.push_back({top, std::string(target, static_cast<size_t>(n))});
        } else if (S_ISDIR(st.st_mode)) {
            add(path, Access::Run);
        }
    }
    for (const char* f : {"/etc/ld.so.cache", "/etc/mke2fs.conf"})
        if (::access(f, F_OK) == 0) add(f, Access::Read);
    links_.push_back({"etc/mtab", "../proc/self/mounts"});
}

bool ToolRoot::enter(bool host_proc_fallback) {
    // Any directory of the host's tree will do: this namespace is private,
    // and every copy was taken before it is covered.
    std::string over;
    for (const char* d : {"/tmp", "/mnt", "/run", "/var", "/usr", "/etc"}) {
        struct stat st;
        if (::lstat(d, &st) == 0 && S_ISDIR(st.st_mode)) {
            over = d;
            break;
        }
    }
    if (over.empty()) throw Error(who_ + ": no directory to build its root on (/tmp, /mnt, /run, ...)");
    // For the fallback, the tool's own directory of the host's /proc (no
    // other process's: their root, cwd and fds are a same-uid tool's to
    // open), copied before the cover too.
    UniqueFd own_proc_dir;
    std::string own_pid;
    if (host_proc_fallback) {
        char buf[32];
        ssize_t n = ::readlink("/proc/self", buf, sizeof buf - 1);
        if (n > 0) {
            own_pid.assign(buf, static_cast<size_t>(n));
            own_proc_dir.reset(::open_tree(AT_FDCWD, ("/proc/" + own_pid).c_str(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC));
        }
    }
    if (::mount("tmpfs", over.c_str(), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=1m,nr_inodes=1024,mode=0755") < 0)
        throw_errno(who_ + ": mounting an empty tmpfs for its root", errno);
    UniqueFd top(::open(over.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    struct stat tst;
    if (!top || ::fstat(top.get(), &tst) < 0) throw_errno(who_ + ": opening its new root", errno);
    tmpfs_dev_ = tst.st_dev;
    // Outer paths first: a copy inside another one is attached on top of
    // its directory there.
    std::sort(copies_.begin(), copies_.end(), [](const Copy& x, const Copy& y) { return x.path < y.path; });
    for (auto& c : copies_) attach(top.get(), c.tree.get(), c.path, c.dir);
    for (auto& [name, target] : links_) {
        // Only in the tmpfs: where a copy covers the link's directory (OUTPUT
        // in /etc) the host's own entry stays as it is.
        size_t slash = name.rfind('/');
        UniqueFd parent = mount_point(top.get(), "/" + name.substr(0, slash == std::string::npos ? 0 : slash), true);
        struct stat pst;
        if (::fstat(parent.get(), &pst) < 0 || pst.st_dev != tmpfs_dev_) continue;
        const std::string base = slash == std::string::npos ? name : name.substr(slash + 1);
        UniqueFd dir(::openat(parent.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!dir || (::symlinkat(target.c_str(), dir.get(), base.c_str()) < 0 && errno != EEXIST))
            throw_errno(who_ + ": making /" + name, errno);
    }
    // Mounted while the host's /proc is still in the tree: a user namespace
    // may mount a proc only where one is fully visible.
    mount_point(top.get(), "/proc", true);
    const std::string proc_at = over + "/proc";
    bool own_proc = true;
    if (::mount("proc", proc_at.c_str(), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "subset=pid") < 0) {
        int e = errno;
        if (e != EPERM || !own_proc_dir)
            throw_errno(who_ + ": mounting a /proc of its own", e,
                        e == EPERM ? "the kernel refuses a new /proc where /proc is partly covered (a container's "
                                     "masked /proc); run ocivm where /proc is fully visible"
                                   : "");
        // Its own /proc/PID (what it opens: /proc/self/fd), and "self"
        // leading there; nothing else of the host's /proc.
        restrict_copy(own_proc_dir.get(), attrs_of(false, false), false, "/proc/" + own_pid);
        attach(top.get(), own_proc_dir.get(), "/proc/" + own_pid, true);
        UniqueFd proc_dir(::openat(top.get(), "proc", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!proc_dir || ::symlinkat(own_pid.c_str(), proc_dir.get(), "self") < 0)
            throw_errno(who_ + ": making /proc/self", errno);
        own_proc = false;
    }
    UniqueFd root_dir(::open(over.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root_dir) throw_errno(who_ + ": opening its new root", errno);
    pivot_into(root_dir.get());
    mount_attr ro{};
    ro.attr_set = MOUNT_ATTR_RDONLY;
    if (::mount_setattr(AT_FDCWD, "/", 0, &ro, sizeof ro) < 0) throw_errno(who_ + ": making its root read-only", errno);
    return own_proc;
}

UniqueFd ToolRoot::mount_point(int top, const std::string& path, bool dir) {
    UniqueFd cur(::fcntl(top, F_DUPFD_CLOEXEC, 3));
    if (!cur) throw_errno(who_ + ": dup", errno);
    size_t pos = 1;
    while (pos < path.size()) {
        size_t slash = path.find('/', pos);
        if (slash == std::string::npos) slash = path.size();
        const std::string name = path.substr(pos, slash - pos);
        pos = slash + 1;
        if (name.empty()) continue;
        const bool last = pos >= path.size();
        UniqueFd next(::openat(cur.get(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
        if (!next && errno == ENOENT) {
            struct stat st;
            if (::fstat(cur.get(), &st) < 0 || st.st_dev != tmpfs_dev_)
                throw Error(who_ + ": " + path + " is not below the copy that holds it (it moved?)");
            if (!last || dir) {
                if (::mkdirat(cur.get(), name.c_str(), 0755) < 0) throw_errno(who_ + ": mkdir " + path, errno);
            } else {
                UniqueFd f(::openat(cur.get(), name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
                if (!f) throw_errno(who_ + ": making a mount point for " + path, errno);
            }
            next.reset(::openat(cur.get(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
        }
        if (!next) throw_errno(who_ + ": opening " + path + " in its new root", errno);
        cur = std::move(next);
    }
    return cur;
}

}  // namespace ocivm::sandbox
