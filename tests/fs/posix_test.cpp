// Host-mount tests: every operation runs on the mount and on a native
// directory of the same tmpfs, and must give the same result and errno.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <sys/sysmacros.h>
#include <grp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fs/mount_fixture.h"
#include "util/unique_fd.h"

using namespace ocivm::test;
using ocivm::UniqueFd;
namespace stdfs = std::filesystem;

namespace {

Workspace* g_ws = nullptr;
Mount* g_mount = nullptr;

// Result of one system call: return value, errno when it failed, and any
// data it produced.
struct R {
    long ret = 0;
    int err = 0;
    std::string data;
    bool operator==(const R&) const = default;
};
std::ostream& operator<<(std::ostream& o, const R& r) {
    return o << "{ret=" << r.ret << " errno=" << (r.err ? std::strerror(r.err) : "0")
             << " data=" << r.data.size() << "B}";
}
R sys(long ret) { return R{ret, ret < 0 ? errno : 0, {}}; }

// Two fresh directories with the same name: one native, one through the mount.
struct Pair {
    std::string native, mnt;
};
Pair dirs(const std::string& name) {
    Pair p{g_ws->native + "/" + name, g_ws->mnt + "/" + name};
    EXPECT_EQ(::mkdir(p.native.c_str(), 0755), 0);
    EXPECT_EQ(::mkdir(p.mnt.c_str(), 0755), 0) << std::strerror(errno);
    return p;
}
std::string test_name() {
    auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    return std::string(info->test_suite_name()) + "." + info->name();
}

// Runs f on both roots; the outcomes must match.
template <typename F>
void same(const Pair& p, const char* what, F f) {
    R a = f(p.native);
    R b = f(p.mnt);
    EXPECT_EQ(a, b) << what << ": native " << a << " vs mount " << b;
}

void write_file(const std::string& path, const std::string& content, mode_t mode = 0644) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, mode));
    ASSERT_TRUE(fd) << path << ": " << std::strerror(errno);
    ASSERT_EQ(::write(fd.get(), content.data(), content.size()),
              static_cast<ssize_t>(content.size()));
}
std::string read_file(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY));
    if (!fd) return "<" + std::string(std::strerror(errno)) + ">";
    std::string out;
    char buf[65536];
    ssize_t n;
    while ((n = ::read(fd.get(), buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    return out;
}
R stat_summary(const std::string& path) {
    struct stat st;
    R r = sys(::lstat(path.c_str(), &st));
    if (r.ret == 0) {
        r.data = "mode=" + std::to_string(st.st_mode) + " nlink=" + std::to_string(st.st_nlink) +
                 " uid=" + std::to_string(st.st_uid) + " gid=" + std::to_string(st.st_gid) +
                 " size=" + std::to_string(st.st_size) + " rdev=" + std::to_string(st.st_rdev);
        if (S_ISREG(st.st_mode)) r.data += " blocks=" + std::to_string(st.st_blocks);
    }
    return r;
}
std::vector<std::string> list_dir(const std::string& path) {
    std::vector<std::string> names;
    DIR* d = ::opendir(path.c_str());
    if (!d) return {std::string("<").append(std::strerror(errno)).append(">")};  // (GCC 12 -Wrestrict, see Sparse)
    while (auto* e = ::readdir(d)) names.emplace_back(e->d_name);
    ::closedir(d);
    std::sort(names.begin(), names.end());
    return names;
}
std::string pattern(size_t n, unsigned seed) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + seed) % 26);
    return s;
}

// Runs f in a child process with uid/gid 65534 (nobody); returns its R.
template <typename F>
R as_nobody(F f) {
    int pfd[2];
    if (::pipe(pfd) != 0) return R{-1, errno, "pipe"};
    pid_t pid = ::fork();
    if (pid == 0) {
        ::close(pfd[0]);
        R r{-1, EPERM, "setuid"};
        if (::setgroups(0, nullptr) == 0 && ::setresgid(65534, 65534, 65534) == 0 &&
            ::setresuid(65534, 65534, 65534) == 0)
            r = f();
        long buf[2] = {r.ret, r.err};
        (void)!::write(pfd[1], buf, sizeof buf);
        (void)!::write(pfd[1], r.data.data(), r.data.size());
        ::_exit(0);
    }
    ::close(pfd[1]);
    long buf[2] = {-1, -1};
    (void)!::read(pfd[0], buf, sizeof buf);
    std::string data;
    char c[4096];
    ssize_t n;
    while ((n = ::read(pfd[0], c, sizeof c)) > 0) data.append(c, static_cast<size_t>(n));
    ::close(pfd[0]);
    int st;
    ::waitpid(pid, &st, 0);
    return R{buf[0], static_cast<int>(buf[1]), data};
}

}  // namespace

TEST(Open, FlagsMatchNative) {
    auto p = dirs(test_name());
    for (auto* root : {&p.native, &p.mnt}) {
        write_file(*root + "/f", "0123456789");
        ASSERT_EQ(::symlink("f", (*root + "/link").c_str()), 0);
    }
    same(p, "O_EXCL on existing", [](const std::string& r) {
        return sys(::open((r + "/f").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644));
    });
    same(p, "O_EXCL new", [](const std::string& r) {
        UniqueFd fd(::open((r + "/new").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0640));
        R res = sys(fd ? 0 : -1);
        if (fd) res.data = stat_summary(r + "/new").data;
        return res;
    });
    same(p, "O_TRUNC", [](const std::string& r) {
        UniqueFd fd(::open((r + "/f").c_str(), O_WRONLY | O_TRUNC));
        R res = sys(fd ? 0 : -1);
        res.data = read_file(r + "/f");
        return res;
    });
    same(p, "O_APPEND", [](const std::string& r) {
        write_file(r + "/a", "head");
        UniqueFd fd(::open((r + "/a").c_str(), O_WRONLY | O_APPEND));
        ::lseek(fd.get(), 0, SEEK_SET);
        R res = sys(::write(fd.get(), "tail", 4));
        res.data = read_file(r + "/a");
        return res;
    });
    same(p, "O_DIRECTORY on a file", [](const std::string& r) {
        return sys(::open((r + "/f").c_str(), O_RDONLY | O_DIRECTORY));
    });
    same(p, "O_DIRECTORY on a dir", [](const std::string& r) {
        UniqueFd fd(::open(r.c_str(), O_RDONLY | O_DIRECTORY));
        return sys(fd ? 0 : -1);
    });
    same(p, "O_NOFOLLOW on a symlink", [](const std::string& r) {
        return sys(::open((r + "/link").c_str(), O_RDONLY | O_NOFOLLOW));
    });
    same(p, "O_CREAT in a missing dir", [](const std::string& r) {
        return sys(::open((r + "/missing/x").c_str(), O_CREAT | O_WRONLY, 0644));
    });
    same(p, "open a dir for writing", [](const std::string& r) {
        return sys(::open(r.c_str(), O_WRONLY));
    });
}

TEST(ReadWrite, SizesAndOddOffsets) {
    auto p = dirs(test_name());
    const size_t sizes[] = {0, 1, 4095, 4096, (1u << 20) + 1};
    const off_t offsets[] = {0, 1, 4097, 123457};
    unsigned seed = 0;
    for (size_t sz : sizes) {
        for (off_t off : offsets) {
            std::string data = pattern(sz, ++seed);
            same(p, "pwrite+pread", [&](const std::string& r) {
                std::string f = r + "/rw";
                UniqueFd fd(::open(f.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644));
                R res = sys(::pwrite(fd.get(), data.data(), data.size(), off));
                std::string back(sz + 10, '\0');
                ssize_t n = ::pread(fd.get(), back.data(), back.size(), off);
                back.resize(n < 0 ? 0 : static_cast<size_t>(n));
                res.data = back + "|" + std::to_string(::lseek(fd.get(), 0, SEEK_END));
                EXPECT_EQ(back, data) << "size " << sz << " offset " << off;
                return res;
            });
        }
    }
    same(p, "whole file after writes", [](const std::string& r) {
        return R{0, 0, read_file(r + "/rw")};
    });
}

TEST(Sparse, SeekDataAndHole) {
    auto p = dirs(test_name());
    same(p, "sparse file", [](const std::string& r) {
        std::string f = r + "/sparse";
        UniqueFd fd(::open(f.c_str(), O_RDWR | O_CREAT, 0644));
        EXPECT_EQ(::ftruncate(fd.get(), 16 << 20), 0);
        std::string blk(4096, 'x');
        EXPECT_EQ(::pwrite(fd.get(), blk.data(), blk.size(), 4 << 20), 4096);
        std::string out;
        for (off_t from : {off_t(0), off_t(4 << 20), off_t((4 << 20) + 100), off_t(15 << 20)}) {
            errno = 0;
            off_t d = ::lseek(fd.get(), from, SEEK_DATA);
            // Appended piece by piece: GCC 12's -Wrestrict misfires on
            // "D" + std::to_string(...) in a Release build.
            int e = d < 0 ? errno : 0;
            out.append("D").append(std::to_string(d)).append("/").append(std::to_string(e)).append(" ");
            off_t h = ::lseek(fd.get(), from, SEEK_HOLE);
            out.append("H").append(std::to_string(h)).append(" ");
        }
        off_t past = ::lseek(fd.get(), 17 << 20, SEEK_DATA);
        out += "past=" + std::to_string(past) + "/" + std::to_string(errno);
        return R{0, 0, out + " " + stat_summary(f).data};
    });
}

TEST(Unlink, OpenFileStaysUsable) {
    auto p = dirs(test_name());
    same(p, "unlink open file", [](const std::string& r) {
        std::string f = r + "/f";
        write_file(f, "before");
        UniqueFd fd(::open(f.c_str(), O_RDWR));
        R res = sys(::unlink(f.c_str()));
        EXPECT_EQ(::pwrite(fd.get(), "AFTER!", 6, 0), 6);
        char buf[16] = {};
        ssize_t n = ::pread(fd.get(), buf, sizeof buf, 0);
        struct stat st;
        ::fstat(fd.get(), &st);
        res.data = std::string(buf, n > 0 ? static_cast<size_t>(n) : 0) +
                   " nlink=" + std::to_string(st.st_nlink) + " " +
                   std::to_string(::access(f.c_str(), F_OK));
        return res;
    });
    same(p, "rename open file", [](const std::string& r) {
        std::string f = r + "/g";
        write_file(f, "content");
        UniqueFd fd(::open(f.c_str(), O_RDWR));
        R res = sys(::rename(f.c_str(), (r + "/h").c_str()));
        EXPECT_EQ(::pwrite(fd.get(), "C", 1, 0), 1);
        res.data = read_file(r + "/h") + read_file(f);
        return res;
    });
}

TEST(Link, HardLinkCounts) {
    auto p = dirs(test_name());
    same(p, "links", [](const std::string& r) {
        std::string a = r + "/a";
        write_file(a, "x");
        std::string out;
        out += std::to_string(::link(a.c_str(), (r + "/b").c_str())) + " ";
        out += std::to_string(::link(a.c_str(), (r + "/c").c_str())) + " ";
        out += stat_summary(a).data + " ";
        ::unlink((r + "/b").c_str());
        out += stat_summary(r + "/c").data + " ";
        struct stat s1, s2;
        ::stat(a.c_str(), &s1);
        ::stat((r + "/c").c_str(), &s2);
        out += s1.st_ino == s2.st_ino ? "same-ino " : "different-ino ";
        R e = sys(::link(a.c_str(), (r + "/c").c_str()));
        out += std::to_string(e.err) + " ";
        e = sys(::link(r.c_str(), (r + "/dirlink").c_str()));
        out += std::to_string(e.err);
        return R{0, 0, out};
    });
}

TEST(Rename, OverFilesAndDirectories) {
    auto p = dirs(test_name());
    for (auto* root : {&p.native, &p.mnt}) {
        write_file(*root + "/f1", "one");
        write_file(*root + "/f2", "two");
        ::mkdir((*root + "/d1").c_str(), 0755);
        ::mkdir((*root + "/d2").c_str(), 0755);
        ::mkdir((*root + "/full").c_str(), 0755);
        write_file(*root + "/full/x", "x");
    }
    same(p, "file over file", [](const std::string& r) {
        R res = sys(::rename((r + "/f1").c_str(), (r + "/f2").c_str()));
        res.data = read_file(r + "/f2") + std::to_string(::access((r + "/f1").c_str(), F_OK));
        return res;
    });
    same(p, "dir over empty dir", [](const std::string& r) {
        return sys(::rename((r + "/d1").c_str(), (r + "/d2").c_str()));
    });
    same(p, "dir over non-empty dir", [](const std::string& r) {
        return sys(::rename((r + "/d2").c_str(), (r + "/full").c_str()));
    });
    same(p, "file over dir", [](const std::string& r) {
        return sys(::rename((r + "/f2").c_str(), (r + "/d2").c_str()));
    });
    same(p, "dir over file", [](const std::string& r) {
        return sys(::rename((r + "/d2").c_str(), (r + "/f2").c_str()));
    });
    same(p, "dir into itself", [](const std::string& r) {
        return sys(::rename((r + "/full").c_str(), (r + "/full/sub").c_str()));
    });
    same(p, "rmdir non-empty", [](const std::string& r) {
        return sys(::rmdir((r + "/full").c_str()));
    });
    same(p, "rmdir a file", [](const std::string& r) {
        return sys(::rmdir((r + "/f2").c_str()));
    });
    same(p, "unlink a dir", [](const std::string& r) {
        return sys(::unlink((r + "/full").c_str()));
    });
    same(p, "missing source", [](const std::string& r) {
        return sys(::rename((r + "/nope").c_str(), (r + "/x").c_str()));
    });
    same(p, "listing", [](const std::string& r) {
        R res;
        for (auto& n : list_dir(r)) res.data += n + ",";
        return res;
    });
}

TEST(Rename, ExchangeAndNoReplace) {
    auto p = dirs(test_name());
    for (auto* root : {&p.native, &p.mnt}) {
        write_file(*root + "/a", "AAA");
        write_file(*root + "/b", "BBB");
        ::mkdir((*root + "/d").c_str(), 0755);
    }
    same(p, "RENAME_NOREPLACE onto existing", [](const std::string& r) {
        return sys(::renameat2(AT_FDCWD, (r + "/a").c_str(), AT_FDCWD, (r + "/b").c_str(),
                               RENAME_NOREPLACE));
    });
    same(p, "RENAME_NOREPLACE to new", [](const std::string& r) {
        R res = sys(::renameat2(AT_FDCWD, (r + "/a").c_str(), AT_FDCWD, (r + "/c").c_str(),
                                RENAME_NOREPLACE));
        res.data = read_file(r + "/c");
        return res;
    });
    same(p, "RENAME_EXCHANGE", [](const std::string& r) {
        R res = sys(::renameat2(AT_FDCWD, (r + "/b").c_str(), AT_FDCWD, (r + "/c").c_str(),
                                RENAME_EXCHANGE));
        res.data = read_file(r + "/b") + read_file(r + "/c");
        return res;
    });
    same(p, "RENAME_EXCHANGE file and dir", [](const std::string& r) {
        R res = sys(::renameat2(AT_FDCWD, (r + "/b").c_str(), AT_FDCWD, (r + "/d").c_str(),
                                RENAME_EXCHANGE));
        res.data = stat_summary(r + "/b").data + stat_summary(r + "/d").data;
        return res;
    });
    same(p, "RENAME_EXCHANGE missing", [](const std::string& r) {
        return sys(::renameat2(AT_FDCWD, (r + "/b").c_str(), AT_FDCWD, (r + "/zz").c_str(),
                               RENAME_EXCHANGE));
    });
    same(p, "RENAME_WHITEOUT", [](const std::string& r) {
        R res = sys(::renameat2(AT_FDCWD, (r + "/b").c_str(), AT_FDCWD, (r + "/w").c_str(),
                                RENAME_WHITEOUT));
        res.data = stat_summary(r + "/b").data;  // a 0:0 character device
        return res;
    });
}

TEST(Rename, CrossDeviceIsEXDEV) {
    auto p = dirs(test_name());
    // A second file system below both roots: the share's is served through
    // the mount as a submount of the same connection.
    std::string shared_sub = g_ws->share + "/" + test_name() + "/sub";
    std::string native_sub = p.native + "/sub";
    for (auto& d : {shared_sub, native_sub}) {
        ASSERT_EQ(::mkdir(d.c_str(), 0755), 0);
        ASSERT_EQ(::mount("tmpfs", d.c_str(), "tmpfs", 0, "size=16m"), 0);
    }
    write_file(p.native + "/f", "x");
    write_file(p.mnt + "/f", "x");
    same(p, "rename across file systems", [](const std::string& r) {
        return sys(::rename((r + "/f").c_str(), (r + "/sub/f").c_str()));
    });
    same(p, "link across file systems", [](const std::string& r) {
        return sys(::link((r + "/f").c_str(), (r + "/sub/f").c_str()));
    });
    ::umount2(shared_sub.c_str(), MNT_DETACH);
    ::umount2(native_sub.c_str(), MNT_DETACH);
}

TEST(Symlink, LoopsAndReadlink) {
    auto p = dirs(test_name());
    same(p, "symlink loop", [](const std::string& r) {
        std::string out;
        out += std::to_string(::symlink("b", (r + "/a").c_str()));
        out += std::to_string(::symlink("a", (r + "/b").c_str()));
        R o = sys(::open((r + "/a").c_str(), O_RDONLY));
        out += " open:" + std::to_string(o.err);
        struct stat st;
        R s = sys(::stat((r + "/a").c_str(), &st));
        out += " stat:" + std::to_string(s.err);
        char buf[64] = {};
        out += " readlink:" + std::to_string(::readlink((r + "/a").c_str(), buf, sizeof buf)) + buf;
        out += " lstat:" + stat_summary(r + "/a").data;
        R ex = sys(::symlink("x", (r + "/a").c_str()));
        out += " again:" + std::to_string(ex.err);
        return R{0, 0, out};
    });
    same(p, "long target", [](const std::string& r) {
        std::string target(4000, 'x');
        R res = sys(::symlink(target.c_str(), (r + "/long").c_str()));
        std::string buf(5000, '\0');
        ssize_t n = ::readlink((r + "/long").c_str(), buf.data(), buf.size());
        res.data = std::to_string(n);
        return res;
    });
}

TEST(Mknod, FifoAndDevice) {
    auto p = dirs(test_name());
    same(p, "mkfifo", [](const std::string& r) {
        R res = sys(::mkfifo((r + "/fifo").c_str(), 0640));
        res.data = stat_summary(r + "/fifo").data;
        return res;
    });
    same(p, "mknod char device", [](const std::string& r) {
        R res = sys(::mknod((r + "/null").c_str(), S_IFCHR | 0666, makedev(1, 3)));
        res.data = stat_summary(r + "/null").data;
        return res;
    });
    same(p, "mknod exists", [](const std::string& r) {
        return sys(::mknod((r + "/null").c_str(), S_IFCHR | 0666, makedev(1, 3)));
    });
    same(p, "fifo works", [](const std::string& r) {
        std::string f = r + "/fifo";
        std::thread writer([&] {
            UniqueFd w(::open(f.c_str(), O_WRONLY));
            (void)!::write(w.get(), "ping", 4);
        });
        UniqueFd rd(::open(f.c_str(), O_RDONLY));
        char buf[8] = {};
        ssize_t n = ::read(rd.get(), buf, sizeof buf);
        writer.join();
        return R{n, 0, buf};
    });
}

TEST(Xattr, UserAttributes) {
    auto p = dirs(test_name());
    for (auto* root : {&p.native, &p.mnt}) write_file(*root + "/f", "x");
    same(p, "set/get", [](const std::string& r) {
        std::string f = r + "/f";
        R res = sys(::setxattr(f.c_str(), "user.small", "value", 5, 0));
        char buf[64] = {};
        ssize_t n = ::getxattr(f.c_str(), "user.small", buf, sizeof buf);
        res.data = std::string(buf, n > 0 ? static_cast<size_t>(n) : 0);
        return res;
    });
    same(p, "large value", [](const std::string& r) {
        std::string f = r + "/f";
        std::string big = pattern(60000, 3);
        R res = sys(::setxattr(f.c_str(), "user.big", big.data(), big.size(), 0));
        std::string back(70000, '\0');
        ssize_t n = ::getxattr(f.c_str(), "user.big", back.data(), back.size());
        res.data = std::to_string(n) + (n == 60000 && back.compare(0, 60000, big) == 0 ? "ok" : "bad");
        return res;
    });
    same(p, "size query", [](const std::string& r) {
        return sys(::getxattr((r + "/f").c_str(), "user.big", nullptr, 0));
    });
    same(p, "ERANGE", [](const std::string& r) {
        char buf[2];
        return sys(::getxattr((r + "/f").c_str(), "user.small", buf, sizeof buf));
    });
    same(p, "ENODATA", [](const std::string& r) {
        char buf[16];
        return sys(::getxattr((r + "/f").c_str(), "user.none", buf, sizeof buf));
    });
    same(p, "XATTR_CREATE on existing", [](const std::string& r) {
        return sys(::setxattr((r + "/f").c_str(), "user.small", "v", 1, XATTR_CREATE));
    });
    same(p, "XATTR_REPLACE on missing", [](const std::string& r) {
        return sys(::setxattr((r + "/f").c_str(), "user.none", "v", 1, XATTR_REPLACE));
    });
    same(p, "list", [](const std::string& r) {
        char buf[1024];
        ssize_t n = ::listxattr((r + "/f").c_str(), buf, sizeof buf);
        std::vector<std::string> names;
        for (ssize_t i = 0; i < n;) {
            names.emplace_back(buf + i);
            i += static_cast<ssize_t>(names.back().size()) + 1;
        }
        std::sort(names.begin(), names.end());
        R res{n, 0, {}};
        for (auto& s : names) res.data += s + ",";
        return res;
    });
    same(p, "list ERANGE", [](const std::string& r) {
        char buf[3];
        return sys(::listxattr((r + "/f").c_str(), buf, sizeof buf));
    });
    same(p, "remove", [](const std::string& r) {
        R res = sys(::removexattr((r + "/f").c_str(), "user.small"));
        R again = sys(::removexattr((r + "/f").c_str(), "user.small"));
        res.data = std::to_string(again.err);
        return res;
    });
}

TEST(Times, UtimensatNowAndOmit) {
    auto p = dirs(test_name());
    for (auto* root : {&p.native, &p.mnt}) write_file(*root + "/f", "x");
    same(p, "explicit times", [](const std::string& r) {
        struct timespec ts[2] = {{1000000000, 123456789}, {1200000000, 987654321}};
        R res = sys(::utimensat(AT_FDCWD, (r + "/f").c_str(), ts, 0));
        struct stat st;
        ::stat((r + "/f").c_str(), &st);
        res.data = std::to_string(st.st_atim.tv_sec) + "." + std::to_string(st.st_atim.tv_nsec) +
                   " " + std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
        return res;
    });
    same(p, "UTIME_OMIT atime, UTIME_NOW mtime", [](const std::string& r) {
        // "Now" is the clock of whoever stores the file: the host's for a
        // virtio-fs share, which can be seconds away from a guest's clock
        // under TCG. So the bounds are the mtimes of files written on the
        // same file system just before and just after.
        auto stamp = [&r](const char* name) {
            write_file(r + "/" + name, "t");
            struct stat st {};
            ::stat((r + "/" + name).c_str(), &st);
            return st.st_mtim;
        };
        auto le = [](const timespec& a, const timespec& b) {
            return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec <= b.tv_nsec);
        };
        struct timespec ts[2] = {{0, UTIME_OMIT}, {0, UTIME_NOW}};
        timespec before = stamp("before");
        R res = sys(::utimensat(AT_FDCWD, (r + "/f").c_str(), ts, 0));
        struct stat st;
        ::stat((r + "/f").c_str(), &st);
        timespec after = stamp("after");
        bool now = le(before, st.st_mtim) && le(st.st_mtim, after);
        res.data = std::to_string(st.st_atim.tv_sec) + "." + std::to_string(st.st_atim.tv_nsec) +
                   (now ? " mtime=now" : " mtime=wrong");
        return res;
    });
    same(p, "futimens on an open fd", [](const std::string& r) {
        UniqueFd fd(::open((r + "/f").c_str(), O_RDWR));
        struct timespec ts[2] = {{5, 0}, {6, 0}};
        R res = sys(::futimens(fd.get(), ts));
        struct stat st;
        ::fstat(fd.get(), &st);
        res.data = std::to_string(st.st_atim.tv_sec) + " " + std::to_string(st.st_mtim.tv_sec);
        return res;
    });
    same(p, "lutimes on a symlink", [](const std::string& r) {
        ::symlink("f", (r + "/l").c_str());
        struct timespec ts[2] = {{7, 0}, {8, 0}};
        R res = sys(::utimensat(AT_FDCWD, (r + "/l").c_str(), ts, AT_SYMLINK_NOFOLLOW));
        struct stat st;
        ::lstat((r + "/l").c_str(), &st);
        res.data = std::to_string(st.st_mtim.tv_sec);
        return res;
    });
}

TEST(Attr, ChmodChownTruncate) {
    auto p = dirs(test_name());
    for (auto* root : {&p.native, &p.mnt}) write_file(*root + "/f", "0123456789");
    same(p, "chmod", [](const std::string& r) {
        R res = sys(::chmod((r + "/f").c_str(), 04751));
        res.data = stat_summary(r + "/f").data;
        return res;
    });
    same(p, "chown", [](const std::string& r) {
        R res = sys(::chown((r + "/f").c_str(), 1234, 5678));
        res.data = stat_summary(r + "/f").data;
        return res;
    });
    same(p, "truncate shrink/grow", [](const std::string& r) {
        R res = sys(::truncate((r + "/f").c_str(), 4));
        ::truncate((r + "/f").c_str(), 8192);
        std::string c = read_file(r + "/f");
        res.data = std::to_string(c.size()) + c.substr(0, 4);
        return res;
    });
    same(p, "ftruncate", [](const std::string& r) {
        UniqueFd fd(::open((r + "/f").c_str(), O_RDWR));
        R res = sys(::ftruncate(fd.get(), 3));
        res.data = read_file(r + "/f");
        return res;
    });
    same(p, "truncate a directory", [](const std::string& r) {
        return sys(::truncate(r.c_str(), 0));
    });
    same(p, "lchown a symlink", [](const std::string& r) {
        ::symlink("f", (r + "/l").c_str());
        R res = sys(::lchown((r + "/l").c_str(), 42, 43));
        res.data = stat_summary(r + "/l").data + stat_summary(r + "/f").data;
        return res;
    });
}

TEST(Permissions, NonRootFailsAsNatively) {
    auto p = dirs(test_name());
    for (auto* root : {&p.native, &p.mnt}) {
        write_file(*root + "/rootfile", "secret", 0644);
        write_file(*root + "/private", "secret", 0600);
        ASSERT_EQ(::mkdir((*root + "/open").c_str(), 0777), 0);
        ASSERT_EQ(::chmod((*root + "/open").c_str(), 0777), 0);
        ASSERT_EQ(::mkdir((*root + "/sticky").c_str(), 0777), 0);
        ASSERT_EQ(::chmod((*root + "/sticky").c_str(), 01777), 0);
        write_file(*root + "/sticky/rootowned", "x", 0666);
        ASSERT_EQ(::chmod((*root + "/sticky/rootowned").c_str(), 0666), 0);
    }
    same(p, "chmod not owner", [](const std::string& r) {
        return as_nobody([&] { return sys(::chmod((r + "/rootfile").c_str(), 0777)); });
    });
    same(p, "chown not root", [](const std::string& r) {
        return as_nobody([&] { return sys(::chown((r + "/rootfile").c_str(), 65534, 65534)); });
    });
    same(p, "truncate without write permission", [](const std::string& r) {
        return as_nobody([&] { return sys(::truncate((r + "/rootfile").c_str(), 0)); });
    });
    same(p, "open for writing without permission", [](const std::string& r) {
        return as_nobody([&] { return sys(::open((r + "/rootfile").c_str(), O_WRONLY)); });
    });
    same(p, "read a 0600 file", [](const std::string& r) {
        return as_nobody([&] { return sys(::open((r + "/private").c_str(), O_RDONLY)); });
    });
    same(p, "create in a root-owned 0755 dir", [](const std::string& r) {
        return as_nobody([&] { return sys(::open((r + "/new").c_str(), O_CREAT | O_WRONLY, 0644)); });
    });
    same(p, "utimes with UTIME_NOW as non-owner without write access", [](const std::string& r) {
        return as_nobody([&] { return sys(::utimensat(AT_FDCWD, (r + "/rootfile").c_str(), nullptr, 0)); });
    });
    same(p, "explicit utimes as non-owner", [](const std::string& r) {
        return as_nobody([&] {
            struct timespec ts[2] = {{1, 0}, {1, 0}};
            return sys(::utimensat(AT_FDCWD, (r + "/open").c_str(), ts, 0));
        });
    });
    same(p, "new files belong to the caller", [](const std::string& r) {
        return as_nobody([&] {
            UniqueFd fd(::open((r + "/open/mine").c_str(), O_CREAT | O_WRONLY, 0640));
            R res = sys(fd ? 0 : -1);
            ::mkdir((r + "/open/mydir").c_str(), 0750);
            ::symlink("mine", (r + "/open/mylink").c_str());
            res.data = stat_summary(r + "/open/mine").data + stat_summary(r + "/open/mydir").data +
                       stat_summary(r + "/open/mylink").data;
            return res;
        });
    });
    same(p, "chmod own file", [](const std::string& r) {
        return as_nobody([&] {
            R res = sys(::chmod((r + "/open/mine").c_str(), 0600));
            res.data = stat_summary(r + "/open/mine").data;
            return res;
        });
    });
    same(p, "unlink in a sticky dir", [](const std::string& r) {
        return as_nobody([&] { return sys(::unlink((r + "/sticky/rootowned").c_str())); });
    });
    same(p, "access()", [](const std::string& r) {
        return as_nobody([&] {
            R res;
            res.data = std::to_string(::access((r + "/rootfile").c_str(), R_OK)) +
                       std::to_string(::access((r + "/rootfile").c_str(), W_OK)) +
                       std::to_string(::access((r + "/private").c_str(), R_OK)) +
                       std::to_string(::access((r + "/open").c_str(), W_OK | X_OK));
            return res;
        });
    });
}

TEST(Readdir, RewinddirSeesChanges) {
    auto p = dirs(test_name());
    same(p, "rewinddir", [](const std::string& r) {
        for (int i = 0; i < 50; ++i) write_file(r + "/f" + std::to_string(i), "x");
        DIR* d = ::opendir(r.c_str());
        std::set<std::string> first;
        while (auto* e = ::readdir(d)) first.insert(e->d_name);
        write_file(r + "/created", "x");
        ::unlink((r + "/f7").c_str());
        ::rename((r + "/f8").c_str(), (r + "/renamed").c_str());
        ::rewinddir(d);
        std::vector<std::string> second;
        while (auto* e = ::readdir(d)) second.emplace_back(e->d_name);
        ::closedir(d);
        std::sort(second.begin(), second.end());
        R res{static_cast<long>(first.size()), 0, {}};
        for (auto& s : second) res.data += s + ",";
        return res;
    });
}

TEST(Readdir, ChangingDirectoryNoDuplicatesNoSkips) {
    auto p = dirs(test_name());
    const int n = 2000;
    for (auto* root : {&p.native, &p.mnt}) {
        for (int i = 0; i < n; ++i) write_file(*root + "/keep" + std::to_string(i), "");
        for (int i = 0; i < n; ++i) write_file(*root + "/gone" + std::to_string(i), "");
    }
    for (auto* root : {&p.native, &p.mnt}) {
        DIR* d = ::opendir(root->c_str());
        std::map<std::string, int> seen;
        int step = 0;
        while (auto* e = ::readdir(d)) {
            seen[e->d_name]++;
            // While iterating: add new entries, remove others.
            if (step < n) {
                write_file(*root + "/new" + std::to_string(step), "");
                ::unlink((*root + "/gone" + std::to_string(step)).c_str());
            }
            ++step;
        }
        ::closedir(d);
        for (auto& [name, count] : seen) EXPECT_EQ(count, 1) << *root << ": duplicate " << name;
        for (int i = 0; i < n; ++i)
            EXPECT_EQ(seen.count("keep" + std::to_string(i)), 1u) << *root << ": skipped keep" << i;
    }
}

TEST(Readdir, TelldirSeekdir) {
    auto p = dirs(test_name());
    same(p, "seekdir returns to the same entry", [](const std::string& r) {
        for (int i = 0; i < 300; ++i) write_file(r + "/e" + std::to_string(i), "");
        DIR* d = ::opendir(r.c_str());
        std::string out;
        std::vector<std::pair<long, std::string>> marks;
        int i = 0;
        while (::readdir(d)) {
            if (i % 37 == 0) {
                long pos = ::telldir(d);
                auto* next = ::readdir(d);
                if (!next) break;
                marks.emplace_back(pos, next->d_name);
            }
            ++i;
        }
        for (auto it = marks.rbegin(); it != marks.rend(); ++it) {
            ::seekdir(d, it->first);
            auto* e = ::readdir(d);
            bool ok = e && it->second == e->d_name;
            out += ok ? "." : ("X(" + it->second + ")");
        }
        ::closedir(d);
        return R{static_cast<long>(marks.size()), 0, out};
    });
}

TEST(Readdir, TenThousandEntries) {
    auto p = dirs(test_name());
    for (int i = 0; i < 10000; ++i) {
        write_file(p.mnt + "/entry-with-a-longer-name-" + std::to_string(i), "");
        write_file(p.native + "/entry-with-a-longer-name-" + std::to_string(i), "");
    }
    auto a = list_dir(p.native), b = list_dir(p.mnt);
    EXPECT_EQ(a.size(), 10002u);
    EXPECT_EQ(a, b);
    // and with attributes (READDIRPLUS): every entry stats to a regular file
    size_t regular = 0;
    for (auto& name : b) {
        struct stat st;
        if (name != "." && name != ".." && ::lstat((p.mnt + "/" + name).c_str(), &st) == 0 &&
            S_ISREG(st.st_mode))
            ++regular;
    }
    EXPECT_EQ(regular, 10000u);
}

TEST(Misc, FsyncStatfsFallocateCopyRange) {
    auto p = dirs(test_name());
    same(p, "fsync/fdatasync/fsyncdir/syncfs", [](const std::string& r) {
        UniqueFd fd(::open((r + "/f").c_str(), O_RDWR | O_CREAT, 0644));
        UniqueFd dfd(::open(r.c_str(), O_RDONLY | O_DIRECTORY));
        R res;
        res.data = std::to_string(::fsync(fd.get())) + std::to_string(::fdatasync(fd.get())) +
                   std::to_string(::fsync(dfd.get())) + std::to_string(::syncfs(fd.get()));
        return res;
    });
    same(p, "statfs", [](const std::string& r) {
        struct statvfs sv;
        R res = sys(::statvfs(r.c_str(), &sv));
        res.data = std::to_string(sv.f_bsize) + " " + std::to_string(sv.f_namemax);
        // In a VM the reference is another tmpfs instance: sizes differ.
        if (!g_ws->guest) res.data += " " + std::to_string(sv.f_blocks);
        return res;
    });
    same(p, "fallocate", [](const std::string& r) {
        UniqueFd fd(::open((r + "/fa").c_str(), O_RDWR | O_CREAT, 0644));
        std::string out;
        out += std::to_string(::fallocate(fd.get(), 0, 0, 1 << 20));
        out += stat_summary(r + "/fa").data;
        out += std::to_string(::fallocate(fd.get(), FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20));
        out += stat_summary(r + "/fa").data;
        std::string ones(8192, '1');
        ::pwrite(fd.get(), ones.data(), ones.size(), 0);
        out += std::to_string(::fallocate(fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096));
        char buf[8];
        ::pread(fd.get(), buf, 8, 0);
        out += std::string(buf, 8) == std::string(8, '\0') ? "zeroed" : "not-zeroed";
        errno = 0;
        out += std::to_string(::fallocate(fd.get(), 0, 0, 0)) + "/" + std::to_string(errno);
        return R{0, 0, out};
    });
    same(p, "copy_file_range", [](const std::string& r) {
        std::string data = pattern(300000, 9);
        write_file(r + "/src", data);
        UniqueFd in(::open((r + "/src").c_str(), O_RDONLY));
        UniqueFd out(::open((r + "/dst").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644));
        loff_t oi = 1000, oo = 0;
        ssize_t total = 0, n;
        while ((n = ::copy_file_range(in.get(), &oi, out.get(), &oo, 400000, 0)) > 0) total += n;
        return R{total, n < 0 ? errno : 0, read_file(r + "/dst") == data.substr(1000) ? "same" : "differs"};
    });
}

TEST(Confinement, SymlinkToRootIsNotFollowedByTheServer) {
    auto p = dirs(test_name());
    std::string outside = g_ws->base + "/outside-" + std::to_string(::getpid());
    write_file(outside, "host secret");
    ::chmod(outside.c_str(), 0600);
    for (auto* root : {&p.native, &p.mnt}) {
        ASSERT_EQ(::symlink("/", (*root + "/toroot").c_str()), 0);
        ASSERT_EQ(::symlink(outside.c_str(), (*root + "/tofile").c_str()), 0);
    }
    same(p, "lstat gives the link", [](const std::string& r) { return stat_summary(r + "/toroot"); });
    same(p, "O_NOFOLLOW", [](const std::string& r) {
        return sys(::open((r + "/tofile").c_str(), O_RDONLY | O_NOFOLLOW));
    });
    same(p, "O_PATH|O_NOFOLLOW + fchmod via /proc leaves the target alone", [&](const std::string& r) {
        UniqueFd fd(::open((r + "/tofile").c_str(), O_PATH | O_NOFOLLOW));
        R res = sys(::fchmodat(AT_FDCWD, (r + "/tofile").c_str(), 0666, AT_SYMLINK_NOFOLLOW));
        struct stat st;
        ::stat(outside.c_str(), &st);
        res.data = std::to_string(st.st_mode & 07777);
        return res;
    });
    same(p, "lsetxattr on the link", [](const std::string& r) {
        return sys(::lsetxattr((r + "/tofile").c_str(), "user.x", "1", 1, 0));
    });
    // The server resolves names one component at a time below the share:
    // "toroot/etc" names a file only for the client, which follows the link
    // itself; the share root's parent is never served.
    struct stat root_st, up_st;
    ASSERT_EQ(::stat(g_ws->mnt.c_str(), &root_st), 0);
    ASSERT_EQ(::stat((g_ws->mnt + "/" + test_name() + "/../..").c_str(), &up_st), 0);
    EXPECT_NE(root_st.st_dev, up_st.st_dev) << "'..' of the mount root must leave the mount";
    EXPECT_EQ(list_dir(g_ws->mnt + "/..").size(), list_dir(g_ws->base).size());
}

TEST(Confinement, DirectoryRenamedOutDuringLookups) {
    auto p = dirs(test_name());
    std::string in_share = g_ws->share + "/" + test_name();
    std::string outside_parent = g_ws->base + "/outside-dir-" + std::to_string(::getpid());
    ASSERT_EQ(::mkdir(outside_parent.c_str(), 0755), 0);
    write_file(outside_parent + "/secret", "host secret");
    ASSERT_EQ(::mkdir((in_share + "/a").c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((in_share + "/a/b").c_str(), 0755), 0);
    write_file(in_share + "/a/b/file", "inside");

    std::atomic<bool> done{false};
    std::atomic<int> leaks{0};
    std::thread looker([&] {
        while (!done) {
            for (auto rel : {"/a/b/file", "/a/b/../../secret", "/a/../secret", "/a/b/../secret"}) {
                std::string c = read_file(p.mnt + rel);
                if (c == "host secret") leaks++;
            }
            for (auto& n : list_dir(p.mnt + "/a"))
                if (n == "secret") leaks++;
        }
    });
    for (int i = 0; i < 300; ++i) {
        ::rename((in_share + "/a").c_str(), (outside_parent + "/a").c_str());
        ::rename((outside_parent + "/a").c_str(), (in_share + "/a").c_str());
    }
    done = true;
    looker.join();
    EXPECT_EQ(leaks.load(), 0) << "a file outside the share was read through the mount";
}

TEST(Forget, NodesDroppedByTheKernelAreLookedUpAgain) {
    auto p = dirs(test_name());
    // Many nodes, then drop the kernel's inode cache: it sends FORGET and
    // BATCH_FORGET for all of them; every name must resolve again, to the
    // same content, and hard links must still share an inode.
    for (int i = 0; i < 2000; ++i) write_file(p.mnt + "/n" + std::to_string(i), std::to_string(i));
    ASSERT_EQ(::link((p.mnt + "/n1").c_str(), (p.mnt + "/hard").c_str()), 0);
    for (int round = 0; round < 3; ++round) {
        std::ofstream("/proc/sys/vm/drop_caches") << "2";
        for (int i = 0; i < 2000; i += 7)
            ASSERT_EQ(read_file(p.mnt + "/n" + std::to_string(i)), std::to_string(i)) << "round " << round;
        struct stat a, b;
        ASSERT_EQ(::stat((p.mnt + "/n1").c_str(), &a), 0);
        ASSERT_EQ(::stat((p.mnt + "/hard").c_str(), &b), 0);
        EXPECT_EQ(a.st_ino, b.st_ino);
        EXPECT_EQ(a.st_nlink, 2u);
    }
}

TEST(Readonly, EveryChangeIsEROFS) {
    std::string src = g_ws->base + "/" + unique_name("ro-src");
    std::string mp = g_ws->base + "/" + unique_name("ro-mnt");
    ASSERT_EQ(::mkdir(src.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir(mp.c_str(), 0755), 0);
    write_file(src + "/f", "data");
    Mount m(src, mp, {"--readonly"});
    EXPECT_EQ(read_file(mp + "/f"), "data");
    EXPECT_EQ(sys(::open((mp + "/f").c_str(), O_WRONLY)).err, EROFS);
    EXPECT_EQ(sys(::open((mp + "/new").c_str(), O_CREAT | O_WRONLY, 0644)).err, EROFS);
    EXPECT_EQ(sys(::mkdir((mp + "/d").c_str(), 0755)).err, EROFS);
    EXPECT_EQ(sys(::unlink((mp + "/f").c_str())).err, EROFS);
    EXPECT_EQ(sys(::chmod((mp + "/f").c_str(), 0600)).err, EROFS);
    EXPECT_EQ(sys(::setxattr((mp + "/f").c_str(), "user.a", "1", 1, 0)).err, EROFS);
    EXPECT_EQ(m.stop(), 0);
    EXPECT_FALSE(is_mounted(mp));
    EXPECT_EQ(read_file(src + "/f"), "data");
}

TEST(Lifecycle, ExternalUnmountEndsTheServer) {
    std::string src = g_ws->base + "/" + unique_name("lc-src");
    std::string mp = g_ws->base + "/" + unique_name("lc-mnt");
    ASSERT_EQ(::mkdir(src.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir(mp.c_str(), 0755), 0);
    Mount m(src, mp);
    write_file(mp + "/x", "1");
    ASSERT_EQ(::umount(mp.c_str()), 0);
    int st = 0;
    for (int i = 0; i < 500; ++i) {
        if (::waitpid(m.pid(), &st, WNOHANG) == m.pid()) break;
        ::usleep(10000);
        if (i == 499) ADD_FAILURE() << "ocivm mount still running 5 s after umount";
    }
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

// Tests that need the host side of the share (its directory, new mounts)
// and so cannot run inside a VM; the VM test passes this list to
// --gtest_filter so the exclusion is explicit there.
// HOST_ONLY: Rename.CrossDeviceIsEXDEV Confinement.* Readonly.* Lifecycle.*
// and Xattr.UserAttributes (the guest's 6.1 tmpfs, the reference there, has
// no user.* xattrs to compare with).

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    std::string guest_mnt;
    std::vector<std::string> mount_args;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--writeback") mount_args.push_back(a);  // the same semantics, writes cached
        else if (i + 1 >= argc) break;
        else if (a == "--ocivm") config().ocivm = argv[++i];
        else if (a == "--cache") config().cache = argv[++i];
        else if (a == "--guest") guest_mnt = argv[++i];
    }
    if (::geteuid() != 0) {
        std::fprintf(stderr, "FAIL: the fs tests mount file systems and must run as root (sudo make test)\n");
        return 1;
    }
    if (!guest_mnt.empty()) {
        // In a VM: the share is already mounted through virtio-fs.
        std::printf("fs tests in a guest on %s\n", guest_mnt.c_str());
        Workspace ws(guest_mnt);
        g_ws = &ws;
        return RUN_ALL_TESTS();
    }
    if (config().ocivm.empty()) {
        std::fprintf(stderr, "usage: fs_tests --ocivm PATH [--cache MODE] [--writeback] | --guest MOUNTPOINT\n");
        return 2;
    }
    if (::access("/dev/fuse", R_OK | W_OK) != 0) {
        std::fprintf(stderr, "FAIL: /dev/fuse is missing: load the fuse module (modprobe fuse)\n");
        return 1;
    }
    std::printf("fs tests with --cache %s%s\n", config().cache.c_str(), mount_args.empty() ? "" : " --writeback");
    int rc;
    {
        Workspace ws;
        g_ws = &ws;
        Mount m(ws.share, ws.mnt, mount_args);
        g_mount = &m;
        rc = RUN_ALL_TESTS();
        int st = m.stop();
        if (st != 0) {
            std::fprintf(stderr, "FAIL: ocivm mount exited with %d after SIGTERM\n", st);
            rc = 1;
        }
        if (is_mounted(ws.mnt)) {
            std::fprintf(stderr, "FAIL: %s still mounted after SIGTERM\n", ws.mnt.c_str());
            rc = 1;
        }
    }
    return rc;
}
