#include "transport/devfuse.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <thread>
#include <vector>

#include "util/error.h"
#include "util/fd_passing.h"
#include "util/mountinfo.h"
#include "util/process.h"
#include "util/subprocess.h"

namespace ocivm::transport {

namespace {

struct FreeDeleter {
    void operator()(void* p) const { std::free(p); }
};
using AlignedBuf = std::unique_ptr<std::byte, FreeDeleter>;

AlignedBuf alloc_buffer(size_t size) {
    void* p = nullptr;
    if (posix_memalign(&p, 4096, size) != 0) throw Error("out of memory for request buffers");
    return AlignedBuf(static_cast<std::byte*>(p));
}

// Writes the reply to /dev/fuse.
class DevFuseReply final : public fuse::BufferReplyWriter {
public:
    DevFuseReply(int fd, std::byte* buf, size_t cap) : BufferReplyWriter(buf, cap), fd_(fd) {}
    int commit(size_t len) override {
        for (;;) {
            ssize_t n = ::write(fd_, buf_, len);
            if (n >= 0) return 0;
            if (errno == EINTR) continue;
            // ENOENT: the request was interrupted and is gone; not an error.
            if (errno != ENOENT && errno != ENODEV)
                spdlog::warn("writing a reply to /dev/fuse: {}", std::strerror(errno));
            return -errno;
        }
    }

private:
    int fd_;
};

// Receives the /dev/fuse fd fusermount3 passes over _FUSE_COMMFD.
UniqueFd receive_fd(int sock) {
    char byte;
    std::vector<UniqueFd> fds;
    if (recv_with_fds(sock, &byte, 1, fds, 1, 0) <= 0 || fds.empty()) return UniqueFd();
    return std::move(fds[0]);
}

}  // namespace

void set_fd_limit(std::optional<unsigned long> want) {
    struct rlimit rl;
    if (want) {
        if (*want == 0) return;
        if (*want < kMinFdLimit)
            throw Error("--rlimit-nofile " + std::to_string(*want) + " is too low: a server needs at least " +
                        std::to_string(kMinFdLimit) + " file descriptors");
        struct rlimit exact{*want, *want};
        if (::setrlimit(RLIMIT_NOFILE, &exact) != 0)
            throw_errno("setting the file descriptor limit to " + std::to_string(*want), errno,
                        "raising it above the hard limit takes CAP_SYS_RESOURCE (root), and never past "
                        "/proc/sys/fs/nr_open; choose a lower --rlimit-nofile");
        spdlog::debug("file descriptor limit: {}", *want);
        return;
    }
    if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    // Root may go up to fs.nr_open: a node holds one fd, two in no-open
    // mode, and a guest can know hundreds of thousands of files.
    rlim_t target = rl.rlim_max;
    if (::geteuid() == 0) {
        std::ifstream in("/proc/sys/fs/nr_open");
        unsigned long nr = 0;
        if (in >> nr && nr > target) target = nr;
    }
    struct rlimit up{target, target};
    if (::setrlimit(RLIMIT_NOFILE, &up) != 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &rl);
    }
    ::getrlimit(RLIMIT_NOFILE, &rl);
    spdlog::debug("file descriptor limit: {}", static_cast<unsigned long>(rl.rlim_cur));
}

FuseMount::FuseMount(DevFuseOptions opts) : opts_(std::move(opts)) {
    struct stat st;
    if (::stat(opts_.mountpoint.c_str(), &st) < 0)
        throw_errno("mount point " + opts_.mountpoint, errno, "create the directory first");
    char rootmode[16];
    std::snprintf(rootmode, sizeof rootmode, "%o", static_cast<unsigned>(st.st_mode & S_IFMT));
    std::string data = std::string("rootmode=") + rootmode + ",user_id=" +
                       std::to_string(::getuid()) + ",group_id=" + std::to_string(::getgid()) +
                       ",default_permissions";

    if (::geteuid() == 0) {
        fd_.reset(::open("/dev/fuse", O_RDWR | O_CLOEXEC));
        if (!fd_) {
            throw_errno("cannot open /dev/fuse", errno,
                        "load the fuse module (modprobe fuse) or pass --device /dev/fuse to the container");
        }
        // allow_other: the mount serves every user, each with their own
        // permissions (default_permissions), like a local file system.
        std::string full = "fd=" + std::to_string(fd_.get()) + "," + data + ",allow_other";
        unsigned long flags = MS_NOSUID | MS_NODEV | (opts_.readonly ? MS_RDONLY : 0);
        if (::mount(opts_.fsname.c_str(), opts_.mountpoint.c_str(), "fuse.ocivm", flags,
                    full.c_str()) < 0) {
            throw_errno("cannot mount on " + opts_.mountpoint, errno);
        }
    } else {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
            throw_errno("socketpair", errno);
        UniqueFd ours(sv[0]), theirs(sv[1]);
        SpawnOptions so;
        so.argv = {"fusermount3", "-o",
                   data + ",fsname=" + opts_.fsname + ",subtype=ocivm" + (opts_.readonly ? ",ro" : "") + ",nosuid,nodev",
                   "--", opts_.mountpoint};
        so.fds = {theirs.get()};  // fd 3 in fusermount3
        so.env = {"_FUSE_COMMFD=3"};
        ChildProcess fm = ChildProcess::spawn(so, "install package fuse3");
        theirs.reset();
        UniqueFd received = receive_fd(ours.get());
        fm.wait();
        if (!received) {
            throw Error("fusermount3 could not mount " + opts_.mountpoint +
                        " (see its message above); as a user, the mount point must be yours");
        }
        fd_ = std::move(received);
        via_fusermount_ = true;
    }
    mounted_ = true;
    // Not stat(): nobody serves the mount yet, so that would wait forever.
    try {
        if (auto m = find_mount(opts_.mountpoint)) dev_ = m->dev;
    } catch (const Error&) {
        // No destructor runs for a throwing constructor: take the mount
        // down here (detached: nobody serves it, so nobody can be using it).
        mounted_ = false;
        if (via_fusermount_) run_command({"fusermount3", "-u", "-z", "--", opts_.mountpoint});
        else ::umount2(opts_.mountpoint.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW);
        throw;
    }
}

FuseMount::~FuseMount() { stop(); }

void FuseMount::stop() {
    if (!mounted_.exchange(false)) return;
    // Only unmount what is still our mount.
    std::optional<MountEntry> m;
    try {
        m = find_mount(opts_.mountpoint);
    } catch (const Error& e) {
        // Runs from the destructor: say so and leave the mount alone rather
        // than unmount something that may not be ours.
        spdlog::warn("not unmounting {}: {}", opts_.mountpoint, e.what());
        return;
    }
    if (!m || m->dev != dev_) return;
    if (via_fusermount_) {
        run_command({"fusermount3", "-u", "-z", "--", opts_.mountpoint});
        return;
    }
    if (::umount2(opts_.mountpoint.c_str(), UMOUNT_NOFOLLOW) == 0) return;
    int e = errno;
    if (e == EINVAL || e == ENOENT) return;  // already gone
    if (e == EBUSY) {
        spdlog::warn("{} is busy; detaching it lazily (processes using it get ENOTCONN)",
                     opts_.mountpoint);
        ::umount2(opts_.mountpoint.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW);
        // The detached mount lives while it is used; abort the connection so
        // this server can exit instead of serving an invisible mount.
        abort_connection();
        return;
    }
    spdlog::warn("cannot unmount {}: {}", opts_.mountpoint, std::strerror(e));
}

void FuseMount::abort_connection() {
    const std::string ctl = "/sys/fs/fuse/connections";
    std::string abort_path = ctl + "/" + std::to_string(minor(dev_)) + "/abort";
    bool ctl_mounted = true;
    if (::access(abort_path.c_str(), W_OK) != 0) {
        try {
            ctl_mounted = find_mount(ctl).has_value();
        } catch (const Error& e) {
            spdlog::warn("cannot tell whether fusectl is mounted: {}", e.what());
        }
    }
    if (!ctl_mounted) {
        // fusectl is not mounted in every namespace; mount it to reach the knob.
        if (::mount("fusectl", ctl.c_str(), "fusectl", 0, nullptr) != 0)
            spdlog::warn("cannot mount fusectl on {}: {}", ctl, std::strerror(errno));
    }
    std::ofstream out(abort_path);
    out << "1";
    out.flush();
    if (!out) spdlog::warn("cannot abort the FUSE connection through {}", abort_path);
}

DevFuseSession::DevFuseSession(fuse::Server& server, UniqueFd fd, const DevFuseOptions& opts)
    : server_(server), opts_(opts), fd_(std::move(fd)) {
    // Every fd is non-blocking: a thread with nothing to read watches (the
    // spin token's holder) or sleeps in poll().
    int fl = ::fcntl(fd_.get(), F_GETFL);
    if (fl >= 0 && !(fl & O_NONBLOCK)) ::fcntl(fd_.get(), F_SETFL, fl | O_NONBLOCK);
    unsigned n = opts_.threads ? opts_.threads : 1;
    for (unsigned i = 1; i < n; ++i) {
        UniqueFd c(::open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK));
        uint32_t master = static_cast<uint32_t>(fd_.get());
        if (!c || ::ioctl(c.get(), FUSE_DEV_IOC_CLONE, &master) < 0) {
            // Without clone support all threads share one fd: still correct.
            spdlog::debug("FUSE_DEV_IOC_CLONE unavailable ({}); threads share one fd", std::strerror(errno));
            clones_.emplace_back();
            continue;
        }
        clones_.push_back(std::move(c));
    }
    for (unsigned i = 0; i < n; ++i) poll_stats_.push_back(std::make_unique<PollStats>());
}

// Reads one request from this thread's fd. When none is waiting, the thread
// that gets the spin token keeps reading for its SpinWindow (a synchronous
// client's next request usually comes within microseconds, and catching it
// awake spares a sleep and a wakeup), unless the host is contended; the
// others, and the watcher after its window, sleep in poll().
ssize_t DevFuseSession::next_request(int fd, std::byte* buf, size_t size, SpinWindow& spin) {
    ssize_t n = ::read(fd, buf, size);
    if (n >= 0 || errno != EAGAIN) return n;
    const uint64_t start = mono_ns();
    int64_t spun = 0;
    const int64_t budget = spin.budget(start);
    if (budget > 0 && !spinning_.exchange(true, std::memory_order_acquire)) {
        // Another thread may take the request this one waits for (the
        // kernel wakes every poller). Requests are still coming then: the
        // window starts again from that arrival instead of running out
        // (and shrinking) while the client is busy.
        uint64_t seen = arrivals_.load(std::memory_order_relaxed);
        uint64_t watch = start, now;
        do {
            n = ::read(fd, buf, size);
            now = mono_ns();
            if (n >= 0 || errno != EAGAIN) break;
            if (uint64_t a = arrivals_.load(std::memory_order_relaxed); a != seen) {
                seen = a;
                watch = now;
            }
        } while (static_cast<int64_t>(now - watch) < budget);
        spun = static_cast<int64_t>(now - start);
        int saved = errno;
        spinning_.store(false, std::memory_order_release);
        if (n >= 0 || saved != EAGAIN) {
            spin.waited(static_cast<int64_t>(now - watch), spun, true);
            errno = saved;
            return n;
        }
    }
    const uint64_t before = arrivals_.load(std::memory_order_relaxed);
    for (;;) {
        struct pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, -1) < 0 && errno != EINTR) return -1;
        if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) {
            errno = ENODEV;  // the connection is gone
            return -1;
        }
        n = ::read(fd, buf, size);
        if (n >= 0 || errno != EAGAIN) {
            int saved = errno;
            // While this thread slept, others may have served requests:
            // then its wait says nothing about how soon requests come.
            if (arrivals_.load(std::memory_order_relaxed) == before)
                spin.waited(static_cast<int64_t>(mono_ns() - start), spun, false);
            else
                spin.slept_while_served(spun);
            errno = saved;
            return n;
        }
    }
}

void DevFuseSession::worker(int fd, PollStats& stats) {
    const size_t in_size = server_.request_buffer_size();
    const size_t out_size = server_.options().max_write + 4096;
    AlignedBuf in = alloc_buffer(in_size);
    AlignedBuf out = alloc_buffer(out_size);
    DevFuseReply reply(fd, out.get(), out_size);
    SpinWindow spin(opts_.spin_us, opts_.load, &stats);
    for (;;) {
        ssize_t n = next_request(fd, in.get(), in_size, spin);
        if (n < 0) {
            int e = errno;
            if (e == EINTR || e == EAGAIN || e == ENOENT) continue;
            if (e != ENODEV) spdlog::error("reading /dev/fuse: {}", std::strerror(e));
            return;
        }
        arrivals_.fetch_add(1, std::memory_order_relaxed);
        auto r = server_.handle({in.get(), static_cast<size_t>(n)}, reply);
        if (r == fuse::Server::Result::Destroyed) return;
    }
}

void DevFuseSession::run() {
    // Every worker on a thread of its own, the calling thread only waits:
    // workers switch their fsuid per request, and a change of credentials
    // clears the thread's PR_SET_PDEATHSIG, which must stay on the main
    // thread for the server to die with its keeper.
    std::vector<std::thread> threads;
    threads.emplace_back([this] { worker(fd_.get(), *poll_stats_[0]); });
    for (size_t i = 0; i < clones_.size(); ++i) {
        int fd = clones_[i] ? clones_[i].get() : fd_.get();
        threads.emplace_back([this, fd, i] { worker(fd, *poll_stats_[i + 1]); });
    }
    for (auto& t : threads) t.join();
    for (size_t i = 0; i < poll_stats_.size(); ++i)
        spdlog::info("polling, thread {} (host load from {}): {}", i, opts_.load ? opts_.load->source() : "none",
                     poll_stats_[i]->line());
}

}  // namespace ocivm::transport
