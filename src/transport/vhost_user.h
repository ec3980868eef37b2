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
#include <shared_mutex>
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
    int handle_message(int sock, uint32_t request, uint32_t flags, const std::byte* payload,
                       uint32_t size, std::vector<UniqueFd>& fds, std::vector<std::byte>& reply);
    void start_queue_if_ready(unsigned i);
    void stop_queue(unsigned i);
    void stop_all();
    bool map_ring(Queue& q);
    void queue_loop(unsigned i);

    fuse::Server& server_;
    VhostUserOptions opts_;
    unsigned spin_us_ = 0;
    VhostUserStats stats_;
    uint64_t features_ = 0;
    uint64_t protocol_features_ = 0;
    std::shared_mutex mem_mu_;  // queue threads share it; SET_MEM_TABLE excludes them
    GuestMemory memory_;
    std::vector<std::unique_ptr<Queue>> queues_;
};

}  // namespace ocivm::transport
