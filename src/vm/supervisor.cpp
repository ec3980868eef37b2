// run -d: the supervisor of a detached VM and the hand-shake with its caller.
#include "vm/supervisor.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "util/error.h"
#include "util/unique_fd.h"
#include "vm/state_dir.h"

namespace ocivm::vm {

int run_detached(MachineOptions o) {
    if (o.name.empty()) o.name = random_name();
    // The supervisor leaves the caller's directory: relative paths it is
    // given are made absolute first.
    auto absolute = [](std::string& p) {
        if (!p.empty() && p[0] != '/') p = std::filesystem::absolute(p).lexically_normal().string();
    };
    if (o.kernel != "image") absolute(o.kernel);
    absolute(o.trace);
    absolute(o.rootfs);
    absolute(o.disk);
    for (auto& a : o.attach) absolute(a);
    int p[2];
    if (::pipe2(p, O_CLOEXEC) < 0) throw_errno("pipe", errno);
    UniqueFd rd(p[0]), wr(p[1]);
    std::fflush(nullptr);
    pid_t first = ::fork();
    if (first < 0) throw_errno("fork", errno);
    if (first == 0) {
        // The supervisor: a grandchild in a session of its own, so it
        // outlives this command and no terminal's hangup reaches it.
        ::setsid();
        // Not the caller's directory: it would stay busy (no unmount) for
        // as long as the VM runs. Every path the VM needs is absolute.
        if (::chdir("/") < 0) ::_exit(125);
        pid_t sup = ::fork();
        if (sup != 0) ::_exit(sup < 0 ? 125 : 0);
        rd.reset();
        int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null >= 0) {
            ::dup2(null, 0);
            ::dup2(null, 1);  // stderr stays the caller's until the VM is ready
            ::close(null);
        }
        o.detach = true;
        o.ready_fd = wr.release();
        int rc = 125;
        try {
            rc = run_machine(std::move(o));
        } catch (const Error& e) {
            std::fprintf(stderr, "ocivm: error: %s\n", e.what());
        } catch (const std::exception& e) {
            std::fprintf(stderr, "ocivm: error: %s\n", e.what());
        }
        std::fflush(nullptr);
        ::_exit(rc);
    }
    wr.reset();
    int st = 0;
    while (::waitpid(first, &st, 0) < 0 && errno == EINTR) {
    }
    std::string got;
    char buf[256];
    ssize_t n;
    while ((n = ::read(rd.get(), buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
        if (n > 0) got.append(buf, static_cast<size_t>(n));
    // The supervisor said why on stderr.
    if (got.rfind("exit ", 0) == 0) return std::atoi(got.c_str() + 5);
    if (got.rfind("ready ", 0) != 0) {
        // It died without a word (killed, crashed): say so, and where to look.
        std::fprintf(stderr, "ocivm: error: the supervisor of VM '%s' exited before the VM was ready; see %s/%s\n",
                     o.name.c_str(), StateDir::base_dir().c_str(), o.name.c_str());
        return 125;
    }
    std::printf("%s\n", o.name.c_str());
    return 0;
}

}  // namespace ocivm::vm
