#include "vm/state_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "util/error.h"
#include "util/log.h"
#include "util/paths.h"

namespace ocivm::vm {
namespace {

// The lock of the vms directory, held while a state directory is created
// and locked, and while stale ones are looked for.
UniqueFd lock_base(const std::string& base) {
    UniqueFd fd(::open(base.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
    if (!fd) throw_errno("cannot open " + base, errno);
    while (::flock(fd.get(), LOCK_EX) < 0)
        if (errno != EINTR) throw_errno("cannot lock " + base, errno);
    return fd;
}

void clean_stale_locked(const std::string& base) {
    std::error_code ec;
    for (auto& e : std::filesystem::directory_iterator(base, ec)) {
        if (!e.is_directory(ec) || e.is_symlink(ec)) continue;
        std::string dir = e.path().string();
        UniqueFd lock(::open((dir + "/lock").c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
        if (!lock || ::flock(lock.get(), LOCK_EX | LOCK_NB) < 0) continue;  // running, or not ours
        bool rm = ::access((dir + "/rm").c_str(), F_OK) == 0;
        if (rm) {
            std::filesystem::remove_all(dir, ec);
            spdlog::info("removed the state of a VM whose ocivm was killed: {}", dir);
        } else if (::unlink((dir + "/initrd.cpio").c_str()) == 0) {
            spdlog::info("removed the initramfs copy of a VM whose ocivm was killed: {}", dir);
        }
    }
}

}  // namespace

std::string StateDir::base_dir() {
    std::string base = runtime_dir() + "/vms";
    make_dirs(base, 0700);
    return base;
}

void StateDir::clean_stale(const std::string& base) {
    UniqueFd guard = lock_base(base);
    clean_stale_locked(base);
}

StateDir::StateDir(const std::string& name, bool rm) : rm_(rm) {
    std::string base = base_dir();
    UniqueFd guard = lock_base(base);
    clean_stale_locked(base);
    path_ = base + "/" + name;
    if (::mkdir(path_.c_str(), 0700) < 0 && errno != EEXIST) throw_errno("cannot create " + path_, errno);
    lock_ = UniqueFd(::open((path_ + "/lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!lock_) throw_errno("cannot create " + path_ + "/lock", errno);
    if (::flock(lock_.get(), LOCK_EX | LOCK_NB) < 0)
        throw Error("a VM named '" + name + "' is already running; choose another --name");
    // Tells a later ocivm, should this one be killed, to remove it all.
    if (rm_) UniqueFd(::open((path_ + "/rm").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
}

StateDir::~StateDir() {
    if (rm_) {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
}

}  // namespace ocivm::vm
