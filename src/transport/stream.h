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
    std::atomic<uint64_t> pauses{0};  // the guest's relay said "paused"
};

// Serves one stream connection with one thread: a request is answered
// before the next is read, so at any point between two requests nothing is
// half-sent. Around a snapshot the guest's relay is paused over the stream
// itself (stream_protocol.h), so nothing is in flight either way.
class StreamSession {
public:
    // session: the id this server greets with (0: a random one).
    explicit StreamSession(fuse::Server& server, uint64_t session = 0);

    // Until the peer closes (0), or the stream breaks or carries a frame too
    // long (-errno, logged). Sends the hello first.
    int serve(int fd);

    // From another thread (the control socket): send the guest's relay
    // "pause", serve what it forwarded before, and once it answers
    // "paused" stop reading and wait until every byte has left the socket
    // (the peer, QEMU, has taken it into the guest). Then no request is in
    // flight: a snapshot now has none that a clone would send again after
    // this server did it. False, with the guest told to resume, when that
    // does not happen within timeout_ms (no relay answering: a guest that
    // is stuck, or one without the handshake).
    bool quiesce(int timeout_ms);
    // Lets the loop go on and tells the guest to resume.
    void resume();

    uint64_t session() const { return session_; }
    const StreamStats& stats() const { return stats_; }

private:
    // The serve thread (the only one writing to the socket): sends
    // "pause" or "resume" as pause_wanted_ asks; false if the write failed.
    bool sync_pause(int fd);
    // The guest said "paused": waits (parked) until resume().
    void park();

    fuse::Server& server_;
    uint64_t session_;
    StreamStats stats_;
    UniqueFd wake_;  // eventfd: a quiesce wants the loop's attention
    int fd_ = -1;
    std::mutex mu_;
    std::condition_variable cv_;
    bool pause_wanted_ = false, parked_ = false, ended_ = false;
    uint64_t pause_seq_ = 0;  // the pause asked for (its number goes over the wire)
    // Serve thread only: the pause the guest was sent, and whether it has
    // not been told to resume from it.
    uint64_t pause_sent_ = 0;
    bool pause_out_ = false;
};

}  // namespace ocivm::transport
