#include "vm/vm_state.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <random>
#include <nlohmann/json.hpp>

#include "util/clock.h"
#include "util/error.h"
#include "util/io.h"
#include "util/paths.h"
#include "vm/state_dir.h"

namespace ocivm::vm {

using json = nlohmann::ordered_json;

std::string VmRecord::to_json() const {
    json j = {{"name", name},
              {"state", state},
              {"detached", detached},
              {"pids", {{"supervisor", supervisor_pid}, {"qemu", qemu_pid}}},
              {"image", image},
              {"rootfs", rootfs},
              {"command", command},
              {"env", env},
              {"cwd", cwd},
              {"uid", uid},
              {"gid", gid},
              {"hostname", hostname},
              {"created", created},
              {"started", started},
              {"finished", finished},
              {"exit_code", exit_code},
              {"exit_reason", exit_reason},
              {"shares", shares},
              {"ports", ports},
              {"network", json::parse(network_json.empty() ? "{}" : network_json, nullptr, false)},
              {"boot_id", boot_id},
              {"control", control},
              {"rm", rm}};
    if (j["network"].is_discarded()) j["network"] = json::object();
    if (!snapshot.empty()) j["snapshot"] = snapshot;
    if (restore)
        j["restore"] = {{"spawn_ms", restore->spawn_ms},
                        {"state_load_ms", restore->state_load_ms},
                        {"resume_ms", restore->resume_ms},
                        {"hello_ms", restore->hello_ms},
                        {"total_ms", restore->total_ms}};
    return j.dump(2) + "\n";
}

std::optional<VmRecord> VmRecord::from_json(const std::string& text) {
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return std::nullopt;
    VmRecord r;
    try {
        r.name = j.value("name", "");
        r.state = j.value("state", "created");
        r.detached = j.value("detached", false);
        if (j.contains("pids") && j["pids"].is_object()) {
            r.supervisor_pid = j["pids"].value("supervisor", int64_t{0});
            r.qemu_pid = j["pids"].value("qemu", int64_t{0});
        }
        r.image = j.value("image", "");
        r.rootfs = j.value("rootfs", "");
        r.command = j.value("command", std::vector<std::string>{});
        r.env = j.value("env", std::vector<std::string>{});
        r.cwd = j.value("cwd", "/");
        r.uid = j.value("uid", 0u);
        r.gid = j.value("gid", 0u);
        r.hostname = j.value("hostname", "");
        r.created = j.value("created", "");
        r.started = j.value("started", "");
        r.finished = j.value("finished", "");
        r.exit_code = j.value("exit_code", -1);
        r.exit_reason = j.value("exit_reason", "");
        r.shares = j.value("shares", std::vector<std::string>{});
        r.ports = j.value("ports", std::vector<std::string>{});
        r.network_json = j.contains("network") ? j["network"].dump() : "{}";
        r.boot_id = j.value("boot_id", "");
        r.control = j.value("control", "");
        r.rm = j.value("rm", false);
        r.snapshot = j.value("snapshot", "");
        if (j.contains("restore") && j["restore"].is_object()) {
            const json& t = j["restore"];
            r.restore = RestoreTimings{t.value("spawn_ms", 0.0), t.value("state_load_ms", 0.0), t.value("resume_ms", 0.0),
                                       t.value("hello_ms", 0.0), t.value("total_ms", 0.0)};
        }
    } catch (const json::exception&) {
        return std::nullopt;
    }
    return r;
}

std::string utc_now() {
    time_t t = ::time(nullptr);
    struct tm tm;
    ::gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

std::string VmEntry::status() const {
    const std::string& s = record.state;
    if (!supervisor_alive && s != "exited" && s != "created") return "dead";
    return s;
}

std::string VmEntry::to_json() const {
    json j = json::parse(record.to_json());
    j["state"] = status();
    j["state_dir"] = dir;
    j["running"] = supervisor_alive && status() != "exited";
    return j.dump(2);
}

void write_record(const std::string& dir, const VmRecord& r) { write_file_atomic(dir + "/state.json", r.to_json(), 0600); }

namespace {

}  // namespace

bool supervisor_alive(const std::string& dir) {
    UniqueFd fd(::open((dir + "/lock").c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!fd) return false;
    if (::flock(fd.get(), LOCK_SH | LOCK_NB) == 0) return false;  // released when fd closes
    return errno == EWOULDBLOCK;
}

namespace {

std::optional<VmEntry> load(const std::string& base, const std::string& name) {
    std::string dir = base + "/" + name;
    struct stat st;
    if (::lstat(dir.c_str(), &st) < 0 || !S_ISDIR(st.st_mode)) return std::nullopt;
    std::string text;
    try {
        text = read_file(dir + "/state.json");
    } catch (const Error&) {
        return std::nullopt;
    }
    auto r = VmRecord::from_json(text);
    if (!r) return std::nullopt;
    VmEntry e;
    e.dir = dir;
    e.record = std::move(*r);
    if (e.record.name.empty()) e.record.name = name;
    e.supervisor_alive = supervisor_alive(dir);
    return e;
}

}  // namespace

std::vector<VmEntry> list_vms() {
    std::string base = StateDir::base_dir();
    std::vector<VmEntry> out;
    DIR* d = ::opendir(base.c_str());
    if (!d) return out;
    while (dirent* ent = ::readdir(d)) {
        if (ent->d_name[0] == '.') continue;
        if (auto e = load(base, ent->d_name)) out.push_back(std::move(*e));
    }
    ::closedir(d);
    std::sort(out.begin(), out.end(), [](const VmEntry& a, const VmEntry& b) { return a.record.created > b.record.created; });
    return out;
}

VmEntry find_vm(const std::string& name) {
    if (name.empty() || name.find('/') != std::string::npos || name[0] == '.')
        throw Error("invalid VM name '" + name + "'");
    auto e = load(StateDir::base_dir(), name);
    if (!e) throw Error("no VM named '" + name + "'; 'ocivm ps -a' lists them");
    return std::move(*e);
}

namespace {

// An abstract socket (no file to leave behind when a supervisor is killed),
// named by a random token the supervisor records in state.json, so another
// user cannot squat the name in advance; both ends check who is at the
// other (SO_PEERCRED), as anyone in the network namespace may connect.
sockaddr_un socket_address(const std::string& token, socklen_t* len) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    int n = std::snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "ocivm-ctl-%s", token.c_str());
    *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + static_cast<size_t>(n));
    return a;
}

}  // namespace

bool trusted_peer(int fd, pid_t expect_pid) {
    ucred cr{};
    socklen_t l = sizeof cr;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &l) < 0) return false;
    if (cr.uid != ::geteuid() && cr.uid != 0) return false;
    return expect_pid <= 0 || cr.pid == expect_pid;
}

std::string new_control_token() {
    std::random_device rd;
    char buf[40];
    std::snprintf(buf, sizeof buf, "%08x%08x%08x%08x", rd(), rd(), rd(), rd());
    return buf;
}

UniqueFd listen_supervisor(const std::string& token) {
    UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!s) throw_errno("socket", errno);
    socklen_t len;
    sockaddr_un a = socket_address(token, &len);
    if (::bind(s.get(), reinterpret_cast<sockaddr*>(&a), len) < 0)
        throw_errno("cannot create the control socket @" + std::string(a.sun_path + 1), errno);
    if (::listen(s.get(), 64) < 0) throw_errno("listen on the control socket", errno);
    return s;
}

UniqueFd connect_supervisor(const VmEntry& e) {
    if (!e.supervisor_alive)
        throw Error("VM '" + e.record.name + "' is not running (" + e.status() + ")");
    UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s) throw_errno("socket", errno);
    socklen_t len;
    if (e.record.control.empty()) throw Error("VM '" + e.record.name + "' has no control socket recorded");
    sockaddr_un a = socket_address(e.record.control, &len);
    if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), len) < 0)
        throw_errno("cannot reach the supervisor of VM '" + e.record.name + "'", errno,
                    "it may be starting or exiting, or run in another network namespace; see 'ocivm ps -a'");
    if (!trusted_peer(s.get(), static_cast<pid_t>(e.record.supervisor_pid)))
        throw Error("the control socket of VM '" + e.record.name +
                    "' is held by a process that is not its supervisor; refusing to talk to it");
    return s;
}

UniqueFd request_supervisor(const VmEntry& e, const std::string& line) {
    UniqueFd s = connect_supervisor(e);
    std::string req = line + "\n";
    if (!write_all(s.get(), req.data(), req.size()))
        throw_errno("cannot send '" + line + "' to VM '" + e.record.name + "'", errno);
    return s;
}

bool wait_supervisor_exit(const std::string& dir, double timeout_s) {
    uint64_t deadline = timeout_s < 0 ? UINT64_MAX : mono_ns() + static_cast<uint64_t>(timeout_s * 1e9);
    while (supervisor_alive(dir)) {
        if (mono_ns() >= deadline) return false;
        ::usleep(20000);
    }
    return true;
}

}  // namespace ocivm::vm
