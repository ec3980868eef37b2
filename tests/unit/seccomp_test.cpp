// fsd's seccomp allow-list: what serving needs works, anything else kills.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

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
