#include "util/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "util/error.h"
#include "util/process.h"
#include "util/unique_fd.h"

namespace ocivm {

CommandResult run_command(const std::vector<std::string>& argv, const std::string& input) {
    int in[2], out[2], err[2];
    if (::pipe2(in, O_CLOEXEC) < 0) throw_errno("pipe", errno);
    UniqueFd in_r(in[0]), to(in[1]);
    if (::pipe2(out, O_CLOEXEC) < 0) throw_errno("pipe", errno);
    UniqueFd from_out(out[0]), out_w(out[1]);
    if (::pipe2(err, O_CLOEXEC) < 0) throw_errno("pipe", errno);
    UniqueFd from_err(err[0]), err_w(err[1]);
    SpawnOptions so;
    so.argv = argv;
    so.stdin_fd = in_r.get();
    so.stdout_fd = out_w.get();
    so.stderr_fd = err_w.get();
    CommandResult r;
    ChildProcess child;
    try {
        child = ChildProcess::spawn(so);
    } catch (const Error& e) {
        r.status = 127;
        r.err = e.what();
        return r;
    }
    in_r.reset();
    out_w.reset();
    err_w.reset();
    ::fcntl(to.get(), F_SETFL, O_NONBLOCK);
    size_t written = 0;
    if (input.empty()) to.reset();
    char buf[65536];
    while (from_out || from_err) {
        pollfd pf[3] = {{from_out ? from_out.get() : -1, POLLIN, 0},
                        {from_err ? from_err.get() : -1, POLLIN, 0},
                        {to ? to.get() : -1, POLLOUT, 0}};
        if (::poll(pf, 3, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (pf[2].revents) {
            ssize_t w = ::write(to.get(), input.data() + written, input.size() - written);
            if (w > 0) written += static_cast<size_t>(w);
            if (w < 0 && errno != EAGAIN) written = input.size();
            if (written == input.size()) to.reset();
        }
        for (int i = 0; i < 2; ++i) {
            if (!pf[i].revents) continue;
            UniqueFd& fd = i == 0 ? from_out : from_err;
            ssize_t n = ::read(fd.get(), buf, sizeof buf);
            if (n > 0) (i == 0 ? r.out : r.err).append(buf, static_cast<size_t>(n));
            else if (n == 0 || errno != EINTR) fd.reset();
        }
    }
    r.status = exit_code(child.wait());
    while (!r.err.empty() && r.err.back() == '\n') r.err.pop_back();
    return r;
}

std::string find_program(const std::string& name) {
    if (name.find('/') != std::string::npos) return ::access(name.c_str(), X_OK) == 0 ? name : std::string();
    const char* path = std::getenv("PATH");
    std::string p = path ? path : "/usr/local/bin:/usr/bin:/bin";
    size_t pos = 0;
    while (pos <= p.size()) {
        size_t c = p.find(':', pos);
        if (c == std::string::npos) c = p.size();
        std::string cand = p.substr(pos, c - pos) + "/" + name;
        if (::access(cand.c_str(), X_OK) == 0) return cand;
        pos = c + 1;
    }
    return {};
}

bool have_program(const std::string& name) { return !find_program(name).empty(); }

}  // namespace ocivm
