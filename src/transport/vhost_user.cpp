#include "transport/vhost_user.h"

#include "util/error.h"
#include "util/fd_passing.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <system_error>

#include <linux/fuse.h>

namespace ocivm::transport {

namespace {

// Message numbers and bits from vhost-user.rst.
enum Request : uint32_t {
    GET_FEATURES = 1,
    SET_FEATURES = 2,
    SET_OWNER = 3,
    RESET_OWNER = 4,
    SET_MEM_TABLE = 5,
    SET_LOG_BASE = 6,
    SET_LOG_FD = 7,
    SET_VRING_NUM = 8,
    SET_VRING_ADDR = 9,
    SET_VRING_BASE = 10,
    GET_VRING_BASE = 11,
    SET_VRING_KICK = 12,
    SET_VRING_CALL = 13,
    SET_VRING_ERR = 14,
    GET_PROTOCOL_FEATURES = 15,
    SET_PROTOCOL_FEATURES = 16,
    GET_QUEUE_NUM = 17,
    SET_VRING_ENABLE = 18,
};

constexpr uint32_t kVersion = 0x1;
constexpr uint32_t kReplyFlag = 0x4;
constexpr uint32_t kNeedReply = 0x8;
constexpr uint64_t kProtocolFeaturesBit = 1ull << 30;  // VHOST_USER_F_PROTOCOL_FEATURES
constexpr uint64_t kVersion1 = 1ull << 32;             // VIRTIO_F_VERSION_1
constexpr uint64_t kIndirectDesc = 1ull << 28;         // VIRTIO_RING_F_INDIRECT_DESC
constexpr uint64_t kEventIdx = 1ull << 29;             // VIRTIO_RING_F_EVENT_IDX
constexpr uint64_t kProtoMq = 1ull << 0;
constexpr uint64_t kProtoReplyAck = 1ull << 3;
constexpr unsigned kMaxFds = 8;
constexpr unsigned kMaxRegions = 8;
constexpr uint32_t kMaxPayload = 4096;
constexpr uint16_t kMaxQueueSize = 32768;

struct MsgHeader {
    uint32_t request;
    uint32_t flags;
    uint32_t size;
};
struct VringState {
    uint32_t index;
    uint32_t num;
};
struct VringAddr {
    uint32_t index;
    uint32_t flags;
    uint64_t desc_user_addr;
    uint64_t used_user_addr;
    uint64_t avail_user_addr;
    uint64_t log_guest_addr;
};
struct MemRegionMsg {
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
    uint64_t mmap_offset;
};

bool read_full(int fd, void* buf, size_t len) {
    auto* p = static_cast<char*>(buf);
    while (len) {
        ssize_t n = ::read(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        p += n;
        len -= static_cast<size_t>(n);
    }
    return true;
}

bool write_full(int fd, const void* buf, size_t len) {
    auto* p = static_cast<const char*>(buf);
    while (len) {
        ssize_t n = ::send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        p += n;
        len -= static_cast<size_t>(n);
    }
    return true;
}

// Reply bytes go into the guest's writable descriptors.
//
// The capacity offered is at most `limit` (the largest reply the server
// builds): the guest chooses the writable length, up to queue-size times
// 4 GiB, and a layer above that sizes a buffer by capacity() must not be
// made to allocate in proportion to it.
class ChainReplyWriter final : public fuse::ReplyWriter {
public:
    ChainReplyWriter(const DescChain& c, size_t limit) : c_(c), limit_(limit) {}
    size_t capacity() const override { return std::min(c_.writable_len, limit_); }
    std::byte* contiguous(size_t size) override {
        if (c_.writable.empty() || c_.writable[0].iov_len < size) return nullptr;
        return static_cast<std::byte*>(c_.writable[0].iov_base);
    }
    int iov(size_t off, size_t len, struct iovec* out, int max) override {
        int n = 0;
        size_t pos = 0;
        for (const auto& seg : c_.writable) {
            if (len == 0) break;
            if (off >= pos + seg.iov_len) {
                pos += seg.iov_len;
                continue;
            }
            size_t skip = off > pos ? off - pos : 0;
            size_t take = std::min(seg.iov_len - skip, len);
            if (n == max) return n;
            out[n++] = {static_cast<char*>(seg.iov_base) + skip, take};
            len -= take;
            off += take;
            pos += seg.iov_len;
        }
        return n;
    }
    void copy_in(size_t off, const void* src, size_t len) override {
        const auto* s = static_cast<const std::byte*>(src);
        size_t pos = 0;
        for (const auto& seg : c_.writable) {
            if (len == 0) return;
            if (off >= pos + seg.iov_len) {
                pos += seg.iov_len;
                continue;
            }
            size_t skip = off - pos;
            size_t take = std::min(seg.iov_len - skip, len);
            std::memcpy(static_cast<std::byte*>(seg.iov_base) + skip, s, take);
            s += take;
            len -= take;
            off += take;
            pos += seg.iov_len;
        }
    }
    int commit(size_t len) override {
        committed_ = static_cast<uint32_t>(std::min(len, capacity()));
        return 0;
    }
    uint32_t committed() const { return committed_; }

private:
    const DescChain& c_;
    size_t limit_;
    uint32_t committed_ = 0;
};

// Whether fd is an eventfd: kick, call and err are read and written as
// eventfds, and another kind of file could make a queue thread spin (a
// regular file is always readable), block (a pipe nobody reads), or write
// into the front end's files.
bool is_eventfd(int fd) {
    char path[32], link[64];
    std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = ::readlinkat(AT_FDCWD, path, link, sizeof link - 1);
    if (n >= 0) {
        link[n] = 0;
        return std::strcmp(link, "anon_inode:[eventfd]") == 0;
    }
    // Without /proc: at least an anonymous inode like our own eventfds
    // (not a file, pipe, socket or device).
    UniqueFd ref(::eventfd(0, EFD_CLOEXEC));
    struct stat a, b;
    return ref && ::fstat(fd, &a) == 0 && ::fstat(ref.get(), &b) == 0 && a.st_dev == b.st_dev &&
           a.st_ino == b.st_ino;
}

// Logs the first few of a repeated warning, then only at powers of two: a
// hostile peer cannot fill the log, and the count still shows.
bool worth_logging(uint64_t n) { return n <= 8 || (n & (n - 1)) == 0; }

// A queue thread stuck in a system call that waits (on an eventfd the
// front end drained or filled and made blocking again, or in a request the
// host's file system keeps waiting) is woken by this signal so it can stop:
// its handler does nothing, and without SA_RESTART an interruptible call
// fails with EINTR.
constexpr int kWakeSignal = SIGURG;
void on_wake(int) {}
std::once_flag g_wake_installed;

}  // namespace

struct VhostUserBackend::Queue {
    Virtqueue vq;
    uint16_t num = 0;
    VringAddr addr{};
    bool addr_set = false;
    uint16_t base = 0;
    bool enabled = false;
    UniqueFd kick, call, err;
    UniqueFd stop = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    std::thread thread;
    bool running = false;  // the control thread's view: a thread was started
    // Set by stop_queue; the thread looks at it between chains, so a guest
    // that keeps its ring full cannot keep the queue from stopping.
    std::atomic<bool> stop_requested{false};
    // The thread is in a read or write of the front end's kick or call fd.
    std::atomic<bool> in_fd_io{false};
    std::mutex exit_mu;
    std::condition_variable exit_cv;
    bool exited = false;
    // Chains of this queue a pool worker holds: the queue is stopped (and
    // its memory may go) only when this is back to 0.
    std::atomic<unsigned> inflight{0};
    // Serialises the used ring between the queue's thread and the workers.
    std::mutex used_mu;
    PollStats poll;
};

// A request handed to the worker pool, with the chain it came in.
struct VhostUserBackend::Job {
    unsigned queue = 0;
    DescChain chain;
};

namespace {
constexpr uint64_t kOfferedFeatures = kVersion1 | kIndirectDesc | kEventIdx | kProtocolFeaturesBit;
constexpr uint64_t kOfferedProtocol = kProtoMq | kProtoReplyAck;
}  // namespace

VhostUserBackend::VhostUserBackend(fuse::Server& server, VhostUserOptions opts)
    : server_(server), opts_(opts), spin_us_(opts.spin_us) {
    unsigned n = 1 + std::max(1u, opts_.request_queues);
    for (unsigned i = 0; i < n; ++i) queues_.push_back(std::make_unique<Queue>());
    unsigned workers = std::min(opts_.thread_pool_size, kMaxPoolThreads);
    // Twice as many jobs as workers: a queue thread hands on requests while
    // every worker is busy, up to that bound, and then serves them itself.
    for (unsigned i = 0; i < 2 * workers; ++i) {
        jobs_.push_back(std::make_unique<Job>());
        jobs_.back()->chain.reserve(64);  // grows to the longest chain it carries, once
        free_jobs_.push_back(jobs_.back().get());
    }
    pending_.assign(jobs_.size(), nullptr);
    try {
        for (unsigned i = 0; i < workers; ++i) {
            workers_.push_back(std::make_unique<Worker>());
            Worker& ref = *workers_.back();
            ref.thread = std::thread([this, &ref] { worker_loop(ref); });
        }
    } catch (const std::system_error& e) {
        stop_pool();
        throw Error("cannot start " + std::to_string(workers) + " worker threads (" + e.what() +
                    "); choose a smaller --thread-pool-size");
    }
    // Both before any seccomp filter: they need rt_sigaction.
    GuestMemory::install_fault_guard();
    std::call_once(g_wake_installed, [] {
        struct sigaction sa {};
        sa.sa_handler = on_wake;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = 0;  // no SA_RESTART: the waiting call must fail with EINTR
        ::sigaction(kWakeSignal, &sa, nullptr);
    });
}

VhostUserBackend::~VhostUserBackend() {
    stop_all();
    stop_pool();
}

void VhostUserBackend::stop_pool() {
    {
        std::lock_guard lk(pool_mu_);
        pool_stop_ = true;
    }
    pool_cv_.notify_all();
    for (auto& w : workers_)
        if (w->thread.joinable()) w->thread.join();
    workers_.clear();
}

// The reason a message is refused, logged as refusals are counted (the
// first few, then at powers of two).
bool VhostUserBackend::log_refusal() const {
    return worth_logging(stats_.refused_messages.load(std::memory_order_relaxed) + 1);
}

uint32_t VhostUserBackend::handle_chain(const DescChain& chain, std::vector<std::byte>& scratch) {
    stats_.requests.fetch_add(1, std::memory_order_relaxed);
    if (chain.readable_len > server_.request_buffer_size()) {
        uint64_t n = stats_.oversized.fetch_add(1, std::memory_order_relaxed) + 1;
        if (worth_logging(n))
            spdlog::warn("virtio-fs request of {} bytes exceeds the limit; dropped ({} so far)",
                         chain.readable_len, n);
        return 0;
    }
    // The request's header and arguments are gathered into one buffer for
    // the parser (WRITE data included: one copy).
    if (scratch.size() < chain.readable_len) scratch.resize(chain.readable_len);
    size_t pos = 0;
    for (const auto& seg : chain.readable) {
        std::memcpy(scratch.data() + pos, seg.iov_base, seg.iov_len);
        pos += seg.iov_len;
    }
    ChainReplyWriter w(chain, server_.request_buffer_size());
    auto r = server_.handle({scratch.data(), pos}, w);
    return r == fuse::Server::Result::NoReply ? 0 : w.committed();
}

bool VhostUserBackend::map_ring(Queue& q, unsigned i) {
    if (!q.addr_set || q.num == 0 || memory_.empty()) return false;
    size_t n = q.num;
    // Sizes include the event index after each ring (used_event, avail_event).
    auto* desc = memory_.uaddr_to_host(q.addr.desc_user_addr, 16 * n);
    auto* avail = memory_.uaddr_to_host(q.addr.avail_user_addr, 6 + 2 * n);
    auto* used = memory_.uaddr_to_host(q.addr.used_user_addr, 6 + 8 * n);
    if (!desc || !avail || !used) {
        if (log_refusal())
            spdlog::error("vhost-user: queue {}: its rings (desc {:#x}, avail {:#x}, used {:#x}, size {}) are "
                          "not inside the guest memory table; the queue stays stopped until they are",
                          i, q.addr.desc_user_addr, q.addr.avail_user_addr, q.addr.used_user_addr, n);
        return false;
    }
    // virtio 1.x, 2.7: 16-, 2- and 4-byte alignment. Checked on the host
    // addresses, which a region's offset may shift against the front end's.
    if (reinterpret_cast<uintptr_t>(desc) % 16 || reinterpret_cast<uintptr_t>(avail) % 2 ||
        reinterpret_cast<uintptr_t>(used) % 4) {
        if (log_refusal())
            spdlog::error("vhost-user: queue {}: misaligned rings; the queue stays stopped", i);
        return false;
    }
    q.vq.configure(q.num, reinterpret_cast<vring_desc*>(desc),
                   reinterpret_cast<vring_avail*>(avail), reinterpret_cast<vring_used*>(used));
    q.vq.set_features(features_ & kIndirectDesc, features_ & kEventIdx);
    return true;
}

void VhostUserBackend::notify(Queue& q, bool queue_thread) {
    if (!q.call) return;
    uint64_t one = 1;
    // Sent even when the queue is stopping: the chain it announces is in
    // the used ring already. (stop_queue interrupts the queue thread's
    // write that waits at once, a worker's after a second.)
    if (queue_thread) q.in_fd_io.store(true, std::memory_order_seq_cst);
    (void)!::write(q.call.get(), &one, sizeof one);
    if (queue_thread) q.in_fd_io.store(false, std::memory_order_release);
}

// Requests whose system calls can wait long on the host: they always go
// to the pool, so that one guest's fsync does not hold up its other
// requests. (Locks stay in the guest: no SETLKW reaches the file system.)
static bool may_block(const DescChain& chain) {
    if (chain.readable.empty() || chain.readable[0].iov_len < 8) return false;
    uint32_t opcode;
    std::memcpy(&opcode, static_cast<const std::byte*>(chain.readable[0].iov_base) + 4, sizeof opcode);
    switch (opcode) {
    case FUSE_FSYNC:
    case FUSE_FSYNCDIR:
    case FUSE_FALLOCATE:
    case FUSE_COPY_FILE_RANGE:
    case FUSE_SYNCFS:
        return true;
    default:
        return false;
    }
}

void VhostUserBackend::complete(Queue& q, uint16_t head, uint32_t len, bool queue_thread) {
    bool wake;
    {
        std::lock_guard lk(q.used_mu);
        q.vq.push(head, len);
        wake = q.vq.need_notify();
    }
    if (wake) notify(q, queue_thread);
}

// Hands the chain to a worker; false when every job is taken (the caller
// serves it itself). The chain's buffers are swapped with the job's.
bool VhostUserBackend::dispatch(unsigned i, DescChain& chain) {
    const uint16_t num = queues_[i]->vq.num();
    {
        std::lock_guard lk(pool_mu_);
        if (free_jobs_.empty()) return false;
        Job* j = free_jobs_.back();
        free_jobs_.pop_back();
        std::swap(j->chain, chain);
        j->queue = i;
        queues_[i]->inflight.fetch_add(1, std::memory_order_acq_rel);
        pending_[(pending_head_ + pending_count_) % pending_.size()] = j;
        ++pending_count_;
    }
    stats_.pooled.fetch_add(1, std::memory_order_relaxed);
    pool_cv_.notify_one();
    // The chain that came back is a job's: sized once to the queue, so
    // pop() does not allocate (at most 2 x workers x 32 KiB per 1,024
    // entries of the queue).
    if (chain.readable.capacity() < num || chain.writable.capacity() < num) chain.reserve(num);
    return true;
}

void VhostUserBackend::worker_loop(Worker& self) {
    sigset_t wake;
    sigemptyset(&wake);
    sigaddset(&wake, kWakeSignal);
    pthread_sigmask(SIG_UNBLOCK, &wake, nullptr);  // stop_queue may interrupt a slow request
    std::vector<std::byte> scratch;
    for (;;) {
        Job* j;
        {
            std::unique_lock lk(pool_mu_);
            pool_cv_.wait(lk, [&] { return pool_stop_ || pending_count_ > 0; });
            if (pending_count_ == 0) return;
            j = pending_[pending_head_];
            pending_head_ = (pending_head_ + 1) % pending_.size();
            --pending_count_;
        }
        Queue& q = *queues_[j->queue];
        self.queue.store(static_cast<int>(j->queue), std::memory_order_release);
        complete(q, j->chain.head, handle_chain(j->chain, scratch), false);
        self.queue.store(-1, std::memory_order_release);
        {
            std::lock_guard lk(pool_mu_);
            free_jobs_.push_back(j);
        }
        if (q.inflight.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            std::lock_guard lk(q.exit_mu);
            q.exit_cv.notify_all();
        }
    }
}

// Serves the ring until it is empty (then returns with notifications on)
// or the queue is asked to stop. spin_start/spun: when the thread began
// waiting, and how long it watched the ring, for the caller's SpinWindow.
void VhostUserBackend::serve_ring(Queue& q, unsigned i, DescChain& chain, std::vector<std::byte>& scratch,
                                  SpinWindow& spin, int64_t& spun) {
    const bool pooled = i > 0 && !workers_.empty();  // the hiprio queue's FORGETs never wait
    while (!q.stop_requested.load(std::memory_order_relaxed)) {
        const char* why = "";
        auto res = q.vq.pop(memory_, chain, &why);
        if (res == Virtqueue::Pop::Empty) {
            // A guest waiting on a reply sends its next request soon:
            // watch the ring a little before sleeping (no kick, no
            // wakeup), unless the host's CPUs are wanted elsewhere; then
            // ask for a kick and look once more.
            const uint64_t start = mono_ns();
            spun = 0;
            if (int64_t budget = spin.budget(start); budget > 0) {
                bool more = false;
                // Yield, not pause: under TCG the QEMU thread that
                // delivers our interrupt may need this very CPU.
                // (A queue asked to stop stops watching at once.)
                while (!(more = q.vq.available()) && (spun = static_cast<int64_t>(mono_ns() - start)) < budget &&
                       !q.stop_requested.load(std::memory_order_relaxed))
                    sched_yield();
                if (more) {
                    spun = static_cast<int64_t>(mono_ns() - start);
                    spin.waited(spun, spun, true);
                    continue;
                }
            }
            if (q.vq.enable_notify_and_check()) {
                spin.waited(static_cast<int64_t>(mono_ns() - start), spun, false);
                continue;
            }
            return;
        }
        if (res == Virtqueue::Pop::Bad) {
            uint64_t n = stats_.bad_chains.fetch_add(1, std::memory_order_relaxed) + 1;
            if (worth_logging(n))
                spdlog::warn("virtio-fs queue {}: bad descriptor chain: {} ({} so far)", i, why, n);
            if (chain.head >= q.vq.num()) continue;
            complete(q, chain.head, 0, true);
            continue;
        }
        // Parallel demand (two or more chains waiting behind this one) or a
        // request that may wait long goes to the pool; a quick request with
        // at most one behind it is served here, with no hand-over (one
        // process's pipeline, find | xargs cat, keeps one queued: handing
        // those over cost 9 % of that guestbench phase under TCG).
        if (pooled && (may_block(chain) || q.vq.pending() >= 2) && dispatch(i, chain)) continue;
        complete(q, chain.head, handle_chain(chain, scratch), true);
    }
}

void VhostUserBackend::queue_loop(unsigned i) {
    Queue& q = *queues_[i];
    sigset_t wake;
    sigemptyset(&wake);
    sigaddset(&wake, kWakeSignal);
    pthread_sigmask(SIG_UNBLOCK, &wake, nullptr);  // whatever the starting thread blocked
    DescChain chain;
    chain.reserve(q.vq.num());  // pop() never allocates
    std::vector<std::byte> scratch;
    // No watching the hiprio queue: nobody waits on a FORGET's reply.
    SpinWindow spin(i == 0 ? 0 : spin_us_, opts_.load, &q.poll);
    uint64_t wait_start = 0;
    int64_t spun = 0;
    // A (re)started queue looks at its ring before waiting for a kick: the
    // guest may have queued requests while the thread was stopped (e.g. for
    // SET_VRING_CALL) without kicking, because the avail_event it saw was
    // stale. Waiting first lost those requests and hung the guest.
    bool first = true;
    while (!q.stop_requested.load(std::memory_order_relaxed)) {
        if (!first) {
            struct pollfd p[2] = {{q.kick.get(), POLLIN, 0}, {q.stop.get(), POLLIN, 0}};
            // Idle with replies the guest has not taken: after a second, the
            // interrupt is sent again. One lost interrupt (whatever lost it)
            // would otherwise stall the queue for good, since with EVENT_IDX
            // the guest asks for no other until it has seen that one: that
            // is how a guest's umount hung on a full hiprio ring. A spurious
            // interrupt only makes the guest look at its ring.
            bool behind;
            {
                std::lock_guard lk(q.used_mu);
                behind = q.vq.guest_behind();
            }
            // Replies the pool pushes later are covered too: while it holds
            // chains of this queue, the thread looks again every second.
            bool pooled_work = q.inflight.load(std::memory_order_acquire) > 0;
            int n = ::poll(p, 2, behind || pooled_work ? 1000 : -1);
            if (n < 0) {
                if (errno == EINTR) continue;
                spdlog::error("virtio-fs queue {}: poll: {}; the queue stops", i, std::strerror(errno));
                break;
            }
            if (p[1].revents) break;
            if (n == 0) {
                std::unique_lock lk(q.used_mu);
                bool still = q.vq.guest_behind();
                lk.unlock();
                if (still && q.call) {
                    stats_.renotified.fetch_add(1, std::memory_order_relaxed);  // counted before it can be seen
                    notify(q, true);
                    spdlog::debug("virtio-fs queue {}: the guest has not taken its replies; interrupt sent again", i);
                }
                continue;
            }
            if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
                spdlog::error("virtio-fs queue {}: its kick fd failed (poll events {:#x}); the queue stops", i,
                              static_cast<unsigned>(p[0].revents));
                break;
            }
            if (p[0].revents & POLLIN) {
                uint64_t v;
                q.in_fd_io.store(true, std::memory_order_seq_cst);
                if (!q.stop_requested.load(std::memory_order_seq_cst)) (void)!::read(q.kick.get(), &v, sizeof v);
                q.in_fd_io.store(false, std::memory_order_release);
                // The wait began with the watch in serve_ring.
                spin.waited(static_cast<int64_t>(mono_ns() - wait_start) + spun, spun, false);
            }
        }
        first = false;
        serve_ring(q, i, chain, scratch, spin, spun);
        wait_start = mono_ns();
    }
    std::lock_guard lk(q.exit_mu);
    q.exited = true;
    q.exit_cv.notify_all();
}

void VhostUserBackend::start_queue_if_ready(unsigned i) {
    Queue& q = *queues_[i];
    if (q.running || !q.kick) return;
    bool needs_enable = features_ & kProtocolFeaturesBit;
    if (needs_enable && !q.enabled) return;
    if (!map_ring(q, i)) return;
    q.vq.set_base(q.base);
    q.stop_requested = false;
    q.exited = false;
    try {
        q.thread = std::thread([this, i] { queue_loop(i); });
    } catch (const std::system_error& e) {
        spdlog::error("vhost-user: cannot start a thread for queue {}: {}; the queue stays stopped", i, e.what());
        return;
    }
    q.running = true;
    spdlog::debug("vhost-user: queue {} started (size {}, base {})", i, q.num, q.base);
}

void VhostUserBackend::stop_queue(unsigned i) {
    Queue& q = *queues_[i];
    if (!q.running) return;
    q.stop_requested.store(true, std::memory_order_seq_cst);
    uint64_t one = 1;
    (void)!::write(q.stop.get(), &one, sizeof one);
    // The thread stops between two chains. One blocked in a read or write
    // of the front end's fds, or for more than a second in a request, is
    // interrupted until it is out (the request fails with EINTR).
    auto start = std::chrono::steady_clock::now();
    auto next_worker_signal = start;
    bool warned = false;
    {
        std::unique_lock lk(q.exit_mu);
        // The pool's chains of this queue point into the same memory: they
        // are finished (or interrupted) before the queue counts as stopped.
        while (!q.exited || q.inflight.load(std::memory_order_acquire) > 0) {
            bool slow = std::chrono::steady_clock::now() - start > std::chrono::seconds(1);
            if (slow && !warned) {
                spdlog::warn("vhost-user: queue {} did not stop within a second; interrupting its request", i);
                warned = true;
            }
            if (!q.exited && (slow || q.in_fd_io.load(std::memory_order_seq_cst)))
                pthread_kill(q.thread.native_handle(), kWakeSignal);
            auto now = std::chrono::steady_clock::now();
            if (slow && q.inflight.load(std::memory_order_acquire) > 0 && now >= next_worker_signal) {
                for (auto& w : workers_)
                    if (w->queue.load(std::memory_order_acquire) == static_cast<int>(i))
                        pthread_kill(w->thread.native_handle(), kWakeSignal);
                next_worker_signal = now + std::chrono::seconds(1);
            }
            q.exit_cv.wait_for(lk, std::chrono::milliseconds(10));
        }
    }
    q.thread.join();
    uint64_t v;
    (void)!::read(q.stop.get(), &v, sizeof v);  // reset the counter (eventfd)
    q.running = false;
    q.base = q.vq.base();
}

void VhostUserBackend::stop_all() {
    for (unsigned i = 0; i < queues_.size(); ++i) stop_queue(i);
}

int VhostUserBackend::set_mem_table(const std::byte* payload, uint32_t size, std::vector<UniqueFd>& fds) {
    if (size < 8) return -EINVAL;
    uint32_t n;
    std::memcpy(&n, payload, sizeof n);
    if (n > kMaxRegions || size < 8 + n * sizeof(MemRegionMsg) || fds.size() != n) {
        if (log_refusal())
            spdlog::error("vhost-user: SET_MEM_TABLE of {} regions ({} bytes, {} fds) refused: at most {} "
                          "regions, each with its fd", n, size, fds.size(), kMaxRegions);
        return -EINVAL;
    }
    // The whole new table is checked and mapped before anything changes: a
    // refused table leaves the old one, and the queues, as they were.
    GuestMemory mem;
    for (uint32_t r = 0; r < n; ++r) {
        MemRegionMsg m;
        std::memcpy(&m, payload + 8 + r * sizeof m, sizeof m);
        const char* why = "";
        if (int e = mem.map_region(m.guest_phys_addr, m.memory_size, m.userspace_addr, fds[r].get(),
                                   m.mmap_offset, &why);
            e < 0) {
            if (log_refusal())
                spdlog::error("vhost-user: memory region {} (gpa {:#x}, size {:#x}, uaddr {:#x}, offset {:#x}) "
                              "refused: {} ({}); the memory table is unchanged",
                              r, m.guest_phys_addr, m.memory_size, m.userspace_addr, m.mmap_offset, why,
                              std::strerror(-e));
            return e;
        }
    }
    // No queue thread may use the old mapping once it is gone: all stop,
    // the table changes, and each restarts with its rings translated again
    // (the stop is between chains, so nothing is in flight).
    std::vector<bool> was_running;
    for (unsigned i = 0; i < queues_.size(); ++i) {
        was_running.push_back(queues_[i]->running);
        stop_queue(i);
    }
    memory_ = std::move(mem);
    for (unsigned i = 0; i < queues_.size(); ++i) {
        start_queue_if_ready(i);
        if (was_running[i] && !queues_[i]->running)
            if (log_refusal())
                spdlog::error("vhost-user: queue {} stopped: the new memory table does not hold its rings", i);
    }
    return 0;
}

int VhostUserBackend::handle_message(uint32_t request, const std::byte* payload, uint32_t size,
                                     std::vector<UniqueFd>& fds, std::vector<std::byte>& reply) {
    auto u64 = [&](uint64_t& v) {
        if (size < sizeof v) return false;
        std::memcpy(&v, payload, sizeof v);
        return true;
    };
    auto put64 = [&](uint64_t v) {
        reply.resize(sizeof v);
        std::memcpy(reply.data(), &v, sizeof v);
    };
    auto state = [&](VringState& s) {
        if (size < sizeof s) return false;
        std::memcpy(&s, payload, sizeof s);
        return s.index < queues_.size();
    };
    // A change to a queue's ring: stop it, change, and start it if it is
    // ready (whatever order the front end configures it in).
    auto restart = [&](unsigned i, auto&& change) {
        stop_queue(i);
        change(*queues_[i]);
        start_queue_if_ready(i);
    };
    switch (request) {
        case GET_FEATURES:
            put64(kOfferedFeatures);
            return 0;
        case SET_FEATURES: {
            uint64_t f;
            if (!u64(f)) return -EINVAL;
            if (f & ~kOfferedFeatures) {
                if (log_refusal())
                    spdlog::error("vhost-user: SET_FEATURES {:#x} has bits that were not offered ({:#x})", f,
                                  kOfferedFeatures);
                return -EINVAL;
            }
            features_ = f;
            // Without protocol features, rings are enabled as soon as they start.
            if (!(f & kProtocolFeaturesBit))
                for (auto& q : queues_) q->enabled = true;
            return 0;
        }
        case GET_PROTOCOL_FEATURES:
            put64(kOfferedProtocol);
            return 0;
        case SET_PROTOCOL_FEATURES: {
            uint64_t f;
            if (!u64(f)) return -EINVAL;
            protocol_features_ = f & kOfferedProtocol;
            return 0;
        }
        case GET_QUEUE_NUM:
            put64(queues_.size());
            return 0;
        case SET_OWNER:
            return 0;
        case RESET_OWNER:
            stop_all();
            return 0;
        case SET_MEM_TABLE:
            return set_mem_table(payload, size, fds);
        case SET_LOG_BASE:
        case SET_LOG_FD:
            return 0;  // no dirty-page logging (migration is not supported)
        case SET_VRING_NUM: {
            VringState s;
            if (!state(s) || s.num == 0 || s.num > kMaxQueueSize || (s.num & (s.num - 1))) {
                if (log_refusal())
                    spdlog::error("vhost-user: SET_VRING_NUM refused: the size must be a power of two up to {}",
                                  kMaxQueueSize);
                return -EINVAL;
            }
            restart(s.index, [&](Queue& q) { q.num = static_cast<uint16_t>(s.num); });
            return 0;
        }
        case SET_VRING_ADDR: {
            VringAddr a;
            if (size < sizeof a) return -EINVAL;
            std::memcpy(&a, payload, sizeof a);
            if (a.index >= queues_.size()) return -EINVAL;
            if (a.desc_user_addr % 16 || a.avail_user_addr % 2 || a.used_user_addr % 4) {
                if (log_refusal())
                    spdlog::error("vhost-user: SET_VRING_ADDR refused: misaligned rings (desc {:#x}, avail {:#x}, "
                                  "used {:#x})", a.desc_user_addr, a.avail_user_addr, a.used_user_addr);
                return -EINVAL;
            }
            Queue& q = *queues_[a.index];
            // With a table and a size known, rings outside memory are refused
            // now (they would only stop the queue later).
            if (!memory_.empty() && q.num) {
                size_t n = q.num;
                if (!memory_.uaddr_to_host(a.desc_user_addr, 16 * n) ||
                    !memory_.uaddr_to_host(a.avail_user_addr, 6 + 2 * n) ||
                    !memory_.uaddr_to_host(a.used_user_addr, 6 + 8 * n)) {
                    if (log_refusal())
                        spdlog::error("vhost-user: SET_VRING_ADDR refused: queue {}'s rings are outside "
                                      "guest memory", a.index);
                    return -EINVAL;
                }
            }
            restart(a.index, [&](Queue& qq) {
                qq.addr = a;
                qq.addr_set = true;
            });
            return 0;
        }
        case SET_VRING_BASE: {
            VringState s;
            // Split rings: a 16-bit free-running index (any value; it is
            // taken modulo the size).
            if (!state(s) || s.num > 0xffff) return -EINVAL;
            restart(s.index, [&](Queue& q) { q.base = static_cast<uint16_t>(s.num); });
            return 0;
        }
        case GET_VRING_BASE: {
            VringState s;
            if (!state(s)) return -EINVAL;
            stop_queue(s.index);
            Queue& q = *queues_[s.index];
            q.kick.reset();
            s.num = q.base;
            reply.resize(sizeof s);
            std::memcpy(reply.data(), &s, sizeof s);
            return 0;
        }
        case SET_VRING_KICK:
        case SET_VRING_CALL:
        case SET_VRING_ERR: {
            uint64_t v;
            if (!u64(v)) return -EINVAL;
            unsigned idx = v & 0xff;
            bool nofd = v & 0x100;
            if (idx >= queues_.size()) return -EINVAL;
            if (!nofd && fds.size() != 1) return -EINVAL;
            UniqueFd fd = nofd ? UniqueFd() : std::move(fds[0]);
            if (fd) {
                if (!is_eventfd(fd.get())) {
                    if (log_refusal())
                        spdlog::error("vhost-user: request {} refused: queue {}'s fd is not an eventfd",
                                      request, idx);
                    return -EINVAL;
                }
                // Our reads and writes must not wait (the thread stopping
                // does not depend on it: see stop_queue).
                int fl = ::fcntl(fd.get(), F_GETFL);
                if (fl >= 0) ::fcntl(fd.get(), F_SETFL, fl | O_NONBLOCK);
            }
            Queue& q = *queues_[idx];
            if (request == SET_VRING_KICK) {
                stop_queue(idx);
                q.kick = std::move(fd);
                start_queue_if_ready(idx);
            } else if (request == SET_VRING_CALL) {
                // The queue thread writes call; swap it while the thread is stopped.
                bool was = q.running;
                stop_queue(idx);
                q.call = std::move(fd);
                // QEMU swaps call fds when the guest masks or unmasks the
                // queue's MSI-X vector, and looks for an interrupt left in the
                // old fd before we have switched (this message has no reply):
                // one written in between was lost, and the guest waited
                // forever on a full ring (a vm_fsd umount hang). Signal the
                // new fd at once, as libvhost-user does; a spurious interrupt
                // only makes the guest look at its ring.
                if (q.call) {
                    uint64_t one = 1;
                    (void)!::write(q.call.get(), &one, sizeof one);
                }
                if (was) start_queue_if_ready(idx);
            } else {
                q.err = std::move(fd);
            }
            return 0;
        }
        case SET_VRING_ENABLE: {
            VringState s;
            if (!state(s)) return -EINVAL;
            Queue& q = *queues_[s.index];
            q.enabled = s.num != 0;
            if (q.enabled) start_queue_if_ready(s.index);
            else stop_queue(s.index);
            return 0;
        }
        default:
            return -ENOSYS;
    }
}

int VhostUserBackend::serve(int sock) {
    std::vector<std::byte> payload(kMaxPayload), reply;
    for (;;) {
        MsgHeader h;
        std::vector<UniqueFd> fds;
        bool truncated = false;
        ssize_t n = recv_with_fds(sock, &h, sizeof h, fds, kMaxFds, MSG_WAITALL, &truncated);
        if (n == 0) {
            spdlog::info("vhost-user: front end disconnected");
            stop_all();
            return 0;
        }
        if (n < 0) {
            int e = errno;
            stop_all();
            if (e == ECONNRESET) return 0;
            spdlog::error("vhost-user: receiving a message: {}", std::strerror(e));
            return -e;
        }
        if (static_cast<size_t>(n) < sizeof h) {
            spdlog::error("vhost-user: the front end disconnected in the middle of a message header");
            stop_all();
            return -EPROTO;
        }
        // Past this size we cannot tell where the next message starts.
        if (h.size > kMaxPayload) {
            spdlog::error("vhost-user: message {} claims a payload of {} bytes (at most {}); the connection "
                          "cannot be resynchronised", h.request, h.size, kMaxPayload);
            stop_all();
            return -EPROTO;
        }
        if (!read_full(sock, payload.data(), h.size)) {
            spdlog::error("vhost-user: the front end disconnected in the middle of message {} ({} bytes "
                          "announced)", h.request, h.size);
            stop_all();
            return -EPROTO;
        }
        reply.clear();
        int rc;
        if (truncated) {
            // The kernel closed what did not fit; the message is refused,
            // the connection goes on.
            if (log_refusal())
                spdlog::error("vhost-user: message {} came with more than {} fds; refused", h.request, kMaxFds);
            rc = -EINVAL;
        } else {
            rc = handle_message(h.request, payload.data(), h.size, fds, reply);
        }
        if (rc < 0) {
            uint64_t k = stats_.refused_messages.fetch_add(1, std::memory_order_relaxed) + 1;
            if (worth_logging(k))
                spdlog::warn("vhost-user: request {} failed: {} ({} refused so far)", h.request,
                             rc == -ENOSYS ? "not supported" : std::strerror(-rc), k);
        }
        bool ack = (protocol_features_ & kProtoReplyAck) && (h.flags & kNeedReply);
        if (reply.empty() && ack) {
            uint64_t status = rc < 0 ? 1 : 0;
            reply.resize(sizeof status);
            std::memcpy(reply.data(), &status, sizeof status);
        }
        if (!reply.empty()) {
            MsgHeader rh{h.request, kVersion | kReplyFlag, static_cast<uint32_t>(reply.size())};
            if (!write_full(sock, &rh, sizeof rh) || !write_full(sock, reply.data(), reply.size())) {
                stop_all();
                return -EPIPE;
            }
        }
    }
}

std::vector<std::string> VhostUserBackend::poll_lines(bool json) const {
    std::vector<std::string> out;
    for (size_t i = 1; i < queues_.size(); ++i) {
        const auto& p = queues_[i]->poll;
        if (p.spins.load(std::memory_order_relaxed) + p.sleeps.load(std::memory_order_relaxed) == 0) continue;
        std::string who = "queue " + std::to_string(i);
        out.push_back(json ? p.json(who) : who + ": " + p.line());
    }
    return out;
}

}  // namespace ocivm::transport
