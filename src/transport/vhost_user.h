#pragma once
// The vhost-user back end of a virtio-fs device (QEMU's vhost-user-fs-pci),
// per QEMU's docs/interop/vhost-user.rst: takes the front end's messages
// over a Unix socket, maps guest memory, and serves each virtqueue's FUSE
// requests through fuse::Server, writing replies straight into the guest's
// buffers.
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "fuse/server.h"
#include "transport/guest_memory.h"
#include "transport/virtqueue.h"
#include "util/unique_fd.h"

namespace ocivm::transport {

struct VhostUserOptions {
    unsigned request_queues = 1;  // besides the hiprio queue
    unsigned spin_us = 100;       // watch the ring this long before sleeping (0: never)
};

// Counters a test or `ocivm fsd` can read.
struct VhostUserStats {
    std::atomic<uint64_t> requests{0};
    std::atomic<uint64_t> bad_chains{0};
    // Interrupts sent again because the guest had not taken its replies a
    // second after the last one (a lost interrupt would otherwise stall that
    // queue for good; see queue_loop).
    std::atomic<uint64_t> renotified{0};
    // Requests larger than the server's request buffer (dropped).
    std::atomic<uint64_t> oversized{0};
    // Front-end messages refused (bad size, fds, values, unknown request).
    std::atomic<uint64_t> refused_messages{0};
};

class VhostUserBackend {
public:
    VhostUserBackend(fuse::Server& server, VhostUserOptions opts);
    ~VhostUserBackend();
    VhostUserBackend(const VhostUserBackend&) = delete;
    VhostUserBackend& operator=(const VhostUserBackend&) = delete;

    // Serves the front end on a connected socket until it disconnects or a
    // protocol error; returns 0, or -errno with the reason logged.
    int serve(int sock);
    const VhostUserStats& stats() const { return stats_; }

    // Handles one descriptor chain: the request is read from its readable
    // part, the reply written to its writable part; returns the reply's
    // length (0 when there is none). Public for the virtqueue tests.
    uint32_t handle_chain(const DescChain& chain, std::vector<std::byte>& scratch);

private:
    struct Queue;
    int handle_message(uint32_t request, const std::byte* payload, uint32_t size,
                       std::vector<UniqueFd>& fds, std::vector<std::byte>& reply);
    int set_mem_table(const std::byte* payload, uint32_t size, std::vector<UniqueFd>& fds);
    void start_queue_if_ready(unsigned i);
    void stop_queue(unsigned i);
    void stop_all();
    bool map_ring(Queue& q, unsigned i);
    void queue_loop(unsigned i);
    void serve_ring(Queue& q, unsigned i, DescChain& chain, std::vector<std::byte>& scratch);
    void notify(Queue& q);
    bool log_refusal() const;

    // Threads and memory: a queue's thread is the only one that touches
    // its ring and the guest memory its chains point into, and it runs only
    // while that memory is mapped. Everything that changes the memory table
    // or a ring (SET_MEM_TABLE, SET_VRING_*) stops the queue first, so no
    // thread ever holds a pointer into a mapping that is gone; a queue
    // whose rings no longer translate stays stopped, with an error logged.
    fuse::Server& server_;
    VhostUserOptions opts_;
    unsigned spin_us_ = 0;
    VhostUserStats stats_;
    uint64_t features_ = 0;
    uint64_t protocol_features_ = 0;
    GuestMemory memory_;
    std::vector<std::unique_ptr<Queue>> queues_;
};

}  // namespace ocivm::transport
