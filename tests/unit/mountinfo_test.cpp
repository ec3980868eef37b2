// util/mountinfo on real mount tables: a tmpfs mounted, in a child's own
// mount namespace, on a directory whose name holds every character the
// kernel escapes in mountinfo (space, tab, newline, backslash) and a
// backslash followed by digits that must stay as they are; and the table
// of a process that has exited.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "unit/test_util.h"
#include "util/error.h"
#include "util/mountinfo.h"
#include "util/unique_fd.h"

namespace ocivm {
namespace {

// "\\040" is a backslash and three digits in the name itself: the kernel
// writes it as \134040, and unescaping twice would turn it into a space.
const std::string kAwkward = std::string("a b\tc\nd\\e\\040f");
const std::string kSource = "src with space\tand\\tab";

void write_all(int fd, const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
        ssize_t n = ::write(fd, s.data() + off, s.size() - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) ::_exit(3);
        off += static_cast<size_t>(n);
    }
}

// Length-prefixed strings, so a newline in a name crosses the pipe intact.
void send(int fd, const std::string& s) {
    uint32_t n = static_cast<uint32_t>(s.size());
    write_all(fd, std::string(reinterpret_cast<const char*>(&n), sizeof n));
    write_all(fd, s);
}

bool read_exact(int fd, void* buf, size_t len) {
    auto* p = static_cast<char*>(buf);
    while (len > 0) {
        ssize_t n = ::read(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        p += n;
        len -= static_cast<size_t>(n);
    }
    return true;
}

std::vector<std::string> receive_all(int fd) {
    std::vector<std::string> out;
    uint32_t n;
    while (read_exact(fd, &n, sizeof n)) {
        std::string s(n, '\0');
        if (n && !read_exact(fd, s.data(), n)) break;
        out.push_back(std::move(s));
    }
    return out;
}

// A child in a mount namespace of its own (and a user namespace when not
// root: the unit tests need no privileges), with `dir` mounted twice: a
// tmpfs from kSource, and a read-only nodev tmpfs "top" over it. It sends
// what `inside` returns, then waits until `release` is closed.
struct Child {
    pid_t pid = -1;
    UniqueFd results;  // the child's strings; EOF once it has sent them all
    UniqueFd release;  // closing it lets the child exit

    Child(const std::string& dir, const std::function<std::vector<std::string>()>& inside) {
        int res[2], rel[2];
        if (::pipe2(res, O_CLOEXEC) < 0 || ::pipe2(rel, O_CLOEXEC) < 0) throw std::runtime_error("pipe2 failed");
        pid = ::fork();
        if (pid < 0) throw std::runtime_error("fork failed");
        if (pid == 0) {
            ::close(res[0]);
            ::close(rel[1]);
            auto fail = [&](const std::string& what) {
                send(res[1], "ERROR " + what + ": " + std::strerror(errno));
                ::_exit(1);
            };
            int flags = CLONE_NEWNS | (::geteuid() == 0 ? 0 : CLONE_NEWUSER);
            if (::unshare(flags) < 0)
                fail("unshare (run as root, or allow unprivileged user namespaces: sysctl "
                     "kernel.unprivileged_userns_clone=1)");
            // Nothing mounted here may reach the test's own namespace.
            if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0) fail("making / private");
            if (::mount(kSource.c_str(), dir.c_str(), "tmpfs", 0, "size=1m") < 0) fail("mounting a tmpfs");
            if (::mount("top", dir.c_str(), "tmpfs", MS_RDONLY | MS_NODEV, "size=1m") < 0)
                fail("mounting a second tmpfs on top");
            try {
                for (auto& s : inside()) send(res[1], s);
            } catch (const std::exception& e) {
                send(res[1], std::string("ERROR ") + e.what());
            }
            ::close(res[1]);
            char c;
            while (::read(rel[0], &c, 1) < 0 && errno == EINTR) {
            }
            ::_exit(0);
        }
        ::close(res[1]);
        ::close(rel[0]);
        results.reset(res[0]);
        release.reset(rel[1]);
    }
    ~Child() {
        release.reset();
        if (pid > 0) ::waitpid(pid, nullptr, 0);
    }
};

class MountInfoTest : public ::testing::Test {
protected:
    void SetUp() override {
        base_ = test::make_temp_dir();
        dir_ = base_ + "/" + kAwkward;
        ASSERT_EQ(::mkdir(dir_.c_str(), 0755), 0) << std::strerror(errno);
    }
    void TearDown() override { test::remove_tree(base_); }
    std::string base_, dir_;
};

bool has_option(const std::string& opts, const std::string& o) {
    return ("," + opts + ",").find("," + o + ",") != std::string::npos;
}

TEST_F(MountInfoTest, FindMountGivesAwkwardNamesExactly) {
    const std::string dir = dir_;
    Child child(dir, [dir] {
        auto m = find_mount(dir);
        if (!m) return std::vector<std::string>{"not found"};
        struct stat st;
        std::string same_dev = ::stat(dir.c_str(), &st) == 0 && st.st_dev == m->dev ? "same dev" : "other dev";
        // The one beneath: found by its own source among all the mounts.
        std::string beneath = "no mount from kSource";
        for (auto& e : self_mounts())
            if (e.source == kSource) beneath = e.target;
        return std::vector<std::string>{"found", m->target, m->source, m->fs_type, m->vfs_options, same_dev, beneath};
    });
    auto got = receive_all(child.results.get());
    ASSERT_FALSE(got.empty());
    ASSERT_EQ(got[0], "found") << "child: " << got[0];
    ASSERT_EQ(got.size(), 7u);
    EXPECT_EQ(got[1], dir);
    EXPECT_EQ(got[2], "top") << "the topmost of two mounts on the same point";
    EXPECT_EQ(got[3], "tmpfs");
    EXPECT_TRUE(has_option(got[4], "ro") && has_option(got[4], "nodev")) << got[4];
    EXPECT_EQ(got[5], "same dev");
    EXPECT_EQ(got[6], dir) << "the mount beneath, and its source " << kSource;
}

TEST_F(MountInfoTest, FindMountOfAPlainDirectoryIsEmpty) {
    const std::string plain = base_;
    Child child(dir_, [plain] {
        // The parent of a mount point is not one (no prefix match).
        return std::vector<std::string>{find_mount(plain) ? "mounted" : "not mounted"};
    });
    auto got = receive_all(child.results.get());
    EXPECT_EQ(got, std::vector<std::string>{"not mounted"});
}

TEST_F(MountInfoTest, MountsOfAnotherProcessAndOfOneThatExited) {
    Child child(dir_, [] { return std::vector<std::string>{"ready"}; });
    auto got = receive_all(child.results.get());
    ASSERT_EQ(got, std::vector<std::string>{"ready"});

    // Alive: its namespace's table, with the mount this process cannot see.
    auto theirs = mounts_of(child.pid);
    ASSERT_TRUE(theirs.has_value());
    std::vector<std::string> sources;
    for (auto& m : *theirs)
        if (m.target == dir_) sources.push_back(m.source);
    EXPECT_EQ(sources, (std::vector<std::string>{kSource, "top"}));
    EXPECT_FALSE(find_mount(dir_).has_value()) << "the child's mounts leaked into the test's namespace";

    // A zombie: exited, not reaped, its mount namespace already gone.
    child.release.reset();
    siginfo_t si{};
    ASSERT_EQ(::waitid(P_PID, static_cast<id_t>(child.pid), &si, WEXITED | WNOWAIT), 0);
    EXPECT_FALSE(mounts_of(child.pid).has_value());

    // Reaped: no /proc entry at all.
    ASSERT_EQ(::waitpid(child.pid, nullptr, 0), child.pid);
    pid_t gone = child.pid;
    child.pid = -1;
    EXPECT_FALSE(mounts_of(gone).has_value());
}

TEST(MountInfo, SelfMountsHasTheRoot) {
    auto all = self_mounts();
    ASSERT_FALSE(all.empty());
    bool root = false;
    for (auto& m : all) root = root || m.target == "/";
    EXPECT_TRUE(root);
}

TEST(MountInfo, BadPidIsAnError) { EXPECT_THROW(mounts_of(0), Error); }

}  // namespace
}  // namespace ocivm
