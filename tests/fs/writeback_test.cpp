// Host-mount tests of `ocivm mount --writeback`: what a user of the mount
// sees, and what lands in the host file, when the kernel caches writes and
// sends them later (FUSE_WRITEBACK_CACHE). The kernel then reads pages
// through handles opened write-only, computes O_APPEND offsets itself and
// sends its own size and mtime: each test fails if the server does not
// follow.
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "fs/mount_fixture.h"
#include "util/unique_fd.h"

using namespace ocivm::test;
using ocivm::UniqueFd;

namespace {

Workspace* g_ws = nullptr;
// The mount's root, opened as root: a process that became nobody reaches
// files below it by name even when a parent of the workspace is 0700 (the
// per-test TMPDIR).
int g_mnt_fd = -1;

std::string test_name() {
    auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    return std::string(info->test_suite_name()) + "." + info->name();
}

// The same file seen from both sides: through the mount, and on the host;
// rel is its name below the mount's root.
struct File {
    std::string mnt, host, rel;
};
File file(const std::string& name) {
    std::string rel = test_name() + "." + name;
    return {g_ws->mnt + "/" + rel, g_ws->share + "/" + rel, rel};
}

std::string pattern(size_t n, unsigned seed) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + seed) % 26);
    return s;
}

void put(const std::string& path, const std::string& content, mode_t mode = 0644) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
    ASSERT_TRUE(fd) << path << ": " << std::strerror(errno);
    ASSERT_EQ(::write(fd.get(), content.data(), content.size()), static_cast<ssize_t>(content.size()));
    ASSERT_EQ(::fchmod(fd.get(), mode), 0);
}

std::string get(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return "<" + std::string(std::strerror(errno)) + ">";
    std::string out;
    char buf[65536];
    ssize_t n;
    while ((n = ::read(fd.get(), buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    if (n < 0) out += "<read: " + std::string(std::strerror(errno)) + ">";
    return out;
}

// "" when a == b, else where they first differ (the contents can be
// megabytes: gtest would print them whole).
std::string diff(const std::string& a, const std::string& b) {
    if (a == b) return "";
    size_t i = 0;
    while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
    auto around = [i](const std::string& s) {
        size_t from = i < 8 ? 0 : i - 8;
        std::string part = s.substr(from, 24);
        for (char& c : part)
            if (c < 0x20 || c > 0x7e) c = '.';
        return "\"" + part + "\"";
    };
    return std::to_string(a.size()) + " vs " + std::to_string(b.size()) + " bytes, first difference at " +
           std::to_string(i) + ": " + around(a) + " vs " + around(b);
}

// Writes all of s at off; "" or the error.
std::string pwrite_all(int fd, const std::string& s, off_t off) {
    ssize_t n = ::pwrite(fd, s.data(), s.size(), off);
    if (n < 0) return std::strerror(errno);
    return n == static_cast<ssize_t>(s.size()) ? "" : "short write " + std::to_string(n);
}

// Runs f in a child with uid/gid 65534 (nobody) and no capabilities;
// returns what f returned ("" for success) or why it could not run.
template <typename F>
std::string as_nobody(F f) {
    int pfd[2];
    if (::pipe2(pfd, O_CLOEXEC) != 0) return std::string("pipe: ") + std::strerror(errno);
    pid_t pid = ::fork();
    if (pid == 0) {
        std::string r = "cannot become nobody";
        if (::setgroups(0, nullptr) == 0 && ::setresgid(65534, 65534, 65534) == 0 &&
            ::setresuid(65534, 65534, 65534) == 0)
            r = f();
        (void)!::write(pfd[1], r.data(), r.size());
        ::_exit(0);
    }
    ::close(pfd[1]);
    std::string out;
    char c[4096];
    ssize_t n;
    while ((n = ::read(pfd[0], c, sizeof c)) > 0) out.append(c, static_cast<size_t>(n));
    ::close(pfd[0]);
    int st;
    ::waitpid(pid, &st, 0);
    return out;
}

}  // namespace

// A write into the middle of a page makes the kernel read that page first,
// through the handle being written: one opened O_WRONLY must serve READs.
TEST(WriteOnly, PartialPageWritesKeepTheRestOfThePage) {
    File f = file("f");
    std::string data = pattern(3 * 4096 + 123, 1);
    put(f.host, data);
    {
        UniqueFd fd(::open(f.mnt.c_str(), O_WRONLY | O_CLOEXEC));
        ASSERT_TRUE(fd) << std::strerror(errno);
        EXPECT_EQ(pwrite_all(fd.get(), "HELLO", 100), "");
        EXPECT_EQ(pwrite_all(fd.get(), "WORLD", 2 * 4096 + 7), "");
        char c;
        EXPECT_EQ(::read(fd.get(), &c, 1), -1) << "a write-only fd reads nothing, as on any file system";
        EXPECT_EQ(errno, EBADF);
    }
    data.replace(100, 5, "HELLO");
    data.replace(2 * 4096 + 7, 5, "WORLD");
    EXPECT_EQ(diff(get(f.mnt), data), "") << "read back through a new fd";
    EXPECT_EQ(diff(get(f.host), data), "") << "the host file after close";
}

// The same for a file only its owner may write (mode 0200): the guest's
// kernel lets the owner open it write-only, and still reads its pages.
TEST(WriteOnly, OwnerWritesAMode0200File) {
    File f = file("wo");
    std::string data = pattern(2 * 4096, 2);
    put(f.host, data, 0200);
    ASSERT_EQ(::chown(f.host.c_str(), 65534, 65534), 0);
    std::string r = as_nobody([&]() -> std::string {
        if (::openat(g_mnt_fd, f.rel.c_str(), O_RDONLY | O_CLOEXEC) >= 0 || errno != EACCES)
            return "reading a 0200 file as its owner did not fail with EACCES";
        UniqueFd fd(::openat(g_mnt_fd, f.rel.c_str(), O_WRONLY | O_CLOEXEC));
        if (!fd) return std::string("open O_WRONLY: ") + std::strerror(errno);
        if (auto e = pwrite_all(fd.get(), "owner", 4000); !e.empty()) return "pwrite: " + e;
        if (::fsync(fd.get()) != 0) return std::string("fsync: ") + std::strerror(errno);
        return "";
    });
    EXPECT_EQ(r, "");
    data.replace(4000, 5, "owner");
    EXPECT_EQ(diff(get(f.host), data), "");
    struct stat st;
    ASSERT_EQ(::stat(f.host.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0200u);
}

// With writeback the kernel puts O_APPEND data at its own end of file and
// sends the offset: a host fd opened O_APPEND would put every page (written
// back whole, from offset 0) at the host's end of file instead.
TEST(Append, TwoAppendingFdsInterleave) {
    File f = file("log");
    put(f.host, "start\n");
    UniqueFd a(::open(f.mnt.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC));
    UniqueFd b(::open(f.mnt.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC));
    ASSERT_TRUE(a && b) << std::strerror(errno);
    std::string want = "start\n";
    for (int i = 0; i < 20; ++i) {
        std::string la = "a" + std::to_string(i) + "\n", lb = "b" + std::to_string(i) + "\n";
        ASSERT_EQ(::write(a.get(), la.data(), la.size()), static_cast<ssize_t>(la.size()));
        want += la;
        ASSERT_EQ(::lseek(a.get(), 0, SEEK_CUR), static_cast<off_t>(want.size())) << "after " << la;
        ASSERT_EQ(::write(b.get(), lb.data(), lb.size()), static_cast<ssize_t>(lb.size()));
        want += lb;
    }
    EXPECT_EQ(::fsync(a.get()), 0);
    EXPECT_EQ(diff(get(f.host), want), "") << "the host file after fsync";
    a.reset();
    b.reset();
    EXPECT_EQ(diff(get(f.mnt), want), "");
    EXPECT_EQ(diff(get(f.host), want), "") << "the host file after close";
}

// A new file created O_WRONLY|O_APPEND, as shells do for >>.
TEST(Append, CreatedWriteOnlyAppend) {
    File f = file("new");
    {
        UniqueFd fd(::open(f.mnt.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
        ASSERT_TRUE(fd) << std::strerror(errno);
        ASSERT_EQ(::write(fd.get(), "one\n", 4), 4);
        ASSERT_EQ(::write(fd.get(), "two\n", 4), 4);
    }
    {
        UniqueFd fd(::open(f.mnt.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC));
        ASSERT_TRUE(fd) << std::strerror(errno);
        ASSERT_EQ(::write(fd.get(), "three\n", 6), 6);
    }
    EXPECT_EQ(diff(get(f.mnt), "one\ntwo\nthree\n"), "");
    EXPECT_EQ(diff(get(f.host), "one\ntwo\nthree\n"), "");
}

// The kernel keeps the size: SETATTR of the size must reach the host, and
// cached pages past a shrink must not come back.
TEST(Truncate, ShrinkAndExtendWithFtruncate) {
    File f = file("t");
    std::string data = pattern(5 * 4096, 3);
    put(f.host, data);
    UniqueFd fd(::open(f.mnt.c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(fd) << std::strerror(errno);
    EXPECT_EQ(pwrite_all(fd.get(), "dirty", 4 * 4096 + 10), "");  // a cached page past the cut
    ASSERT_EQ(::ftruncate(fd.get(), 1000), 0);
    struct stat st;
    ASSERT_EQ(::fstat(fd.get(), &st), 0);
    EXPECT_EQ(st.st_size, 1000);
    ASSERT_EQ(::ftruncate(fd.get(), 3 * 4096 + 5), 0);
    EXPECT_EQ(pwrite_all(fd.get(), "end", 3 * 4096 + 5), "");
    ASSERT_EQ(::fsync(fd.get()), 0);
    std::string want = data.substr(0, 1000) + std::string(3 * 4096 + 5 - 1000, '\0') + "end";
    EXPECT_EQ(diff(get(f.host), want), "") << "the host file after fsync";
    fd.reset();
    EXPECT_EQ(diff(get(f.mnt), want), "");
    ASSERT_EQ(::stat(f.host.c_str(), &st), 0);
    EXPECT_EQ(st.st_size, static_cast<off_t>(want.size()));
    // truncate(2) by name, with no fd: the size goes without a handle.
    ASSERT_EQ(::truncate(f.mnt.c_str(), 10), 0);
    EXPECT_EQ(diff(get(f.host), want.substr(0, 10)), "");
    EXPECT_EQ(diff(get(f.mnt), want.substr(0, 10)), "");
}

// O_TRUNC on open, then writes: the kernel truncates its cache itself.
TEST(Truncate, OpenWithOTrunc) {
    File f = file("ot");
    put(f.host, pattern(10000, 4));
    ASSERT_EQ(get(f.mnt).size(), 10000u);  // pages now cached in the mount
    {
        UniqueFd fd(::open(f.mnt.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC));
        ASSERT_TRUE(fd) << std::strerror(errno);
        ASSERT_EQ(::write(fd.get(), "short", 5), 5);
    }
    EXPECT_EQ(diff(get(f.mnt), "short"), "");
    EXPECT_EQ(diff(get(f.host), "short"), "");
}

// Shared mappings are written back by the kernel; msync must put the data
// in the host file.
TEST(Mmap, SharedWriteReachesTheHostAfterMsync) {
    File f = file("m");
    std::string data = pattern(3 * 4096, 5);
    put(f.host, data);
    UniqueFd fd(::open(f.mnt.c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(fd) << std::strerror(errno);
    void* p = ::mmap(nullptr, data.size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    ASSERT_NE(p, MAP_FAILED) << std::strerror(errno);
    char* m = static_cast<char*>(p);
    std::memcpy(m + 10, "MAPPED", 6);
    std::memcpy(m + 2 * 4096 + 4000, "PAGE2", 5);
    ASSERT_EQ(::msync(p, data.size(), MS_SYNC), 0) << std::strerror(errno);
    data.replace(10, 6, "MAPPED");
    data.replace(2 * 4096 + 4000, 5, "PAGE2");
    EXPECT_EQ(diff(get(f.host), data), "") << "the host file after msync";
    std::memcpy(m + 4096, "AFTER", 5);
    ASSERT_EQ(::munmap(p, data.size()), 0);
    fd.reset();
    data.replace(4096, 5, "AFTER");
    EXPECT_EQ(diff(get(f.host), data), "") << "the host file after munmap and close";
    EXPECT_EQ(diff(get(f.mnt), data), "");
}

// SEEK_DATA and SEEK_HOLE never skip data the kernel has not written back
// yet (the host file still has a hole there): `cp --sparse` relies on it.
TEST(Sparse, SeekDataFindsCachedData) {
    File f = file("sparse");
    UniqueFd fd(::open(f.mnt.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd) << std::strerror(errno);
    const off_t at = 4 << 20;
    EXPECT_EQ(pwrite_all(fd.get(), std::string(4096, 'd'), at), "");
    off_t data = ::lseek(fd.get(), 0, SEEK_DATA);
    EXPECT_GE(data, 0) << std::strerror(errno);
    EXPECT_LE(data, at) << "SEEK_DATA skipped the cached data";
    off_t hole = ::lseek(fd.get(), at, SEEK_HOLE);
    EXPECT_GE(hole, at + 4096) << "SEEK_HOLE found a hole inside the cached data";
    ASSERT_EQ(::fsync(fd.get()), 0);
    std::string back(4096, '\0');
    EXPECT_EQ(::pread(fd.get(), back.data(), back.size(), at), 4096);
    EXPECT_EQ(back, std::string(4096, 'd'));
}

// Written data is the host's once fsync returns, and once close returns.
TEST(Durability, DataReachesTheHostOnFsyncAndClose) {
    File f = file("d");
    std::string first = pattern((1u << 20) + 333, 6), second = pattern(70000, 7);
    UniqueFd fd(::open(f.mnt.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640));
    ASSERT_TRUE(fd) << std::strerror(errno);
    EXPECT_EQ(pwrite_all(fd.get(), first, 0), "");
    ASSERT_EQ(::fsync(fd.get()), 0);
    EXPECT_EQ(diff(get(f.host), first), "") << "after fsync";
    EXPECT_EQ(pwrite_all(fd.get(), second, 5000), "");
    ASSERT_EQ(::close(fd.release()), 0);
    std::string want = first;
    want.replace(5000, second.size(), second);
    EXPECT_EQ(diff(get(f.host), want), "") << "after close";
    struct stat st;
    ASSERT_EQ(::stat(f.host.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0640u);
}

// The writeback cache is on: a write returns before the server has it
// (without --writeback every write() reaches the host file before it
// returns). The kernel's flusher could write one of the files back between
// write() and the look at the host (after 30 s dirty, or on someone's
// sync(2)), never all ten in a row.
TEST(Cache, WritesWaitInTheMountUntilFsync) {
    int waiting = 0;
    std::vector<UniqueFd> fds;
    for (int i = 0; i < 10; ++i) {
        File f = file(std::to_string(i));
        fds.emplace_back(::open(f.mnt.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
        ASSERT_TRUE(fds.back()) << std::strerror(errno);
        ASSERT_EQ(::write(fds.back().get(), "cached", 6), 6);
        if (get(f.host).empty()) ++waiting;
    }
    EXPECT_GT(waiting, 0) << "every write was on the host before write() returned: no writeback cache";
    for (int i = 0; i < 10; ++i) {
        ASSERT_EQ(::fsync(fds[static_cast<size_t>(i)].get()), 0);
        EXPECT_EQ(get(file(std::to_string(i)).host), "cached");
    }
}

// The guest's times are the ones that stay: an explicit mtime set after
// cached writes is not overwritten when the writes reach the host, and
// after close the host shows the mtime the mount shows.
TEST(Times, MtimeFromTheKernelIsKept) {
    File f = file("mt");
    UniqueFd fd(::open(f.mnt.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd) << std::strerror(errno);
    EXPECT_EQ(pwrite_all(fd.get(), pattern(20000, 8), 0), "");
    struct timespec ts[2] = {{0, UTIME_OMIT}, {1000000000, 5}};
    ASSERT_EQ(::futimens(fd.get(), ts), 0);
    fd.reset();
    struct stat host, mnt;
    ASSERT_EQ(::stat(f.host.c_str(), &host), 0);
    ASSERT_EQ(::stat(f.mnt.c_str(), &mnt), 0);
    EXPECT_EQ(host.st_mtim.tv_sec, 1000000000);
    EXPECT_EQ(host.st_mtim.tv_nsec, 5);
    EXPECT_EQ(mnt.st_mtim.tv_sec, 1000000000);
    EXPECT_EQ(host.st_size, 20000);

    // Writes after that move the mtime on; close leaves the host and the
    // mount agreeing on it.
    fd.reset(::open(f.mnt.c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_TRUE(fd) << std::strerror(errno);
    EXPECT_EQ(pwrite_all(fd.get(), "again", 100), "");
    fd.reset();
    ASSERT_EQ(::stat(f.host.c_str(), &host), 0);
    ASSERT_EQ(::stat(f.mnt.c_str(), &mnt), 0);
    EXPECT_GT(mnt.st_mtim.tv_sec, 1000000000);
    EXPECT_EQ(host.st_mtim.tv_sec, mnt.st_mtim.tv_sec);
    EXPECT_EQ(host.st_mtim.tv_nsec, mnt.st_mtim.tv_nsec);
}

// A write by someone without CAP_FSETID clears set-user-ID (and, on a group
// executable file, set-group-ID) as on a local file system: the kernel sends
// such writes through at once with FUSE_WRITE_KILL_SUIDGID.
TEST(Setid, WriteByAnotherUserClearsSetidBits) {
    File f = file("suid");
    put(f.host, pattern(100, 9), 06777);
    std::string r = as_nobody([&]() -> std::string {
        UniqueFd fd(::openat(g_mnt_fd, f.rel.c_str(), O_WRONLY | O_CLOEXEC));
        if (!fd) return std::string("open: ") + std::strerror(errno);
        return pwrite_all(fd.get(), "x", 3);
    });
    EXPECT_EQ(r, "");
    struct stat host, mnt;
    ASSERT_EQ(::stat(f.host.c_str(), &host), 0);
    ASSERT_EQ(::stat(f.mnt.c_str(), &mnt), 0);
    EXPECT_EQ(host.st_mode & 07777, 0777u);
    EXPECT_EQ(mnt.st_mode & 07777, 0777u);
}

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    for (int i = 1; i + 1 < argc; ++i) {
        std::string a = argv[i];
        if (a == "--ocivm") config().ocivm = argv[++i];
        else if (a == "--cache") config().cache = argv[++i];
    }
    if (config().ocivm.empty()) {
        std::fprintf(stderr, "usage: fs_writeback_tests --ocivm PATH [--cache auto|always]\n");
        return 2;
    }
    if (::geteuid() != 0) {
        std::fprintf(stderr, "FAIL: the fs tests mount file systems and must run as root (sudo make test)\n");
        return 1;
    }
    if (::access("/dev/fuse", R_OK | W_OK) != 0) {
        std::fprintf(stderr, "FAIL: /dev/fuse is missing: load the fuse module (modprobe fuse)\n");
        return 1;
    }
    std::printf("writeback tests with --cache %s --writeback\n", config().cache.c_str());
    int rc;
    {
        Workspace ws;
        g_ws = &ws;
        Mount m(ws.share, ws.mnt, {"--writeback"});
        UniqueFd root(::open(ws.mnt.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
        if (!root) {
            std::fprintf(stderr, "FAIL: cannot open %s: %s\n", ws.mnt.c_str(), std::strerror(errno));
            return 1;
        }
        g_mnt_fd = root.get();
        rc = RUN_ALL_TESTS();
        root.reset();
        if (int st = m.stop(); st != 0) {
            std::fprintf(stderr, "FAIL: ocivm mount exited with %d after SIGTERM\n", st);
            rc = 1;
        }
    }
    return rc;
}
