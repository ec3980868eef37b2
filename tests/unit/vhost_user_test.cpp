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

#include <cstring>
#include <chrono>
#include <thread>
#include <vector>

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

}  // namespace

// Regression: a queue thread that starts (or restarts, as SET_VRING_CALL
// does mid-run) waited for a kick before looking at its ring, so requests
// already queued without a kick were never served and the guest hung.
TEST(VhostUser, RequestsQueuedBeforeTheQueueStartsAreServedWithoutAKick) {
    test::Harness h;
    h.init();
    transport::VhostUserBackend backend(*h.server, {});
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    UniqueFd front(sv[0]), back(sv[1]);
    std::thread server([&] { backend.serve(back.get()); });

    UniqueFd mem(::memfd_create("guest", MFD_CLOEXEC));
    ASSERT_EQ(::ftruncate(mem.get(), kSize), 0);
    auto* ram = static_cast<std::byte*>(::mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, mem.get(), 0));
    ASSERT_NE(ram, MAP_FAILED);
    auto* desc = reinterpret_cast<vring_desc*>(ram);
    auto* avail = reinterpret_cast<vring_avail*>(ram + 16 * kNum);
    auto* used = reinterpret_cast<vring_used*>(ram + 4096);

    uint64_t features = get_u64(front.get(), 1);  // GET_FEATURES
    uint64_t want = features & ((1ull << 32) | (1ull << 29));  // VERSION_1, EVENT_IDX
    send_msg(front.get(), 3, nullptr, 0);              // SET_OWNER
    send_msg(front.get(), 2, &want, sizeof want);      // SET_FEATURES
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

    // A LOOKUP of "." queued before the ring runs, and no kick ever written.
    fuse_in_header ih{};
    ih.opcode = FUSE_LOOKUP;
    ih.unique = 5;
    ih.nodeid = 1;
    ih.len = sizeof ih + 2;
    std::memcpy(ram + 0x8000, &ih, sizeof ih);
    std::memcpy(ram + 0x8000 + sizeof ih, ".", 2);
    desc[0] = {kGpa + 0x8000, static_cast<uint32_t>(sizeof ih + 2), VRING_DESC_F_NEXT, 1};
    desc[1] = {kGpa + 0x9000, 4096, VRING_DESC_F_WRITE, 0};
    avail->ring[0] = 0;
    __atomic_store_n(&avail->idx, 1, __ATOMIC_RELEASE);

    UniqueFd call(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)), kick(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    uint64_t q1 = 1;
    send_msg(front.get(), 13, &q1, sizeof q1, {call.get()});  // SET_VRING_CALL
    send_msg(front.get(), 12, &q1, sizeof q1, {kick.get()});  // SET_VRING_KICK: the queue starts
    pollfd p{call.get(), POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 5000), 1) << "no interrupt: the queued request was not served";
    EXPECT_EQ(__atomic_load_n(&used->idx, __ATOMIC_ACQUIRE), 1) << "the request is still in the ring";
    fuse_out_header oh{};
    std::memcpy(&oh, ram + 0x9000, sizeof oh);
    EXPECT_EQ(oh.unique, 5u);

    // The same after SET_VRING_CALL restarts the running queue thread.
    std::memcpy(ram + 0xa000, &ih, sizeof ih);
    std::memcpy(ram + 0xa000 + sizeof ih, ".", 2);
    reinterpret_cast<fuse_in_header*>(ram + 0xa000)->unique = 6;
    desc[2] = {kGpa + 0xa000, static_cast<uint32_t>(sizeof ih + 2), VRING_DESC_F_NEXT, 3};
    desc[3] = {kGpa + 0xb000, 4096, VRING_DESC_F_WRITE, 0};
    UniqueFd call2(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the thread is asleep, waiting for a kick
    avail->ring[1] = 2;
    __atomic_store_n(&avail->idx, 2, __ATOMIC_RELEASE);  // queued, not kicked
    send_msg(front.get(), 13, &q1, sizeof q1, {call2.get()});
    pollfd p2{call2.get(), POLLIN, 0};
    ::poll(&p2, 1, 5000);
    EXPECT_EQ(__atomic_load_n(&used->idx, __ATOMIC_ACQUIRE), 2) << "a request queued across a restart was lost";

    front.reset();  // QEMU goes: serve returns
    server.join();
    ::munmap(ram, kSize);
}
