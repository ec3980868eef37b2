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

ShareServer::ShareServer(const Config& c, UniqueFd vhost_sock) : dir_(c.dir) {
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

bool ShareServer::send_line(const std::string& cmd) {
    if (!control_) return false;
    char tmp[4096];
    // A late answer to an earlier question that timed out is not this one's.
    for (pollfd pf{control_.get(), POLLIN, 0}; ::poll(&pf, 1, 0) > 0;)
        if (::read(control_.get(), tmp, sizeof tmp) <= 0) return false;
    std::string line = cmd + "\n";
    return write_all(control_.get(), line.data(), line.size());
}

std::string ShareServer::ask(const std::string& cmd, const std::function<bool(const std::string&)>& done,
                             int timeout_ms) {
    if (!send_line(cmd)) return "";
    return collect(done, mono_ns() + static_cast<uint64_t>(timeout_ms) * 1'000'000ull);
}

std::string ShareServer::collect(const std::function<bool(const std::string&)>& done, uint64_t deadline) {
    if (!control_) return "";
    char tmp[4096];
    std::string buf;
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

void ShareServer::start_quiesce(int timeout_ms) {
    // The server gives up by itself ("busy") at timeout_ms, telling the guest to go on.
    quiesce_sent_ = send_line("quiesce " + std::to_string(timeout_ms));
}

std::string ShareServer::await_quiesce(uint64_t deadline_ns) {
    std::string a;
    if (quiesce_sent_) a = collect([](const std::string& b) { return b.find('\n') != std::string::npos; }, deadline_ns);
    quiesce_sent_ = false;
    if (a == "quiet\n") return "";
    if (a == "busy\n")
        return "the guest's relay did not pause it in time (it pauses once every request it sent has its reply; "
               "a guest that is stuck, or waiting on a request the host takes long to serve, does not); "
               "nothing was saved and the VM goes on; try again";
    return "the server did not answer (it has died, or is stuck); a VM whose share server is gone cannot be saved";
}

std::string quiesce_all(std::vector<std::unique_ptr<ShareServer>>& servers, int timeout_ms) {
    // Every server is asked first, then each is waited for: all guests
    // pause in parallel, within one deadline (a server's own, a second
    // shorter, comes first, so its answer arrives rather than a silence).
    uint64_t deadline = mono_ns() + static_cast<uint64_t>(timeout_ms + 1000) * 1'000'000ull;
    for (auto& s : servers) s->start_quiesce(timeout_ms);
    std::string first;
    for (auto& s : servers) {
        std::string why = s->await_quiesce(deadline);
        if (!why.empty() && first.empty()) first = "cannot save share " + s->dir() + ": " + why;
    }
    return first;
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
