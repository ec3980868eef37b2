#pragma once
// A vhost-user front end of our own (the part of QEMU that drives a
// vhost-user-fs device), for attacking a real `ocivm fsd` child process:
// messages with any header, payload and fds; guest memory in memfds; split
// rings with EVENT_IDX written by hand; FUSE requests put straight into the
// rings; kicks and calls through eventfds; the child's RSS and fds read from
// /proc. Nothing here trusts fsd: every wait has a deadline, and the child is
// killed and reaped whatever happens to the test.
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "util/unique_fd.h"

namespace ocivm::security {

// vhost-user request numbers and bits (QEMU docs/interop/vhost-user.rst).
enum VhostRequest : uint32_t {
    kGetFeatures = 1,
    kSetFeatures = 2,
    kSetOwner = 3,
    kResetOwner = 4,
    kSetMemTable = 5,
    kSetLogBase = 6,
    kSetLogFd = 7,
    kSetVringNum = 8,
    kSetVringAddr = 9,
    kSetVringBase = 10,
    kGetVringBase = 11,
    kSetVringKick = 12,
    kSetVringCall = 13,
    kSetVringErr = 14,
    kGetProtocolFeatures = 15,
    kSetProtocolFeatures = 16,
    kGetQueueNum = 17,
    kSetVringEnable = 18,
};
constexpr uint32_t kFlagVersion = 0x1;
constexpr uint32_t kFlagReply = 0x4;
constexpr uint32_t kFlagNeedReply = 0x8;
constexpr uint64_t kFeatIndirect = 1ull << 28;
constexpr uint64_t kFeatEventIdx = 1ull << 29;
constexpr uint64_t kFeatProtocol = 1ull << 30;
constexpr uint64_t kFeatVersion1 = 1ull << 32;
constexpr uint64_t kProtoMq = 1ull << 0;
constexpr uint64_t kProtoReplyAck = 1ull << 3;
constexpr uint64_t kVringNoFd = 0x100;

// Split-ring layout (virtio 1.x, 2.7), written here by the "guest".
struct Desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};
constexpr uint16_t kDescNext = 1;
constexpr uint16_t kDescWrite = 2;
constexpr uint16_t kDescIndirect = 4;

struct MemRegion {
    uint64_t gpa, size, uaddr, mmap_offset;
};
struct VringAddr {
    uint32_t index, flags;
    uint64_t desc, used, avail, log;
};

std::string unique_name(const std::string& prefix);  // pid + counter

// A directory under /tmp, removed with everything in it on destruction.
class TempDir {
public:
    explicit TempDir(const std::string& prefix);
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

// A size-limited tmpfs mounted on an existing directory (root), so a
// hostile guest's writes and fallocates cannot fill a real disk; detached
// on destruction. size_mib 0: nothing is mounted.
class TmpfsMount {
public:
    TmpfsMount(const std::string& dir, unsigned size_mib);  // throws std::runtime_error
    ~TmpfsMount();
    TmpfsMount(const TmpfsMount&) = delete;
    TmpfsMount& operator=(const TmpfsMount&) = delete;

private:
    std::string dir_;
    bool mounted_ = false;
};

// Memory figures of a process from /proc/PID/status, in KiB.
struct ProcMemory {
    uint64_t rss = 0, anon = 0, shmem = 0, hwm = 0;
    unsigned threads = 0;
};
bool read_proc_memory(pid_t pid, ProcMemory& out);
// Open file descriptors of a process (entries of /proc/PID/fd), or -1.
int count_fds(pid_t pid);

// One `ocivm fsd --fd 3` child on an already-listening socket whose one
// connection is made before the child starts; its stderr goes to a log
// file. The destructor kills (SIGKILL) and reaps it if it still runs, and
// the child dies with the test process (PR_SET_PDEATHSIG) in any case.
class FsdProcess {
public:
    struct Options {
        std::string ocivm;       // path of the ocivm binary
        std::string shared_dir;
        std::string log_path;
        std::string log_level = "info";
        std::vector<std::string> extra;  // more `ocivm fsd` arguments
    };
    explicit FsdProcess(const Options& o);  // throws std::runtime_error
    ~FsdProcess();
    FsdProcess(const FsdProcess&) = delete;
    FsdProcess& operator=(const FsdProcess&) = delete;

    pid_t pid() const { return pid_; }
    // The confined server: fsd forks it from the process we started (which
    // stays as its keeper); pid() until it exists.
    pid_t server_pid() const;
    // The front end's end of the connection (moved out once).
    UniqueFd take_socket() { return std::move(sock_); }
    // Whether the child still runs; once it has exited, exit_status()
    // holds its wait status.
    bool running();
    // Waits up to ms for the child to exit on its own.
    bool wait_exit(int ms);
    int exit_status() const { return status_; }
    bool crashed() const;  // ended by a signal other than our SIGKILL
    std::string describe_exit() const;
    void kill_and_reap();
    std::string log() const;  // its stderr so far
    ProcMemory memory() const;

private:
    pid_t pid_ = -1;
    bool reaped_ = false;
    bool killed_ = false;
    int status_ = 0;
    UniqueFd sock_;
    std::string log_path_;
};

// The vhost-user socket, as QEMU's side. Every receive has a deadline.
class Channel {
public:
    struct Msg {
        uint32_t request = 0, flags = 0;
        std::vector<std::byte> payload;
    };
    explicit Channel(UniqueFd sock) : sock_(std::move(sock)) {}
    int fd() const { return sock_.get(); }
    bool connected() const { return static_cast<bool>(sock_); }
    void close() { sock_.reset(); }

    // One message: header (request, flags, size) then payload, the fds as
    // SCM_RIGHTS with the first byte. `size` may lie about the payload.
    bool send(uint32_t request, const void* payload, uint32_t size,
              std::span<const int> fds = {}, uint32_t flags = kFlagVersion);
    // Arbitrary bytes (and fds) on the socket.
    bool send_bytes(const void* bytes, size_t len, std::span<const int> fds = {});
    // The next reply within ms, or nothing (timeout or the socket closed).
    std::optional<Msg> recv(int ms);
    // With REPLY_ACK negotiated: sends with NEED_REPLY and returns the
    // status fsd sent (0 = success), or nothing when no reply came. Replies
    // to other requests (left over from messages sent without waiting) are
    // skipped.
    std::optional<uint64_t> request_ack(uint32_t request, const void* payload, uint32_t size,
                                        std::span<const int> fds = {}, int ms = 10000);
    // A request answered by a u64 (GET_FEATURES, ...).
    std::optional<uint64_t> get_u64(uint32_t request, int ms = 10000);
    // Whether fsd still answers (GET_FEATURES) within ms.
    bool alive(int ms = 10000);
    // The next reply to `request` within ms, skipping others.
    std::optional<Msg> recv_for(uint32_t request, int ms);

private:
    UniqueFd sock_;
};

// Guest RAM: a memfd mapped here, known to fsd at gpa / uaddr.
class GuestRam {
public:
    GuestRam(uint64_t size, uint64_t gpa, uint64_t uaddr, const char* name = "guest-ram");
    ~GuestRam();
    GuestRam(const GuestRam&) = delete;
    GuestRam& operator=(const GuestRam&) = delete;

    int fd() const { return fd_.get(); }
    uint64_t size() const { return size_; }
    uint64_t gpa() const { return gpa_; }
    uint64_t uaddr() const { return uaddr_; }
    MemRegion region() const { return {gpa_, size_, uaddr_, 0}; }
    std::byte* at(uint64_t gpa) const { return base_ + (gpa - gpa_); }
    uint64_t uaddr_of(uint64_t gpa) const { return gpa - gpa_ + uaddr_; }
    // Bump allocation of guest memory (gpa), aligned; throws when full.
    uint64_t alloc(uint64_t len, uint64_t align = 64);
    uint64_t mark() const { return next_; }
    void release_to(uint64_t mark) { next_ = mark; }

private:
    UniqueFd fd_;
    std::byte* base_ = nullptr;
    uint64_t size_, gpa_, uaddr_, next_;
};

// One split virtqueue in guest RAM, with EVENT_IDX as a driver uses it: it
// sets used_event to the used index it has seen, so it is interrupted for
// every new completion.
class GuestQueue {
public:
    GuestQueue(GuestRam& ram, unsigned index, uint16_t num);
    unsigned index() const { return index_; }
    uint16_t num() const { return num_; }
    uint64_t desc_gpa() const { return desc_gpa_; }
    uint64_t avail_gpa() const { return avail_gpa_; }
    uint64_t used_gpa() const { return used_gpa_; }
    VringAddr addr() const;  // the SET_VRING_ADDR payload (front end's addresses)
    int kick_fd() const { return kick_.get(); }
    int call_fd() const { return call_.get(); }

    Desc* desc() const;
    void set_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0);
    // Makes the chain at head available (avail ring, then index).
    void publish(uint16_t head);
    // Raw access to the guest's avail index (attacks move it at will).
    uint16_t avail_idx() const;
    void set_avail_idx(uint16_t v);
    void kick();
    uint16_t used_idx() const;
    // Next used element not yet taken; false when there is none within ms.
    bool take_used(uint32_t* id, uint32_t* len, int ms);
    // Puts both ring indices (and our view) at base, as a driver does
    // before it tells the device that base.
    void reset_indices(uint16_t base);

private:
    GuestRam& ram_;
    unsigned index_;
    uint16_t num_;
    uint64_t desc_gpa_, avail_gpa_, used_gpa_;
    uint16_t last_used_ = 0;
    UniqueFd kick_, call_;
};

// The QEMU-side set-up of the device, each step checked with REPLY_ACK.
class Device {
public:
    Device(Channel& ch) : ch_(ch) {}
    // GET/SET_FEATURES, SET_OWNER, GET/SET_PROTOCOL_FEATURES (REPLY_ACK).
    // Throws std::runtime_error when fsd does not go along.
    void negotiate(uint64_t features = kFeatVersion1 | kFeatEventIdx | kFeatIndirect | kFeatProtocol);
    // SET_MEM_TABLE of regions with fds; the ack status (0 = accepted).
    std::optional<uint64_t> set_mem_table(std::span<const MemRegion> regions, std::span<const int> fds);
    std::optional<uint64_t> set_mem_table(const GuestRam& ram);
    // SET_VRING_NUM/BASE/ADDR/CALL/KICK/ENABLE for q; throws if one fails.
    void start_queue(GuestQueue& q, uint16_t base = 0);
    std::optional<uint64_t> vring_state(uint32_t request, uint32_t index, uint32_t num);
    std::optional<uint64_t> vring_fd(uint32_t request, uint32_t index, int fd);

private:
    Channel& ch_;
};

// FUSE requests through a GuestQueue. Requests use fixed slots (two direct
// descriptors each: one readable, one writable) in the low half of the
// descriptor table; the high half is left to tests that build their own
// chains. Completions of chains that are not slots are kept in others().
class FuseClient {
public:
    struct Reply {
        bool answered = false;  // the chain came back within the deadline
        uint32_t used_len = 0;  // bytes fsd said it wrote
        int32_t error = 0;      // fuse_out_header.error
        uint64_t unique = 0;
        std::vector<std::byte> body;  // after the out header
    };
    // in_size/out_size: bytes reserved per slot for request and reply.
    FuseClient(GuestRam& ram, GuestQueue& q, uint16_t slots = 32, uint32_t in_size = 4096,
               uint32_t out_size = 64 * 1024);
    uint16_t slots() const { return slots_; }
    uint16_t first_free_desc() const { return static_cast<uint16_t>(2 * slots_); }

    // Puts a request (header built here) in a free slot and publishes it
    // without kicking; returns the slot, or -1 when every slot is busy.
    int submit(uint32_t opcode, uint64_t nodeid, std::span<const std::byte> args, uint32_t out_len = 0);
    // The same with the whole request (header included) given raw.
    int submit_raw(std::span<const std::byte> request, uint32_t out_len = 0);
    // Waits until slot completes (ms deadline overall); fills its reply.
    bool wait(int slot, Reply& r, int ms);
    // Waits for every busy slot; false if one did not complete in time.
    bool wait_all(int ms);
    Reply call(uint32_t opcode, uint64_t nodeid, std::span<const std::byte> args,
               uint32_t out_len = 0, int ms = 10000);
    // FUSE_INIT; true when answered without error.
    bool init();
    uint64_t lookup(uint64_t parent, const std::string& name, int32_t* error = nullptr);
    bool busy(int slot) const { return busy_[slot]; }
    // Forgets every request in flight (the ring was reset under them).
    void reset();
    // Completions of foreign chains: (head, len).
    std::vector<std::pair<uint32_t, uint32_t>>& others() { return others_; }
    // Takes completions until `head` (a foreign chain) came back; false on timeout.
    bool wait_foreign(uint32_t head, uint32_t* len, int ms);
    uint64_t next_unique() { return ++unique_; }
    uint64_t in_gpa(int slot) const { return in_base_ + uint64_t(slot) * in_size_; }
    uint64_t out_gpa(int slot) const { return out_base_ + uint64_t(slot) * out_size_; }

private:
    bool poll_one(int ms);
    void fill_reply(int slot, uint32_t len, Reply& r);

    GuestRam& ram_;
    GuestQueue& q_;
    uint16_t slots_;
    uint32_t in_size_, out_size_;
    uint64_t in_base_, out_base_;
    std::vector<bool> busy_, done_;
    std::vector<uint32_t> done_len_;
    std::vector<std::pair<uint32_t, uint32_t>> others_;
    uint64_t unique_ = 0;
};

// A whole attack fixture: a temp dir with share/, one fsd child on it, a
// negotiated device with guest RAM and request queue 1 running, FUSE
// initialised. Each step throws std::runtime_error with fsd's log on
// failure.
struct Session {
    struct Options {
        std::string ocivm;
        uint64_t ram_size = 64ull << 20;
        uint16_t queue_size = 256;
        bool start = true;  // memory table, queue 1 and FUSE_INIT
        std::vector<std::string> fsd_args;
        unsigned share_tmpfs_mib = 0;  // the share on a tmpfs of this size
        std::string log_level = "info";
    };
    static constexpr uint64_t kGpa = 0x100000000ull;
    static constexpr uint64_t kUaddr = 0x7f1200000000ull;

    explicit Session(const Options& o);
    ~Session();
    TempDir dir;
    std::string share;
    TmpfsMount share_mount;
    FsdProcess fsd;
    Channel ch;
    Device dev;
    GuestRam ram;
    GuestQueue q;
    std::optional<FuseClient> fuse;

    // fsd's state for a failure message: exit status and log tail.
    std::string report();
    // The child still runs and answers on the socket.
    bool serving(int ms = 10000) { return fsd.running() && ch.alive(ms); }
    // A LOOKUP of "." on the root comes back without error.
    bool fuse_works(int ms = 10000);
};

// Reads the ocivm binary path from --ocivm PATH (argv), else $OCIVM_BIN.
std::string ocivm_path_from_args(int& argc, char** argv);

}  // namespace ocivm::security
