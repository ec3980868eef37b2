#include "vm/share_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "util/clock.h"
#include "util/error.h"
#include "util/io.h"
#include "util/log.h"

namespace ocivm::vm {

ShareServer::ShareServer(const Config& c, UniqueFd vhost_sock) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) throw_errno("socketpair", errno);
    UniqueFd mine(sv[0]), theirs(sv[1]);
    SpawnOptions so;
    so.argv = {"/proc/self/exe", "fsd", "--fd", "3", "--control-fd", "4", "--shared-dir", c.dir,
               "--cache", fs::cache_mode_name(c.mode), "--log-level",
               std::string(spdlog::level::to_string_view(spdlog::get_level()).data(),
                           spdlog::level::to_string_view(spdlog::get_level()).size())};
    if (c.stream) so.argv.insert(so.argv.end(), {"--transport", "stream"});
    if (c.root_dev || c.root_ino)
        so.argv.insert(so.argv.end(),
                       {"--shared-dir-identity", std::to_string(c.root_dev) + ":" + std::to_string(c.root_ino)});
    if (c.readonly) so.argv.push_back("--readonly");
    if (c.writeback) so.argv.push_back("--writeback");
    if (c.nodev) so.argv.push_back("--nodev");
    if (c.nosuid) so.argv.push_back("--nosuid");
    if (c.override_stat) so.argv.push_back("--override-stat");
    if (c.trusted_xattrs) so.argv.push_back("--trusted-xattrs");
    // The guest's security.* and trusted.* of a writable share never
    // become the host's own (file capabilities, SELinux labels, overlay
    // metadata the host would trust).
    if (!c.readonly) so.argv.insert(so.argv.end(), {"--xattr-policy", "remap"});
    if (!c.trace.empty()) so.argv.insert(so.argv.end(), {"--trace", c.trace});
    so.fds = {vhost_sock.get(), theirs.get()};
    so.stderr_fd = c.stderr_fd;
    // Not in the terminal's process group: a Ctrl-C is for the command
    // (ocivm forwards it), and the keeper would turn it into SIGKILL
    // for the server, taking the guest's root away.
    so.new_process_group = true;
    child_ = ChildProcess::spawn(so);
    control_ = std::move(mine);
}

ShareServer::~ShareServer() {
    for (int i = 0; i < 50 && !child_.reap(nullptr); ++i) ::usleep(100000);
}

std::string ShareServer::ask(const std::string& cmd, const std::function<bool(const std::string&)>& done,
                             int timeout_ms) {
    if (!control_) return "";
    char tmp[4096];
    // A late answer to an earlier question that timed out is not this one's.
    for (pollfd pf{control_.get(), POLLIN, 0}; ::poll(&pf, 1, 0) > 0;)
        if (::read(control_.get(), tmp, sizeof tmp) <= 0) return "";
    std::string line = cmd + "\n";
    if (!write_all(control_.get(), line.data(), line.size())) return "";
    std::string buf;
    uint64_t deadline = mono_ns() + static_cast<uint64_t>(timeout_ms) * 1'000'000ull;
    while (!done(buf)) {
        uint64_t now = mono_ns();
        if (now >= deadline || buf.size() > (1 << 20)) return "";
        pollfd pf{control_.get(), POLLIN, 0};
        if (::poll(&pf, 1, static_cast<int>((deadline - now) / 1000000 + 1)) <= 0) continue;
        ssize_t n = ::read(control_.get(), tmp, sizeof tmp);
        if (n <= 0) return "";
        buf.append(tmp, static_cast<size_t>(n));
    }
    return buf;
}

std::string ShareServer::quiesce() {
    // The server gives up after 5 s itself ("busy").
    auto line = [](const std::string& b) { return b.find('\n') != std::string::npos; };
    std::string a = ask("quiesce", line, 7000);
    if (a == "quiet\n") return "";
    if (a == "busy\n") return "the guest did not take the server's replies within 5 s; try again";
    return "the server did not answer (it has died, or is stuck); a VM whose share server is gone cannot be saved";
}

void ShareServer::resume() {
    ask("resume", [](const std::string& b) { return b.find("resumed\n") != std::string::npos; }, 2000);
}

ShareServer::Stats ShareServer::stats() {
    Stats st;
    std::string buf =
        ask("stats", [](const std::string& b) { return b.find("end\n") != std::string::npos; }, 1000);
    if (buf.empty()) return st;
    size_t pos = 0;
    while (pos < buf.size()) {
        size_t nl = buf.find('\n', pos);
        if (nl == std::string::npos) break;
        std::string line = buf.substr(pos, nl - pos);
        pos = nl + 1;
        if (line.rfind("requests ", 0) == 0) st.requests = std::strtoull(line.c_str() + 9, nullptr, 10);
        else if (line.rfind("summary ", 0) == 0) st.summary.push_back(line.substr(8));
        else if (line.rfind("verdict ", 0) == 0 && line.size() >= 10) {
            st.livelock = line[8] == '1';
            st.verdict = line.substr(10);
        }
    }
    st.answered = true;
    return st;
}

}  // namespace ocivm::vm
