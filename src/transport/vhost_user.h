#pragma once
// The vhost-user back end of a virtio-fs device (QEMU's vhost-user-fs-pci),
// per QEMU's docs/interop/vhost-user.rst: takes the front end's messages
// over a Unix socket, maps guest memory, and serves each virtqueue's FUSE
// requests through fuse::Server, writing replies straight into the guest's
// buffers.
#include <atomic>
#include <condition_variable>
#include <string>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "fuse/server.h"
#include "transport/guest_memory.h"
#include "transport/polling.h"
#include "transport/virtqueue.h"
#include "util/unique_fd.h"

namespace ocivm::transport {

struct VhostUserOptions {
    unsigned request_queues = 1;  // besides the hiprio queue
    // Longest watch of the ring before sleeping (0: never); adaptive. 200 µs
    // as KVM's default halt_poll_ns: a guest's round trip under TCG takes
    // 150-250 µs, and catching it awake took a one-vCPU guest's cache=never
    // work about 6 % less time than a 100 µs maximum (docs/benchmarks.md,
    // session 11). Also the maximum of `ocivm run`'s shares.
    unsigned spin_us = 200;
    // Workers for requests that may wait long (fsync, fallocate, syncfs, ...)
    // and for requests queued behind one being served; 0: every request is
    // served by its queue's thread. At most kMaxPoolThreads.
    unsigned thread_pool_size = 0;
    // The host's CPU contention (polling stops while contended); may be null.
    HostLoad* load = nullptr;
};

inline constexpr unsigned kMaxPoolThreads = 256;

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
    // Requests handed to the worker pool.
    std::atomic<uint64_t> pooled{0};
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
    // Each request queue's polling: "queue N: spins ..." (docs/filesystem.md,
    // "Polling"); json: the same as trace lines.
    std::vector<std::string> poll_lines(bool json = false) const;

private:
    struct Queue;
    struct Job;
    int handle_message(uint32_t request, const std::byte* payload, uint32_t size,
                       std::vector<UniqueFd>& fds, std::vector<std::byte>& reply);
    int set_mem_table(const std::byte* payload, uint32_t size, std::vector<UniqueFd>& fds);
    void start_queue_if_ready(unsigned i);
    void stop_queue(unsigned i);
    void stop_all();
    bool map_ring(Queue& q, unsigned i);
    void queue_loop(unsigned i);
    void serve_ring(Queue& q, unsigned i, DescChain& chain, std::vector<std::byte>& scratch, SpinWindow& spin,
                    int64_t& spun);
    struct Worker {
        std::thread thread;
        std::atomic<int> queue{-1};  // the queue whose chain it serves, -1: none
    };
    // queue_thread: the caller is the queue's own thread (stop_queue may
    // interrupt its blocked write at once).
    void complete(Queue& q, uint16_t head, uint32_t len, bool queue_thread);
    bool dispatch(unsigned i, DescChain& chain);
    void worker_loop(Worker& self);
    void stop_pool();
    void notify(Queue& q, bool queue_thread);
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

    // The worker pool: jobs_ is allocated once; a job is free, pending (a
    // FIFO ring of pending_.size() slots) or held by one worker.
    std::vector<std::unique_ptr<Job>> jobs_;
    std::mutex pool_mu_;
    std::condition_variable pool_cv_;
    std::vector<Job*> free_jobs_;
    std::vector<Job*> pending_;
    size_t pending_head_ = 0, pending_count_ = 0;
    bool pool_stop_ = false;
    std::vector<std::unique_ptr<Worker>> workers_;
};

}  // namespace ocivm::transport
