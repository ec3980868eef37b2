// fsd's seccomp allow-list: what serving needs works, anything else kills.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "transport/seccomp_filter.h"

using namespace ocivm::transport;

namespace {
// Runs f in a child with the filter installed; returns the wait status.
template <typename F>
int in_filtered_child(SeccompAction a, F f) {
    pid_t pid = ::fork();
    if (pid == 0) {
        install_seccomp_filter(a);
        ::_exit(f());
    }
    int st = 0;
    ::waitpid(pid, &st, 0);
    return st;
}
}  // namespace

TEST(Seccomp, ServingSyscallsAreAllowed) {
    int st = in_filtered_child(SeccompAction::Kill, [] {
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

TEST(Seccomp, OtherSyscallsKill) {
    int st = in_filtered_child(SeccompAction::Kill, [] {
        // a server has no business opening network sockets or exec'ing
        return ::socket(AF_INET, SOCK_STREAM, 0) >= 0 ? 0 : 1;
    });
    ASSERT_TRUE(WIFSIGNALED(st));
    EXPECT_EQ(WTERMSIG(st), SIGSYS);
}

TEST(Seccomp, ParseModes) {
    SeccompAction a;
    EXPECT_TRUE(parse_seccomp_action("kill", a));
    EXPECT_EQ(a, SeccompAction::Kill);
    EXPECT_TRUE(parse_seccomp_action("log", a));
    EXPECT_TRUE(parse_seccomp_action("none", a));
    EXPECT_FALSE(parse_seccomp_action("strict", a));
}
