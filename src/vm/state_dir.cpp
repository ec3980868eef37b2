#include "vm/state_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "net/network.h"
#include "util/error.h"
#include "util/log.h"
#include "util/paths.h"

namespace ocivm::vm {
namespace {

// The vms directory itself, never a symbolic link in its place.
UniqueFd open_base(const std::string& base) {
    UniqueFd fd(::open(base.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
    if (!fd) throw_errno("cannot open " + base, errno);
    return fd;
}

// The lock of the vms directory, held while a state directory is created
// and locked, while stale ones are looked for, and while one is removed.
void lock_base(int fd, const std::string& base) {
    while (::flock(fd, LOCK_EX) < 0)
        if (errno != EINTR) throw_errno("cannot lock " + base, errno);
}

struct BaseLock {
    int fd;
    BaseLock(int f, const std::string& base) : fd(f) { lock_base(fd, base); }
    ~BaseLock() { ::flock(fd, LOCK_UN); }
    BaseLock(const BaseLock&) = delete;
    BaseLock& operator=(const BaseLock&) = delete;
};

// Names in the directory dirfd, or none when it cannot be read (what is
// left then makes the removal of the directory fail, which is reported).
std::vector<std::string> names_in(int dirfd) {
    std::vector<std::string> out;
    UniqueFd fd(::openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd) return out;
    DIR* d = ::fdopendir(fd.get());
    if (!d) return out;
    fd.release();  // the DIR owns it now
    while (dirent* e = ::readdir(d))
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) out.emplace_back(e->d_name);
    ::closedir(d);
    return out;
}

// Removes name, with everything in it when a directory, from dirfd: one
// component at a time below an fd, no symbolic link followed (one is
// removed as itself). 0, or the first errno met; never throws, as a
// destructor calls it.
int remove_tree_at(int dirfd, const char* name) {
    struct stat st;
    if (::fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) return errno == ENOENT ? 0 : errno;
    if (!S_ISDIR(st.st_mode)) return ::unlinkat(dirfd, name, 0) < 0 && errno != ENOENT ? errno : 0;
    UniqueFd d(::openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!d) return errno;
    int first = 0;
    for (auto& n : names_in(d.get()))
        if (int e = remove_tree_at(d.get(), n.c_str()); e && !first) first = e;
    if (::unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT && !first) first = errno;
    return first;
}

bool exists_at(int dirfd, const char* name) {
    struct stat st;
    return ::fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

void clean_stale_locked(int basefd, const std::string& base) {
    for (auto& n : names_in(basefd)) {
        struct stat st;
        if (::fstatat(basefd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode)) continue;
        UniqueFd dir(::openat(basefd, n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!dir) continue;
        UniqueFd lock(::openat(dir.get(), "lock", O_RDWR | O_CLOEXEC | O_NOFOLLOW));
        if (!lock || ::flock(lock.get(), LOCK_EX | LOCK_NB) < 0) continue;  // running, or not ours
        std::string path = base + "/" + n;
        // network: the nft table and veth end a killed bridged VM left; a
        // VM of another network namespace keeps its directory (and record)
        // for an ocivm there.
        std::string net_left = net::cleanup(path);
        if (!net_left.empty()) spdlog::info("{}", net_left);
        if (net_left.empty() && exists_at(dir.get(), "rm")) {
            if (int e = remove_tree_at(basefd, n.c_str()))
                spdlog::warn("cannot remove the state of a VM whose ocivm was killed, {}: {}", path, std::strerror(e));
            else
                spdlog::info("removed the state of a VM whose ocivm was killed: {}", path);
        } else if (::unlinkat(dir.get(), "initrd.cpio", 0) == 0) {
            spdlog::info("removed the initramfs copy of a VM whose ocivm was killed: {}", path);
        }
    }
}

}  // namespace

std::string StateDir::base_dir() {
    std::string base = runtime_dir() + "/vms";
    make_dirs(base, 0700);
    // Root acts on what is below (removes trees, runs ip and nft on the
    // records): a directory another user owns or can write is refused.
    if (::geteuid() == 0)
        for (const std::string& d : {runtime_dir(), base}) {
            struct stat st;
            if (::lstat(d.c_str(), &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != 0 || (st.st_mode & 022))
                throw Error("the runtime directory " + d +
                            " is not a directory that only root owns and can write; remove it or set "
                            "OCIVM_RUNTIME_DIR to one that is");
        }
    return base;
}

void StateDir::clean_stale(const std::string& base) {
    UniqueFd fd = open_base(base);
    BaseLock guard(fd.get(), base);
    clean_stale_locked(fd.get(), base);
}

StateDir::StateDir(const std::string& name, bool rm, bool detached) : name_(name), rm_(rm) {
    // One component below the vms directory, resolved from its fd.
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
        throw Error("invalid VM name '" + name + "': no '/', not empty, not '.' or '..'");
    std::string base = base_dir();
    base_ = open_base(base);
    BaseLock guard(base_.get(), base);
    clean_stale_locked(base_.get(), base);
    path_ = base + "/" + name;
    if (::mkdirat(base_.get(), name.c_str(), 0700) < 0 && errno != EEXIST) throw_errno("cannot create " + path_, errno);
    UniqueFd dir(::openat(base_.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!dir) throw_errno("cannot open " + path_, errno, "remove it if it is not a directory of ocivm's");
    lock_ = UniqueFd(::openat(dir.get(), "lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!lock_) throw_errno("cannot create " + path_ + "/lock", errno);
    if (::flock(lock_.get(), LOCK_EX | LOCK_NB) < 0)
        throw Error("a VM named '" + name + "' is already running; choose another --name");
    // A detached VM's state stays until `ocivm rm` (its exit status, its
    // logs): the name is taken until then, as podman's.
    if (exists_at(dir.get(), "detached")) {
        lock_.reset();  // closing it lets go of the lock
        throw Error("the name '" + name + "' is in use by a VM that has exited; remove it with 'ocivm rm " + name +
                    "' or choose another --name");
    }
    if (detached) UniqueFd(::openat(dir.get(), "detached", O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    // Tells a later ocivm, should this one be killed, to remove it all.
    if (rm_) UniqueFd(::openat(dir.get(), "rm", O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
}

void StateDir::remove(const std::string& name) {
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
        throw Error("invalid VM name '" + name + "'");
    std::string base = base_dir();
    UniqueFd basefd = open_base(base);
    BaseLock guard(basefd.get(), base);
    UniqueFd dir(::openat(basefd.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!dir) throw_errno("cannot open the state of VM '" + name + "'", errno);
    UniqueFd lock(::openat(dir.get(), "lock", O_RDWR | O_CLOEXEC | O_NOFOLLOW));
    if (lock && ::flock(lock.get(), LOCK_EX | LOCK_NB) < 0)
        throw Error("VM '" + name + "' is running; stop it first ('ocivm stop " + name + "') or use 'ocivm rm -f'");
    // network: what a killed bridged VM left; from another namespace the
    // record goes with the directory, so say what stays where.
    if (std::string left = net::cleanup(base + "/" + name); !left.empty()) spdlog::warn("{}", left);
    if (int e = remove_tree_at(basefd.get(), name.c_str()))
        throw Error("cannot remove " + base + "/" + name + ": " + std::strerror(e));
}

StateDir::~StateDir() {
    if (!rm_) return;
    // Under the vms directory's lock, so a start of a VM of the same name
    // waits until the directory is gone (otherwise it could take the
    // directory as its own, and lose its new lock and state to this
    // removal), and with this VM's own lock still held (lock_ goes after
    // this body), so no clean-up takes it for stale meanwhile.
    try {
        // The lock is the vms directory's: name it in an error.
        BaseLock guard(base_.get(), std::filesystem::path(path_).parent_path().string());
        if (int e = remove_tree_at(base_.get(), name_.c_str()))
            spdlog::warn("cannot remove the state directory {}: {}", path_, std::strerror(e));
    } catch (const Error& e) {
        spdlog::warn("cannot remove the state directory {}: {}", path_, e.what());
    }
}

}  // namespace ocivm::vm
