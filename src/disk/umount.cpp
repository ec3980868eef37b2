#include "disk/umount.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "util/error.h"
#include "util/unique_fd.h"

namespace ocivm::disk {

namespace {

// Unmounts one mount point, retrying EBUSY until the deadline.
int umount_retry(const std::string& target, std::chrono::steady_clock::time_point deadline) {
    while (true) {
        if (::umount2(target.c_str(), UMOUNT_NOFOLLOW) == 0) return 0;
        int e = errno;
        if (e != EBUSY || std::chrono::steady_clock::now() >= deadline) return e;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
}

}  // namespace

UmountResult safe_umount(const std::string& path, double timeout_s, bool lazy) {
    UmountResult r;
    MountInfo m = mount_at(path);
    ::sync();
    r.steps.push_back("synced");
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<long>(timeout_s * 1000));
    std::vector<std::string> order = submounts(m.target);
    order.push_back(m.target);
    for (auto& t : order) {
        int e = umount_retry(t, deadline);
        if (e == 0) {
            r.steps.push_back("unmounted " + t);
            continue;
        }
        if (e != EBUSY) throw_errno("cannot unmount " + t, e);
        if (!lazy) {
            r.holders = find_holders(t);
            return r;
        }
        // --lazy-after-sync: flush everything, then detach.
        if (::mount(nullptr, t.c_str(), nullptr, MS_REMOUNT | MS_RDONLY, nullptr) == 0)
            r.steps.push_back("remounted " + t + " read-only (data flushed)");
        else
            r.steps.push_back("could not remount " + t + " read-only (" + std::strerror(errno) + "); synced only");
        UniqueFd fd(::open(t.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (fd && ::ioctl(fd.get(), FIFREEZE, 0) == 0) {
            ::ioctl(fd.get(), FITHAW, 0);
            r.steps.push_back("froze and thawed " + t + " (file system consistent on disk)");
        } else {
            r.steps.push_back("could not freeze " + t + (fd ? std::string(" (") + std::strerror(errno) + ")" : ""));
        }
        fd.reset();
        if (::umount2(t.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW) < 0) throw_errno("cannot detach " + t, errno);
        r.steps.push_back("detached " + t + " (MNT_DETACH: it goes once its holders let go)");
        r.detached = true;
    }
    r.ok = true;
    return r;
}

}  // namespace ocivm::disk
