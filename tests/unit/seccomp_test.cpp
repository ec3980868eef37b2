// fsd's seccomp allow-list: what serving needs works, anything else kills.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "util/error.h"

#include "sandbox/sandbox.h"

using namespace ocivm::sandbox;

namespace {
// Runs f in a child with the filter installed; returns the wait status.
template <typename F>
int in_filtered_child(SeccompMode a, F f) {
    pid_t pid = ::fork();
    if (pid == 0) {
        install_seccomp(a, SeccompProfile::FileServer, "test");
        ::_exit(f());
    }
    int st = 0;
    ::waitpid(pid, &st, 0);
    return st;
}
}  // namespace

TEST(Seccomp, ServingSyscallsAreAllowed) {
    int st = in_filtered_child(SeccompMode::Kill, [] {
        int fd = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
        char buf[64];
        if (fd < 0 || ::read(fd, buf, sizeof buf) <= 0) return 2;
        ::close(fd);
        std::thread t([] {});  // queue threads start after the filter
        t.join();
        return 0;
    });
    ASSERT_TRUE(WIFEXITED(st)) << "killed by signal " << WTERMSIG(st);
    EXPECT_EQ(WEXITSTATUS(st), 0);
}

TEST(Seccomp, OtherSyscallsStopTheServerNamingTheCall) {
    int pipefd[2];
    ASSERT_EQ(::pipe(pipefd), 0);
    pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(pipefd[1], 2);
        install_seccomp(SeccompMode::Kill, SeccompProfile::FileServer, "test server");
        // a server has no business opening network sockets or exec'ing
        ::_exit(::socket(AF_INET, SOCK_STREAM, 0) >= 0 ? 0 : 1);
    }
    ::close(pipefd[1]);
    int st = 0;
    ::waitpid(pid, &st, 0);
    char buf[1024] = {};
    ssize_t n = ::read(pipefd[0], buf, sizeof buf - 1);
    ::close(pipefd[0]);
    ASSERT_TRUE(WIFEXITED(st));
    EXPECT_EQ(WEXITSTATUS(st), 128 + SIGSYS);
    ASSERT_GT(n, 0);
    std::string msg(buf);
    EXPECT_NE(msg.find("test server made system call socket ("), std::string::npos) << msg;
}

TEST(Seccomp, ParseModes) {
    SeccompMode a;
    EXPECT_TRUE(parse_seccomp_mode("kill", a));
    EXPECT_EQ(a, SeccompMode::Kill);
    EXPECT_TRUE(parse_seccomp_mode("log", a));
    EXPECT_TRUE(parse_seccomp_mode("none", a));
    EXPECT_FALSE(parse_seccomp_mode("strict", a));
}

// A server taken over by a guest must not outlive its keeper
// (PR_SET_PDEATHSIG 0) nor make itself new namespaces to attack the kernel
// from; threads still start (clone3 answers ENOSYS, glibc falls back).
TEST(Seccomp, NoPdeathsigResetNoNamespacesButThreads) {
    auto killed_by_filter = [](int st) { return WIFEXITED(st) && WEXITSTATUS(st) == 128 + SIGSYS; };
    EXPECT_TRUE(killed_by_filter(in_filtered_child(SeccompMode::Kill, [] {
        return ::prctl(PR_SET_PDEATHSIG, 0) == 0 ? 0 : 1;
    })));
    EXPECT_TRUE(killed_by_filter(in_filtered_child(SeccompMode::Kill, [] {
        return ::prctl(PR_SET_DUMPABLE, 1) == 0 ? 0 : 1;
    })));
    EXPECT_TRUE(killed_by_filter(in_filtered_child(SeccompMode::Kill, [] {
        // a fork (no CLONE_THREAD) and a clone into a new user namespace
        long r = ::syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (r == 0) ::_exit(0);
        return r > 0 ? 0 : 1;
    })));
    int st = in_filtered_child(SeccompMode::Kill, [] {
        int v = 0;
        std::thread t([&] { v = 7; });
        t.join();
        char name[16] = {};
        return v == 7 && ::prctl(PR_GET_NAME, name) == 0 ? 0 : 1;
    });
    ASSERT_TRUE(WIFEXITED(st));
    EXPECT_EQ(WEXITSTATUS(st), 0);
}

// The shared directory is opened once, from its resolved path, with no
// symbolic link in any component: one swapped in after realpath fails.
TEST(Sandbox, OpenShareRefusesASymlinkInAnyComponent) {
    char tmpl[] = "/tmp/ocivm-share-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    std::string d = tmpl;
    ASSERT_EQ(::mkdir((d + "/real").c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((d + "/real/share").c_str(), 0755), 0);
    ASSERT_EQ(::symlink("real", (d + "/swapped").c_str()), 0);
    EXPECT_TRUE(ocivm::sandbox::open_share(d + "/real/share"));
    try {
        ocivm::sandbox::open_share(d + "/swapped/share");
        ADD_FAILURE() << "a path through a symlink was opened";
    } catch (const ocivm::Error& e) {
        EXPECT_NE(std::string(e.what()).find("symbolic link"), std::string::npos) << e.what();
    }
    std::filesystem::remove_all(d);
}
