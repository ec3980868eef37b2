// Request parsing and reply building: INIT negotiation, truncated, oversized
// and garbage requests. The server must answer with an error and keep serving.
#include <fcntl.h>
#include <gtest/gtest.h>

#include <random>

#include "unit/test_util.h"

using namespace ocivm;
using namespace ocivm::test;
using Result = fuse::Server::Result;

TEST(Init, NegotiatesWhatTheKernelOffers) {
    Harness h;
    auto r = h.init();
    ASSERT_EQ(r.error, 0);
    auto o = r.as<fuse_init_out>();
    EXPECT_EQ(o.major, 7u);
    EXPECT_EQ(o.minor, static_cast<uint32_t>(FUSE_KERNEL_MINOR_VERSION));
    EXPECT_GE(o.max_write, 1u << 20);
    EXPECT_EQ(o.max_pages, 256);
    uint64_t flags = o.flags | (static_cast<uint64_t>(o.flags2) << 32);
    for (uint64_t f : std::initializer_list<uint64_t>{FUSE_PARALLEL_DIROPS, FUSE_DO_READDIRPLUS, FUSE_READDIRPLUS_AUTO,
                       FUSE_ATOMIC_O_TRUNC, FUSE_EXPORT_SUPPORT, FUSE_HANDLE_KILLPRIV_V2,
                       FUSE_MAX_PAGES})
        EXPECT_TRUE(flags & f) << std::hex << f;
    for (uint64_t f : std::initializer_list<uint64_t>{FUSE_POSIX_ACL, FUSE_WRITEBACK_CACHE, FUSE_POSIX_LOCKS, FUSE_FLOCK_LOCKS,
                       FUSE_SPLICE_READ, FUSE_SECURITY_CTX})
        EXPECT_FALSE(flags & f) << std::hex << f;
    EXPECT_TRUE(h.server->initialized());
}

TEST(Init, OnlyWhatIsOffered) {
    Harness h;
    struct {
        uint32_t major, minor, max_readahead, flags;
    } in{7, 31, 4096, FUSE_ASYNC_READ | FUSE_DO_READDIRPLUS};
    auto r = h.send(Request(FUSE_INIT, 0).arg(in));
    ASSERT_EQ(r.error, 0);
    auto o = r.as<fuse_init_out>();
    EXPECT_EQ(o.minor, 31u);
    EXPECT_EQ(o.flags, static_cast<uint32_t>(FUSE_ASYNC_READ | FUSE_DO_READDIRPLUS));
    EXPECT_EQ(o.flags2, 0u);
    EXPECT_EQ(o.max_readahead, 4096u);
}

TEST(Init, RejectsOldProtocolsAndRepeats) {
    Harness h;
    struct {
        uint32_t major, minor, max_readahead, flags;
    } old{7, 12, 0, 0}, newer{8, 0, 0, 0};
    EXPECT_EQ(h.send(Request(FUSE_INIT, 0).arg(old)).error, -EPROTO);
    auto r = h.send(Request(FUSE_INIT, 0).arg(newer));
    EXPECT_EQ(r.error, 0);
    EXPECT_EQ(r.payload.size(), 8u) << "a newer major gets only our version back";
    EXPECT_EQ(r.as<fuse_init_out>().major, 7u);
    EXPECT_FALSE(h.server->initialized());
    EXPECT_EQ(h.init().error, 0);
    EXPECT_EQ(h.init().error, -EPROTO) << "a second INIT";
}

TEST(Requests, BeforeInitAreRefused) {
    Harness h;
    fuse_getattr_in in{};
    EXPECT_EQ(h.send(Request(FUSE_GETATTR, 1).arg(in)).error, -EIO);
}

TEST(Requests, ShorterThanAHeaderGetNoReply) {
    Harness h;
    h.init();
    std::vector<std::byte> tiny(10, std::byte{0x41});
    auto r = h.send(tiny);
    EXPECT_FALSE(r.replied);
    EXPECT_EQ(h.last_result(), Result::NoReply);
}

TEST(Requests, LengthMismatchIsEINVAL) {
    Harness h;
    h.init();
    auto b = Request(FUSE_LOOKUP, 1).str("x").bytes();
    reinterpret_cast<fuse_in_header*>(b.data())->len += 100;  // claims more than it has
    auto r = h.send(b);
    EXPECT_TRUE(r.replied);
    EXPECT_EQ(r.error, -EINVAL);
    reinterpret_cast<fuse_in_header*>(b.data())->len = 20;  // less than a header
    EXPECT_EQ(h.send(b).error, -EINVAL);
}

TEST(Requests, EveryOpcodeWithTruncatedArgumentsIsEINVAL) {
    Harness h;
    h.init();
    const uint32_t with_args[] = {FUSE_LOOKUP, FUSE_GETATTR, FUSE_SETATTR, FUSE_SYMLINK,
                                  FUSE_MKNOD, FUSE_MKDIR, FUSE_UNLINK, FUSE_RMDIR, FUSE_RENAME,
                                  FUSE_RENAME2, FUSE_LINK, FUSE_OPEN, FUSE_CREATE, FUSE_READ,
                                  FUSE_WRITE, FUSE_RELEASE, FUSE_FSYNC, FUSE_SETXATTR,
                                  FUSE_GETXATTR, FUSE_LISTXATTR, FUSE_REMOVEXATTR, FUSE_FLUSH,
                                  FUSE_OPENDIR, FUSE_READDIR, FUSE_READDIRPLUS, FUSE_RELEASEDIR,
                                  FUSE_FSYNCDIR, FUSE_ACCESS, FUSE_FALLOCATE, FUSE_LSEEK,
                                  FUSE_COPY_FILE_RANGE};
    for (uint32_t op : with_args) {
        // no arguments at all, then 3 stray bytes
        auto r = h.send(Request(op, 1));
        EXPECT_EQ(r.error, -EINVAL) << "opcode " << op;
        r = h.send(Request(op, 1).raw("abc", 3));
        EXPECT_EQ(r.error, -EINVAL) << "opcode " << op << " with 3 bytes";
    }
    // FORGET and BATCH_FORGET never get a reply, even when broken.
    EXPECT_FALSE(h.send(Request(FUSE_FORGET, 1)).replied);
    fuse_batch_forget_in bf{1000, 0};
    EXPECT_FALSE(h.send(Request(FUSE_BATCH_FORGET, 0).arg(bf)).replied);
    // still serving
    EXPECT_NE(h.lookup(1, "."), 0u);
}

TEST(Requests, NamesWithoutTerminatorAreEINVAL) {
    Harness h;
    h.init();
    EXPECT_EQ(h.send(Request(FUSE_LOOKUP, 1).raw("abc", 3)).error, -EINVAL);
    fuse_rename_in rn{1};
    EXPECT_EQ(h.send(Request(FUSE_RENAME, 1).arg(rn).str("a").raw("b", 1)).error, -EINVAL);
    EXPECT_EQ(h.send(Request(FUSE_SYMLINK, 1).str("a").raw("/etc", 4)).error, -EINVAL);
}

TEST(Requests, OversizedLengthsAreRefusedOrClipped) {
    Harness h;
    h.init();
    auto [node, fh] = h.create(1, "f");
    // WRITE claiming more data than the request carries
    fuse_write_in w{};
    w.fh = fh;
    w.size = 1u << 30;
    EXPECT_EQ(h.send(Request(FUSE_WRITE, node).arg(w).raw("data", 4)).error, -EINVAL);
    // SETXATTR value longer than the request
    struct {
        uint32_t size, flags;
    } sx{100000, 0};
    EXPECT_EQ(h.send(Request(FUSE_SETXATTR, node).arg(sx).str("user.a").raw("v", 1)).error, -EINVAL);
    // READ asking for 4 GiB is clipped to max_write
    w.size = 5;
    EXPECT_EQ(h.send(Request(FUSE_WRITE, node).arg(w).raw("hello", 5)).error, 0);
    fuse_read_in rd{};
    rd.fh = fh;
    rd.size = 0xffffffffu;
    auto r = h.send(Request(FUSE_READ, node).arg(rd));
    EXPECT_EQ(r.error, 0);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(r.payload.data()), r.payload.size()), "hello");
    // negative offsets
    rd.offset = ~0ull;
    EXPECT_EQ(h.send(Request(FUSE_READ, node).arg(rd)).error, -EINVAL);
    // extension length beyond the request
    auto b = Request(FUSE_GETATTR, 1).arg(fuse_getattr_in{}).bytes();
    reinterpret_cast<fuse_in_header*>(b.data())->total_extlen = 200;
    EXPECT_EQ(h.send(b).error, -EINVAL);
}

TEST(Requests, UnknownOpcodesAndLocksAreENOSYS) {
    Harness h;
    h.init();
    for (uint32_t op : {9999u, static_cast<uint32_t>(FUSE_GETLK), static_cast<uint32_t>(FUSE_SETLK),
                        static_cast<uint32_t>(FUSE_SETLKW), static_cast<uint32_t>(FUSE_BMAP),
                        static_cast<uint32_t>(FUSE_IOCTL), static_cast<uint32_t>(FUSE_POLL),
                        static_cast<uint32_t>(FUSE_INTERRUPT), static_cast<uint32_t>(FUSE_SETUPMAPPING),
                        static_cast<uint32_t>(CUSE_INIT)})
        EXPECT_EQ(h.send(Request(op, 1).raw("0123456789abcdef01234567", 24)).error, -ENOSYS) << op;
}

TEST(Requests, UnknownNodesAndHandles) {
    Harness h;
    h.init();
    fuse_getattr_in ga{};
    EXPECT_EQ(h.send(Request(FUSE_GETATTR, 987654).arg(ga)).error, -ESTALE);
    ga.getattr_flags = FUSE_GETATTR_FH;
    ga.fh = 4242;
    EXPECT_EQ(h.send(Request(FUSE_GETATTR, 1).arg(ga)).error, -EBADF);
    fuse_read_in rd{};
    rd.fh = 0xdeadbeef;
    rd.size = 10;
    EXPECT_EQ(h.send(Request(FUSE_READ, 1).arg(rd)).error, -EBADF);
    fuse_release_in rl{};
    rl.fh = 77;
    EXPECT_EQ(h.send(Request(FUSE_RELEASE, 1).arg(rl)).error, -EBADF);
    // a directory handle used as a file handle
    uint64_t dfh = h.opendir(1);
    rd.fh = dfh;
    EXPECT_EQ(h.send(Request(FUSE_READ, 1).arg(rd)).error, -EBADF);
    fuse_write_in w{};
    w.fh = dfh;
    w.size = 1;
    EXPECT_EQ(h.send(Request(FUSE_WRITE, 1).arg(w).raw("x", 1)).error, -EBADF);
}

TEST(Requests, GarbageNeverCrashesAndServingContinues) {
    Harness h;
    h.init();
    h.create(1, "file");
    std::mt19937 rng(12345);
    for (int i = 0; i < 20000; ++i) {
        size_t len = rng() % 200;
        std::vector<std::byte> b(len);
        for (auto& x : b) x = static_cast<std::byte>(rng());
        if (len >= sizeof(fuse_in_header)) {
            auto* hd = reinterpret_cast<fuse_in_header*>(b.data());
            // mostly well-framed garbage, so the argument parsers are reached
            if (rng() % 4) hd->len = static_cast<uint32_t>(len);
            if (rng() % 4) hd->opcode = 1 + rng() % 52;
            if (rng() % 2) hd->nodeid = 1 + rng() % 3;
            if (rng() % 2) hd->total_extlen = 0;
            if (hd->opcode == FUSE_DESTROY || hd->opcode == FUSE_INIT) hd->opcode = FUSE_GETATTR;
        }
        h.send(b);
    }
    EXPECT_NE(h.lookup(1, "file"), 0u) << "the server stopped answering after garbage";
}

TEST(Reply, ReadDataLandsAfterTheHeader) {
    Harness h;
    h.init();
    auto [node, fh] = h.create(1, "data");
    std::string payload(100000, 'z');
    fuse_write_in w{};
    w.fh = fh;
    w.offset = 3;
    w.size = static_cast<uint32_t>(payload.size());
    auto wr = h.send(Request(FUSE_WRITE, node).arg(w).raw(payload.data(), payload.size()));
    ASSERT_EQ(wr.error, 0);
    EXPECT_EQ(wr.as<fuse_write_out>().size, payload.size());
    fuse_read_in rd{};
    rd.fh = fh;
    rd.offset = 3;
    rd.size = 200000;
    auto r = h.send(Request(FUSE_READ, node).arg(rd));
    ASSERT_EQ(r.error, 0);
    EXPECT_EQ(r.payload.size(), payload.size());
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(r.payload.data()), r.payload.size()), payload);
}

// Issue 15 (virtiofsd drop-in gap): a second INIT after DESTROY was refused
// with EPROTO, so a guest could not unmount and mount a tag again, nor reboot.
TEST(Init, SecondInitAfterDestroyStartsAFreshSession) {
    Harness h;
    ASSERT_EQ(h.init().error, 0);
    uint64_t d = h.mkdir(1, "d");
    auto [f, fh] = h.create(d, "f");
    uint64_t dfh = h.opendir(d);
    ASSERT_GT(h.fs->node_count(), 1u);

    auto r = h.send(Request(FUSE_DESTROY, 0));
    EXPECT_TRUE(r.replied);
    EXPECT_EQ(r.error, 0);
    EXPECT_EQ(h.last_result(), Result::Destroyed);
    EXPECT_FALSE(h.server->initialized());
    fuse_getattr_in ga{};
    EXPECT_EQ(h.send(Request(FUSE_GETATTR, 1).arg(ga)).error, -EIO) << "between sessions";

    ASSERT_EQ(h.init().error, 0) << "the guest mounts the tag again";
    EXPECT_TRUE(h.server->initialized());
    EXPECT_EQ(h.fs->node_count(), 1u) << "only the root survives a session";
    EXPECT_EQ(h.send(Request(FUSE_GETATTR, f).arg(ga)).error, -ESTALE);
    fuse_read_in rd{};
    rd.fh = fh;
    rd.size = 4;
    EXPECT_EQ(h.send(Request(FUSE_READ, f).arg(rd)).error, -EBADF);
    rd.fh = dfh;
    EXPECT_EQ(h.send(Request(FUSE_READDIR, d).arg(rd)).error, -EBADF);
    EXPECT_EQ(h.send(Request(FUSE_GETATTR, 1).arg(ga)).error, 0);
    uint64_t d2 = h.lookup(1, "d");
    EXPECT_NE(d2, 0u);
    EXPECT_NE(h.lookup(d2, "f"), 0u);
    EXPECT_EQ(h.init().error, -EPROTO) << "but not twice in one session";
}

// A handle is only ever used as what it was opened as: a directory handle is
// not a file handle and the other way round, and OPEN never makes a file
// handle of a directory.
TEST(Requests, HandlesAreOnlyUsedForTheirKind) {
    Harness h(fs::CacheMode::Never);
    h.init();
    auto [f, ffh] = h.create(1, "f");
    uint64_t dfh = h.opendir(1);
    fuse_open_in op{static_cast<uint32_t>(O_RDONLY), 0};
    EXPECT_EQ(h.send(Request(FUSE_OPEN, 1).arg(op)).error, -EISDIR);
    fuse_read_in rd{};
    rd.fh = ffh;
    rd.size = 4096;
    EXPECT_EQ(h.send(Request(FUSE_READDIR, 1).arg(rd)).error, -EBADF);
    fuse_fsync_in fs{};
    fs.fh = dfh;
    EXPECT_EQ(h.send(Request(FUSE_FSYNC, f).arg(fs)).error, -EBADF);
    fs.fh = ffh;
    EXPECT_EQ(h.send(Request(FUSE_FSYNCDIR, 1).arg(fs)).error, -EBADF);
    fuse_flush_in fl{};
    fl.fh = dfh;
    EXPECT_EQ(h.send(Request(FUSE_FLUSH, f).arg(fl)).error, -EBADF);
    fuse_release_in rl{};
    rl.fh = dfh;
    EXPECT_EQ(h.send(Request(FUSE_RELEASE, 1).arg(rl)).error, -EBADF);
    rl.fh = ffh;
    EXPECT_EQ(h.send(Request(FUSE_RELEASEDIR, f).arg(rl)).error, -EBADF);
    // both still work as what they are
    EXPECT_FALSE(h.readdir(1, dfh, false).empty());
    EXPECT_EQ(h.send(Request(FUSE_RELEASE, f).arg(rl)).error, 0);
    rl.fh = dfh;
    EXPECT_EQ(h.send(Request(FUSE_RELEASEDIR, 1).arg(rl)).error, 0);
}
