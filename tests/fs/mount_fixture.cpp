#include "fs/mount_fixture.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <thread>

namespace ocivm::test {

Config& config() {
    static Config c;
    return c;
}

std::string unique_name(const std::string& prefix) {
    static std::atomic<int> counter{0};
    return prefix + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

// Whether a file system is mounted at PATH, from the kernel's mount-root
// attribute rather than the mount table: the same code then runs inside the
// guest (guest_posix_tests is static, and Debian ships no static libmount).
// AT_STATX_DONT_SYNC and an empty mask keep FUSE from asking its server
// (stat() or statfs() would wait for a server that has not answered INIT).
bool is_mounted(const std::string& path) {
    struct statx sx {};
    if (::statx(AT_FDCWD, path.c_str(), AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, 0, &sx) != 0) {
        if (errno == ENOENT) return false;
        throw std::runtime_error("statx " + path + ": " + std::strerror(errno));
    }
    if (!(sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT))
        throw std::runtime_error("this kernel does not report STATX_ATTR_MOUNT_ROOT (Linux 5.8 or later needed)");
    return (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
}

// $TMPDIR (the suite gives each test its own and checks it is left empty), else /tmp.
std::string tmp_dir() {
    const char* t = std::getenv("TMPDIR");
    return t && *t ? t : "/tmp";
}

Workspace::Workspace() {
    base = tmp_dir() + "/" + unique_name("ocivm-fstest");
    std::filesystem::create_directories(base);
    if (::mount("tmpfs", base.c_str(), "tmpfs", 0, "mode=0755,size=4g") != 0)
        throw std::runtime_error("cannot mount a tmpfs at " + base + ": " + std::strerror(errno) +
                                 " (the fs tests must run as root)");
    // Shared, so that mounts a test makes inside the share after the server
    // started reach the server's own mount namespace (a slave of this one).
    if (::mount(nullptr, base.c_str(), nullptr, MS_SHARED, nullptr) != 0)
        throw std::runtime_error("cannot make " + base + " a shared mount: " + std::strerror(errno));
    share = base + "/share";
    native = base + "/native";
    mnt = base + "/mnt";
    for (auto* d : {&share, &native, &mnt}) std::filesystem::create_directory(*d);
}

Workspace::Workspace(const std::string& guest_mnt) {
    base = tmp_dir() + "/" + unique_name("ocivm-guesttest");
    std::filesystem::create_directories(base);
    if (::mount("tmpfs", base.c_str(), "tmpfs", 0, "mode=0755") != 0)
        throw std::runtime_error("cannot mount a tmpfs at " + base + ": " + std::strerror(errno));
    native = base + "/native";
    std::filesystem::create_directory(native);
    mnt = guest_mnt;
    guest = true;
}

Workspace::~Workspace() {
    if (guest) {
        ::umount2(base.c_str(), MNT_DETACH);
        return;
    }
    ::umount2(mnt.c_str(), MNT_DETACH);
    ::umount2(base.c_str(), MNT_DETACH);
    ::rmdir(base.c_str());
}

Mount::Mount(const std::string& source, const std::string& mountpoint,
             const std::vector<std::string>& extra)
    : mountpoint_(mountpoint) {
    std::vector<std::string> args = {config().ocivm, "mount", source, mountpoint, "--cache",
                                     config().cache};
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = ::fork();
    if (pid_ == 0) {
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        ::execv(argv[0], argv.data());
        std::fprintf(stderr, "cannot exec %s: %s\n", argv[0], std::strerror(errno));
        ::_exit(127);
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!is_mounted(mountpoint)) {
        int st;
        if (::waitpid(pid_, &st, WNOHANG) == pid_) {
            pid_ = -1;
            throw std::runtime_error("ocivm mount exited before mounting " + mountpoint);
        }
        if (std::chrono::steady_clock::now() > deadline)
            throw std::runtime_error("ocivm mount did not mount " + mountpoint + " within 10 s");
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
}

int Mount::stop() {
    if (pid_ < 0) return -1;
    ::kill(pid_, SIGTERM);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Mount::~Mount() {
    if (pid_ >= 0) stop();
    bool mounted = true;  // when unsure, detach: EINVAL if nothing is there
    try {
        mounted = is_mounted(mountpoint_);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
    }
    if (mounted) ::umount2(mountpoint_.c_str(), MNT_DETACH);
}

}  // namespace ocivm::test
