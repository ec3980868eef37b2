// What the share server's seccomp filter costs per system call: the calls a
// FUSE request makes (pread of 4 KiB, statx of an fd, a reopen through
// /proc/self/fd and its close, a nonblocking read of an empty pipe as in the
// spin loop), timed in this process before and after it loads ocivm's own
// FileServer allow-list (sandbox::install_seccomp). Best of 9 rounds each;
// prints the ratios.
//
//   seccompbench [--calls N]
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "sandbox/sandbox.h"

namespace {

double best_ns(int calls, const std::function<void()>& fn) {
    double best = 1e18;
    for (int r = 0; r < 9; ++r) {
        auto t = std::chrono::steady_clock::now();
        for (int i = 0; i < calls; ++i) fn();
        double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t).count() / calls;
        if (ns < best) best = ns;
    }
    return best;
}

}  // namespace

int main(int argc, char** argv) {
    int calls = 100000;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--calls") == 0 && i + 1 < argc) calls = std::atoi(argv[++i]);
        else {
            std::fprintf(stderr, "usage: seccompbench [--calls N]\n");
            return 2;
        }
    }
    if (calls <= 0) calls = 100000;
    const char* tmp = std::getenv("TMPDIR");
    std::string file = std::string(tmp && *tmp ? tmp : "/tmp") + "/ocivm-seccompbench-" + std::to_string(::getpid());
    int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        std::perror(file.c_str());
        return 1;
    }
    ::unlink(file.c_str());
    std::vector<char> page(4096, 'x');
    if (::write(fd, page.data(), page.size()) != 4096) return 1;
    int pipefd[2];
    if (::pipe2(pipefd, O_NONBLOCK | O_CLOEXEC) < 0) return 1;
    std::string proc = "/proc/self/fd/" + std::to_string(fd);

    struct Call {
        const char* name;
        std::function<void()> fn;
        double before = 0, after = 0;
    } list[] = {
        {"pread 4 KiB", [&] { (void)!::pread(fd, page.data(), page.size(), 0); }},
        {"statx of an fd", [&] { struct statx x; (void)::statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &x); }},
        {"reopen via /proc/self/fd + close", [&] { int f = ::open(proc.c_str(), O_RDONLY | O_CLOEXEC); if (f >= 0) ::close(f); }},
        {"read of an empty pipe (EAGAIN)", [&] { char c; (void)!::read(pipefd[0], &c, 1); }},
    };
    for (auto& c : list) c.before = best_ns(calls, c.fn);
    ocivm::sandbox::install_seccomp(ocivm::sandbox::SeccompMode::Kill, ocivm::sandbox::SeccompProfile::FileServer,
                                    "seccompbench");
    for (auto& c : list) c.after = best_ns(calls, c.fn);

    std::printf("| system call | without filter ns | with filter ns | ratio |\n|---|---|---|---|\n");
    for (auto& c : list) std::printf("| %s | %.0f | %.0f | %.2f |\n", c.name, c.before, c.after, c.after / c.before);
    return 0;
}
