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
#include <unistd.h>

#include <cstring>
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

int main(int argc, char** argv) {
    g_ocivm = ocivm_path_from_args(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    if (g_ocivm.empty()) {
        std::fprintf(stderr, "usage: %s --ocivm PATH-TO-OCIVM [gtest options]\n", argv[0]);
        return 2;
    }
    return RUN_ALL_TESTS();
}
