// Attacks on a real `ocivm fsd` child through our own vhost-user front end
// (issue 14): a hostile front end (bad memory tables, rings, fds, sizes)
// and a hostile guest (descriptor chains, FUSE requests). Every attack ends
// with fsd still serving, or exited with a logged error: never a crash, a
// hang or unbounded growth.
#include <gtest/gtest.h>
#include <linux/fuse.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <unistd.h>

#include <sys/stat.h>
#include <sys/xattr.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "security/frontend.h"

using namespace ocivm;
using namespace ocivm::security;

namespace {

std::string g_ocivm;

Session::Options opts(uint64_t ram = 64ull << 20, bool start = true) {
    Session::Options o;
    o.ocivm = g_ocivm;
    o.ram_size = ram;
    o.start = start;
    return o;
}

constexpr uint64_t MiB = 1ull << 20;

// fsd did not crash and still answers the front end and the guest.
#define EXPECT_STILL_SERVING(s)                                                        \
    do {                                                                               \
        EXPECT_TRUE((s).serving()) << "fsd stopped answering\n" << (s).report();       \
        EXPECT_TRUE((s).fuse_works()) << "FUSE requests no longer served\n" << (s).report(); \
    } while (0)

}  // namespace

TEST(Frontend, HandshakeAndFuseRequests) {
    Session s(opts());
    EXPECT_STILL_SERVING(s);
    // Many requests in flight at once, all answered with the right unique.
    std::byte dot[2] = {std::byte{'.'}, std::byte{0}};
    for (int round = 0; round < 4; ++round) {
        std::vector<int> slots;
        for (int i = 0; i < s.fuse->slots(); ++i) slots.push_back(s.fuse->submit(FUSE_LOOKUP, FUSE_ROOT_ID, dot));
        s.q.kick();
        for (int slot : slots) {
            FuseClient::Reply r;
            ASSERT_TRUE(s.fuse->wait(slot, r, 10000)) << s.report();
            EXPECT_EQ(r.error, 0);
        }
    }
}

// Issue 14, 8: one indirect descriptor of 256 MiB whose first two entries
// loop 0 -> 1 -> 0. The walk was bounded by the table's byte length (16 M
// entries), and every step kept an iovec: fsd grew by 256 MiB and kept it.
// A table has at most queue-size entries (virtio 1.x, 2.7.5.3.1).
TEST(Frontend, HugeLoopingIndirectTableIsRefusedWithoutGrowth) {
    Session s(opts(320 * MiB));
    uint64_t buf = s.ram.alloc(4096);
    uint64_t table = s.ram.alloc(256 * MiB, 4096);
    auto* ind = reinterpret_cast<Desc*>(s.ram.at(table));
    ind[0] = {buf, 64, kDescNext, 1};
    ind[1] = {buf, 64, kDescNext, 0};
    uint16_t head = s.fuse->first_free_desc();
    s.q.set_desc(head, table, 256 * MiB, kDescIndirect);
    ProcMemory before = s.fsd.memory();
    s.q.publish(head);
    s.q.kick();
    uint32_t len = 1;
    ASSERT_TRUE(s.fuse->wait_foreign(head, &len, 60000)) << "the bad chain was not returned\n" << s.report();
    EXPECT_EQ(len, 0u);
    ProcMemory after = s.fsd.memory();
    EXPECT_LT(after.anon, before.anon + 16 * 1024)
        << "fsd grew by " << (after.anon - before.anon) / 1024 << " MiB for one bad chain";
    EXPECT_STILL_SERVING(s);
}

// An indirect table of more entries than the queue has is refused; one of
// queue-size entries (the most a driver may use) is served.
TEST(Frontend, IndirectTableLimitIsTheQueueSize) {
    Session s(opts());
    uint16_t num = s.q.num();
    uint64_t table = s.ram.alloc(16ull * (num + 1), 16);
    auto* ind = reinterpret_cast<Desc*>(s.ram.at(table));
    // A LOOKUP of "." split over num-1 readable one-byte... keep it simple:
    // header, name, then writable buffers to fill the table.
    fuse_in_header ih{};
    ih.opcode = FUSE_LOOKUP;
    ih.unique = 4242;
    ih.nodeid = FUSE_ROOT_ID;
    ih.len = sizeof ih + 2;
    uint64_t in = s.ram.alloc(sizeof ih + 2);
    std::memcpy(s.ram.at(in), &ih, sizeof ih);
    std::memcpy(s.ram.at(in) + sizeof ih, ".", 2);
    uint64_t out = s.ram.alloc(64ull * num);
    auto build = [&](uint16_t entries) {
        ind[0] = {in, static_cast<uint32_t>(sizeof ih + 2), kDescNext, 1};
        for (uint16_t i = 1; i < entries; ++i)
            ind[i] = {out + 64ull * (i - 1), i == 1 ? 256u : 64u,
                      static_cast<uint16_t>(kDescWrite | (i + 1 < entries ? kDescNext : 0)),
                      static_cast<uint16_t>(i + 1)};
    };
    uint16_t head = s.fuse->first_free_desc();
    build(num);
    s.q.set_desc(head, table, 16u * num, kDescIndirect);
    s.q.publish(head);
    s.q.kick();
    uint32_t len = 0;
    ASSERT_TRUE(s.fuse->wait_foreign(head, &len, 10000)) << s.report();
    EXPECT_GT(len, 0u) << "a table of queue-size entries was refused\n" << s.report();
    build(static_cast<uint16_t>(num + 1));
    s.q.set_desc(head, table, 16u * (num + 1), kDescIndirect);
    s.q.publish(head);
    s.q.kick();
    ASSERT_TRUE(s.fuse->wait_foreign(head, &len, 10000)) << s.report();
    EXPECT_EQ(len, 0u) << "a table longer than the queue was served\n" << s.report();
    EXPECT_STILL_SERVING(s);
}

// Issue 14, 9: a region declared larger than its memfd was accepted, and a
// buffer past the file's end killed fsd with SIGBUS.
TEST(Frontend, RegionLargerThanItsFileIsRefused) {
    Session s(opts(16 * MiB, false));
    MemRegion r = s.ram.region();
    r.size = 2 * s.ram.size();
    int fd = s.ram.fd();
    auto st = s.dev.set_mem_table({&r, 1}, {&fd, 1});
    ASSERT_TRUE(st) << s.report();
    EXPECT_NE(*st, 0u) << "a region twice the size of its file was accepted";
    // Whatever fsd made of the table: a request whose reply buffer lies
    // past the end of the file.
    s.dev.start_queue(s.q);
    FuseClient fc(s.ram, s.q, 4);
    fuse_in_header ih{};
    ih.opcode = FUSE_INIT;
    ih.len = sizeof ih + sizeof(fuse_init_in);
    fuse_init_in ii{};
    ii.major = FUSE_KERNEL_VERSION;
    ii.minor = FUSE_KERNEL_MINOR_VERSION;
    uint64_t in = s.ram.alloc(ih.len);
    std::memcpy(s.ram.at(in), &ih, sizeof ih);
    std::memcpy(s.ram.at(in) + sizeof ih, &ii, sizeof ii);
    uint16_t head = fc.first_free_desc();
    s.q.set_desc(head, in, ih.len, kDescNext, head + 1);
    s.q.set_desc(head + 1, s.ram.gpa() + s.ram.size() + 4096, 4096, kDescWrite);
    s.q.publish(head);
    s.q.kick();
    fc.wait_foreign(head, nullptr, 2000);
    EXPECT_TRUE(s.serving()) << s.report();
    EXPECT_FALSE(s.fsd.crashed()) << s.report();
    // A correct table afterwards brings the queue up.
    st = s.dev.set_mem_table(s.ram);
    ASSERT_TRUE(st && *st == 0) << s.report();
    s.fuse.emplace(s.ram, s.q, 4);
    ASSERT_TRUE(s.fuse->init()) << s.report();
    EXPECT_STILL_SERVING(s);
}

// Issue 14, 10: size + mmap_offset wrapped around, and fsd computed a host
// pointer anywhere in its own address space.
TEST(Frontend, RegionWhoseOffsetWrapsIsRefused) {
    Session s(opts(16 * MiB, false));
    int fd = s.ram.fd();
    const MemRegion bad[] = {
        // size + mmap_offset wraps to 512 KiB: the old code mapped that
        // and put the region 512 KiB below the mapping.
        {s.ram.gpa(), 1 * MiB, s.ram.uaddr(), ~0ull - 512 * 1024 + 1},
        // gpa + size wraps.
        {~0ull - 4095, 1 * MiB, s.ram.uaddr(), 0},
        // uaddr + size wraps.
        {s.ram.gpa(), 1 * MiB, ~0ull - 4095, 0},
        // the offset alone is past the file's end.
        {s.ram.gpa(), 1 * MiB, s.ram.uaddr(), 64 * MiB},
        // size 0, and a size the file cannot hold.
        {s.ram.gpa(), 0, s.ram.uaddr(), 0},
        {s.ram.gpa(), 1ull << 63, s.ram.uaddr(), 0},
    };
    for (const auto& r : bad) {
        auto st = s.dev.set_mem_table({&r, 1}, {&fd, 1});
        ASSERT_TRUE(st) << "no answer to region gpa=" << std::hex << r.gpa << " size=" << r.size
                        << " offset=" << r.mmap_offset << "\n" << s.report();
        EXPECT_NE(*st, 0u) << "accepted region gpa=" << std::hex << r.gpa << " size=" << r.size
                           << " uaddr=" << r.uaddr << " offset=" << r.mmap_offset;
        // The first one, accepted, is a wild pointer once a ring uses it.
        s.dev.start_queue(s.q);
        s.q.kick();
        EXPECT_TRUE(s.serving()) << s.report();
    }
    auto st = s.dev.set_mem_table(s.ram);
    ASSERT_TRUE(st && *st == 0) << s.report();
    s.fuse.emplace(s.ram, s.q, 4);
    ASSERT_TRUE(s.fuse->init()) << s.report();
    EXPECT_STILL_SERVING(s);
}

// Issue 14, 11: a new memory table that no longer covers the rings (or has
// no regions at all) was acked, the old mapping dropped, and the rings kept
// their old pointers: the next kick crashed fsd. The queue stops instead,
// and starts again once a table covers its rings.
TEST(Frontend, MemTableThatDropsTheRingsStopsTheQueue) {
    for (int variant = 0; variant < 2; ++variant) {
        SCOPED_TRACE(variant == 0 ? "a table elsewhere" : "an empty table");
        Session s(opts());
        ASSERT_TRUE(s.fuse_works()) << s.report();
        GuestRam other(1 * MiB, 0x400000000ull, 0x7f3400000000ull, "other-ram");
        std::optional<uint64_t> st;
        if (variant == 0) st = s.dev.set_mem_table(other);
        else st = s.dev.set_mem_table({}, {});
        ASSERT_TRUE(st) << s.report();
        // The guest keeps using its rings.
        std::byte dot[2] = {std::byte{'.'}, std::byte{0}};
        int slot = s.fuse->submit(FUSE_LOOKUP, FUSE_ROOT_ID, dot);
        s.q.kick();
        FuseClient::Reply r;
        s.fuse->wait(slot, r, 1000);  // no memory to reply into: no reply expected
        EXPECT_FALSE(s.fsd.crashed()) << s.report();
        EXPECT_TRUE(s.serving()) << s.report();
        EXPECT_FALSE(r.answered) << "a request was served through unmapped rings";
        // The guest's memory back: the queue resumes where it stopped.
        st = s.dev.set_mem_table(s.ram);
        ASSERT_TRUE(st && *st == 0) << s.report();
        if (!r.answered) {
            ASSERT_TRUE(s.fuse->wait(slot, r, 10000)) << "the queue did not resume\n" << s.report();
        }
        EXPECT_EQ(r.error, 0);
        EXPECT_STILL_SERVING(s);
    }
}

// The table replaced again and again while the guest keeps the ring busy:
// no request is lost or served through a dropped mapping.
TEST(Frontend, MemTableReplacedUnderLoad) {
    Session s(opts());
    std::byte dot[2] = {std::byte{'.'}, std::byte{0}};
    for (int round = 0; round < 100; ++round) {
        std::vector<int> slots;
        for (int i = 0; i < s.fuse->slots(); ++i) slots.push_back(s.fuse->submit(FUSE_LOOKUP, FUSE_ROOT_ID, dot));
        s.q.kick();
        auto st = s.dev.set_mem_table(s.ram);
        ASSERT_TRUE(st && *st == 0) << "round " << round << "\n" << s.report();
        for (int slot : slots) {
            FuseClient::Reply r;
            ASSERT_TRUE(s.fuse->wait(slot, r, 10000)) << "round " << round << " lost a request\n" << s.report();
            EXPECT_EQ(r.error, 0);
        }
    }
    EXPECT_STILL_SERVING(s);
}

// ---------------------------------------------------------------------------
// The rest of the front end's surface, as an attacker would use it.

namespace {

// fsd ended on its own without a crash, saying why in its log.
void expect_clean_exit(Session& s, const char* what) {
    ASSERT_TRUE(s.fsd.wait_exit(20000)) << what << ": fsd did not exit\n" << s.report();
    EXPECT_FALSE(s.fsd.crashed()) << what << "\n" << s.report();
    EXPECT_TRUE(WIFEXITED(s.fsd.exit_status())) << what << "\n" << s.report();
}

UniqueFd open_fd(const char* path, int flags) { return UniqueFd(::open(path, flags | O_CLOEXEC)); }

}  // namespace

TEST(Frontend, MemTableWithFdsThatAreNotMemory) {
    Session s(opts(16 * MiB, false));
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    UniqueFd pr(p[0]), pw(p[1]);
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    UniqueFd sa(sv[0]), sb(sv[1]);
    UniqueFd dir = open_fd(s.share.c_str(), O_RDONLY | O_DIRECTORY);
    UniqueFd efd(::eventfd(0, EFD_CLOEXEC));
    UniqueFd zero = open_fd("/dev/zero", O_RDWR);
    UniqueFd ro = open_fd("/proc/self/exe", O_RDONLY);  // a file it cannot map writable
    struct {
        const char* name;
        int fd;
    } cases[] = {{"a pipe", pr.get()}, {"a socket", sa.get()}, {"a directory", dir.get()},
                 {"an eventfd", efd.get()}, {"/dev/zero", zero.get()}, {"a read-only file", ro.get()}};
    for (const auto& c : cases) {
        ASSERT_GE(c.fd, 0) << c.name;
        MemRegion r{s.ram.gpa(), 4096, s.ram.uaddr(), 0};
        auto st = s.dev.set_mem_table({&r, 1}, {&c.fd, 1});
        ASSERT_TRUE(st) << c.name << "\n" << s.report();
        EXPECT_NE(*st, 0u) << c.name << " accepted as guest memory";
    }
    auto st = s.dev.set_mem_table(s.ram);
    ASSERT_TRUE(st && *st == 0) << s.report();
    s.dev.start_queue(s.q);
    s.fuse.emplace(s.ram, s.q, 4);
    ASSERT_TRUE(s.fuse->init()) << s.report();
    EXPECT_STILL_SERVING(s);
}

TEST(Frontend, MemTableRegionAndFdCountsThatDisagree) {
    Session s(opts(16 * MiB, false));
    int fd = s.ram.fd();
    MemRegion r[9];
    for (int i = 0; i < 9; ++i) r[i] = {s.ram.gpa() + i * MiB, MiB, s.ram.uaddr() + i * MiB, i * MiB};
    int fds[9] = {fd, fd, fd, fd, fd, fd, fd, fd, fd};
    // One region, no fd; one region, two fds; two regions, one fd.
    EXPECT_NE(s.dev.set_mem_table({r, 1}, {}).value_or(0), 0u);
    EXPECT_NE(s.dev.set_mem_table({r, 1}, {fds, 2}).value_or(0), 0u);
    EXPECT_NE(s.dev.set_mem_table({r, 2}, {fds, 1}).value_or(0), 0u);
    // Nine regions (the limit is eight): with eight fds, and with nine
    // (more fds than a message may carry).
    EXPECT_NE(s.dev.set_mem_table({r, 9}, {fds, 8}).value_or(0), 0u);
    EXPECT_NE(s.dev.set_mem_table({r, 9}, {fds, 9}).value_or(0), 0u);
    // A count far beyond the payload.
    uint32_t huge[2] = {0xffffffffu, 0};
    EXPECT_NE(s.ch.request_ack(kSetMemTable, huge, sizeof huge).value_or(0), 0u);
    // Payload shorter than the regions it announces.
    std::vector<std::byte> p(8 + sizeof(MemRegion));
    uint32_t two = 2;
    std::memcpy(p.data(), &two, 4);
    std::memcpy(p.data() + 8, r, sizeof(MemRegion));
    EXPECT_NE(s.ch.request_ack(kSetMemTable, p.data(), static_cast<uint32_t>(p.size()), {fds, 2}).value_or(0), 0u);
    EXPECT_NE(s.ch.request_ack(kSetMemTable, nullptr, 0).value_or(0), 0u);
    // Eight regions of the same file, each with its fd: fine.
    EXPECT_EQ(s.dev.set_mem_table({r, 8}, {fds, 8}).value_or(1), 0u) << s.report();
    ASSERT_TRUE(s.serving()) << s.report();
    s.dev.start_queue(s.q);
    s.fuse.emplace(s.ram, s.q, 4);
    ASSERT_TRUE(s.fuse->init()) << s.report();
    EXPECT_STILL_SERVING(s);
}

// fds on messages that take none (or more than a message may carry) are
// closed, never kept: fsd's fd count does not grow.
TEST(Frontend, FdsAttachedToMessagesThatTakeNone) {
    Session s(opts());
    int before = count_fds(s.fsd.server_pid());
    ASSERT_GT(before, 0);
    std::vector<UniqueFd> own;
    std::vector<int> fds;
    for (int i = 0; i < 12; ++i) {
        own.emplace_back(::eventfd(0, EFD_CLOEXEC));
        fds.push_back(own.back().get());
    }
    for (int i = 0; i < 200; ++i) {
        // GET_FEATURES with 3 fds, SET_OWNER with 8, and 12 (more than allowed).
        ASSERT_TRUE(s.ch.send(kGetFeatures, nullptr, 0, {fds.data(), 3}));
        ASSERT_TRUE(s.ch.recv(10000)) << s.report();
        ASSERT_TRUE(s.ch.request_ack(kSetOwner, nullptr, 0, {fds.data(), 8})) << s.report();
        auto st = s.ch.request_ack(kGetQueueNum + 1000, nullptr, 0, {fds.data(), 12});
        ASSERT_TRUE(st) << "fsd stopped answering after a message with 12 fds\n" << s.report();
        EXPECT_NE(*st, 0u);
    }
    // A message's fds are closed once it is handled, just after its reply:
    // one more round trip and the last ones are gone.
    ASSERT_TRUE(s.ch.alive()) << s.report();
    int after = count_fds(s.fsd.server_pid());
    if (after > before + 2) {
        ADD_FAILURE() << "fsd kept fds it was sent: " << before << " before, " << after << " after";
        std::system(("ls -l /proc/" + std::to_string(s.fsd.server_pid()) + "/fd >&2").c_str());
    }
    EXPECT_STILL_SERVING(s);
}

TEST(Frontend, VringNumThatIsNotAQueueSize) {
    Session s(opts(16 * MiB, false));
    ASSERT_EQ(s.dev.set_mem_table(s.ram).value_or(1), 0u);
    for (uint32_t num : {0u, 3u, 100u, 65536u, 0x10000000u, 0xffffffffu})
        EXPECT_NE(s.dev.vring_state(kSetVringNum, 1, num).value_or(0), 0u) << "size " << num;
    EXPECT_NE(s.dev.vring_state(kSetVringNum, 99, 16).value_or(0), 0u) << "queue 99";
    EXPECT_NE(s.dev.vring_state(kSetVringNum, 0xffffffffu, 16).value_or(0), 0u) << "queue 2^32-1";
    s.dev.start_queue(s.q);
    s.fuse.emplace(s.ram, s.q, 4);
    ASSERT_TRUE(s.fuse->init()) << s.report();
    EXPECT_STILL_SERVING(s);
}

// The base is a free-running 16-bit index: past the size is valid (taken
// modulo the size); past 16 bits is not.
TEST(Frontend, VringBasePastTheQueueSize) {
    Session s(opts(16 * MiB, false));
    ASSERT_EQ(s.dev.set_mem_table(s.ram).value_or(1), 0u);
    EXPECT_NE(s.dev.vring_state(kSetVringBase, 1, 0x10000).value_or(0), 0u);
    EXPECT_NE(s.dev.vring_state(kSetVringBase, 1, 0xffffffffu).value_or(0), 0u);
    s.dev.start_queue(s.q, 1000);
    s.fuse.emplace(s.ram, s.q, 4);
    ASSERT_TRUE(s.fuse->init()) << s.report();
    for (int i = 0; i < 600; ++i) ASSERT_TRUE(s.fuse_works()) << i << "\n" << s.report();
    // Moved while the queue runs (and across the 16-bit wrap): it goes on
    // from there.
    s.q.reset_indices(65300);
    ASSERT_EQ(s.dev.vring_state(kSetVringBase, 1, 65300).value_or(1), 0u);
    for (int i = 0; i < 600; ++i) ASSERT_TRUE(s.fuse_works()) << i << "\n" << s.report();
    EXPECT_STILL_SERVING(s);
}

TEST(Frontend, RingAddressesOutsideMemoryOrMisaligned) {
    Session s(opts(16 * MiB, false));
    ASSERT_EQ(s.dev.set_mem_table(s.ram).value_or(1), 0u);
    ASSERT_EQ(s.dev.vring_state(kSetVringNum, 1, s.q.num()).value_or(1), 0u);
    ASSERT_EQ(s.dev.vring_fd(kSetVringCall, 1, s.q.call_fd()).value_or(1), 0u);
    ASSERT_EQ(s.dev.vring_fd(kSetVringKick, 1, s.q.kick_fd()).value_or(1), 0u);
    ASSERT_EQ(s.dev.vring_state(kSetVringEnable, 1, 1).value_or(1), 0u);
    VringAddr good = s.q.addr();
    uint64_t end = s.ram.uaddr() + s.ram.size();
    struct {
        const char* name;
        VringAddr a;
    } cases[] = {
        {"desc outside memory", {1, 0, 0x1000, good.used, good.avail, 0}},
        {"used straddles the end", {1, 0, good.desc, end - 8, good.avail, 0}},
        {"avail near 2^64", {1, 0, good.desc, good.used, ~0ull - 1, 0}},
        {"desc misaligned", {1, 0, good.desc + 8, good.used, good.avail, 0}},
        {"used misaligned", {1, 0, good.desc, good.used + 2, good.avail, 0}},
        {"avail misaligned", {1, 0, good.desc, good.used, good.avail + 1, 0}},
        {"queue 77", {77, 0, good.desc, good.used, good.avail, 0}},
    };
    for (const auto& c : cases) {
        auto st = s.ch.request_ack(kSetVringAddr, &c.a, sizeof c.a);
        ASSERT_TRUE(st) << c.name << "\n" << s.report();
        EXPECT_NE(*st, 0u) << c.name << " accepted";
        s.q.kick();
        ASSERT_TRUE(s.serving()) << c.name << "\n" << s.report();
    }
    // Too short a payload for SET_VRING_ADDR.
    EXPECT_NE(s.ch.request_ack(kSetVringAddr, &good, 8).value_or(0), 0u);
    ASSERT_EQ(s.ch.request_ack(kSetVringAddr, &good, sizeof good).value_or(1), 0u) << s.report();
    s.fuse.emplace(s.ram, s.q, 4);
    ASSERT_TRUE(s.fuse->init()) << s.report();
    // Rings moved outside memory while the queue runs: refused, the
    // queue keeps its rings.
    auto st = s.ch.request_ack(kSetVringAddr, &cases[0].a, sizeof cases[0].a);
    EXPECT_NE(st.value_or(0), 0u);
    EXPECT_STILL_SERVING(s);
}

// Rings that overlap each other or the request buffers: nonsense, but
// only the guest's own memory is scribbled on.
TEST(Frontend, RingsThatOverlap) {
    Session s(opts(16 * MiB, false));
    ASSERT_EQ(s.dev.set_mem_table(s.ram).value_or(1), 0u);
    VringAddr a = s.q.addr();
    a.used = a.desc;  // used entries land in the descriptor table
    ASSERT_EQ(s.dev.vring_state(kSetVringNum, 1, s.q.num()).value_or(1), 0u);
    ASSERT_EQ(s.ch.request_ack(kSetVringAddr, &a, sizeof a).value_or(1), 0u);
    ASSERT_EQ(s.dev.vring_fd(kSetVringCall, 1, s.q.call_fd()).value_or(1), 0u);
    ASSERT_EQ(s.dev.vring_fd(kSetVringKick, 1, s.q.kick_fd()).value_or(1), 0u);
    ASSERT_EQ(s.dev.vring_state(kSetVringEnable, 1, 1).value_or(1), 0u);
    FuseClient fc(s.ram, s.q, 8);
    std::byte dot[2] = {std::byte{'.'}, std::byte{0}};
    for (int i = 0; i < 8; ++i) fc.submit(FUSE_LOOKUP, FUSE_ROOT_ID, dot);
    s.q.kick();
    ::usleep(200 * 1000);
    EXPECT_TRUE(s.serving()) << s.report();
    EXPECT_FALSE(s.fsd.crashed()) << s.report();
}

// Messages whose size field lies. Short payloads are refused; a size past
// the limit cannot be resynchronised from and ends the connection, with an
// error logged.
TEST(Frontend, MessagesWithLyingSizes) {
    {
        Session s(opts());
        std::byte zeros[64] = {};
        for (uint32_t req : {uint32_t(kSetFeatures), uint32_t(kSetVringNum), uint32_t(kSetVringBase),
                             uint32_t(kSetVringKick), uint32_t(kSetVringCall), uint32_t(kSetVringEnable),
                             uint32_t(kSetProtocolFeatures), uint32_t(kGetVringBase)}) {
            for (uint32_t size : {0u, 1u, 4u, 7u}) {
                auto st = s.ch.request_ack(req, zeros, size);
                if (req == kGetVringBase && size < 8) {
                    ASSERT_TRUE(st.has_value()) << "request " << req << " size " << size << "\n" << s.report();
                }
                if (st) {
                    EXPECT_NE(*st, 0u) << "request " << req << " with " << size << " bytes accepted";
                }
            }
        }
        EXPECT_STILL_SERVING(s);
    }
    {
        Session s(opts());
        uint32_t hdr[3] = {kGetFeatures, kFlagVersion, 1u << 20};
        ASSERT_TRUE(s.ch.send_bytes(hdr, sizeof hdr));
        expect_clean_exit(s, "a 1 MiB payload announced");
        EXPECT_NE(s.fsd.log().find("error"), std::string::npos) << s.report();
    }
    {
        Session s(opts());
        // 40 bytes announced, 10 sent, then the front end goes.
        std::byte msg[12 + 10] = {};
        uint32_t hdr[3] = {kSetVringAddr, kFlagVersion, 40};
        std::memcpy(msg, hdr, sizeof hdr);
        ASSERT_TRUE(s.ch.send_bytes(msg, sizeof msg));
        s.ch.close();
        expect_clean_exit(s, "disconnected in the middle of a message");
    }
    {
        Session s(opts());
        // Half a header, then the front end goes.
        uint32_t half = kGetFeatures;
        ASSERT_TRUE(s.ch.send_bytes(&half, sizeof half));
        s.ch.close();
        expect_clean_exit(s, "disconnected in the middle of a header");
    }
}

TEST(Frontend, UnknownRequestsAndFeatures) {
    Session s(opts());
    for (uint32_t req : {0u, 19u, 40u, 99u, 0x7fffffffu, 0xffffffffu}) {
        auto st = s.ch.request_ack(req, nullptr, 0);
        ASSERT_TRUE(st) << "request " << req << ": no answer\n" << s.report();
        EXPECT_NE(*st, 0u) << "unknown request " << req << " accepted";
    }
    // Features that were never offered.
    uint64_t f = ~0ull;
    EXPECT_NE(s.ch.request_ack(kSetFeatures, &f, sizeof f).value_or(0), 0u);
    EXPECT_STILL_SERVING(s);
}

// kick, call and err are eventfds. A regular file as kick is always
// readable (a thread spinning forever); a pipe as call blocks once full.
TEST(Frontend, VringFdsThatAreNotEventfds) {
    Session s(opts());
    std::string path = s.dir.path() + "/not-an-eventfd";
    UniqueFd file(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    ASSERT_TRUE(file);
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    UniqueFd pr(p[0]), pw(p[1]);
    for (uint32_t req : {uint32_t(kSetVringKick), uint32_t(kSetVringCall), uint32_t(kSetVringErr)}) {
        for (int fd : {file.get(), pr.get(), pw.get()}) {
            EXPECT_NE(s.dev.vring_fd(req, 1, fd).value_or(0), 0u) << "request " << req;
            ASSERT_TRUE(s.serving()) << s.report();
        }
        // No fd although the message says there is one; two fds.
        uint64_t v = 1;
        EXPECT_NE(s.ch.request_ack(req, &v, sizeof v).value_or(0), 0u);
        int two[2] = {s.q.kick_fd(), s.q.call_fd()};
        EXPECT_NE(s.ch.request_ack(req, &v, sizeof v, two).value_or(0), 0u);
        v = 200;  // queue 200
        EXPECT_NE(s.ch.request_ack(req, &v, sizeof v, {two, 1}).value_or(0), 0u);
    }
    // The queue still runs with its own eventfds.
    EXPECT_STILL_SERVING(s);
    struct stat st;
    ASSERT_EQ(::fstat(file.get(), &st), 0);
    EXPECT_EQ(st.st_size, 0) << "fsd wrote interrupts into a regular file";
}

// A front end that fills its call eventfd to the maximum and makes it
// blocking: fsd's interrupt write waits. When the front end then goes,
// fsd still stops (the waiting thread is interrupted) and exits.
TEST(Frontend, SaturatedCallEventfdDoesNotHangTheExit) {
    Session s(opts());
    int call = s.q.call_fd();
    uint64_t v;
    (void)!::read(call, &v, sizeof v);
    ASSERT_EQ(::fcntl(call, F_SETFL, ::fcntl(call, F_GETFL) & ~O_NONBLOCK), 0);
    v = 0xfffffffffffffffeull;
    ASSERT_EQ(::write(call, &v, sizeof v), 8);
    std::byte dot[2] = {std::byte{'.'}, std::byte{0}};
    for (int i = 0; i < 4; ++i) s.fuse->submit(FUSE_LOOKUP, FUSE_ROOT_ID, dot);
    s.q.kick();
    // The requests are served; the interrupt for them cannot be delivered.
    for (int i = 0; i < 1000 && s.q.used_idx() == 0; ++i) ::usleep(10 * 1000);
    ASSERT_NE(s.q.used_idx(), 0) << s.report();
    ::usleep(100 * 1000);
    s.ch.close();
    expect_clean_exit(s, "front end gone with a saturated call eventfd");
}

// The front end goes while requests are in flight.
TEST(Frontend, DisconnectMidRequest) {
    for (int variant = 0; variant < 3; ++variant) {
        SCOPED_TRACE(variant);
        Session s(opts());
        std::byte dot[2] = {std::byte{'.'}, std::byte{0}};
        for (int i = 0; i < s.fuse->slots(); ++i) s.fuse->submit(FUSE_LOOKUP, FUSE_ROOT_ID, dot);
        s.q.kick();
        if (variant == 1) ::usleep(1000);
        if (variant == 2) {
            // And its memory table gone first.
            s.dev.set_mem_table({}, {});
        }
        s.ch.close();
        expect_clean_exit(s, "front end gone mid-request");
        EXPECT_EQ(WEXITSTATUS(s.fsd.exit_status()), 0) << s.report();
    }
}

// GET_VRING_BASE stops the ring (kicks to the old fd are ignored), and a
// new kick fd starts it again where it stopped.
TEST(Frontend, RingStoppedAndRestarted) {
    Session s(opts());
    auto sent = s.ch.send(kGetVringBase, std::array<uint32_t, 2>{1, 0}.data(), 8);
    ASSERT_TRUE(sent);
    auto r = s.ch.recv(10000);
    ASSERT_TRUE(r && r->payload.size() == 8) << s.report();
    uint32_t base[2];
    std::memcpy(base, r->payload.data(), 8);
    EXPECT_EQ(base[1], s.q.avail_idx());
    std::byte dot[2] = {std::byte{'.'}, std::byte{0}};
    int slot = s.fuse->submit(FUSE_LOOKUP, FUSE_ROOT_ID, dot);
    s.q.kick();
    FuseClient::Reply rep;
    EXPECT_FALSE(s.fuse->wait(slot, rep, 300)) << "a stopped ring was served";
    ASSERT_EQ(s.dev.vring_fd(kSetVringKick, 1, s.q.kick_fd()).value_or(1), 0u);
    ASSERT_TRUE(s.fuse->wait(slot, rep, 10000)) << s.report();
    // RESET_OWNER, then the whole set-up again.
    ASSERT_EQ(s.ch.request_ack(kResetOwner, nullptr, 0).value_or(1), 0u);
    s.q.reset_indices(s.q.avail_idx());
    ASSERT_EQ(s.dev.vring_state(kSetVringBase, 1, s.q.avail_idx()).value_or(1), 0u);
    ASSERT_EQ(s.dev.vring_fd(kSetVringKick, 1, s.q.kick_fd()).value_or(1), 0u);
    EXPECT_STILL_SERVING(s);
}

// The front end shrinks guest RAM after fsd checked it: buffers past the
// new end fault, and fsd must not die of SIGBUS.
TEST(Frontend, GuestRamShrunkAfterTheTable) {
    Session s(opts(64 * MiB));
    ASSERT_TRUE(s.fuse_works()) << s.report();
    // Buffers far in, then the file cut to just the rings and slots.
    uint64_t in = s.ram.alloc(4096, 4096);
    uint64_t far = s.ram.gpa() + 48 * MiB;
    fuse_in_header ih{};
    ih.opcode = FUSE_LOOKUP;
    ih.unique = 99;
    ih.nodeid = FUSE_ROOT_ID;
    ih.len = sizeof ih + 2;
    std::memcpy(s.ram.at(in), &ih, sizeof ih);
    std::memcpy(s.ram.at(in) + sizeof ih, ".", 2);
    std::memcpy(s.ram.at(far), &ih, sizeof ih);
    std::memcpy(s.ram.at(far) + sizeof ih, ".", 2);
    ASSERT_EQ(::ftruncate(s.ram.fd(), static_cast<off_t>(s.ram.mark() - s.ram.gpa() + 4096)), 0);
    uint16_t head = s.fuse->first_free_desc();
    // Readable past the end, then writable past the end.
    s.q.set_desc(head, far, ih.len, kDescNext, head + 1);
    s.q.set_desc(head + 1, in + 1024, 1024, kDescWrite);
    s.q.set_desc(head + 2, in, ih.len, kDescNext, head + 3);
    s.q.set_desc(head + 3, far + 8192, 4096, kDescWrite);
    s.q.publish(head);
    s.q.publish(head + 2);
    s.q.kick();
    uint32_t len;
    EXPECT_TRUE(s.fuse->wait_foreign(head, &len, 10000)) << s.report();
    EXPECT_TRUE(s.fuse->wait_foreign(head + 2, &len, 10000)) << s.report();
    EXPECT_FALSE(s.fsd.crashed()) << s.report();
    EXPECT_STILL_SERVING(s);
}

// Tables replaced many times: the old mappings and fds go with them.
TEST(Frontend, ManyMemTablesLeaveNothingBehind) {
    Session s(opts());
    ASSERT_TRUE(s.fuse_works());
    int fds_before = count_fds(s.fsd.server_pid());
    ProcMemory before = s.fsd.memory();
    for (int i = 0; i < 300; ++i) {
        GuestRam extra(1 * MiB, 0x800000000ull, 0x7f5600000000ull, "extra");
        MemRegion r[2] = {s.ram.region(), extra.region()};
        int fds[2] = {s.ram.fd(), extra.fd()};
        ASSERT_EQ(s.dev.set_mem_table(r, fds).value_or(1), 0u) << i << "\n" << s.report();
    }
    ASSERT_EQ(s.dev.set_mem_table(s.ram).value_or(1), 0u);
    EXPECT_TRUE(s.fuse_works()) << s.report();
    EXPECT_LE(count_fds(s.fsd.server_pid()), fds_before + 2);
    ProcMemory after = s.fsd.memory();
    EXPECT_LT(after.anon, before.anon + 8 * 1024);
    EXPECT_STILL_SERVING(s);
}

// Refused messages and bad chains by the thousand: fsd's log grows by a
// few lines, not one per attack (its stderr may be a file on the host).
TEST(Frontend, RepeatedAttacksDoNotFloodTheLog) {
    Session s(opts());
    size_t before = s.fsd.log().size();
    uint32_t bad_num[2] = {1, 3};
    VringAddr misaligned = s.q.addr();
    misaligned.desc += 8;
    for (int i = 0; i < 3000; ++i) {
        ASSERT_TRUE(s.ch.send(9999, nullptr, 0));
        ASSERT_TRUE(s.ch.send(kSetVringNum, bad_num, sizeof bad_num));
        ASSERT_TRUE(s.ch.send(kSetVringAddr, &misaligned, sizeof misaligned));
    }
    ASSERT_TRUE(s.ch.alive()) << s.report();
    uint16_t h = s.fuse->first_free_desc();
    for (int round = 0; round < 30; ++round) {
        for (int i = 0; i < 100; ++i) {
            s.q.set_desc(h, 0x1000, 64, 0);  // outside guest memory
            s.q.publish(h);
        }
        s.q.kick();
        ASSERT_TRUE(s.fuse_works()) << s.report();
    }
    size_t grown = s.fsd.log().size() - before;
    EXPECT_LT(grown, 16u * 1024) << "12,000 attacks added " << grown << " bytes to fsd's log";
    EXPECT_STILL_SERVING(s);
}

// ---------------------------------------------------------------------------
// A hostile guest: chains and FUSE headers.

TEST(Frontend, HostileChains) {
    Session s(opts());
    uint16_t h = s.fuse->first_free_desc();
    uint16_t num = s.q.num();
    uint64_t buf = s.ram.alloc(8192, 4096);
    struct Case {
        const char* name;
        std::function<void()> build;  // sets up descriptors from h, publishes
    };
    auto ret = [&](uint16_t head) { s.q.publish(head); };
    Case cases[] = {
        {"head out of range", [&] { ret(static_cast<uint16_t>(num + 5)); }},
        {"buffer outside memory", [&] { s.q.set_desc(h, 0x1000, 64, 0); ret(h); }},
        {"buffer wraps the address space", [&] { s.q.set_desc(h, ~0ull - 16, 64, 0); ret(h); }},
        {"buffer straddles the end of RAM",
         [&] { s.q.set_desc(h, s.ram.gpa() + s.ram.size() - 8, 64, 0); ret(h); }},
        {"next out of range", [&] { s.q.set_desc(h, buf, 64, kDescNext, 60000); ret(h); }},
        {"loop", [&] {
             s.q.set_desc(h, buf, 64, kDescNext, h + 1);
             s.q.set_desc(h + 1, buf, 64, kDescNext, h);
             ret(h);
         }},
        {"readable after writable", [&] {
             s.q.set_desc(h, buf, 64, kDescNext | kDescWrite, h + 1);
             s.q.set_desc(h + 1, buf, 64, 0);
             ret(h);
         }},
        {"zero-length buffers only", [&] {
             s.q.set_desc(h, buf, 0, kDescNext, h + 1);
             s.q.set_desc(h + 1, buf, 0, kDescWrite);
             ret(h);
         }},
        {"request larger than the server takes", [&] {
             uint64_t big = s.ram.gpa() + 8 * MiB;
             s.q.set_desc(h, big, 4 * MiB, kDescNext, h + 1);
             s.q.set_desc(h + 1, buf, 4096, kDescWrite);
             ret(h);
         }},
        {"indirect with next", [&] { s.q.set_desc(h, buf, 32, kDescIndirect | kDescNext, h + 1); ret(h); }},
        {"indirect of zero length", [&] { s.q.set_desc(h, buf, 0, kDescIndirect); ret(h); }},
        {"nested indirect", [&] {
             auto* ind = reinterpret_cast<Desc*>(s.ram.at(buf));
             ind[0] = {buf + 256, 16, kDescIndirect, 0};
             s.q.set_desc(h, buf, 16, kDescIndirect);
             ret(h);
         }},
        {"writable gigabytes", [&] {
             // Writable buffers the guest claims are huge: inside RAM?
             // Not 4 GiB of it; outside, so refused.
             s.q.set_desc(h, buf, 64, kDescNext, h + 1);
             s.q.set_desc(h + 1, buf, 0xffffffffu, kDescWrite);
             ret(h);
         }},
        {"available index far ahead", [&] { s.q.set_avail_idx(static_cast<uint16_t>(s.q.avail_idx() + 5000)); }},
    };
    for (const auto& c : cases) {
        c.build();
        s.q.kick();
        // Whatever happened to the bad chain, a good request is answered.
        // (After the index jump, fsd may read the index once our next
        // request is in already and skip that one too: a second one is
        // answered.)
        ASSERT_TRUE(s.fuse_works(3000) || s.fuse_works()) << c.name << "\n" << s.report();
        s.fuse->others().clear();
    }
    EXPECT_STILL_SERVING(s);
}

// FUSE headers that lie about their length or opcode get an error reply
// (or none), never a crash.
TEST(Frontend, HostileFuseHeaders) {
    Session s(opts());
    auto raw = [&](fuse_in_header ih, size_t extra, uint32_t out_len = 0) {
        std::vector<std::byte> req(sizeof ih + extra);
        std::memcpy(req.data(), &ih, sizeof ih);
        int slot = s.fuse->submit_raw(req, out_len);
        s.q.kick();
        FuseClient::Reply r;
        return s.fuse->wait(slot, r, 10000) ? r : FuseClient::Reply{};
    };
    fuse_in_header ih{};
    ih.unique = 5;
    ih.nodeid = FUSE_ROOT_ID;
    struct {
        const char* name;
        uint32_t opcode, len;
        size_t extra;
        uint32_t out;
    } cases[] = {
        {"len larger than the request", FUSE_GETATTR, 1u << 30, 16, 0},
        {"len smaller than the header", FUSE_GETATTR, 8, 16, 0},
        {"len 0", FUSE_LOOKUP, 0, 0, 0},
        {"unknown opcode", 9999, sizeof(fuse_in_header), 0, 0},
        {"opcode 0", 0, sizeof(fuse_in_header), 0, 0},
        {"READ with no arguments", FUSE_READ, sizeof(fuse_in_header), 0, 0},
        {"LOOKUP without a terminating NUL", FUSE_LOOKUP, sizeof(fuse_in_header) + 8, 8, 0},
        {"reply buffer too small for a header", FUSE_GETATTR, sizeof(fuse_in_header) + 16, 16, 8},
        {"second INIT", FUSE_INIT, sizeof(fuse_in_header) + sizeof(fuse_init_in), sizeof(fuse_init_in), 0},
    };
    for (const auto& c : cases) {
        ih.opcode = c.opcode;
        ih.len = c.len;
        auto r = raw(ih, c.extra, c.out);
        EXPECT_TRUE(r.answered) << c.name << ": the chain was not returned\n" << s.report();
        ASSERT_TRUE(s.serving()) << c.name << "\n" << s.report();
    }
    EXPECT_STILL_SERVING(s);
}

// ---------------------------------------------------------------------------
// Issue 14, 4, 6 and 7 end to end: guest requests that grew fsd without
// bound (fixed at the FUSE layer on branch `fuse`). Growth is fsd's
// anonymous memory (RssAnon) before and after; guest RAM it touches is
// shared memory and not counted.

namespace {

uint64_t anon_growth_kib(const ProcMemory& before, const ProcMemory& after) {
    uint64_t g = after.anon > before.anon ? after.anon - before.anon : 0;
    std::printf("fsd's anonymous memory: %llu KiB before, %llu KiB after (+%llu KiB)\n",
                static_cast<unsigned long long>(before.anon), static_cast<unsigned long long>(after.anon),
                static_cast<unsigned long long>(g));
    return g;
}

// fsd's memory once it has settled: the trace recorder digests requests on
// a thread of its own, after the replies. Sampled until it has not grown
// for a second (or 20 s have passed); the largest figure seen.
ProcMemory settled_memory(FsdProcess& fsd) {
    ProcMemory peak = fsd.memory();
    int still = 0;
    for (int i = 0; i < 200 && still < 10; ++i) {
        ::usleep(100 * 1000);
        ProcMemory m = fsd.memory();
        if (m.anon > peak.anon + 256) {
            peak = m;
            still = 0;
        } else {
            ++still;
        }
    }
    return peak;
}

}  // namespace

// 4: 16,384 LOOKUP(root, ".") grew fsd by ~550 MB (a path per lookup).
TEST(FuseGrowth, LookupOfDotOnTheRoot) {
    Session s(opts());
    ASSERT_TRUE(s.fuse_works()) << s.report();
    ProcMemory before = settled_memory(s.fsd);
    std::byte dot[2] = {std::byte{'.'}, std::byte{0}};
    constexpr int kLookups = 16384;
    for (int done = 0; done < kLookups;) {
        int n = std::min<int>(s.fuse->slots(), kLookups - done);
        for (int i = 0; i < n; ++i) ASSERT_GE(s.fuse->submit(FUSE_LOOKUP, FUSE_ROOT_ID, dot), 0);
        s.q.kick();
        ASSERT_TRUE(s.fuse->wait_all(30000)) << "after " << done << " lookups\n" << s.report();
        done += n;
    }
    ProcMemory after = settled_memory(s.fsd);
    uint64_t grown = anon_growth_kib(before, after);
    EXPECT_LT(grown, 8u * 1024) << kLookups << " LOOKUP(root, \".\") grew fsd by " << grown / 1024 << " MiB";
    EXPECT_STILL_SERVING(s);
}

// 6: 20,000 OPENDIR + one READDIR each grew fsd by 629 MiB (a 32 KiB
// buffer per open directory). Open directories cost something; not that.
TEST(FuseGrowth, ManyOpenDirectories) {
    Session s(opts());
    for (int i = 0; i < 200; ++i) {
        std::string f = s.share + "/entry-with-a-longish-name-" + std::to_string(i);
        UniqueFd fd(::open(f.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
        ASSERT_TRUE(fd) << f;
    }
    ASSERT_TRUE(s.fuse_works()) << s.report();
    ProcMemory before = settled_memory(s.fsd);
    constexpr int kDirs = 20000;
    int opened = 0, listed = 0;
    std::vector<int> slots;
    for (int done = 0; done < kDirs;) {
        int n = std::min<int>(s.fuse->slots(), kDirs - done);
        slots.clear();
        fuse_open_in oi{};
        oi.flags = O_RDONLY | O_DIRECTORY;
        for (int i = 0; i < n; ++i)
            slots.push_back(s.fuse->submit(FUSE_OPENDIR, FUSE_ROOT_ID, std::as_bytes(std::span(&oi, 1))));
        s.q.kick();
        std::vector<uint64_t> fhs;
        for (int slot : slots) {
            FuseClient::Reply r;
            ASSERT_TRUE(s.fuse->wait(slot, r, 30000)) << s.report();
            if (r.error == 0 && r.body.size() >= sizeof(fuse_open_out)) {
                fuse_open_out oo;
                std::memcpy(&oo, r.body.data(), sizeof oo);
                fhs.push_back(oo.fh);
            }
        }
        opened += static_cast<int>(fhs.size());
        slots.clear();
        for (uint64_t fh : fhs) {
            fuse_read_in ri{};
            ri.fh = fh;
            ri.size = 4096;
            slots.push_back(s.fuse->submit(FUSE_READDIR, FUSE_ROOT_ID, std::as_bytes(std::span(&ri, 1))));
        }
        s.q.kick();
        for (int slot : slots) {
            FuseClient::Reply r;
            ASSERT_TRUE(s.fuse->wait(slot, r, 30000)) << s.report();
            if (r.error == 0 && !r.body.empty()) ++listed;
        }
        done += n;
    }
    ProcMemory after = settled_memory(s.fsd);
    EXPECT_GT(listed, 0) << "no directory could be listed\n" << s.report();
    uint64_t grown = anon_growth_kib(before, after);
    EXPECT_LT(grown, 48u * 1024) << kDirs << " OPENDIR+READDIR (" << opened << " opened, " << listed
                                 << " listed) grew fsd by " << grown / 1024 << " MiB";
    EXPECT_STILL_SERVING(s);
}

// 7: GETXATTR asking for 0xfffffff0 bytes into two 128 MiB writable
// descriptors grew fsd by 256 MiB, and it kept them.
TEST(FuseGrowth, GetxattrOfAHugeSize) {
    Session s(opts(320 * MiB));
    ASSERT_EQ(::setxattr(s.share.c_str(), "user.ocivm-test", "value", 5, 0), 0)
        << "the share's file system must support user xattrs: " << std::strerror(errno);
    ASSERT_TRUE(s.fuse_works()) << s.report();
    ProcMemory before = settled_memory(s.fsd);
    for (const char* name : {"user.ocivm-test", "user.absent"}) {
        for (int list = 0; list < 2; ++list) {
            fuse_in_header ih{};
            ih.opcode = list ? FUSE_LISTXATTR : FUSE_GETXATTR;
            ih.unique = s.fuse->next_unique();
            ih.nodeid = FUSE_ROOT_ID;
            fuse_getxattr_in gi{};
            gi.size = 0xfffffff0u;
            size_t name_len = list ? 0 : std::strlen(name) + 1;
            ih.len = static_cast<uint32_t>(sizeof ih + sizeof gi + name_len);
            uint64_t in = s.ram.alloc(ih.len);
            std::memcpy(s.ram.at(in), &ih, sizeof ih);
            std::memcpy(s.ram.at(in) + sizeof ih, &gi, sizeof gi);
            if (name_len) std::memcpy(s.ram.at(in) + sizeof ih + sizeof gi, name, name_len);
            uint64_t out1 = s.ram.alloc(128 * MiB, 4096), out2 = s.ram.alloc(128 * MiB, 4096);
            uint16_t head = s.fuse->first_free_desc();
            s.q.set_desc(head, in, ih.len, kDescNext, head + 1);
            s.q.set_desc(head + 1, out1, 128 * MiB, kDescWrite | kDescNext, head + 2);
            s.q.set_desc(head + 2, out2, 128 * MiB, kDescWrite);
            s.q.publish(head);
            s.q.kick();
            uint32_t len;
            ASSERT_TRUE(s.fuse->wait_foreign(head, &len, 30000)) << s.report();
            s.ram.release_to(in);
            // The guest's pages go back: only fsd's own memory is measured.
            ::fallocate(s.ram.fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                        static_cast<off_t>(out1 - s.ram.gpa()), static_cast<off_t>(256 * MiB));
        }
    }
    ProcMemory after = settled_memory(s.fsd);
    uint64_t grown = anon_growth_kib(before, after);
    EXPECT_LT(grown, 16u * 1024) << "GETXATTR/LISTXATTR of 0xfffffff0 bytes grew fsd by " << grown / 1024 << " MiB";
    EXPECT_STILL_SERVING(s);
}

int main(int argc, char** argv) {
    g_ocivm = ocivm_path_from_args(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    if (g_ocivm.empty()) {
        std::fprintf(stderr, "usage: %s --ocivm PATH-TO-OCIVM [gtest options]\n", argv[0]);
        return 2;
    }
    return RUN_ALL_TESTS();
}

// The harness watches the confined server, not its keeper: a server that
// crashes is seen as a crash (the keeper dies by the same signal), and its
// memory and fds are the server's own.
TEST(Frontend, TheConfinedServerIsTheOneWatched) {
    Session s(opts());
    pid_t server = s.fsd.server_pid();
    ASSERT_NE(server, s.fsd.pid()) << "fsd forked no confined server";
    EXPECT_GT(count_fds(server), 0);
    // (PID 1 of its namespace: from outside only SIGKILL reaches it; a real
    // SIGSEGV or SIGBUS comes from its own kernel-side fault.)
    ::kill(server, SIGKILL);
    ASSERT_TRUE(s.fsd.wait_exit(10000));
    EXPECT_TRUE(s.fsd.crashed()) << s.fsd.describe_exit();
}

// Issue 10: `fsd --spin-us 0` turns the watch off. fsd's exit log gives,
// per request queue, the watches made, the waits that skipped the watch
// because the host was busy, and the window: with the watch off, none of
// the first two and a window of 0. (Had the flag been ignored, the window
// would start at the default maximum, and a wait would be a watch or, on a
// busy host, a busy skip.)
TEST(Frontend, SpinUsZeroNeverWatchesTheRing) {
    auto o = opts();
    o.fsd_args = {"--spin-us", "0"};
    Session s(o);
    std::byte dot[2] = {std::byte{'.'}, std::byte{0}};
    for (int i = 0; i < 20; ++i) {
        auto r = s.fuse->call(FUSE_LOOKUP, FUSE_ROOT_ID, dot);
        ASSERT_TRUE(r.answered) << s.report();
        EXPECT_EQ(r.error, 0);
        // Time for the ring to run dry, so that fsd waits for the next
        // request: sent at once, it may find it queued (a busy host can
        // stop fsd between its reply and its next look) and count no wait
        // at all, and a queue with no wait prints no statistics.
        ::usleep(5000);
    }
    s.ch.close();
    expect_clean_exit(s, "disconnect");
    std::string log = s.fsd.log();
    auto at = log.find("queue 1: spins ");
    ASSERT_NE(at, std::string::npos) << "no polling statistics for queue 1\n" << log;
    auto field = [&](const char* name) {
        auto f = log.find(std::string(" ") + name + " ", at);
        unsigned long v = ~0ul;
        if (f != std::string::npos) std::sscanf(log.c_str() + f + std::strlen(name) + 2, "%lu", &v);
        return v;
    };
    EXPECT_EQ(field("spins"), 0u) << "fsd watched its ring with --spin-us 0\n" << log;
    EXPECT_EQ(field("busy_skips"), 0u) << "fsd considered watching with --spin-us 0\n" << log;
    EXPECT_EQ(field("window_us"), 0u) << log;
    EXPECT_GT(field("sleeps"), 0u) << "no wait counted\n" << log;
    EXPECT_NE(field("sleeps"), ~0ul) << log;
}
