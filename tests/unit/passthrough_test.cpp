// The passthrough file system through the protocol: every opcode, lookup
// counting, readdir cookies and confinement, on a temporary directory.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/securebits.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "unit/test_util.h"

using namespace ocivm;
using namespace ocivm::test;


TEST(Opcodes, EveryOperationEndToEnd) {
    Harness h;
    ASSERT_EQ(h.init().error, 0);
    uint64_t d = h.mkdir(1, "dir");
    ASSERT_NE(d, 0u);
    auto [f, fh] = h.create(d, "file");
    ASSERT_NE(f, 0u);

    fuse_write_in w{};
    w.fh = fh;
    w.size = 11;
    EXPECT_EQ(h.send(Request(FUSE_WRITE, f).arg(w).raw("hello world", 11)).error, 0);
    fuse_flush_in fl{};
    fl.fh = fh;
    EXPECT_EQ(h.send(Request(FUSE_FLUSH, f).arg(fl)).error, 0);
    fuse_fsync_in fs{};
    fs.fh = fh;
    EXPECT_EQ(h.send(Request(FUSE_FSYNC, f).arg(fs)).error, 0);
    fs.fsync_flags = FUSE_FSYNC_FDATASYNC;
    EXPECT_EQ(h.send(Request(FUSE_FSYNC, f).arg(fs)).error, 0);
    EXPECT_EQ(slurp(h.dir + "/dir/file"), "hello world");

    fuse_getattr_in ga{};
    auto at = h.send(Request(FUSE_GETATTR, f).arg(ga));
    ASSERT_EQ(at.error, 0);
    EXPECT_EQ(at.as<fuse_attr_out>().attr.size, 11u);

    fuse_setattr_in sa{};
    sa.valid = FATTR_MODE | FATTR_SIZE | FATTR_MTIME;
    sa.mode = 0600;
    sa.size = 5;
    sa.mtime = 1234567;
    auto sr = h.send(Request(FUSE_SETATTR, f).arg(sa));
    ASSERT_EQ(sr.error, 0);
    EXPECT_EQ(sr.as<fuse_attr_out>().attr.mode & 07777, 0600u);
    EXPECT_EQ(sr.as<fuse_attr_out>().attr.mtime, 1234567u);
    EXPECT_EQ(slurp(h.dir + "/dir/file"), "hello");

    fuse_fallocate_in fa{};
    fa.fh = fh;
    fa.length = 1 << 20;
    fa.offset = 1 << 20;
    EXPECT_EQ(h.send(Request(FUSE_FALLOCATE, f).arg(fa)).error, 0);
    fuse_lseek_in ls{};
    ls.fh = fh;
    ls.offset = 0;
    ls.whence = SEEK_END;
    auto lr = h.send(Request(FUSE_LSEEK, f).arg(ls));
    EXPECT_EQ(lr.error, 0);
    EXPECT_EQ(lr.as<fuse_lseek_out>().offset, 2u << 20);

    auto [g, gfh] = h.create(d, "copy");
    fuse_copy_file_range_in cr{};
    cr.fh_in = fh;
    cr.nodeid_out = g;
    cr.fh_out = gfh;
    cr.len = 5;
    auto crr = h.send(Request(FUSE_COPY_FILE_RANGE, f).arg(cr));
    EXPECT_EQ(crr.error, 0);
    EXPECT_EQ(crr.as<fuse_write_out>().size, 5u);
    EXPECT_EQ(slurp(h.dir + "/dir/copy"), "hello");

    fuse_release_in rl{};
    rl.fh = fh;
    EXPECT_EQ(h.send(Request(FUSE_RELEASE, f).arg(rl)).error, 0);
    EXPECT_EQ(h.send(Request(FUSE_RELEASE, f).arg(rl)).error, -EBADF) << "released twice";

    fuse_open_in op{static_cast<uint32_t>(O_RDONLY), 0};
    auto orr = h.send(Request(FUSE_OPEN, f).arg(op));
    ASSERT_EQ(orr.error, 0);
    fuse_read_in rd{};
    rd.fh = orr.as<fuse_open_out>().fh;
    rd.size = 5;
    EXPECT_EQ(text(h.send(Request(FUSE_READ, f).arg(rd))), "hello");

    // symlink, readlink, mknod, link
    auto sl = h.send(Request(FUSE_SYMLINK, d).str("link").str("file"));
    ASSERT_EQ(sl.error, 0);
    uint64_t l = sl.as<fuse_entry_out>().nodeid;
    EXPECT_EQ(text(h.send(Request(FUSE_READLINK, l))), "file");
    fuse_mknod_in mk{S_IFIFO | 0644, 0, 0, 0};
    EXPECT_EQ(h.send(Request(FUSE_MKNOD, d).arg(mk).str("fifo")).error, 0);
    struct stat st;
    ASSERT_EQ(::lstat((h.dir + "/dir/fifo").c_str(), &st), 0);
    EXPECT_TRUE(S_ISFIFO(st.st_mode));
    fuse_link_in lk{f};
    auto lkr = h.send(Request(FUSE_LINK, 1).arg(lk).str("hard"));
    ASSERT_EQ(lkr.error, 0);
    EXPECT_EQ(lkr.as<fuse_entry_out>().nodeid, f) << "a hard link is the same node";
    EXPECT_EQ(lkr.as<fuse_entry_out>().attr.nlink, 2u);

    // xattrs
    struct {
        uint32_t size, flags;
    } sx{3, 0};
    EXPECT_EQ(h.send(Request(FUSE_SETXATTR, f).arg(sx).str("user.k").raw("val", 3)).error, 0);
    fuse_getxattr_in gx{0, 0};
    auto gsz = h.send(Request(FUSE_GETXATTR, f).arg(gx).str("user.k"));
    EXPECT_EQ(gsz.as<fuse_getxattr_out>().size, 3u);
    gx.size = 64;
    EXPECT_EQ(text(h.send(Request(FUSE_GETXATTR, f).arg(gx).str("user.k"))), "val");
    gx.size = 1;
    EXPECT_EQ(h.send(Request(FUSE_GETXATTR, f).arg(gx).str("user.k")).error, -ERANGE);
    gx.size = 64;
    EXPECT_EQ(text(h.send(Request(FUSE_LISTXATTR, f).arg(gx))), std::string("user.k\0", 7));
    EXPECT_EQ(h.send(Request(FUSE_REMOVEXATTR, f).str("user.k")).error, 0);
    EXPECT_EQ(h.send(Request(FUSE_GETXATTR, f).arg(gx).str("user.k")).error, -ENODATA);

    // directories
    uint64_t dfh = h.opendir(d);
    auto names = h.readdir(d, dfh, false);
    std::set<std::string> set;
    for (auto& [n, id] : names) set.insert(n);
    EXPECT_EQ(set, (std::set<std::string>{".", "..", "file", "copy", "link", "fifo"}));
    fuse_fsync_in fsd{};
    fsd.fh = dfh;
    EXPECT_EQ(h.send(Request(FUSE_FSYNCDIR, d).arg(fsd)).error, 0);
    fuse_release_in rld{};
    rld.fh = dfh;
    EXPECT_EQ(h.send(Request(FUSE_RELEASEDIR, d).arg(rld)).error, 0);

    auto sf = h.send(Request(FUSE_STATFS, 1));
    EXPECT_EQ(sf.error, 0);
    EXPECT_GT(sf.as<fuse_statfs_out>().st.bsize, 0u);
    fuse_access_in ac{R_OK | W_OK, 0};
    EXPECT_EQ(h.send(Request(FUSE_ACCESS, f).arg(ac)).error, 0);
    ac.mask = R_OK;
    EXPECT_EQ(h.send(Request(FUSE_ACCESS, f).arg(ac).uid(4242, 4242)).error, -EACCES)
        << "0600 file, other user";
    fuse_syncfs_in sy{};
    EXPECT_EQ(h.send(Request(FUSE_SYNCFS, 1).arg(sy)).error, 0);

    // rename, rename2, unlink, rmdir
    fuse_rename_in rn{1};
    EXPECT_EQ(h.send(Request(FUSE_RENAME, d).arg(rn).str("copy").str("moved")).error, 0);
    EXPECT_EQ(slurp(h.dir + "/moved"), "hello");
    fuse_rename2_in rn2{d, RENAME_NOREPLACE, 0};
    EXPECT_EQ(h.send(Request(FUSE_RENAME2, 1).arg(rn2).str("moved").str("file")).error, -EEXIST);
    rn2.flags = RENAME_EXCHANGE;
    EXPECT_EQ(h.send(Request(FUSE_RENAME2, 1).arg(rn2).str("moved").str("file")).error, 0);
    EXPECT_EQ(h.send(Request(FUSE_UNLINK, d).str("link")).error, 0);
    EXPECT_EQ(h.send(Request(FUSE_RMDIR, 1).str("dir")).error, -ENOTEMPTY);
    for (auto* n : {"file", "fifo"}) EXPECT_EQ(h.send(Request(FUSE_UNLINK, d).str(n)).error, 0);
    EXPECT_EQ(h.send(Request(FUSE_RMDIR, 1).str("dir")).error, 0);
    EXPECT_FALSE(std::ifstream(h.dir + "/dir").good());

    // DESTROY ends the session
    EXPECT_EQ(h.send(Request(FUSE_DESTROY, 0)).error, 0);
    EXPECT_EQ(h.last_result(), fuse::Server::Result::Destroyed);
}

TEST(Lookup, CountsAndForget) {
    Harness h;
    h.init();
    auto [f, fh] = h.create(1, "a");
    uint64_t again = h.lookup(1, "a");
    EXPECT_EQ(again, f) << "a known file keeps its nodeid";
    EXPECT_EQ(h.fs->node_count(), 2u);
    // two lookups (CREATE + LOOKUP): one FORGET of 1 keeps it, the next drops it
    fuse_forget_in fg{1};
    EXPECT_FALSE(h.send(Request(FUSE_FORGET, f).arg(fg)).replied);
    fuse_getattr_in ga{};
    EXPECT_EQ(h.send(Request(FUSE_GETATTR, f).arg(ga)).error, 0);
    h.send(Request(FUSE_FORGET, f).arg(fg));
    EXPECT_EQ(h.send(Request(FUSE_GETATTR, f).arg(ga)).error, -ESTALE);
    EXPECT_EQ(h.fs->node_count(), 1u);
    // the open handle outlives the node
    fuse_read_in rd{};
    rd.fh = fh;
    rd.size = 10;
    EXPECT_EQ(h.send(Request(FUSE_READ, f).arg(rd)).error, 0);

    // BATCH_FORGET of several nodes; the root is never forgotten
    uint64_t b = h.mkdir(1, "b"), c = h.mkdir(1, "c");
    fuse_batch_forget_in bf{3, 0};
    fuse_forget_one ones[3] = {{b, 1}, {c, 1}, {1, 100}};
    EXPECT_FALSE(h.send(Request(FUSE_BATCH_FORGET, 0).arg(bf).arg(ones)).replied);
    EXPECT_EQ(h.fs->node_count(), 1u);
    EXPECT_EQ(h.send(Request(FUSE_GETATTR, 1).arg(ga)).error, 0);
    // a new lookup gets a new nodeid
    EXPECT_NE(h.lookup(1, "b"), b);
}

TEST(Lookup, NegativeEntriesAreCachedPerMode) {
    Harness always(fs::CacheMode::Always);
    always.init();
    auto r = always.send(Request(FUSE_LOOKUP, 1).str("missing"));
    EXPECT_EQ(r.error, 0);
    EXPECT_EQ(r.as<fuse_entry_out>().nodeid, 0u);
    EXPECT_EQ(r.as<fuse_entry_out>().entry_valid, 86400u);
    Harness never(fs::CacheMode::Never);
    never.init();
    EXPECT_EQ(never.send(Request(FUSE_LOOKUP, 1).str("missing")).error, -ENOENT);
}

TEST(Readdir, PlusCountsLookupsButNotDots) {
    Harness h;
    h.init();
    for (int i = 0; i < 20; ++i) std::ofstream(h.dir + "/f" + std::to_string(i)) << i;
    uint64_t fh = h.opendir(1);
    auto entries = h.readdir(1, fh, true);
    EXPECT_EQ(entries.size(), 22u);
    for (auto& [name, id] : entries) {
        if (name == "." || name == "..") EXPECT_EQ(id, 0u) << name;
        else EXPECT_NE(id, 0u) << name;
    }
    EXPECT_EQ(h.fs->node_count(), 21u);
    // each entry's lookup is counted: one FORGET drops each
    for (auto& [name, id] : entries) {
        if (!id) continue;
        fuse_forget_in fg{1};
        h.send(Request(FUSE_FORGET, id).arg(fg));
    }
    EXPECT_EQ(h.fs->node_count(), 1u);
}

TEST(Readdir, CookiesResumeAndOffsetZeroRestarts) {
    Harness h;
    h.init();
    for (int i = 0; i < 500; ++i) std::ofstream(h.dir + "/entry" + std::to_string(i));
    uint64_t fh = h.opendir(1);
    std::set<std::string> seen;
    uint64_t off = 0;
    int calls = 0;
    for (;;) {
        uint64_t last = off;
        auto part = h.readdir(1, fh, false, off, &last, 1024);  // small buffer: many calls
        if (part.empty()) break;
        for (auto& [n, id] : part) EXPECT_TRUE(seen.insert(n).second) << "duplicate " << n;
        off = last;
        ++calls;
    }
    EXPECT_GT(calls, 5);
    EXPECT_EQ(seen.size(), 502u);
    // offset 0 after changes: the new listing is current
    std::ofstream(h.dir + "/late");
    ::unlink((h.dir + "/entry7").c_str());
    auto again = h.readdir(1, fh, false, 0, nullptr, 1 << 20);
    std::set<std::string> now;
    for (auto& [n, id] : again) now.insert(n);
    EXPECT_TRUE(now.count("late"));
    EXPECT_FALSE(now.count("entry7"));
    EXPECT_EQ(now.size(), 502u);
}

TEST(Confinement, NamesAreSingleComponents) {
    Harness h;
    h.init();
    ::mkdir((h.dir + "/sub").c_str(), 0755);
    int err = 0;
    h.lookup(1, "sub/../..", &err);
    EXPECT_EQ(err, -EINVAL);
    h.lookup(1, "/etc", &err);
    EXPECT_EQ(err, -EINVAL);
    EXPECT_EQ(h.send(Request(FUSE_LOOKUP, 1).str("")).error, -EINVAL);
    fuse_mkdir_in mk{0755, 0};
    EXPECT_EQ(h.send(Request(FUSE_MKDIR, 1).arg(mk).str("a/b")).error, -EINVAL);
    fuse_create_in cr{static_cast<uint32_t>(O_RDWR | O_CREAT), 0644, 0, 0};
    EXPECT_EQ(h.send(Request(FUSE_CREATE, 1).arg(cr).str("../escape")).error, -EINVAL);
    EXPECT_EQ(h.send(Request(FUSE_CREATE, 1).arg(cr).str("..")).error, -EINVAL);
    fuse_rename_in rn{1};
    EXPECT_EQ(h.send(Request(FUSE_RENAME, 1).arg(rn).str("sub").str("../../tmp/x")).error, -EINVAL);
    EXPECT_EQ(h.send(Request(FUSE_SYMLINK, 1).str("x/y").str("/")).error, -EINVAL);
    EXPECT_EQ(h.send(Request(FUSE_UNLINK, 1).str("../etc")).error, -EINVAL);
}

TEST(Confinement, DotDotAtTheRootIsTheRoot) {
    Harness h;
    h.init();
    EXPECT_EQ(h.lookup(1, ".."), 1u);
    uint64_t sub = h.mkdir(1, "sub");
    EXPECT_EQ(h.lookup(sub, ".."), 1u);
    EXPECT_EQ(h.lookup(sub, "."), sub);
}

TEST(Confinement, DirectoryMovedOutCannotReachItsNewParent) {
    Harness h;
    h.init();
    std::string outside = make_temp_dir();
    std::ofstream(outside + "/secret") << "host secret";
    uint64_t sub = h.mkdir(1, "sub");
    // The host moves the directory out of the share while the guest holds it.
    ASSERT_EQ(::rename((h.dir + "/sub").c_str(), (outside + "/sub").c_str()), 0);
    int err = 0;
    EXPECT_EQ(h.lookup(sub, "..", &err), 0u);
    EXPECT_EQ(err, -EACCES) << "'..' of a moved-out directory must not lead outside";
    remove_tree(outside);
}

TEST(Confinement, SymlinksAreNeverFollowedOnTheHost) {
    Harness h;
    h.init();
    std::string outside = make_temp_dir();
    std::string target = outside + "/target";
    std::ofstream(target) << "do not touch";
    ::chmod(target.c_str(), 0644);
    ::symlink(target.c_str(), (h.dir + "/escape").c_str());
    ::symlink("/", (h.dir + "/root").c_str());
    uint64_t l = h.lookup(1, "escape");
    uint64_t r = h.lookup(1, "root");
    fuse_getattr_in ga{};
    auto at = h.send(Request(FUSE_GETATTR, l).arg(ga));
    EXPECT_TRUE(S_ISLNK(at.as<fuse_attr_out>().attr.mode));
    fuse_open_in op{static_cast<uint32_t>(O_RDWR | O_TRUNC), 0};
    EXPECT_EQ(h.send(Request(FUSE_OPEN, l).arg(op)).error, -ELOOP);
    fuse_open_in od{static_cast<uint32_t>(O_RDONLY), 0};
    EXPECT_EQ(h.send(Request(FUSE_OPENDIR, r).arg(od)).error, -ENOTDIR)
        << "opendir of a symlink to / must not open /";
    fuse_setattr_in sa{};
    sa.valid = FATTR_SIZE;
    EXPECT_EQ(h.send(Request(FUSE_SETATTR, l).arg(sa)).error, -EINVAL);
    sa.valid = FATTR_MODE;
    sa.mode = 0777;
    EXPECT_NE(h.send(Request(FUSE_SETATTR, l).arg(sa)).error, 0);
    struct {
        uint32_t size, flags;
    } sx{1, 0};
    EXPECT_NE(h.send(Request(FUSE_SETXATTR, l).arg(sx).str("user.x").raw("1", 1)).error, 0);
    // lookups below the link do not pass through it
    int err = 0;
    h.lookup(r, "etc", &err);
    EXPECT_EQ(err, -ENOTDIR);
    struct stat st;
    ASSERT_EQ(::stat(target.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0644u);
    EXPECT_EQ(st.st_size, 12);
    ssize_t n = ::getxattr(target.c_str(), "user.x", nullptr, 0);
    EXPECT_LT(n, 0);
    remove_tree(outside);
}

TEST(Readonly, ChangesAreEROFS) {
    Harness h(fs::CacheMode::Auto, true);
    h.init();
    std::ofstream(h.dir + "/f") << "x";
    uint64_t f = h.lookup(1, "f");
    fuse_mkdir_in mk{0755, 0};
    EXPECT_EQ(h.send(Request(FUSE_MKDIR, 1).arg(mk).str("d")).error, -EROFS);
    fuse_open_in op{static_cast<uint32_t>(O_WRONLY), 0};
    EXPECT_EQ(h.send(Request(FUSE_OPEN, f).arg(op)).error, -EROFS);
    op.flags = O_RDONLY;
    EXPECT_EQ(h.send(Request(FUSE_OPEN, f).arg(op)).error, 0);
    EXPECT_EQ(h.send(Request(FUSE_UNLINK, 1).str("f")).error, -EROFS);
}

TEST(NoOpen, FilesAreServedWithoutHandles) {
    Harness h(fs::CacheMode::Always, false, true);
    h.init();
    std::ofstream(h.dir + "/f") << "0123456789";
    uint64_t f = h.lookup(1, "f");
    fuse_open_in op{static_cast<uint32_t>(O_RDWR), 0};
    EXPECT_EQ(h.send(Request(FUSE_OPEN, f).arg(op)).error, -ENOSYS)
        << "the kernel learns to skip OPEN and RELEASE";
    fuse_read_in rd{};
    rd.fh = 0;
    rd.size = 4;
    rd.offset = 2;
    EXPECT_EQ(text(h.send(Request(FUSE_READ, f).arg(rd))), "2345");
    fuse_write_in w{};
    w.fh = 0;
    w.size = 3;
    w.offset = 10;
    EXPECT_EQ(h.send(Request(FUSE_WRITE, f).arg(w).raw("abc", 3)).error, 0);
    EXPECT_EQ(slurp(h.dir + "/f"), "0123456789abc");
    fuse_flush_in fl{};
    EXPECT_EQ(h.send(Request(FUSE_FLUSH, f).arg(fl)).error, -ENOSYS) << "no FLUSH needed either";
    fuse_fsync_in fs{};
    EXPECT_EQ(h.send(Request(FUSE_FSYNC, f).arg(fs)).error, 0);
    // CREATE hands out handle 0 too: no RELEASE will come for it
    auto [g, gfh] = h.create(1, "g");
    EXPECT_NE(g, 0u);
    EXPECT_EQ(gfh, 0u);
    w.size = 2;
    w.offset = 0;
    EXPECT_EQ(h.send(Request(FUSE_WRITE, g).arg(w).raw("hi", 2)).error, 0);
    EXPECT_EQ(slurp(h.dir + "/g"), "hi");
    // directories and non-files have no I/O fd
    rd.size = 10;
    EXPECT_EQ(h.send(Request(FUSE_READ, 1).arg(rd)).error, -EBADF);
    // unlinked while "open": the node's fd keeps serving until FORGET
    ASSERT_EQ(::unlink((h.dir + "/f").c_str()), 0);
    rd.offset = 0;
    EXPECT_EQ(text(h.send(Request(FUSE_READ, f).arg(rd))), "0123456789");
}

TEST(NoOpen, IoDoesNotKeepAnFdPerFile) {
    // Regression: keeping a read-write fd per node doubled the fds per known
    // file, and fsbench's 10,000 files hit EMFILE under a 20,000-fd limit.
    Harness h(fs::CacheMode::Auto, false, true);
    h.init();
    auto count_fds = [] {
        size_t n = 0;
        for (auto& e : std::filesystem::directory_iterator("/proc/self/fd")) (void)e, ++n;
        return n;
    };
    size_t before = count_fds();
    fuse_write_in w{};
    w.size = 4;
    fuse_read_in rd{};
    rd.size = 4;
    for (int i = 0; i < 300; ++i) {
        auto [node, fh] = h.create(1, "f" + std::to_string(i));
        EXPECT_EQ(fh, 0u);
        EXPECT_EQ(h.send(Request(FUSE_WRITE, node).arg(w).raw("data", 4)).error, 0);
        EXPECT_EQ(text(h.send(Request(FUSE_READ, node).arg(rd))), "data");
    }
    // one O_PATH fd per node, nothing more
    EXPECT_LE(count_fds(), before + 300 + 5);
}

// Issue 15: the constructor called umask(0) and set securebits for the whole
// process, so files the CLI wrote afterwards (the cached initramfs) came out
// world-writable and QEMU inherited both. Library code changes nothing
// process-wide; the server processes call fs::prepare_server_process().
TEST(ProcessState, ConstructingAPassthroughChangesNothingProcessWide) {
    mode_t saved_umask = ::umask(027);
    int saved_bits = ::prctl(PR_GET_SECUREBITS);
    ASSERT_GE(saved_bits, 0);
    // As root, start from a process nobody prepared, so a change is visible.
    if (::geteuid() == 0) {
        ASSERT_EQ(::prctl(PR_SET_SECUREBITS, saved_bits & ~SECBIT_NO_SETUID_FIXUP), 0);
    }
    int bits = ::prctl(PR_GET_SECUREBITS);
    std::string dir = make_temp_dir();
    {
        fs::PassthroughOptions o;
        o.source = dir;
        fs::Passthrough p(o);
    }
    mode_t after = ::umask(saved_umask);
    EXPECT_EQ(after, 027u) << "the umask was changed";
    EXPECT_EQ(::prctl(PR_GET_SECUREBITS), bits) << "the securebits were changed";
    if (::geteuid() == 0) ::prctl(PR_SET_SECUREBITS, saved_bits);
    remove_tree(dir);
}

TEST(ProcessState, PrepareServerProcessClearsTheUmaskAndKeepsCapabilities) {
    mode_t saved_umask = ::umask(022);
    int saved_bits = ::prctl(PR_GET_SECUREBITS);
    bool creds = fs::prepare_server_process();
    EXPECT_EQ(::umask(saved_umask), 0u);
    if (::geteuid() == 0) {
        EXPECT_TRUE(creds);
        EXPECT_TRUE(::prctl(PR_GET_SECUREBITS) & SECBIT_NO_SETUID_FIXUP);
    } else {
        EXPECT_FALSE(creds) << "setfsuid without root switches nothing";
    }
    ::prctl(PR_SET_SECUREBITS, saved_bits);
}

// Issue 15, hard caps: one guest cannot make the server hold handles without
// bound; past the cap OPEN, OPENDIR and CREATE are ENFILE until it releases.
TEST(Limits, OpenHandlesAreCapped) {
    fs::PassthroughOptions o;
    o.cache = fs::CacheMode::Never;
    o.max_handles = 20;
    Harness h(o);
    ASSERT_EQ(h.init().error, 0);
    std::ofstream(h.dir + "/f") << "x";
    uint64_t f = h.lookup(1, "f");
    std::vector<uint64_t> fhs;
    fuse_open_in op{static_cast<uint32_t>(O_RDONLY), 0};
    for (int i = 0; i < 10; ++i) fhs.push_back(h.opendir(1));
    for (int i = 0; i < 5; ++i) {
        auto r = h.send(Request(FUSE_OPEN, f).arg(op));
        ASSERT_EQ(r.error, 0);
        fhs.push_back(r.as<fuse_open_out>().fh);
    }
    for (int i = 0; i < 5; ++i) fhs.push_back(h.create(1, "c" + std::to_string(i)).second);
    EXPECT_EQ(h.fs->handle_count(), 20u);
    EXPECT_EQ(h.send(Request(FUSE_OPEN, f).arg(op)).error, -ENFILE);
    EXPECT_EQ(h.send(Request(FUSE_OPENDIR, 1).arg(op)).error, -ENFILE);
    fuse_create_in cr{static_cast<uint32_t>(O_RDWR | O_CREAT), 0644, 0, 0};
    EXPECT_EQ(h.send(Request(FUSE_CREATE, 1).arg(cr).str("late")).error, -ENFILE);
    struct stat st;
    EXPECT_NE(::lstat((h.dir + "/late").c_str(), &st), 0) << "a refused CREATE creates nothing";
    fuse_release_in rl{};
    rl.fh = fhs[12];
    ASSERT_EQ(h.send(Request(FUSE_RELEASE, f).arg(rl)).error, 0);
    EXPECT_EQ(h.send(Request(FUSE_OPEN, f).arg(op)).error, 0) << "a released handle makes room";
}

// Directory buffers come from a budget; handles over it still list every
// entry exactly once, however their READDIRs interleave.
TEST(Limits, DirectoryBuffersAreCappedAndListingsStayComplete) {
    fs::PassthroughOptions o;
    o.cache = fs::CacheMode::Never;
    o.max_dir_buffer_bytes = 2 * fs::DirBufferPool::kBufferSize;
    Harness h(o);
    ASSERT_EQ(h.init().error, 0);
    for (int i = 0; i < 300; ++i) std::ofstream(h.dir + "/entry-with-a-longer-name-" + std::to_string(i));
    constexpr int kDirs = 8;
    std::vector<uint64_t> fhs, offs(kDirs, 0);
    std::vector<std::set<std::string>> seen(kDirs);
    std::vector<bool> done(kDirs, false);
    for (int i = 0; i < kDirs; ++i) fhs.push_back(h.opendir(1));
    for (int round = 0, left = kDirs; left > 0; ++round) {
        for (int i = 0; i < kDirs; ++i) {
            if (done[i]) continue;
            uint64_t last = offs[i];
            auto part = h.readdir(1, fhs[i], round % 2 == 1, offs[i], &last, 600);
            if (part.empty()) {
                done[i] = true;
                --left;
                continue;
            }
            for (auto& [n, id] : part) EXPECT_TRUE(seen[i].insert(n).second) << "duplicate " << n;
            offs[i] = last;
        }
        EXPECT_LE(h.fs->dir_buffer_bytes(), o.max_dir_buffer_bytes);
    }
    for (int i = 0; i < kDirs; ++i) EXPECT_EQ(seen[i].size(), 302u) << "handle " << i;
}
