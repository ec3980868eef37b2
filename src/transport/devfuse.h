#pragma once
// The host transport: a FUSE mount served through /dev/fuse by N threads.
#include <sys/types.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fuse/server.h"
#include "transport/polling.h"
#include "util/unique_fd.h"

namespace ocivm::transport {

struct DevFuseOptions {
    std::string fsname;      // shown as the mount's source, e.g. "ocivm:/srv/share"
    std::string mountpoint;  // absolute path
    unsigned threads = 2;
    bool readonly = false;
    unsigned spin_us = 50;   // longest busy-poll after a request before sleeping (0: never); adaptive
    // The host's CPU contention (nobody polls while contended); null: not
    // watched. Open it before any sandbox: a confined /proc lacks it.
    HostLoad* load = nullptr;
};

// A FUSE mount: mounted on construction (mount(2) as root, fusermount3
// otherwise), unmounted by stop() or on destruction if it is still ours.
// The connection's fd goes to whoever serves it (take_fd), which may be
// another, sandboxed process: the mount itself stays with the process
// that made it, in the host's mount namespace. Throws Error.
class FuseMount {
public:
    explicit FuseMount(DevFuseOptions opts);
    ~FuseMount();
    FuseMount(const FuseMount&) = delete;
    FuseMount& operator=(const FuseMount&) = delete;

    // The /dev/fuse connection (once).
    UniqueFd take_fd() { return std::move(fd_); }
    // For a forked server process: this copy of the object no longer owns
    // the mount (the process that made it unmounts it).
    void disown() { mounted_ = false; }
    const DevFuseOptions& options() const { return opts_; }
    // Unmounts; a busy mount is detached and its connection aborted so the
    // server sees the end. Safe to call from another thread, more than once.
    void stop();

private:
    void abort_connection();

    DevFuseOptions opts_;
    UniqueFd fd_;
    dev_t dev_ = 0;  // the mount's device: its fusectl connection number
    bool via_fusermount_ = false;
    std::atomic<bool> mounted_{false};
};

// Serves a FUSE connection with N threads, each on its own clone of the
// connection (made here, while /dev/fuse can still be opened: a sandboxed
// server has no /dev), until the file system is unmounted.
class DevFuseSession {
public:
    DevFuseSession(fuse::Server& server, UniqueFd fd, const DevFuseOptions& opts);
    DevFuseSession(const DevFuseSession&) = delete;
    DevFuseSession& operator=(const DevFuseSession&) = delete;

    // Serves until the connection ends (unmounted, or aborted).
    void run();
    // Each thread's polling (docs/filesystem.md, "Polling").
    const std::vector<std::unique_ptr<PollStats>>& poll_stats() const { return poll_stats_; }

private:
    void worker(int fd, PollStats& stats);
    ssize_t next_request(int fd, std::byte* buf, size_t size, SpinWindow& spin);

    fuse::Server& server_;
    DevFuseOptions opts_;
    UniqueFd fd_;
    std::vector<UniqueFd> clones_;  // threads - 1 of them; an empty one shares fd_
    std::atomic<bool> spinning_{false};
    std::atomic<uint64_t> arrivals_{0};  // requests read by any thread
    std::vector<std::unique_ptr<PollStats>> poll_stats_;  // one per thread
};

// Sets the server's RLIMIT_NOFILE, which caps the nodes a guest can make it
// hold (every known node holds an fd). nullopt: raised to the hard limit
// (as root to fs.nr_open); 0: left as it is; N: exactly N, soft and hard,
// or an ocivm::Error when N is above what this process may set. The flag
// is virtiofsd's --rlimit-nofile.
void set_fd_limit(std::optional<unsigned long> want);
// The smallest N set_fd_limit accepts: below it a server cannot open even
// its own files and queues.
inline constexpr unsigned long kMinFdLimit = 64;

}  // namespace ocivm::transport
