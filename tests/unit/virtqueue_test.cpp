// Descriptor chains as a guest could write them, good and malformed, over a
// fake guest memory table: malformed chains are errors, never crashes.
#include <gtest/gtest.h>
#include <linux/fuse.h>

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "transport/vhost_user.h"
#include "transport/virtqueue.h"
#include "unit/test_util.h"

using namespace ocivm;
using namespace ocivm::transport;

namespace {

// 1 MiB of "guest memory" at guest-physical 0x10000, with a 16-entry ring.
struct FakeGuest {
    static constexpr uint64_t kBase = 0x10000;
    static constexpr uint16_t kNum = 16;
    std::vector<std::byte> ram = std::vector<std::byte>(1 << 20);
    GuestMemory mem;
    Virtqueue vq;
    vring_desc* desc;
    vring_avail* avail;
    vring_used* used;
    uint16_t avail_idx = 0;

    FakeGuest() {
        mem.add_region(kBase, ram.size(), 0x7f0000000000ull, ram.data());
        desc = reinterpret_cast<vring_desc*>(ram.data());
        avail = reinterpret_cast<vring_avail*>(ram.data() + 16 * kNum);
        used = reinterpret_cast<vring_used*>(ram.data() + 4096);
        vq.configure(kNum, desc, avail, used);
        vq.set_features(true, true);
    }
    uint64_t gpa(size_t off) const { return kBase + off; }
    std::byte* host(size_t off) { return ram.data() + off; }
    void set(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0) {
        desc[i] = {addr, len, flags, next};
    }
    void make_available(uint16_t head) {
        avail->ring[avail_idx % kNum] = head;
        avail->idx = ++avail_idx;
    }
    Virtqueue::Pop pop(DescChain& c, const char** why) { return vq.pop(mem, c, why); }
};

}  // namespace

TEST(Virtqueue, GoodChainWithIndirectTable) {
    FakeGuest g;
    // head 0 -> readable 100 bytes at 0x8000, then indirect table at 0x9000
    // with one readable and two writable buffers.
    g.set(0, g.gpa(0x8000), 100, VRING_DESC_F_NEXT, 1);
    auto* ind = reinterpret_cast<vring_desc*>(g.host(0x9000));
    ind[0] = {g.gpa(0xA000), 50, VRING_DESC_F_NEXT, 1};
    ind[1] = {g.gpa(0xB000), 16, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2};
    ind[2] = {g.gpa(0xC000), 4096, VRING_DESC_F_WRITE, 0};
    // An indirect descriptor must be the last of its chain.
    g.set(1, g.gpa(0x9000), 3 * sizeof(vring_desc), VRING_DESC_F_INDIRECT);
    g.make_available(0);
    DescChain c;
    const char* why = "";
    ASSERT_EQ(g.pop(c, &why), Virtqueue::Pop::Ok) << why;
    EXPECT_EQ(c.head, 0);
    EXPECT_EQ(c.readable.size(), 2u);
    EXPECT_EQ(c.readable_len, 150u);
    EXPECT_EQ(c.writable_len, 4112u);
    g.vq.push(c.head, 16);
    EXPECT_EQ(g.used->idx, 1);
    EXPECT_EQ(g.used->ring[0].id, 0u);
    EXPECT_EQ(g.used->ring[0].len, 16u);
    EXPECT_EQ(g.pop(c, &why), Virtqueue::Pop::Empty);
}

TEST(Virtqueue, MalformedChainsAreRejected) {
    struct Case {
        const char* name;
        void (*build)(FakeGuest&);
    };
    const Case cases[] = {
        {"address outside guest memory",
         [](FakeGuest& g) { g.set(0, 0xdead00000000ull, 64, 0); }},
        {"length runs past the region",
         [](FakeGuest& g) { g.set(0, g.gpa(g.ram.size() - 10), 64, 0); }},
        {"address wraps around",
         [](FakeGuest& g) { g.set(0, ~0ull - 8, 64, 0); }},
        {"loop in the chain",
         [](FakeGuest& g) {
             g.set(0, g.gpa(0x8000), 8, VRING_DESC_F_NEXT, 1);
             g.set(1, g.gpa(0x8100), 8, VRING_DESC_F_NEXT, 0);
         }},
        {"next index out of range",
         [](FakeGuest& g) { g.set(0, g.gpa(0x8000), 8, VRING_DESC_F_NEXT, 999); }},
        {"readable after writable (wrong direction)",
         [](FakeGuest& g) {
             g.set(0, g.gpa(0x8000), 8, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1);
             g.set(1, g.gpa(0x8100), 8, 0);
         }},
        {"indirect table outside memory",
         [](FakeGuest& g) { g.set(0, 0x100, 32, VRING_DESC_F_INDIRECT); }},
        {"indirect length not a multiple of 16",
         [](FakeGuest& g) { g.set(0, g.gpa(0x9000), 20, VRING_DESC_F_INDIRECT); }},
        {"nested indirect",
         [](FakeGuest& g) {
             auto* ind = reinterpret_cast<vring_desc*>(g.host(0x9000));
             ind[0] = {g.gpa(0x9100), 16, VRING_DESC_F_INDIRECT, 0};
             g.set(0, g.gpa(0x9000), 16, VRING_DESC_F_INDIRECT);
         }},
        {"indirect table longer than the queue (a loop in 256 MiB of table)",
         [](FakeGuest& g) {
             auto* ind = reinterpret_cast<vring_desc*>(g.host(0x9000));
             ind[0] = {g.gpa(0xA000), 8, VRING_DESC_F_NEXT, 1};
             ind[1] = {g.gpa(0xA000), 8, VRING_DESC_F_NEXT, 0};
             g.set(0, g.gpa(0x9000), 16 * (FakeGuest::kNum + 1), VRING_DESC_F_INDIRECT);
         }},
        {"direct chain with an indirect table: more buffers than the queue",
         [](FakeGuest& g) {
             auto* ind = reinterpret_cast<vring_desc*>(g.host(0x9000));
             for (uint16_t i = 0; i < FakeGuest::kNum; ++i)
                 ind[i] = {g.gpa(0xA000), 8, static_cast<uint16_t>(i + 1 < FakeGuest::kNum ? VRING_DESC_F_NEXT : 0),
                           static_cast<uint16_t>(i + 1)};
             g.set(0, g.gpa(0x8000), 8, VRING_DESC_F_NEXT, 1);
             g.set(1, g.gpa(0x9000), 16 * FakeGuest::kNum, VRING_DESC_F_INDIRECT);
         }},
        {"loop inside an indirect table",
         [](FakeGuest& g) {
             auto* ind = reinterpret_cast<vring_desc*>(g.host(0x9000));
             ind[0] = {g.gpa(0xA000), 8, VRING_DESC_F_NEXT, 1};
             ind[1] = {g.gpa(0xA000), 8, VRING_DESC_F_NEXT, 0};
             g.set(0, g.gpa(0x9000), 32, VRING_DESC_F_INDIRECT);
         }},
    };
    for (const auto& tc : cases) {
        FakeGuest g;
        tc.build(g);
        g.make_available(0);
        DescChain c;
        const char* why = "";
        EXPECT_EQ(g.pop(c, &why), Virtqueue::Pop::Bad) << tc.name;
        EXPECT_STRNE(why, "") << tc.name;
        // The queue keeps working after the bad chain.
        g.set(2, g.gpa(0x8000), 8, 0);
        g.make_available(2);
        EXPECT_EQ(g.pop(c, &why), Virtqueue::Pop::Ok) << "after: " << tc.name;
        EXPECT_EQ(c.head, 2);
    }
}

TEST(Virtqueue, HeadOutOfRangeAndRunawayIndex) {
    FakeGuest g;
    g.make_available(500);  // head beyond the table
    DescChain c;
    const char* why = "";
    EXPECT_EQ(g.pop(c, &why), Virtqueue::Pop::Bad);
    EXPECT_GE(c.head, FakeGuest::kNum) << "no head to return";
    g.avail->idx = static_cast<uint16_t>(g.avail_idx + 1000);  // moved by more than the size
    EXPECT_EQ(g.pop(c, &why), Virtqueue::Pop::Bad);
    EXPECT_EQ(g.pop(c, &why), Virtqueue::Pop::Empty);
}

TEST(Virtqueue, IndirectNeedsTheFeature) {
    FakeGuest g;
    g.vq.set_features(false, false);
    g.set(0, g.gpa(0x9000), 16, VRING_DESC_F_INDIRECT);
    g.make_available(0);
    DescChain c;
    const char* why = "";
    EXPECT_EQ(g.pop(c, &why), Virtqueue::Pop::Bad);
}

TEST(Virtqueue, FuseRequestThroughAChainRepliesIntoGuestBuffers) {
    test::Harness h;
    h.init();
    transport::VhostUserBackend backend(*h.server, {});
    FakeGuest g;
    // A LOOKUP of "." on the root: header + name in two readable buffers,
    // reply header and entry in two writable ones, as virtio_fs.c builds them.
    fuse_in_header ih{};
    ih.opcode = FUSE_LOOKUP;
    ih.unique = 77;
    ih.nodeid = 1;
    ih.len = sizeof ih + 2;
    std::memcpy(g.host(0x8000), &ih, sizeof ih);
    std::memcpy(g.host(0x8100), ".", 2);
    g.set(0, g.gpa(0x8000), sizeof ih, VRING_DESC_F_NEXT, 1);
    g.set(1, g.gpa(0x8100), 2, VRING_DESC_F_NEXT, 2);
    g.set(2, g.gpa(0x8200), sizeof(fuse_out_header), VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 3);
    g.set(3, g.gpa(0x8300), sizeof(fuse_entry_out), VRING_DESC_F_WRITE, 0);
    g.make_available(0);
    DescChain c;
    const char* why = "";
    ASSERT_EQ(g.pop(c, &why), Virtqueue::Pop::Ok) << why;
    std::vector<std::byte> scratch;
    uint32_t len = backend.handle_chain(c, scratch);
    EXPECT_EQ(len, sizeof(fuse_out_header) + sizeof(fuse_entry_out));
    fuse_out_header oh;
    std::memcpy(&oh, g.host(0x8200), sizeof oh);
    EXPECT_EQ(oh.unique, 77u);
    EXPECT_EQ(oh.error, 0);
    fuse_entry_out eo;
    std::memcpy(&eo, g.host(0x8300), sizeof eo);
    EXPECT_EQ(eo.nodeid, 1u);
    // A reply larger than the guest's writable buffers is an error reply.
    g.set(4, g.gpa(0x8000), sizeof ih + 2, VRING_DESC_F_NEXT, 5);
    g.set(5, g.gpa(0x8200), 8, VRING_DESC_F_WRITE, 0);  // too small even for a header
    g.make_available(4);
    ASSERT_EQ(g.pop(c, &why), Virtqueue::Pop::Ok);
    std::memcpy(g.host(0x8000), &ih, sizeof ih);
    std::memcpy(g.host(0x8000 + sizeof ih), ".", 2);
    EXPECT_EQ(backend.handle_chain(c, scratch), 0u) << "no room for a reply: nothing written";
}

// A memory table is checked against its file: no region past the file's
// end (SIGBUS on first touch), no sum that wraps (a host pointer anywhere),
// no fd that is not a regular file.
TEST(GuestMemory, RegionsAreCheckedAgainstTheirFile) {
    UniqueFd fd(::memfd_create("guest", MFD_CLOEXEC));
    ASSERT_TRUE(fd);
    ASSERT_EQ(::ftruncate(fd.get(), 1 << 20), 0);
    struct Case {
        const char* name;
        uint64_t gpa, size, uaddr, offset;
        bool ok;
    } cases[] = {
        {"the whole file", 0x1000, 1 << 20, 0x7f0000000000, 0, true},
        {"a part at an unaligned offset", 0x1000, 4096, 0x7f0000000000, 100, true},
        {"larger than the file", 0x1000, 2 << 20, 0x7f0000000000, 0, false},
        {"offset + size past the end", 0x1000, 1 << 20, 0x7f0000000000, 4096, false},
        {"offset + size wraps", 0x1000, 1 << 20, 0x7f0000000000, ~0ull - 4095, false},
        {"gpa + size wraps", ~0ull - 4095, 8192, 0x7f0000000000, 0, false},
        {"uaddr + size wraps", 0x1000, 8192, ~0ull - 4095, 0, false},
        {"empty", 0x1000, 0, 0x7f0000000000, 0, false},
    };
    for (const auto& c : cases) {
        GuestMemory m;
        int rc = m.map_region(c.gpa, c.size, c.uaddr, fd.get(), c.offset);
        EXPECT_EQ(rc == 0, c.ok) << c.name;
        if (rc == 0) {
            // The region starts at the file's offset: what we write through
            // the mapping is at that offset in the file.
            std::byte* p = m.gpa_to_host(c.gpa, 1);
            ASSERT_NE(p, nullptr) << c.name;
            *p = std::byte{0x5a};
            unsigned char b = 0;
            ASSERT_EQ(::pread(fd.get(), &b, 1, static_cast<off_t>(c.offset)), 1);
            EXPECT_EQ(b, 0x5a) << c.name;
            EXPECT_EQ(m.gpa_to_host(c.gpa + c.size - 1, 2), nullptr) << c.name << ": past the end";
            EXPECT_EQ(m.gpa_to_host(c.gpa - 1, 2), nullptr) << c.name << ": before the start";
        } else {
            EXPECT_TRUE(m.empty()) << c.name;
        }
    }
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    UniqueFd a(sv[0]), b(sv[1]);
    GuestMemory m;
    EXPECT_LT(m.map_region(0x1000, 4096, 0x7f0000000000, a.get(), 0), 0) << "a socket as guest memory";
}

// The file shrunk after its region was checked: a touch past the new end
// reads zeros instead of killing the process with SIGBUS.
TEST(GuestMemory, AFileShrunkAfterTheCheckDoesNotKill) {
    UniqueFd fd(::memfd_create("guest", MFD_CLOEXEC));
    ASSERT_TRUE(fd);
    ASSERT_EQ(::ftruncate(fd.get(), 1 << 20), 0);
    GuestMemory m;
    ASSERT_EQ(m.map_region(0x1000, 1 << 20, 0x7f0000000000, fd.get(), 0), 0);
    ASSERT_EQ(::ftruncate(fd.get(), 4096), 0);
    volatile std::byte* p = m.gpa_to_host(0x1000 + 65536, 16);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(static_cast<int>(p[0]), 0);
    p[1] = std::byte{1};
}
