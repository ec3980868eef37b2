#pragma once
// The stream transport: FUSE requests and replies framed over one stream
// socket (a virtio-serial port's chardev on the host side), for -v shares of
// VMs that must survive a snapshot (vhost-user-fs cannot be migrated by
// QEMU 7.2) and for hosts without vhost-user. The wire is
// src/guest/stream_protocol.h; the guest side is src/guest/fuse_relay.cpp.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "fuse/server.h"
#include "util/unique_fd.h"

namespace ocivm::transport {

struct StreamStats {
    std::atomic<uint64_t> requests{0};
    std::atomic<uint64_t> discarded_bytes{0};  // before the guest attached (a snapshot's leftovers)
    std::atomic<uint64_t> attaches{0};
};

// Serves one stream connection with one thread: a request is answered
// before the next is read, so at any point between two requests nothing is
// half-sent (what quiesce() relies on).
class StreamSession {
public:
    // session: the id this server greets with (0: a random one).
    explicit StreamSession(fuse::Server& server, uint64_t session = 0);

    // Until the peer closes (0), or the stream breaks or carries a frame too
    // long (-errno, logged). Sends the hello first.
    int serve(int fd);

    // From another thread (the control socket): stop reading requests and
    // wait until every reply byte has left the socket (the peer, QEMU, has
    // taken it into the guest). False, with the session resumed, when that
    // does not happen within timeout_ms (a guest not reading its replies).
    bool quiesce(int timeout_ms);
    void resume();

    uint64_t session() const { return session_; }
    const StreamStats& stats() const { return stats_; }

private:
    bool write_frame(int fd, const std::byte* p, size_t n);
    void park();

    fuse::Server& server_;
    uint64_t session_;
    StreamStats stats_;
    UniqueFd wake_;  // eventfd: a quiesce wants the loop's attention
    int fd_ = -1;
    std::mutex mu_;
    std::condition_variable cv_;
    bool pause_wanted_ = false, parked_ = false, ended_ = false;
};

}  // namespace ocivm::transport
