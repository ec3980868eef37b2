// The vhost-user back end driven over its socket as QEMU drives it: memory
// table, ring set-up, kicks and calls, with a FUSE request in the ring.
#include <gtest/gtest.h>
#include <linux/fuse.h>
#include "transport/virtqueue.h"
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <chrono>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "fs/file_system.h"
#include "fuse/serve_config.h"

#include "transport/vhost_user.h"
#include "unit/test_util.h"
#include "util/unique_fd.h"

using namespace ocivm;
using namespace ocivm::transport;

namespace {

constexpr uint64_t kGpa = 0x10000, kUaddr = 0x7f0000000000ull, kSize = 1 << 20;
constexpr uint16_t kNum = 16;

void send_msg(int sock, uint32_t req, const void* payload, uint32_t size, std::vector<int> fds = {}) {
    uint32_t hdr[3] = {req, 0x1, size};
    std::vector<char> buf(sizeof hdr + size);
    std::memcpy(buf.data(), hdr, sizeof hdr);
    if (size) std::memcpy(buf.data() + sizeof hdr, payload, size);
    iovec iov{buf.data(), buf.size()};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    char ctl[CMSG_SPACE(sizeof(int) * 8)] = {};
    if (!fds.empty()) {
        m.msg_control = ctl;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
        cmsghdr* c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ASSERT_EQ(::sendmsg(sock, &m, 0), static_cast<ssize_t>(buf.size()));
}

uint64_t get_u64(int sock, uint32_t req) {
    send_msg(sock, req, nullptr, 0);
    uint32_t hdr[3];
    uint64_t v = 0;
    EXPECT_EQ(::read(sock, hdr, sizeof hdr), static_cast<ssize_t>(sizeof hdr));
    EXPECT_EQ(::read(sock, &v, sizeof v), static_cast<ssize_t>(sizeof v));
    return v;
}

// QEMU's side of one vhost-user-fs device: guest memory in a memfd, request
// queue 1 set up with EVENT_IDX, FUSE LOOKUPs of "." put in its ring.
struct FrontEnd {
    test::Harness h;
    fuse::Server* server_ = nullptr;
    std::unique_ptr<VhostUserBackend> backend;
    UniqueFd front, back;
    std::thread server;
    UniqueFd mem;
    std::byte* ram = nullptr;
    vring_desc* desc = nullptr;
    vring_avail* avail = nullptr;
    vring_used* used = nullptr;
    uint64_t q1 = 1;

    // Serves h's Passthrough, or `other` (already past INIT) with `opts`.
    explicit FrontEnd(fuse::Server* other = nullptr, VhostUserOptions opts = {}) {
        if (!other) h.init();
        server_ = other ? other : h.server.get();
        backend = std::make_unique<VhostUserBackend>(*server_, opts);
        int sv[2];
        EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        front = UniqueFd(sv[0]);
        back = UniqueFd(sv[1]);
        server = std::thread([this] { backend->serve(back.get()); });
        mem = UniqueFd(::memfd_create("guest", MFD_CLOEXEC));
        EXPECT_EQ(::ftruncate(mem.get(), kSize), 0);
        ram = static_cast<std::byte*>(::mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, mem.get(), 0));
        EXPECT_NE(ram, MAP_FAILED);
        desc = reinterpret_cast<vring_desc*>(ram);
        avail = reinterpret_cast<vring_avail*>(ram + 16 * kNum);
        used = reinterpret_cast<vring_used*>(ram + 4096);

        uint64_t features = get_u64(front.get(), 1);               // GET_FEATURES
        uint64_t want = features & ((1ull << 32) | (1ull << 29));  // VERSION_1, EVENT_IDX
        send_msg(front.get(), 3, nullptr, 0);                      // SET_OWNER
        send_msg(front.get(), 2, &want, sizeof want);              // SET_FEATURES
        struct {
            uint32_t n, pad;
            uint64_t gpa, size, uaddr, offset;
        } table{1, 0, kGpa, kSize, kUaddr, 0};
        send_msg(front.get(), 5, &table, sizeof table, {mem.get()});  // SET_MEM_TABLE
        uint32_t num[2] = {1, kNum};
        send_msg(front.get(), 8, num, sizeof num);  // SET_VRING_NUM, queue 1
        struct {
            uint32_t index, flags;
            uint64_t desc, used, avail, log;
        } addr{1, 0, kUaddr, kUaddr + 4096, kUaddr + 16 * kNum, 0};
        send_msg(front.get(), 9, &addr, sizeof addr);  // SET_VRING_ADDR
        uint32_t base[2] = {1, 0};
        send_msg(front.get(), 10, base, sizeof base);  // SET_VRING_BASE
    }
    ~FrontEnd() {
        front.reset();  // QEMU goes: serve returns
        server.join();
        ::munmap(ram, kSize);
    }

    // A LOOKUP of "." in descriptors 2*slot and 2*slot+1, made available
    // (no kick).
    void queue_lookup(uint16_t slot, uint64_t unique) {
        fuse_in_header ih{};
        ih.opcode = FUSE_LOOKUP;
        ih.unique = unique;
        ih.nodeid = 1;
        ih.len = sizeof ih + 2;
        uint64_t in = 0x8000 + slot * 0x2000ull, out = in + 0x1000;
        std::memcpy(ram + in, &ih, sizeof ih);
        std::memcpy(ram + in + sizeof ih, ".", 2);
        uint16_t d = static_cast<uint16_t>(2 * slot);
        desc[d] = {kGpa + in, static_cast<uint32_t>(sizeof ih + 2), VRING_DESC_F_NEXT, static_cast<uint16_t>(d + 1)};
        desc[d + 1] = {kGpa + out, 4096, VRING_DESC_F_WRITE, 0};
        uint16_t idx = avail->idx;
        avail->ring[idx % kNum] = d;
        __atomic_store_n(&avail->idx, static_cast<uint16_t>(idx + 1), __ATOMIC_RELEASE);
    }
    // Any request (header + args) in descriptors 2*slot and 2*slot+1.
    void queue_request(uint16_t slot, uint32_t opcode, uint64_t unique, uint64_t nodeid, const void* arg,
                       uint32_t arg_len) {
        fuse_in_header ih{};
        ih.opcode = opcode;
        ih.unique = unique;
        ih.nodeid = nodeid;
        ih.len = static_cast<uint32_t>(sizeof ih) + arg_len;
        uint64_t in = 0x8000 + slot * 0x2000ull, out = in + 0x1000;
        std::memcpy(ram + in, &ih, sizeof ih);
        if (arg_len) std::memcpy(ram + in + sizeof ih, arg, arg_len);
        uint16_t d = static_cast<uint16_t>(2 * slot);
        desc[d] = {kGpa + in, ih.len, VRING_DESC_F_NEXT, static_cast<uint16_t>(d + 1)};
        desc[d + 1] = {kGpa + out, 4096, VRING_DESC_F_WRITE, 0};
        uint16_t idx = avail->idx;
        avail->ring[idx % kNum] = d;
        __atomic_store_n(&avail->idx, static_cast<uint16_t>(idx + 1), __ATOMIC_RELEASE);
    }
    // The id of the used ring's element n (the head descriptor it returned).
    uint32_t used_id(uint16_t n) { return __atomic_load_n(&used->ring[n % kNum].id, __ATOMIC_ACQUIRE); }
    uint64_t reply_unique(uint16_t slot) {
        fuse_out_header oh{};
        std::memcpy(&oh, ram + 0x9000 + slot * 0x2000ull, sizeof oh);
        return oh.unique;
    }
    // The guest's used_event: "interrupt me once the used index passes this".
    void set_used_event(uint16_t v) { __atomic_store_n(&avail->ring[kNum], v, __ATOMIC_SEQ_CST); }
    void set_call(int fd) { send_msg(front.get(), 13, &q1, sizeof q1, {fd}); }  // SET_VRING_CALL
    void set_kick(int fd) { send_msg(front.get(), 12, &q1, sizeof q1, {fd}); }  // SET_VRING_KICK
    bool used_reaches(uint16_t n) {
        for (int i = 0; i < 5000; ++i) {
            if (__atomic_load_n(&used->idx, __ATOMIC_ACQUIRE) == n) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        return false;
    }
};

bool signalled(int fd, int ms) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, ms) != 1) return false;
    uint64_t v;
    (void)!::read(fd, &v, sizeof v);  // take it, as QEMU does
    return true;
}

// A file system whose fsync waits until the test lets it go (a disk that
// takes its time); getattr answers at once; everything else is ENOSYS.
class SlowFsyncFs final : public fs::FileSystem {
public:
    void release_fsync() {
        std::lock_guard lk(mu_);
        released_ = true;
        cv_.notify_all();
    }
    bool fsync_started(int ms) {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, std::chrono::milliseconds(ms), [&] { return started_; });
    }
    int fsync(const fs::Context&, uint64_t, uint64_t, bool) override {
        std::unique_lock lk(mu_);
        started_ = true;
        cv_.notify_all();
        cv_.wait(lk, [&] { return released_; });
        return 0;
    }
    int getattr(const fs::Context&, uint64_t, const uint64_t*, fs::Attr& a) override {
        a.st.st_mode = S_IFDIR | 0755;
        a.st.st_ino = 1;
        a.st.st_nlink = 2;
        return 0;
    }
    int lookup(const fs::Context&, uint64_t, std::string_view, fs::Entry&) override { return -ENOSYS; }
    void forget(uint64_t, uint64_t) override {}
    int setattr(const fs::Context&, uint64_t, const fs::SetAttr&, const uint64_t*, fs::Attr&) override { return -ENOSYS; }
    int readlink(const fs::Context&, uint64_t, char*, size_t) override { return -ENOSYS; }
    int symlink(const fs::Context&, uint64_t, std::string_view, std::string_view, fs::Entry&) override { return -ENOSYS; }
    int mknod(const fs::Context&, uint64_t, std::string_view, mode_t, dev_t, fs::Entry&) override { return -ENOSYS; }
    int mkdir(const fs::Context&, uint64_t, std::string_view, mode_t, fs::Entry&) override { return -ENOSYS; }
    int unlink(const fs::Context&, uint64_t, std::string_view) override { return -ENOSYS; }
    int rmdir(const fs::Context&, uint64_t, std::string_view) override { return -ENOSYS; }
    int rename(const fs::Context&, uint64_t, std::string_view, uint64_t, std::string_view, unsigned) override { return -ENOSYS; }
    int link(const fs::Context&, uint64_t, uint64_t, std::string_view, fs::Entry&) override { return -ENOSYS; }
    int open(const fs::Context&, uint64_t, int, bool, fs::OpenResult&) override { return -ENOSYS; }
    int create(const fs::Context&, uint64_t, std::string_view, mode_t, int, bool, fs::Entry&, fs::OpenResult&) override { return -ENOSYS; }
    ssize_t read(const fs::Context&, uint64_t, uint64_t, off_t, const struct iovec*, int) override { return -ENOSYS; }
    ssize_t write(const fs::Context&, uint64_t, uint64_t, off_t, const struct iovec*, int, bool) override { return -ENOSYS; }
    int flush(const fs::Context&, uint64_t, uint64_t) override { return -ENOSYS; }
    int release(const fs::Context&, uint64_t, uint64_t) override { return -ENOSYS; }
    int opendir(const fs::Context&, uint64_t, int, fs::OpenResult&) override { return -ENOSYS; }
    int readdir(const fs::Context&, uint64_t, uint64_t, uint64_t, bool, fs::DirSink&) override { return -ENOSYS; }
    int releasedir(const fs::Context&, uint64_t, uint64_t) override { return -ENOSYS; }
    int fsyncdir(const fs::Context&, uint64_t, uint64_t, bool) override { return -ENOSYS; }
    int statfs(const fs::Context&, uint64_t, struct statvfs&) override { return -ENOSYS; }
    int access(const fs::Context&, uint64_t, int) override { return -ENOSYS; }
    int setxattr(const fs::Context&, uint64_t, std::string_view, const void*, size_t, int) override { return -ENOSYS; }
    ssize_t getxattr(const fs::Context&, uint64_t, std::string_view, void*, size_t) override { return -ENOSYS; }
    ssize_t listxattr(const fs::Context&, uint64_t, char*, size_t) override { return -ENOSYS; }
    int removexattr(const fs::Context&, uint64_t, std::string_view) override { return -ENOSYS; }
    int fallocate(const fs::Context&, uint64_t, uint64_t, int, off_t, off_t) override { return -ENOSYS; }
    off_t lseek(const fs::Context&, uint64_t, uint64_t, off_t, int) override { return -ENOSYS; }
    ssize_t copy_file_range(const fs::Context&, uint64_t, uint64_t, off_t, uint64_t, uint64_t, off_t, size_t,
                            unsigned) override {
        return -ENOSYS;
    }
    int syncfs(const fs::Context&) override { return -ENOSYS; }
    void destroy() override {}

private:
    std::mutex mu_;
    std::condition_variable cv_;
    bool started_ = false, released_ = false;
};

// Lets a held fsync go however the test ends: declared after the FrontEnd,
// it runs first, so the FrontEnd's stop does not wait for an fsync that a
// failed assertion left held.
struct ReleaseFsync {
    SlowFsyncFs& fs;
    ~ReleaseFsync() { fs.release_fsync(); }
};

// Runs INIT through `server` as the guest kernel would first.
void init_server(fuse::Server& server) {
    test::Request r(FUSE_INIT, 0);
    fuse_init_in in{};
    in.major = FUSE_KERNEL_VERSION;
    in.minor = FUSE_KERNEL_MINOR_VERSION;
    in.max_readahead = 1 << 20;
    r.arg(in);
    auto bytes = r.bytes();
    struct Discard final : fuse::BufferReplyWriter {
        using BufferReplyWriter::BufferReplyWriter;
        int commit(size_t) override { return 0; }
    };
    std::vector<std::byte> out(8192);
    Discard w(out.data(), out.size());
    server.handle({bytes.data(), bytes.size()}, w);
}

// A front end, with a pool of two workers, on a server over SlowFsyncFs;
// its request queue running. A held fsync is let go before the front end
// stops (release is destroyed first), so a failed assertion fails rather
// than hangs.
struct PooledSlowFsync {
    SlowFsyncFs slow;
    fuse::Server server{slow, fuse::serve_config("/", fs::CacheMode::Auto, false, false, false).protocol};
    FrontEnd fe;
    ReleaseFsync release{slow};
    UniqueFd call{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)}, kick{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};

    // used_event: the guest's "interrupt me past this" set before the start.
    explicit PooledSlowFsync(std::optional<uint16_t> used_event = std::nullopt)
        : fe((init_server(server), &server), pool_of_two()) {
        if (used_event) fe.set_used_event(*used_event);
        fe.set_call(call.get());
        fe.set_kick(kick.get());
    }
    static VhostUserOptions pool_of_two() {
        VhostUserOptions o;
        o.thread_pool_size = 2;
        return o;
    }
    bool kick_now() {
        uint64_t one = 1;
        return ::write(kick.get(), &one, sizeof one) == 8;
    }
};

}  // namespace

// Issue 10: a slow request (an fsync the disk takes its time over) is
// handed to the worker pool; the guest's other requests on the same queue
// are answered meanwhile. (Before the pool, the queue's only thread sat in
// the fsync and every other request of the guest waited for it.)
TEST(VhostUser, ASlowFsyncDoesNotHoldUpTheQueue) {
    PooledSlowFsync t;
    auto& fe = t.fe;
    fuse_fsync_in fi{};
    fe.queue_request(0, FUSE_FSYNC, 11, 1, &fi, sizeof fi);
    ASSERT_TRUE(t.kick_now());
    ASSERT_TRUE(t.slow.fsync_started(5000)) << "the fsync never reached the file system";
    fuse_getattr_in gi{};
    fe.queue_request(1, FUSE_GETATTR, 12, 1, &gi, sizeof gi);
    ASSERT_TRUE(t.kick_now());
    bool answered = fe.used_reaches(1);
    EXPECT_TRUE(answered) << "GETATTR waited for the fsync in front of it";
    if (answered) {
        EXPECT_EQ(fe.used_id(0), 2u) << "the first reply should be GETATTR's (descriptor 2)";
        EXPECT_EQ(fe.reply_unique(1), 12u);
    }
    t.slow.release_fsync();
    EXPECT_TRUE(fe.used_reaches(2)) << "the fsync's reply never came";
    EXPECT_EQ(fe.reply_unique(0), 11u);
    EXPECT_GE(fe.backend->stats().pooled.load(), 1u);
}

// Regression: a queue thread that starts (or restarts, as SET_VRING_CALL
// does mid-run) waited for a kick before looking at its ring, so requests
// already queued without a kick were never served and the guest hung.
TEST(VhostUser, RequestsQueuedBeforeTheQueueStartsAreServedWithoutAKick) {
    FrontEnd fe;
    fe.queue_lookup(0, 5);  // before the ring runs, and no kick ever written
    UniqueFd call(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)), kick(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    fe.set_call(call.get());
    fe.set_kick(kick.get());  // the queue starts
    // (The call fd is signalled at SET_VRING_CALL already, so the used
    // index, not the interrupt, says whether the request was served.)
    EXPECT_TRUE(fe.used_reaches(1)) << "the queued request was not served";
    EXPECT_EQ(fe.reply_unique(0), 5u);

    // The same after SET_VRING_CALL restarts the running queue thread.
    UniqueFd call2(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the thread is asleep, waiting for a kick
    fe.queue_lookup(1, 6);                                        // queued, not kicked
    fe.set_call(call2.get());
    EXPECT_TRUE(fe.used_reaches(2)) << "a request queued across a restart was lost";
    EXPECT_EQ(fe.reply_unique(1), 6u);
}

// Regression (vm_fsd hung at umount: the hiprio ring full, its used index
// 128 past the guest's used_event): QEMU swaps the call fd when the guest
// masks or unmasks the queue's MSI-X vector and looks for an interrupt left
// in the old one before we have switched (SET_VRING_CALL has no reply), so
// one written in between was lost. A new call fd is signalled at once, even
// with nothing new in the ring.
TEST(VhostUser, ANewCallFdIsSignalledAtOnce) {
    FrontEnd fe;
    UniqueFd call(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)), kick(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    fe.set_call(call.get());
    fe.set_kick(kick.get());
    EXPECT_TRUE(signalled(call.get(), 5000)) << "SET_VRING_CALL did not signal the call fd";
    UniqueFd call2(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    fe.set_call(call2.get());
    EXPECT_TRUE(signalled(call2.get(), 5000)) << "SET_VRING_CALL did not signal the new call fd";
}

// Whatever loses an interrupt, the queue recovers: with EVENT_IDX a guest
// that has not seen a reply asks for no further interrupt, so the back end
// sends it again once the queue has been idle for a second; a guest that
// has taken every reply gets none.
TEST(VhostUser, AnInterruptTheGuestMissedIsSentAgain) {
    FrontEnd fe;
    UniqueFd call(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)), kick(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    fe.set_used_event(0);  // the guest has seen nothing yet
    fe.set_call(call.get());
    fe.set_kick(kick.get());
    signalled(call.get(), 1000);  // the one SET_VRING_CALL sends
    fe.queue_lookup(0, 7);
    uint64_t one = 1;
    ASSERT_EQ(::write(kick.get(), &one, sizeof one), 8);
    ASSERT_TRUE(fe.used_reaches(1));
    EXPECT_TRUE(signalled(call.get(), 1000)) << "no interrupt for the reply";
    // That interrupt is "lost": the guest's used_event stays 0, behind 1.
    EXPECT_TRUE(signalled(call.get(), 3000)) << "the missed interrupt was not sent again";
    EXPECT_GE(fe.backend->stats().renotified.load(), 1u);
    // The guest takes the reply and asks for the next interrupt: silence.
    fe.set_used_event(1);
    signalled(call.get(), 1200);  // one may have been on its way
    EXPECT_FALSE(signalled(call.get(), 2500)) << "interrupts sent to a guest that has taken every reply";
}

// Regression (attack review): the one-second resend of an interrupt the
// guest missed covered only replies the queue thread pushed. A reply the
// pool pushed after the queue thread had gone to sleep, whose interrupt was
// lost, was never sent again, and a guest's umount (which fsyncs) hung.
TEST(VhostUser, AMissedInterruptForAPooledReplyIsSentAgain) {
    PooledSlowFsync t(/*used_event=*/0);  // the guest has seen nothing yet
    signalled(t.call.get(), 1000);        // the one SET_VRING_CALL sends
    fuse_fsync_in fi{};
    t.fe.queue_request(0, FUSE_FSYNC, 11, 1, &fi, sizeof fi);
    ASSERT_TRUE(t.kick_now());
    ASSERT_TRUE(t.slow.fsync_started(5000));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the queue thread is asleep by now
    t.slow.release_fsync();
    ASSERT_TRUE(t.fe.used_reaches(1));
    EXPECT_TRUE(signalled(t.call.get(), 1000)) << "no interrupt for the reply";
    // That interrupt is "lost": the guest's used_event stays 0, behind 1.
    EXPECT_TRUE(signalled(t.call.get(), 3500)) << "the missed interrupt of a pooled reply was not sent again";
}
