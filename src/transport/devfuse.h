#pragma once
// The host transport: a FUSE mount served through /dev/fuse by N threads.
#include <sys/types.h>

#include <atomic>
#include <string>

#include "fuse/server.h"
#include "util/unique_fd.h"

namespace ocivm::transport {

struct DevFuseOptions {
    std::string fsname;      // shown as the mount's source, e.g. "ocivm:/srv/share"
    std::string mountpoint;  // absolute path
    unsigned threads = 2;
    bool readonly = false;
    unsigned spin_us = 50;   // busy-poll after a request before sleeping (0: never)
};

// Mounts on construction (mount(2) as root, fusermount3 otherwise) and
// unmounts on destruction if the mount is still there. Throws Error.
class DevFuseSession {
public:
    DevFuseSession(fuse::Server& server, DevFuseOptions opts);
    ~DevFuseSession();
    DevFuseSession(const DevFuseSession&) = delete;
    DevFuseSession& operator=(const DevFuseSession&) = delete;

    // Serves until the file system is unmounted (by stop() or from outside).
    void run();
    // Unmounts; a busy mount is detached and its connection aborted so run()
    // returns. Safe to call from another thread, more than once.
    void stop();

private:
    void worker(int fd);
    ssize_t next_request(int fd, std::byte* buf, size_t size);
    void unmount();
    void abort_connection();

    fuse::Server& server_;
    DevFuseOptions opts_;
    UniqueFd fd_;
    dev_t dev_ = 0;  // the mount's device: its fusectl connection number
    bool via_fusermount_ = false;
    std::atomic<bool> mounted_{false};
    std::atomic<bool> stopping_{false};
    std::atomic<bool> spinning_{false};
};

// Raises RLIMIT_NOFILE to its hard limit: every known node holds an fd.
void raise_fd_limit();

}  // namespace ocivm::transport
