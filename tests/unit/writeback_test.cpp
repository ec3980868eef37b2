// The passthrough under FUSE_WRITEBACK_CACHE, through the protocol as the
// kernel then speaks it: page fills through write-only handles, O_APPEND
// offsets computed by the kernel, and the configuration that switches it on.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <grp.h>
#include <linux/securebits.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "fuse/serve_config.h"
#include "unit/test_util.h"
#include "util/unique_fd.h"

using namespace ocivm;
using namespace ocivm::test;

namespace {


// A server with per-open handles (the configuration of virtiofsd's cache
// modes, and of ocivm's own with no_open off) and the page cache.
fs::PassthroughOptions handles(bool writeback) {
    fs::PassthroughOptions o;
    o.cache = fs::CacheMode::Auto;
    o.no_open = false;
    o.writeback = writeback;
    return o;
}
fuse::ServerOptions protocol(bool writeback) {
    fuse::ServerOptions so;
    so.writeback_cache = writeback;
    return so;
}

uint64_t open_file(Harness& h, uint64_t node, int flags, int* err = nullptr) {
    fuse_open_in op{static_cast<uint32_t>(flags), 0};
    auto r = h.send(Request(FUSE_OPEN, node).arg(op));
    if (err) *err = r.error;
    return r.error ? 0 : r.as<fuse_open_out>().fh;
}
Reply read_at(Harness& h, uint64_t node, uint64_t fh, uint64_t off, uint32_t size) {
    fuse_read_in rd{};
    rd.fh = fh;
    rd.offset = off;
    rd.size = size;
    return h.send(Request(FUSE_READ, node).arg(rd));
}
Reply write_at(Harness& h, uint64_t node, uint64_t fh, uint64_t off, const std::string& data) {
    fuse_write_in w{};
    w.fh = fh;
    w.offset = off;
    w.size = static_cast<uint32_t>(data.size());
    w.write_flags = FUSE_WRITE_CACHE;
    return h.send(Request(FUSE_WRITE, node).arg(w).raw(data.data(), data.size()));
}

}  // namespace

TEST(Writeback, InitAsksForTheWritebackCacheOnlyWhenEnabled) {
    for (bool wb : {false, true}) {
        Harness h(handles(wb), protocol(wb));
        auto r = h.init();
        ASSERT_EQ(r.error, 0);
        EXPECT_EQ((r.as<fuse_init_out>().flags & FUSE_WRITEBACK_CACHE) != 0, wb);
    }
}

// A write into part of a page makes the kernel read the page first through
// the handle it writes with: O_WRONLY must serve that READ.
TEST(Writeback, WriteOnlyHandlesServeTheKernelsPageFills) {
    Harness h(handles(true), protocol(true));
    ASSERT_EQ(h.init().error, 0);
    std::ofstream(h.dir + "/f") << "0123456789";
    uint64_t f = h.lookup(1, "f");
    uint64_t fh = open_file(h, f, O_WRONLY);
    ASSERT_NE(fh, 0u);
    EXPECT_EQ(text(read_at(h, f, fh, 0, 4096)), "0123456789");
    EXPECT_EQ(write_at(h, f, fh, 3, "abc").error, 0);
    EXPECT_EQ(slurp(h.dir + "/f"), "012abc6789");
    // CREATE's handle too, O_EXCL or not.
    auto cr = [&](const char* name, int flags) {
        fuse_create_in in{};
        in.flags = static_cast<uint32_t>(flags);
        in.mode = S_IFREG | 0600;
        return h.send(Request(FUSE_CREATE, 1).arg(in).str(name));
    };
    auto c = cr("new", O_WRONLY | O_CREAT | O_EXCL);
    ASSERT_EQ(c.error, 0);
    uint64_t n = c.as<fuse_entry_out>().nodeid;
    fuse_open_out oo;
    std::memcpy(&oo, c.payload.data() + sizeof(fuse_entry_out), sizeof oo);
    EXPECT_EQ(write_at(h, n, oo.fh, 0, "created").error, 0);
    EXPECT_EQ(text(read_at(h, n, oo.fh, 0, 100)), "created");
    auto again = cr("new", O_WRONLY | O_CREAT);  // exists: opened as OPEN would
    ASSERT_EQ(again.error, 0);
    std::memcpy(&oo, again.payload.data() + sizeof(fuse_entry_out), sizeof oo);
    EXPECT_EQ(text(read_at(h, n, oo.fh, 0, 100)), "created");
}

// The kernel computes O_APPEND offsets and writes whole pages back from
// their start: the data goes where the kernel says, not after the host's
// end of file.
TEST(Writeback, AppendHandlesWriteWhereTheKernelSays) {
    Harness h(handles(true), protocol(true));
    ASSERT_EQ(h.init().error, 0);
    std::ofstream(h.dir + "/log") << "start\n";
    uint64_t f = h.lookup(1, "log");
    uint64_t a = open_file(h, f, O_WRONLY | O_APPEND);
    uint64_t b = open_file(h, f, O_RDWR | O_APPEND);
    ASSERT_TRUE(a && b);
    // The page of the file as the kernel writes it back: all of it, from 0.
    EXPECT_EQ(write_at(h, f, a, 0, "start\na\n").error, 0);
    EXPECT_EQ(write_at(h, f, b, 0, "start\na\nb\n").error, 0);
    EXPECT_EQ(slurp(h.dir + "/log"), "start\na\nb\n");

    fuse_create_in in{};
    in.flags = O_WRONLY | O_APPEND | O_CREAT | O_EXCL;
    in.mode = S_IFREG | 0644;
    auto c = h.send(Request(FUSE_CREATE, 1).arg(in).str("created"));
    ASSERT_EQ(c.error, 0);
    uint64_t n = c.as<fuse_entry_out>().nodeid;
    fuse_open_out oo;
    std::memcpy(&oo, c.payload.data() + sizeof(fuse_entry_out), sizeof oo);
    EXPECT_EQ(write_at(h, n, oo.fh, 0, "one\n").error, 0);
    EXPECT_EQ(write_at(h, n, oo.fh, 0, "one\ntwo\n").error, 0);
    EXPECT_EQ(slurp(h.dir + "/created"), "one\ntwo\n");
}

// Without the writeback cache the host fd keeps the guest's flags: the
// kernel sends appends with the offset it knows, and the host puts them at
// its own end of file, which other writers may have moved.
TEST(Writeback, WithoutItHandlesKeepTheGuestsFlags) {
    Harness h(handles(false), protocol(false));
    ASSERT_EQ(h.init().error, 0);
    std::ofstream(h.dir + "/log") << "start\n";
    uint64_t f = h.lookup(1, "log");
    uint64_t a = open_file(h, f, O_WRONLY | O_APPEND);
    ASSERT_NE(a, 0u);
    EXPECT_EQ(write_at(h, f, a, 0, "x\n").error, 0);
    EXPECT_EQ(slurp(h.dir + "/log"), "start\nx\n");
    EXPECT_EQ(read_at(h, f, a, 0, 10).error, -EACCES) << "a write-only handle reads nothing";
}

// A file the server may write but not read (mode 0200 for a server without
// CAP_DAC_OVERRIDE, as a rootless one is for a file of an unmapped owner):
// the handle falls back to write-only, and handle-0 writes (no-open mode)
// open write-only in the first place. Run as uid 65534 when the tests run
// as root, so that the host refuses the read.
TEST(Writeback, FilesTheServerCannotReadStayWritable) {
    std::string dir = make_temp_dir();
    struct RemoveTree {
        const std::string& d;
        ~RemoveTree() { remove_tree(d); }
    } remove_dir{dir};
    {
        std::ofstream(dir + "/wo") << "0123456789";
    }
    ASSERT_EQ(::chmod((dir + "/wo").c_str(), 0200), 0);
    bool root = ::geteuid() == 0;
    if (root) {
        ASSERT_EQ(::chown(dir.c_str(), 65534, 65534), 0);
        ASSERT_EQ(::chown((dir + "/wo").c_str(), 65534, 65534), 0);
    }
    UniqueFd src(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    ASSERT_TRUE(src);
    int pfd[2];
    ASSERT_EQ(::pipe2(pfd, O_CLOEXEC), 0);
    pid_t pid = ::fork();
    if (pid == 0) {
        // The child reports what went wrong, "" when nothing did.
        auto run = [&]() -> std::string {
            // The capabilities go with uid 0 (an earlier test's
            // prepare_server_process() asked to keep them).
            if (root && (::prctl(PR_SET_SECUREBITS, ::prctl(PR_GET_SECUREBITS) & ~SECBIT_NO_SETUID_FIXUP) != 0 ||
                         ::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
                         ::setresuid(65534, 65534, 65534) != 0))
                return "cannot become uid 65534 without capabilities";
            // Changing uids made the process undumpable: its /proc/self/fd,
            // which the server reopens files through, would be root's.
            ::prctl(PR_SET_DUMPABLE, 1);
            if (::open((dir + "/wo").c_str(), O_RDWR | O_CLOEXEC) >= 0)
                return "the host let this process read the 0200 file: nothing to test";
            fs::Context ctx{65534, 65534, 1};
            for (bool no_open : {false, true}) {
                fs::PassthroughOptions o;
                o.source = "/proc/self/fd/" + std::to_string(src.get());
                o.cache = fs::CacheMode::Auto;
                o.no_open = no_open;
                o.writeback = true;
                fs::Passthrough p(o);
                std::string mode = no_open ? "no-open: " : "handles: ";
                fs::Entry e;
                if (p.lookup(ctx, 1, "wo", e) != 0 || e.nodeid == 0) return mode + "lookup failed";
                fs::OpenResult r;
                if (!no_open) {
                    if (int rc = p.open(ctx, e.nodeid, O_WRONLY, false, r); rc != 0)
                        return mode + "OPEN O_WRONLY: " + std::strerror(-rc);
                }
                char data[] = "AB";
                struct iovec iov{data, 2};
                ssize_t w = p.write(ctx, e.nodeid, r.fh, no_open ? 4 : 2, &iov, 1, false);
                if (w != 2) return mode + "WRITE: " + (w < 0 ? std::strerror(static_cast<int>(-w)) : "short");
                char back[16];
                struct iovec riov{back, sizeof back};
                ssize_t n = p.read(ctx, e.nodeid, r.fh, 0, &riov, 1);
                if (n != -EACCES)
                    return mode + "READ gave " + std::to_string(n) + ", not EACCES (the host refuses reading)";
                if (!no_open && p.release(ctx, e.nodeid, r.fh) != 0) return mode + "RELEASE failed";
            }
            return "";
        };
        std::string why = run();
        (void)!::write(pfd[1], why.data(), why.size());
        ::_exit(0);
    }
    ::close(pfd[1]);
    std::string why;
    char buf[512];
    ssize_t n;
    while ((n = ::read(pfd[0], buf, sizeof buf)) > 0) why.append(buf, static_cast<size_t>(n));
    ::close(pfd[0]);
    int st = 0;
    ASSERT_EQ(::waitpid(pid, &st, 0), pid);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    EXPECT_EQ(why, "");
    ASSERT_EQ(::chmod((dir + "/wo").c_str(), 0600), 0);
    EXPECT_EQ(slurp(dir + "/wo"), "01ABAB6789");
}

// SEEK_DATA/SEEK_HOLE arrive before the kernel's dirty pages: the host
// file's holes are not the guest's. ENOSYS hands them back to the kernel.
TEST(Writeback, LseekIsLeftToTheKernel) {
    for (bool wb : {false, true}) {
        Harness h(handles(wb), protocol(wb));
        ASSERT_EQ(h.init().error, 0);
        std::ofstream(h.dir + "/f") << "data";
        uint64_t f = h.lookup(1, "f");
        uint64_t fh = open_file(h, f, O_RDONLY);
        fuse_lseek_in ls{};
        ls.fh = fh;
        ls.whence = SEEK_DATA;
        auto r = h.send(Request(FUSE_LSEEK, f).arg(ls));
        EXPECT_EQ(r.error, wb ? -ENOSYS : 0);
    }
}

TEST(Writeback, OnlyWithThePageCacheAndWritableShares) {
    EXPECT_NE(fuse::writeback_refusal(fs::CacheMode::Never, false), "");
    EXPECT_NE(fuse::writeback_refusal(fs::CacheMode::Metadata, false), "");
    EXPECT_NE(fuse::writeback_refusal(fs::CacheMode::Auto, true), "");
    EXPECT_EQ(fuse::writeback_refusal(fs::CacheMode::Auto, false), "");
    EXPECT_EQ(fuse::writeback_refusal(fs::CacheMode::Always, false), "");
    for (bool wb : {false, true}) {
        auto c = fuse::serve_config("/srv", fs::CacheMode::Always, false, true, false, wb);
        EXPECT_EQ(c.fs.writeback, wb);
        EXPECT_EQ(c.protocol.writeback_cache, wb);
        EXPECT_TRUE(c.fs.no_open) << "writeback keeps the no-open I/O of the page-cache modes";
    }
}
