#include "util/process.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "util/error.h"

extern char** environ;

namespace ocivm {

namespace {

// The environment for the child, built before fork (nothing allocates
// between fork and exec).
std::vector<std::string> child_env(const std::vector<std::string>& extra) {
    std::vector<std::string> env;
    for (char** e = environ; e && *e; ++e) {
        std::string_view kv(*e);
        bool replaced = false;
        for (auto& x : extra) {
            size_t eq = x.find('=');
            if (eq != std::string::npos && kv.size() > eq && kv.substr(0, eq + 1) == std::string_view(x).substr(0, eq + 1))
                replaced = true;
        }
        if (!replaced) env.emplace_back(kv);
    }
    for (auto& x : extra) env.push_back(x);
    return env;
}

[[noreturn]] void child_fail(int errpipe, int e) {
    ssize_t w = ::write(errpipe, &e, sizeof e);
    (void)w;
    ::_exit(127);
}

}  // namespace

void close_fds_except(std::vector<int> keep) {
    std::sort(keep.begin(), keep.end());
    unsigned from = 3;
    for (int k : keep) {
        if (k < static_cast<int>(from)) continue;
        if (static_cast<unsigned>(k) > from) ::syscall(SYS_close_range, from, static_cast<unsigned>(k) - 1, 0);
        from = static_cast<unsigned>(k) + 1;
    }
    ::syscall(SYS_close_range, from, ~0U, 0);
}

int exit_code(int st) {
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return 125;
}

ChildProcess::~ChildProcess() {
    if (pid_ > 0) {
        ::kill(pid_, SIGKILL);
        while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
        }
    }
}

ChildProcess::ChildProcess(ChildProcess&& o) noexcept : pid_(std::exchange(o.pid_, -1)) {}

ChildProcess& ChildProcess::operator=(ChildProcess&& o) noexcept {
    if (this != &o) {
        ChildProcess old;
        old.pid_ = std::exchange(pid_, std::exchange(o.pid_, -1));
    }
    return *this;
}

ChildProcess ChildProcess::spawn(const SpawnOptions& o, const std::string& hint) {
    if (o.argv.empty()) throw Error("spawn: no program given");
    std::vector<char*> argv;
    for (auto& s : o.argv) argv.push_back(const_cast<char*>(s.c_str()));
    argv.push_back(nullptr);
    std::vector<std::string> env_s = child_env(o.env);
    std::vector<char*> envp;
    for (auto& s : env_s) envp.push_back(s.data());
    envp.push_back(nullptr);

    int errpipe[2];
    if (::pipe2(errpipe, O_CLOEXEC) < 0) throw_errno("pipe", errno);
    UniqueFd err_r(errpipe[0]), err_w(errpipe[1]);
    UniqueFd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
    if (!null) throw_errno("cannot open /dev/null", errno);
    pid_t parent = ::getpid();
    const int nfds = static_cast<int>(o.fds.size());

    pid_t pid = ::fork();
    if (pid < 0) throw_errno("cannot start " + o.argv[0], errno);
    if (pid == 0) {
        // The error pipe above every number the fds below may land on.
        int ep = ::fcntl(err_w.get(), F_DUPFD_CLOEXEC, 3 + nfds + 16 + 3 + nfds + 1);
        if (ep < 0) ep = err_w.get();
        if (o.die_with_parent) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent) ::_exit(127);  // the parent is already gone
        }
        if (o.new_process_group) ::setpgid(0, 0);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        for (int s = 1; s < NSIG; ++s)
            if (s != SIGKILL && s != SIGSTOP) ::signal(s, SIG_DFL);
        // Every source fd first goes above the numbers it may land on.
        int high_base = 3 + nfds + 16;
        int std_src[3] = {o.stdin_fd, o.stdout_fd, o.stderr_fd};
        int std_high[3];
        for (int i = 0; i < 3; ++i) {
            int src = std_src[i] == SpawnOptions::kDevNull ? null.get() : std_src[i] == SpawnOptions::kInherit ? i : std_src[i];
            std_high[i] = ::fcntl(src, F_DUPFD_CLOEXEC, high_base);
            if (std_high[i] < 0) child_fail(ep, errno);
        }
        int moved[256];
        if (nfds > 256) child_fail(ep, EMFILE);
        for (int i = 0; i < nfds; ++i) {
            moved[i] = ::fcntl(o.fds[static_cast<size_t>(i)], F_DUPFD_CLOEXEC, high_base);
            if (moved[i] < 0) child_fail(ep, errno);
        }
        for (int i = 0; i < 3; ++i)
            if (::dup2(std_high[i], i) < 0) child_fail(ep, errno);
        for (int i = 0; i < nfds; ++i)
            if (::dup2(moved[i], 3 + i) < 0) child_fail(ep, errno);  // dup2 clears CLOEXEC
        // Whatever else is open (an fd someone forgot to mark) goes at exec.
        ::syscall(SYS_close_range, 3 + nfds, ~0U, CLOSE_RANGE_CLOEXEC);
        ::execvpe(argv[0], argv.data(), envp.data());
        child_fail(ep, errno);
    }
    err_w.reset();
    int e = 0;
    ssize_t n;
    do n = ::read(err_r.get(), &e, sizeof e);
    while (n < 0 && errno == EINTR);
    if (n == sizeof e) {
        while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
        }
        throw_errno("cannot run " + o.argv[0], e, hint);
    }
    ChildProcess c;
    c.pid_ = pid;
    return c;
}

bool ChildProcess::reap(int* st) {
    if (pid_ <= 0) return true;
    int s = 0;
    pid_t r = ::waitpid(pid_, &s, WNOHANG);
    if (r == pid_) {
        pid_ = -1;
        if (st) *st = s;
        return true;
    }
    return false;
}

int ChildProcess::wait() {
    if (pid_ <= 0) return 0;
    int s = 0;
    while (::waitpid(pid_, &s, 0) < 0) {
        if (errno != EINTR) {
            s = 0;
            break;
        }
    }
    pid_ = -1;
    return s;
}

void ChildProcess::kill(int sig) const {
    if (pid_ > 0) ::kill(pid_, sig);
}

}  // namespace ocivm
