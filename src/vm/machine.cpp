#include "vm/machine.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <thread>

#include "fs/passthrough.h"
#include "guest/initramfs.h"
#include "image/erofs.h"
#include "util/clock.h"
#include "util/hash.h"
#include "util/error.h"
#include "util/io.h"
#include "util/log.h"
#include "util/paths.h"
#include "util/process.h"
#include "util/terminal.h"
#include "util/unique_fd.h"
#include "guest/agent_protocol.h"
#include "guest/stream_protocol.h"  // stream shares
#include "vm/accel.h"
#include "vm/agent_hub.h"
#include "vm/kernel.h"
#include "vm/qemu.h"
#include "vm/qmp.h"
#include "vm/snapshot.h"
#include "vm/vm_snapshot.h"
#include "vm/share_server.h"
#include "vm/state_dir.h"
#include "vm/vm_state.h"

namespace ocivm::vm {

namespace {

constexpr size_t kMaxStreamShares = 27;

struct SocketPair {
    UniqueFd mine, theirs;
};

SocketPair socket_pair() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) throw_errno("socketpair", errno);
    return {UniqueFd(sv[0]), UniqueFd(sv[1])};
}

void set_nonblock(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }


// A boot snapshot of the cache that QEMU could not restore (damaged,
// truncated): the run removes it and boots instead.
struct BootSnapshotBroken : Error {
    BootSnapshotBroken(const std::string& why, std::string d) : Error(why), dir(std::move(d)) {}
    std::string dir;
};

enum class Stage { QemuStarted, KernelBooting, InitRunning, RootMounted, SystemdStarting, CommandStarted, Finished };

const char* stage_name(Stage s) {
    switch (s) {
        case Stage::QemuStarted: return "QEMU started";
        case Stage::KernelBooting: return "kernel booting";
        case Stage::InitRunning: return "init running (ocivm-init loaded the modules)";
        case Stage::RootMounted: return "root mounted";
        case Stage::SystemdStarting: return "systemd starting (the command's unit has not run yet)";
        case Stage::CommandStarted: return "command started";
        case Stage::Finished: return "command finished";
    }
    return "?";
}

}  // namespace

std::string random_name() {
    std::random_device rd;
    char buf[32];
    std::snprintf(buf, sizeof buf, "ocivm-%d-%04x", ::getpid(), rd() & 0xffff);
    return buf;
}

namespace {

fs::CacheMode cache_mode(const std::string& s, fs::CacheMode dflt) {
    fs::CacheMode m = dflt;
    if (!s.empty() && !fs::parse_cache_mode(s, m))
        throw Error("invalid --cache '" + s + "': use never, metadata, auto or always");
    return m;
}

// Reads what fd has and hands each complete line to on_line; closes fd at
// end of file.
template <typename F>
void read_lines(UniqueFd& fd, std::string& pending, F on_line) {
    char buf[4096];
    ssize_t r = ::read(fd.get(), buf, sizeof buf);
    if (r == 0) {
        fd.reset();
        return;
    }
    if (r < 0) return;
    pending.append(buf, static_cast<size_t>(r));
    size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
        std::string line = pending.substr(0, nl);
        pending.erase(0, nl + 1);
        on_line(line);
    }
}

class Run {
public:
    explicit Run(MachineOptions o) : o_(std::move(o)) {}
    int go();

private:
    void on_console(const char* p, size_t n);
    void on_control_line(const std::string& line);
    void send_control(const std::string& line) {
        if (control_) write_all(control_.get(), (line + "\n").data(), line.size() + 1);
    }
    void maybe_bye();
    void diagnose(const std::string& why);
    void qmp(const std::string& cmd) { qmp_.send(cmd); }
    void on_qmp_line(const std::string& line) {
        if (line.find("\"QMP\"") != std::string::npos && stage_ < Stage::KernelBooting)
            stage_ = Stage::KernelBooting;  // QEMU is set up and the vCPU runs
        spdlog::debug("qmp: {}", line);
    }
    void stop_vm() {
        qmp("quit");
        stop_deadline_ = mono_ns() + 5'000'000'000ull;
    }

    void save_record() {
        if (!state_) return;
        try {
            write_record(state_->path(), record_);
        } catch (const std::exception& e) {  // Error, or a JSON error: never fatal to the VM
            spdlog::warn("cannot write the VM's state: {}", e.what());
        }
    }
    void on_agent_hello(const std::string& boot_id, pid_t qemu_pid);
    void maybe_ready(bool at_end = false);
    bool agent_ready_ = false, command_started_ = false;
    void write_out(bool err, const char* p, size_t n);
    void finish_record(int code, const std::string& why);
    void init_record();
    void open_detached_logs();
    std::vector<SocketPair> start_shares();
    QemuConfig qemu_config(const Kernel& kernel, const HostVirt& host, const std::string& initrd, net::Network& network);
    std::string boot_snapshot_key(const Kernel& kernel, const std::string& base_initrd, const QemuConfig& qc,
                                  const std::string& boot_config) const;
    AgentHub::Hooks hub_hooks(QemuProcess& qemu);
    std::string qemu_failure(int qemu_status);
    void on_signal(int sig);
    int boot_and_serve(StateDir& state);
    // ocivm snapshot create (hub hook): the answer line for the client.
    std::string take_snapshot(const std::string& name, bool stop, QemuProcess& qemu);
    SnapshotInfo snapshot_info(const std::string& name, bool boot = false) const;
    RunningQemu running(const QemuProcess& qemu) { return {qmp_, qemu.pid(), qc_, root_image_}; }
    // Boot snapshots (the snapshot cache of plain runs): this run's guest
    // boots deferred (guest::GuestConfig::deferred) and gets its command
    // once booted, or restored from boot_cache_dir_.
    bool boot_snapshot_eligible() const;
    void on_booted(QemuProcess& qemu);
    // After a BootSnapshotBroken: everything the failed start set, back to
    // how a fresh Run has it.
    void reset_for_boot();
    // The last line QEMU wrote to qemu.log, printable ("" if none).
    std::string qemu_log_tail() const;
    // How this VM starts: a boot; a deferred boot (its command is sent once
    // it has booted, and the boot is saved for later runs); a boot
    // snapshot restored (the command sent once it greets); a clone of a
    // snapshot (its command runs on). snap_ is set for the last two.
    enum class Start { Boot, DeferredBoot, CachedBoot, Clone } start_ = Start::Boot;
    bool deferred() const { return start_ == Start::DeferredBoot || start_ == Start::CachedBoot; }
    bool command_sent_ = false;
    std::string boot_key_, boot_cache_dir_;
    std::string snapshot_refusal() const;
    // run --from-snapshot: loads the device state into the QEMU just
    // started, resumes it and sends the guest its new identity.
    void restore_guest(const net::Network& network);
    QemuConfig qc_;               // what QEMU was started with (fds aside)
    std::string net_mode_;        // network.description().mode
    std::optional<SnapshotInfo> snap_;  // run --from-snapshot: the snapshot
    std::optional<SnapshotLock> snap_lock_;  // held on its directory until QEMU has restored it
    uint64_t restore_sent_ns_ = 0;
    double spawn_ms_ = 0, load_ms_ = 0, resume_ms_ = 0;
    uint64_t qemu_spawned_ns_ = 0;
    // The root is a virtio-fs share (not --disk, not --root erofs).
    bool root_share() const { return o_.disk.empty() && !o_.root_erofs; }
    std::string root_image_;  // --root erofs: the image's EROFS file
    UniqueFd ready_;      // run -d: the caller waits on it (MachineOptions::ready_fd)
    int pending_signal_ = 0;  // ocivm kill before the command started
    int event_loop(QemuProcess& qemu, int sfd, uint64_t deadline);
    int interrupts_ = 0;
    bool timed_out_ = false;
    bool forward_stdin_ = false, stdin_eof_ = false, stdin_shut_ = false;
    std::string pending_in_;  // read from our stdin, not yet taken by QEMU

    MachineOptions o_;
    StateDir* state_ = nullptr;
    VmRecord record_;
    std::unique_ptr<AgentHub> hub_;
    UniqueFd out_log_, err_log_, servers_log_;
    static constexpr uint64_t kMaxLog = 64ull << 20;  // per log file of a VM
    uint64_t out_logged_ = 0, err_logged_ = 0, console_logged_ = 0;
    bool stopping_ = false;
    sigset_t signals_{};
    Stage stage_ = Stage::QemuStarted;
    std::string console_path_;
    UniqueFd console_log_;
    std::deque<std::string> console_tail_;
    std::string console_line_;
    UniqueFd console_, out_, err_, in_, control_;
    QmpChannel qmp_;
    std::string control_buf_;
    std::vector<std::unique_ptr<ShareServer>> shares_;
    bool have_result_ = false, bye_sent_ = false;
    int result_ = 125;
    uint64_t want_out_ = 0, want_err_ = 0, got_out_ = 0, got_err_ = 0;
    uint64_t stop_deadline_ = 0;
    bool stdout_ok_ = true, stderr_ok_ = true;
};

void Run::write_out(bool err, const char* p, size_t n) {
    bool& ok = err ? stderr_ok_ : stdout_ok_;
    int fd = err ? (err_log_ ? err_log_.get() : 2) : (out_log_ ? out_log_.get() : 1);
    if (err ? err_log_ : out_log_) {
        // A detached VM's logs live in the runtime directory (tmpfs, RAM):
        // a chatty or hostile guest may not fill it.
        uint64_t& logged = err ? err_logged_ : out_logged_;
        if (logged >= kMaxLog) return;
        n = static_cast<size_t>(std::min<uint64_t>(n, kMaxLog - logged));
        logged += n;
        if (ok && !write_all(fd, p, n)) ok = false;
        if (logged >= kMaxLog) {
            std::string note = "\n[ocivm: log stopped at " + std::to_string(kMaxLog >> 20) + " MiB]\n";
            write_all(fd, note.data(), note.size());
        }
        return;
    }
    if (ok && !write_all(fd, p, n)) ok = false;
}

// The guest can take exec sessions: a detached VM is ready, and its
// supervisor lets go of the caller's terminal.
void Run::on_agent_hello(const std::string& boot_id, pid_t qemu_pid) {
    if (snap_ && restore_sent_ns_ && !record_.restore) {
        VmRecord::RestoreTimings t;
        t.spawn_ms = spawn_ms_;
        t.state_load_ms = load_ms_;
        t.resume_ms = resume_ms_;
        t.hello_ms = static_cast<double>(mono_ns() - restore_sent_ns_) / 1e6;
        t.total_ms = static_cast<double>(mono_ns() - qemu_spawned_ns_) / 1e6;
        spdlog::info("restored from snapshot {}: QEMU up {:.1f} ms, state loaded {:.1f} ms, resumed {:.1f} ms, "
                     "hello {:.1f} ms; {:.1f} ms in all",
                     snap_->name, t.spawn_ms, t.state_load_ms, t.resume_ms, t.hello_ms, t.total_ms);
        record_.restore = t;
    }
    if (record_.state == "starting") {
        record_.state = "running";
        record_.started = utc_now();
    }
    record_.boot_id = boot_id;
    record_.qemu_pid = qemu_pid;
    save_record();
    agent_ready_ = true;
    maybe_ready();
}

// run -d returns once the main command runs and exec can reach the guest
// (or the command has already come and gone); a command that could not be
// started fails the run -d itself, with its status (126, 127, 125).
void Run::maybe_ready(bool at_end) {
    if (!ready_) return;
    if (!command_started_ && at_end) {
        std::string msg = "exit " + std::to_string(have_result_ ? result_ : 125) + "\n";
        write_all(ready_.get(), msg.data(), msg.size());
        ready_.reset();
        return;
    }
    if (command_started_ && (agent_ready_ || have_result_ || at_end)) {
        std::string msg = "ready " + o_.name + "\n";
        write_all(ready_.get(), msg.data(), msg.size());
        ready_.reset();
        UniqueFd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
        UniqueFd log(::open((state_->path() + "/supervisor.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
        if (null) {
            ::dup2(null.get(), 0);
            ::dup2(null.get(), 1);
        }
        if (log || null) ::dup2(log ? log.get() : null.get(), 2);
    }
}

void Run::on_console(const char* p, size_t n) {
    if (console_log_ && console_logged_ < kMaxLog) {
        size_t k = static_cast<size_t>(std::min<uint64_t>(n, kMaxLog - console_logged_));
        console_logged_ += k;
        ssize_t w = ::write(console_log_.get(), p, k);
        (void)w;
    }
    if (o_.console) write_all(2, p, n);
    if (stage_ < Stage::KernelBooting) stage_ = Stage::KernelBooting;
    for (size_t i = 0; i < n; ++i) {
        if (p[i] == '\n') {
            if (!console_line_.empty() && console_line_.back() == '\r') console_line_.pop_back();
            console_tail_.push_back(console_line_);
            if (console_tail_.size() > 20) console_tail_.pop_front();
            console_line_.clear();
        } else if (console_line_.size() < 400) {
            console_line_ += p[i];
        }
    }
}

void Run::on_control_line(const std::string& line) {
    spdlog::debug("guest: {}", line);
    unsigned long a = 0, b = 0, c = 0;
    if (line == "stage init") {
        stage_ = std::max(stage_, Stage::InitRunning);
    } else if (line == "stage root") {
        stage_ = std::max(stage_, Stage::RootMounted);
    } else if (line.rfind("stage systemd", 0) == 0) {
        stage_ = std::max(stage_, Stage::SystemdStarting);
    } else if (line.rfind("started", 0) == 0) {
        stage_ = Stage::CommandStarted;
        command_started_ = true;
        if (pending_signal_) send_control("signal " + std::to_string(std::exchange(pending_signal_, 0)));
        maybe_ready();
    } else if (std::sscanf(line.c_str(), "exit %lu %lu %lu", &a, &b, &c) == 3) {
        have_result_ = true;
        result_ = static_cast<int>(a & 0xff);
        want_out_ = b;
        want_err_ = c;
        stage_ = Stage::Finished;
    } else if (std::sscanf(line.c_str(), "signal %lu %lu %lu", &a, &b, &c) == 3) {
        have_result_ = true;
        result_ = 128 + static_cast<int>(a);
        want_out_ = b;
        want_err_ = c;
        stage_ = Stage::Finished;
        spdlog::info("the command was killed by signal {} ({})", a, strsignal(static_cast<int>(a)));
    } else if (line.rfind("error ", 0) == 0) {
        size_t sp = line.find(' ', 6);
        int code = std::atoi(line.substr(6, sp - 6).c_str());
        std::string msg = sp == std::string::npos ? "" : line.substr(sp + 1);
        std::fprintf(stderr, "ocivm: error: %s\n", msg.c_str());
        have_result_ = true;
        result_ = code == 126 || code == 127 ? code : 125;
        if (result_ == 125) diagnose("the guest could not start the command");
        stage_ = std::max(stage_, Stage::Finished);
    }
    maybe_bye();
}

void Run::maybe_bye() {
    if (have_result_ && !bye_sent_ && got_out_ >= want_out_ && got_err_ >= want_err_) {
        send_control("bye");
        bye_sent_ = true;
        // Direct mode powers off at once; systemd may take its time.
        stop_deadline_ = mono_ns() + (o_.guest.systemd ? 3'000'000'000ull : 10'000'000'000ull);
    }
}

void Run::diagnose(const std::string& why) {
    std::fprintf(stderr, "ocivm: error: %s\n", why.c_str());
    if (state_) state_->keep();
    std::string stages;
    std::vector<Stage> order = {Stage::QemuStarted, Stage::KernelBooting, Stage::InitRunning, Stage::RootMounted};
    if (o_.guest.systemd) order.push_back(Stage::SystemdStarting);
    order.push_back(Stage::CommandStarted);
    for (Stage s : order)
        stages += std::string(stages.empty() ? "" : " > ") + (s == stage_ ? "[" : "") + stage_name(s) +
                  (s == stage_ ? "]" : "");
    std::fprintf(stderr, "ocivm: stage reached: %s\n", stage_name(stage_));
    std::fprintf(stderr, "ocivm:   %s\n", stages.c_str());
    std::fprintf(stderr, "ocivm: last %zu console lines (full log: %s):\n", console_tail_.size(), console_path_.c_str());
    for (auto& l : console_tail_) std::fprintf(stderr, "  | %s\n", l.c_str());
    if (!console_line_.empty()) std::fprintf(stderr, "  | %s\n", console_line_.c_str());
    for (size_t i = 0; i < shares_.size(); ++i) {
        size_t first_vol = root_share() ? 1 : 0;
        std::string label = i < first_vol ? "root" : o_.shares[i - first_vol].guest;
        auto st = shares_[i]->stats();
        if (!st.answered) {
            std::fprintf(stderr, "ocivm: virtio-fs (%s): its server did not answer (it has exited or is stuck)\n",
                         label.c_str());
            continue;
        }
        std::fprintf(stderr, "ocivm: virtio-fs (%s, %lu requests in all): %s\n", label.c_str(),
                     static_cast<unsigned long>(st.requests), st.summary.empty() ? "" : st.summary[0].c_str());
        for (size_t k = 1; k < st.summary.size(); ++k) std::fprintf(stderr, "ocivm:   %s\n", st.summary[k].c_str());
        std::fprintf(stderr, "ocivm: livelock detector (%s): %s%s\n", label.c_str(),
                     st.livelock ? "LIVELOCK: " : "no livelock: ", st.verdict.c_str());
    }
}

int Run::go() {
    // Signals arrive through a signalfd, so they are blocked before any
    // thread exists (the recorders' and servers' threads inherit the mask).
    sigemptyset(&signals_);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGWINCH, SIGCHLD, SIGQUIT}) sigaddset(&signals_, s);
    sigset_t old;
    ::pthread_sigmask(SIG_BLOCK, &signals_, &old);
    struct Restore {
        sigset_t m;
        ~Restore() { ::pthread_sigmask(SIG_SETMASK, &m, nullptr); }
    } restore{old};
    if (o_.name.empty()) o_.name = random_name();
    ready_ = UniqueFd(o_.ready_fd);
    o_.ready_fd = -1;
    // run -d: the caller returns when told, so an error is said first (and
    // only here: the caller prints nothing of its own after "exit 125").
    auto tell_caller = [this](const std::exception& e) {
        std::fprintf(stderr, "ocivm: error: %s\n", e.what());
        std::fflush(stderr);
    };
    std::optional<StateDir> state;
    try {
        state.emplace(o_.name, o_.rm, o_.detach);
    } catch (const std::exception& e) {
        if (!ready_) throw;
        tell_caller(e);
        maybe_ready(true);
        return 125;
    }
    state_ = &*state;
    init_record();
    try {
        try {
            return boot_and_serve(*state);
        } catch (const BootSnapshotBroken& e) {
            // The cache never fails a run: the entry goes, the VM boots.
            std::fprintf(stderr, "ocivm: warning: %s; removed it from the cache, booting instead\n", e.what());
            remove_boot_snapshot(e.dir);
            reset_for_boot();
            o_.no_snapshot_cache = true;
            return boot_and_serve(*state);
        }
    } catch (const std::exception& e) {
        // A start that failed is an exited VM with the reason, not a
        // "dead" one (whose supervisor was killed).
        if (record_.state == "exited") throw;
        if (ready_) tell_caller(e);
        finish_record(125, e.what());
        if (!ready_ && o_.detach) return 125;  // told above
        throw;
    }
}

int Run::boot_and_serve(StateDir& state) {
    if (o_.detach) open_detached_logs();
    if (!o_.from_snapshot.empty()) {
        snap_lock_.emplace(snapshots_dir(), false);
        snap_ = load_snapshot(o_.from_snapshot);
        start_ = Start::Clone;
    }
    std::string cache = cache_dir();
    make_dirs(cache);
    Kernel kernel;
    HostVirt host;
    if (snap_) {
        // A clone boots nothing: the snapshot's files, its accelerator.
        kernel.boot_path = snap_->dir + "/kernel";
        kernel.source = "snapshot " + snap_->name;
        kernel.release = "as snapshotted";
        if (snap_->accel == "kvm") host = probe_host(cache, kernel.boot_path);
        else host.kvm_reason = "the snapshot was taken under TCG";
        if (std::string why = restore_refusal(*snap_, o_.machine, host.kvm); !why.empty()) throw Error(why);
    } else {
        kernel = resolve_kernel(o_.kernel, o_.rootfs, cache);
        host = probe_host(cache, kernel.boot_path);
    }
    if (!o_.timeout_given && snap_) {
        // A restore is ready in well under a second: a clone that has not
        // greeted in 30 s will not (a snapshot it cannot run), and is
        // diagnosed, not waited for.
        o_.timeout_s = 30;
    } else if (!o_.timeout_given) {
        if (!host.kvm) o_.timeout_s = std::max(o_.timeout_s, 300.0);
        else if (host.nested) o_.timeout_s = std::max(o_.timeout_s, 240.0);
    }
    if (!host.kvm && !snap_)
        std::fprintf(stderr, "ocivm: warning: KVM is not usable (%s); running under TCG (slow); start timeout %.0f s\n",
                     host.kvm_reason.c_str(), o_.timeout_s);
    spdlog::info("accelerator {}; {}; start timeout {:.0f} s{}", host.kvm ? "KVM" : "TCG",
                 host.nested ? "ocivm runs under a hypervisor (" + host.hypervisor + "): nested, longer timeouts" : "not nested",
                 o_.timeout_s, "; stdio over virtio-serial (no vsock)");
    spdlog::info("kernel {} ({}), booting {}", kernel.source, kernel.release, kernel.boot_path);

    std::vector<SocketPair> fs_socks = start_shares();
    if (snap_) {
        root_image_ = snap_->dir + "/root.erofs";
    } else if (o_.root_erofs) {
        if (::geteuid() != 0)
            throw Error("--root erofs needs root: a store imported without root keeps owners in xattrs that "
                        "mkfs.erofs does not read; use --root virtiofs");
        root_image_ = image::erofs_image(o_.rootfs, cache).path;
        o_.guest.root_erofs = true;
    }
    bool root_share = this->root_share();

    // --- network (src/net): set up before QEMU, torn down after it (declared before `qemu`)
    o_.net.vm_name = o_.name;
    o_.net.state_dir = state.path();
    o_.net.microvm = o_.machine == "microvm";
    net::Network network(o_.net);
    record_.ports = network.description().ports;  // ps, inspect
    record_.network_json = network.description().to_json();
    save_record();
    // --- end network
    std::vector<std::string> extra;
    if (!o_.disk.empty() || !o_.attach.empty()) extra = {"virtio_blk", "crc32c_generic", "ext4", "xfs"};
    // libcrc32c needs a crc32c implementation, a soft dependency modules.dep omits.
    if (o_.root_erofs) extra.insert(extra.end(), {"virtio_blk", "crc32c_generic", "erofs"});
    for (auto& m : network.guest_modules()) extra.push_back(m);  // network
    std::string initrd = snap_ ? snap_->dir + "/initrd" : state.path() + "/initrd.cpio";
    bool wrote_initrd = false;
    QemuConfig qc = qemu_config(kernel, host, initrd, network);
    if (!snap_) {
        std::string base = guest::base_initramfs(kernel.modules_dir, cache, extra);
        guest::GuestConfig boot = o_.guest;
        if (boot_snapshot_eligible()) {
            start_ = Start::DeferredBoot;
            // Booted without the run's own command and identity (they come
            // once it is up), so every run of these options boots the same.
            boot = guest::GuestConfig{};
            boot.root_erofs = true;
            boot.deferred = true;
            boot_key_ = boot_snapshot_key(kernel, base, qc, guest::encode(boot));
            boot_cache_dir_ = boot_snapshots_dir() + "/" + boot_key_;
            snap_lock_.emplace(boot_snapshots_dir(), false);
            try {
                SnapshotInfo b = SnapshotInfo::from_json(read_file(boot_cache_dir_ + "/snapshot.json"), boot_cache_dir_);
                if (std::string why = restore_refusal(b, o_.machine, host.kvm); why.empty()) snap_ = b;
                else spdlog::info("boot snapshot not usable ({}): booting", why);
            } catch (const Error&) {
                spdlog::debug("no boot snapshot for these options yet ({}): booting, and saving one", boot_cache_dir_);
            }
            if (snap_) {
                start_ = Start::CachedBoot;
                ::utimensat(AT_FDCWD, (boot_cache_dir_ + "/snapshot.json").c_str(), nullptr, 0);  // used now (eviction)
            } else {
                snap_lock_.reset();
            }
        }
        if (snap_) {
            initrd = snap_->dir + "/initrd";
            record_.snapshot = "boot cache";
        } else {
            guest::write_run_initramfs(base, guest::encode(boot), initrd);
            wrote_initrd = true;
        }
    }
    console_path_ = state.path() + "/console.log";
    console_log_ = UniqueFd(::open(console_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));

    qc.initrd = initrd;
    UniqueFd vmstate;
    if (snap_) {
        qc.machine = snap_->machine;
        qc.kvm = snap_->accel == "kvm";
        qc.memory = snap_->memory;
        qc.cpus = snap_->cpus;
        qc.append = snap_->append;
        qc.memory_file = snap_->dir + "/ram";
        qc.kernel = snap_->dir + "/kernel";
        qc.initrd = snap_->dir + "/initrd";
        root_image_ = snap_->dir + "/root.erofs";
        qc.disk = root_image_;
        vmstate = UniqueFd(::open((snap_->dir + "/vmstate").c_str(), O_RDONLY | O_CLOEXEC));
        if (!vmstate) throw_errno("cannot open " + snap_->dir + "/vmstate", errno, "the snapshot is damaged; take it again");
        qc.incoming = vmstate.get();
    }
    qc_ = qc;
    net_mode_ = network.description().mode;
    auto con = socket_pair(), qmpp = socket_pair(), out = socket_pair(), err = socket_pair(), in = socket_pair(),
         ctl = socket_pair(), agent = socket_pair();
    qc.port_agent = agent.theirs.get();
    qc.console = con.theirs.get();
    qc.qmp = qmpp.theirs.get();
    qc.port_out = out.theirs.get();
    qc.port_err = err.theirs.get();
    qc.port_in = in.theirs.get();
    qc.port_control = ctl.theirs.get();
    size_t first_vol = root_share ? 1 : 0;
    for (size_t i = 0; i < shares_.size(); ++i) {
        // stream shares: a virtio-serial port each (issue 12 item 4)
        if (i >= first_vol && o_.guest.volumes[i - first_vol].stream)
            qc.fs_ports.emplace_back(o_.guest.volumes[i - first_vol].tag, fs_socks[i].theirs.get());
        else
            qc.fs.emplace_back(i < first_vol ? guest::kRootTag : o_.guest.volumes[i - first_vol].tag, fs_socks[i].theirs.get());
    }
    auto [argv, fds] = qemu_argv(qc);
    std::string cmdline;
    for (auto& a : argv) cmdline += a + " ";
    spdlog::debug("QEMU: {}", cmdline);

    UniqueFd sfd(::signalfd(-1, &signals_, SFD_CLOEXEC | SFD_NONBLOCK));
    UniqueFd listener = listen_supervisor(record_.control);

    QemuProcess qemu;
    qemu_spawned_ns_ = mono_ns();
    qemu.start(argv, fds, state.path() + "/qemu.log");
    vmstate.reset();
    AgentHub::Hooks hooks = hub_hooks(qemu);
    uint64_t started = mono_ns();
    // QEMU holds its ends now; ours must go so its exit is seen as EOF.
    for (auto* p : {&con, &qmpp, &out, &err, &in, &ctl, &agent}) p->theirs.reset();
    hub_ = std::make_unique<AgentHub>(std::move(agent.mine), std::move(listener), std::move(hooks));
    fs_socks.clear();
    console_ = std::move(con.mine);
    qmp_ = QmpChannel(std::move(qmpp.mine));
    qmp_.set_on_line([this](const std::string& l) { on_qmp_line(l); });
    out_ = std::move(out.mine);
    err_ = std::move(err.mine);
    in_ = std::move(in.mine);
    control_ = std::move(ctl.mine);
    for (int fd : {console_.get(), out_.get(), err_.get(), control_.get(), in_.get()}) set_nonblock(fd);
    if (snap_) {
        record_.qemu_pid = qemu.pid();
        try {
            restore_guest(network);
            snap_lock_.reset();  // QEMU has what it needs: the snapshot may go now
        } catch (const std::exception& e) {
            snap_lock_.reset();
            std::string last = qemu_log_tail();
            std::string why = std::string("cannot restore ") +
                              (o_.from_snapshot.empty() ? "the boot snapshot " + snap_->dir : "snapshot " + snap_->name) +
                              ": " + e.what() + (last.empty() ? "" : " (QEMU: " + last.substr(0, 300) + ")");
            if (o_.from_snapshot.empty()) throw BootSnapshotBroken(why, snap_->dir);
            throw Error(why + "; the snapshot may be damaged: take it again ('ocivm snapshot rm " + snap_->name +
                        "', then 'ocivm snapshot create')");
        }
    } else {
        qmp("qmp_capabilities");
    }

    std::unique_ptr<RawTerminal> raw;
    bool stdin_is_tty = ::isatty(0);
    if (o_.guest.tty && stdin_is_tty) raw = std::make_unique<RawTerminal>(0);
    forward_stdin_ = o_.guest.stdin_open;
    if (!forward_stdin_) in_.reset();

    uint64_t deadline = started + static_cast<uint64_t>(o_.timeout_s * 1e9);
    int qemu_status = event_loop(qemu, sfd.get(), deadline);
    bool timed_out = timed_out_;
    char buf[65536];
    hub_->shutdown("the VM has stopped");
    // What QEMU wrote before it went is still in the sockets.
    for (auto* p : {&out_, &err_}) {
        if (!*p) continue;
        ssize_t r;
        while ((r = ::read(p->get(), buf, sizeof buf)) > 0) write_out(p == &err_, buf, static_cast<size_t>(r));
    }
    if (console_) {
        ssize_t r;
        while ((r = ::read(console_.get(), buf, sizeof buf)) > 0) on_console(buf, static_cast<size_t>(r));
    }
    raw.reset();
    if (wrote_initrd) ::unlink(initrd.c_str());  // 3 MB nobody needs once the guest has booted
    for (auto* p : {&console_, &out_, &err_, &in_, &control_}) p->reset();
    qmp_.reset();
    shares_.clear();  // waits for the share servers (QEMU is gone, so are their sockets)

    if (!have_result_ && !timed_out) {
        std::string why = qemu_failure(qemu_status);
        diagnose(why);
        finish_record(125, why);
        return 125;
    }
    finish_record(result_, timed_out ? "the VM did not become ready in time" : "");
    spdlog::info("state directory {}{}", state.path(), o_.rm ? " (removed)" : "");
    return result_;
}

void Run::init_record() {
    record_.name = o_.name;
    record_.state = "starting";
    record_.detached = o_.detach;
    record_.supervisor_pid = ::getpid();
    record_.image = o_.image;
    record_.rootfs = o_.disk.empty() ? o_.rootfs : "";
    record_.command = o_.guest.argv;
    record_.env = o_.guest.env;
    record_.cwd = o_.guest.cwd;
    record_.uid = o_.guest.uid;
    record_.gid = o_.guest.gid;
    record_.hostname = o_.guest.hostname;
    record_.created = utc_now();
    record_.rm = o_.rm;
    record_.control = new_control_token();
    record_.snapshot = o_.from_snapshot;
    for (auto& sh : o_.shares) record_.shares.push_back(sh.host + ":" + sh.guest + (sh.readonly ? ":ro" : ":rw"));
    save_record();
}

// A detached VM's output and its servers' stderr go to its state directory.
void Run::open_detached_logs() {
    auto open_log = [&](const char* name) {
        UniqueFd fd(::open((state_->path() + "/" + name).c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
        if (!fd) throw_errno("cannot create " + state_->path() + "/" + name, errno);
        return fd;
    };
    out_log_ = open_log("stdout.log");
    err_log_ = open_log("stderr.log");
    servers_log_ = open_log("servers.log");
}

// The share servers: the root read-only (the guest writes to a tmpfs
// overlay), then the volumes. Returns the sockets QEMU's ends are in.
std::vector<SocketPair> Run::start_shares() {
    std::vector<SocketPair> fs_socks;
    // The shares: the root read-only (the guest writes to a tmpfs overlay), then the volumes.
    fs::CacheMode root_mode = cache_mode(o_.cache, fs::CacheMode::Always);
    fs::CacheMode vol_mode = cache_mode(o_.cache, fs::CacheMode::Auto);
    auto add_share = [&](ShareServer::Config c) {
        if (servers_log_) c.stderr_fd = servers_log_.get();
        fs_socks.push_back(socket_pair());
        shares_.push_back(std::make_unique<ShareServer>(c, std::move(fs_socks.back().mine)));
    };
    if (root_share()) {
        ShareServer::Config c;
        c.dir = o_.rootfs;
        c.mode = root_mode;
        c.readonly = true;
        // A store imported without root keeps owners and devices in xattrs.
        c.override_stat = ::geteuid() != 0;
        c.trace = o_.trace;
        add_share(c);
    }
    o_.guest.root_partuuid = o_.disk_partuuid;
    // Stream shares take a virtio-serial port each: 32, of which ocivm's
    // own channels use 5.
    if (o_.root_erofs && o_.shares.size() > kMaxStreamShares)
        throw Error("at most " + std::to_string(kMaxStreamShares) + " -v shares with --root erofs (each takes a "
                    "virtio-serial port); share a common parent directory instead");
    o_.guest.volumes.clear();
    for (size_t i = 0; i < o_.shares.size(); ++i) {
        auto& s = o_.shares[i];
        ShareServer::Config c;
        c.dir = s.host;
        c.mode = vol_mode;
        c.readonly = s.readonly;
        c.nodev = s.nodev;
        c.nosuid = s.nosuid;
        c.trusted_xattrs = s.trusted_xattrs;
        c.writeback = s.writeback;
        c.root_dev = s.root_dev, c.root_ino = s.root_ino;  // a clone's: checked again by the server
        c.trace = o_.trace.empty() ? "" : o_.trace + ".vol" + std::to_string(i);
        // A VM that can be snapshotted (an EROFS root, and its clones) serves
        // its shares over the stream transport, which survives a restore.
        c.stream = o_.root_erofs;
        add_share(c);
        std::string tag = std::string(c.stream ? stream::kPortPrefix : "ocivm-vol") + std::to_string(i);
        o_.guest.volumes.push_back({tag, s.guest, s.readonly, s.nodev, s.nosuid, s.noexec, c.stream});
    }
    return fs_socks;
}

QemuConfig Run::qemu_config(const Kernel& kernel, const HostVirt& host, const std::string& initrd, net::Network& network) {
    QemuConfig qc;
    qc.kvm = host.kvm;
    qc.machine = o_.machine;
    qc.kernel = kernel.boot_path;
    qc.initrd = initrd;
    qc.memory = o_.memory;
    qc.cpus = o_.cpus;
    qc.append = "console=ttyS0 panic=-1 reboot=t rdinit=/init";
    if (!o_.console && !o_.debug) qc.append += " quiet";
    if (o_.machine == "microvm") qc.append += " acpi=on pci=off";
    if (o_.machine == "microvm" && !host.kvm && host.tsc_khz) qc.append += " tsc_early_khz=" + std::to_string(host.tsc_khz);
    for (auto& k : network.kernel_args()) qc.append += " " + k;  // network
    qc.net = network.qemu();                                       // network
    for (auto& k : o_.kargs) qc.append += " " + k;
    if (!root_image_.empty()) {
        qc.disk = root_image_;
        qc.disk_format = "raw";
    } else if (!o_.disk.empty()) {
        qc.disk = o_.disk;
        char head[4] = {};
        UniqueFd d(::open(o_.disk.c_str(), O_RDONLY | O_CLOEXEC));
        if (!d || ::pread(d.get(), head, 4, 0) != 4) throw_errno("cannot read disk " + o_.disk, errno);
        qc.disk_format = std::memcmp(head, "QFI\xfb", 4) == 0 ? "qcow2" : "raw";
    }
    qc.attach = o_.attach;
    return qc;
}

// What stop, kill and a guest's Hello on the control socket do.
AgentHub::Hooks Run::hub_hooks(QemuProcess& qemu) {
    AgentHub::Hooks hooks;
    hooks.on_hello = [this, &qemu](const std::string& boot) {
        on_agent_hello(boot, qemu.pid());
        if (deferred()) on_booted(qemu);
    };
    hooks.stop = [this, &qemu](double secs) {
        if (have_result_ || stopping_) return;
        stopping_ = true;
        record_.state = "stopping";
        save_record();
        spdlog::info("stop requested: SIGTERM to the command, {:.0f} s before the VM is killed", secs);
        if (stage_ >= Stage::CommandStarted) send_control("signal " + std::to_string(SIGTERM));
        stop_deadline_ = mono_ns() + static_cast<uint64_t>(secs * 1e9);
        if (secs <= 0) {
            qemu.kill_now();
            stop_deadline_ = 0;
            have_result_ = bye_sent_ = true;
            result_ = 128 + SIGKILL;
            record_.exit_reason = "killed: stopped with no grace time";
        }
    };
    hooks.kill = [this, &qemu](int sig) {
        if (have_result_) return;
        if (stage_ >= Stage::CommandStarted) {
            send_control("signal " + std::to_string(sig));
        } else if (sig != SIGKILL) {
            pending_signal_ = sig;  // delivered the moment it starts
        } else {
            qemu.kill_now();
            have_result_ = bye_sent_ = true;
            result_ = 128 + SIGKILL;
            record_.exit_reason = "killed before the command started";
        }
    };
    hooks.snapshot = [this, &qemu](const std::string& name, bool stop) { return take_snapshot(name, stop, qemu); };
    return hooks;
}

void Run::reset_for_boot() {
    hub_.reset();
    for (auto* p : {&console_, &out_, &err_, &in_, &control_, &console_log_}) p->reset();
    qmp_.reset();
    shares_.clear();
    snap_.reset();
    start_ = Start::Boot;
    command_sent_ = false;
    boot_key_.clear();
    boot_cache_dir_.clear();
    root_image_.clear();
    restore_sent_ns_ = 0;
    stage_ = Stage::QemuStarted;
    agent_ready_ = command_started_ = timed_out_ = false;
    record_.snapshot.clear();
    record_.restore.reset();
    console_tail_.clear();
    console_line_.clear();
    control_buf_.clear();
}

// The last line QEMU wrote to qemu.log, as " (QEMU: ...)", or "".
std::string Run::qemu_log_tail() const {
    std::string log;
    try {
        log = read_file(state_->path() + "/qemu.log");
    } catch (const Error&) {
        return "";
    }
    while (!log.empty() && log.back() == '\n') log.pop_back();
    std::string last = log.substr(log.rfind('\n') == std::string::npos ? 0 : log.rfind('\n') + 1);
    for (char& ch : last)  // it goes into state.json and the terminal
        if (static_cast<unsigned char>(ch) < 0x20 || static_cast<unsigned char>(ch) >= 0x7f) ch = '?';
    return last;
}

// Plain runs with an EROFS root and nothing the snapshot cannot hold boot
// once per set of options and restore that boot after (unless
// --no-snapshot-cache).
bool Run::boot_snapshot_eligible() const {
    return o_.root_erofs && !o_.no_snapshot_cache && o_.from_snapshot.empty() && o_.shares.empty() &&
           o_.attach.empty() && o_.disk.empty() && !o_.guest.systemd && o_.net.mode != net::Mode::Bridge;
}

// Everything a booted guest depends on: the kernel, initramfs and root
// files (by identity: path, size, mtime), QEMU's binary, the machine and
// accelerator, memory, CPUs, the kernel command line (network and --karg),
// and the deferred configuration itself.
std::string Run::boot_snapshot_key(const Kernel& kernel, const std::string& base_initrd, const QemuConfig& qc,
                                   const std::string& boot_config) const {
    Sha256 h;
    auto file = [&h](const std::string& path) {
        struct stat st{};
        ::stat(path.c_str(), &st);
        h.update(path + "\n" + std::to_string(st.st_size) + " " + std::to_string(st.st_mtim.tv_sec) + "." +
                 std::to_string(st.st_mtim.tv_nsec) + " " + std::to_string(st.st_ino) + "\n");
    };
    h.update(std::string("ocivm boot snapshot 2\n"));  // 2: the 32-port virtio-serial device (stream shares)
    file(kernel.boot_path);
    file(base_initrd);
    file(root_image_);
    QemuIdentity q = local_qemu();
    h.update(q.path + " " + std::to_string(q.size) + " " + std::to_string(q.mtime_ns) + "\n");
    h.update(qc.machine + " " + (qc.kvm ? "kvm" : "tcg") + " " + qc.memory + " " + std::to_string(qc.cpus) + "\n");
    h.update(qc.append + "\n");
    h.update(std::string(qc.net.active() ? "net user\n" : "net none\n"));
    h.update(boot_config);
    return h.hex();
}

// Why this VM cannot be snapshotted now ("" when it can).
std::string Run::snapshot_refusal() const {
    if (root_image_.empty() || !o_.disk.empty())
        return "VM '" + o_.name + "' does not have an EROFS root; start it with 'ocivm run -d --root erofs'";
    // Never true with an EROFS root (its -v shares are stream shares): kept
    // so that a change elsewhere cannot make a VM QEMU cannot save pass.
    for (auto& v : o_.guest.volumes)
        if (!v.stream)
            return "VM '" + o_.name + "' has -v shares over vhost-user, whose devices QEMU 7.2 cannot save; start it with --root erofs";
    if (shares_.size() != o_.guest.volumes.size())
        return "VM '" + o_.name + "' has a virtio-fs root share, whose device QEMU 7.2 cannot save; start it with --root erofs";
    if (!o_.attach.empty()) return "VM '" + o_.name + "' has writable disks attached, which a snapshot cannot hold";
    if (net_mode_ == "bridge")
        return "VM '" + o_.name + "' is bridged (its addresses are its own); use --network user for a VM to snapshot";
    if (have_result_ || stopping_) return "VM '" + o_.name + "' is stopping";
    if (!agent_ready_ || !command_started_)
        return "VM '" + o_.name + "' is not running yet; snapshot it once 'ocivm run -d' has returned";
    if (!hub_->idle())
        return "VM '" + o_.name + "' has exec sessions running (or their output in flight); snapshot it when they have ended";
    return "";
}

// Pauses the VM, saves its device state (x-ignore-shared: RAM stays in its
// memfd) into dir/vmstate and a sparse copy of the RAM into dir/ram; the
// VM stays paused (the caller resumes it).
// What a snapshot of this VM records (its command and identity empty for
// a boot snapshot, whose runs bring their own).
SnapshotInfo Run::snapshot_info(const std::string& name, bool boot) const {
    SnapshotInfo info;
    info.name = name;
    info.created = utc_now();
    info.source = o_.name;
    info.image = o_.image;
    info.rootfs = o_.rootfs;
    if (!boot) {
        info.command = o_.guest.argv;
        info.env = o_.guest.env;
        info.cwd = o_.guest.cwd;
        info.uid = o_.guest.uid;
        info.gid = o_.guest.gid;
        info.systemd = o_.guest.systemd;
    }
    info.machine = qc_.machine;
    info.accel = qc_.kvm ? "kvm" : "tcg";
    info.memory = qc_.memory;
    info.cpus = qc_.cpus;
    info.append = qc_.append;
    info.network = net_mode_ == "none" ? "none" : "user";
    info.ports = record_.ports;
    info.layout = kSnapshotLayout;
    // stream shares (issue 12 item 4): clones serve the same directories
    if (!boot)
        for (auto& sh : o_.shares)
            info.shares.push_back({sh.host, sh.guest, sh.readonly, sh.nodev, sh.nosuid, sh.noexec, sh.writeback,
                                   fs::cache_mode_name(cache_mode(o_.cache, fs::CacheMode::Auto)), sh.trusted_xattrs,
                                   0, 0});  // root_dev/ino: recorded by save_vm
    return info;
}

std::string Run::take_snapshot(const std::string& name, bool stop, QemuProcess& qemu) {
    if (std::string why = snapshot_name_problem(name); !why.empty()) return "error " + why;
    if (std::string why = snapshot_refusal(); !why.empty()) return "error " + why;
    std::string dest = snapshots_dir() + "/" + name;
    if (::access(dest.c_str(), F_OK) == 0)
        return "error a snapshot named '" + name + "' exists; remove it first ('ocivm snapshot rm " + name + "')";
    SnapshotInfo info = snapshot_info(name);
    // --- stream shares (issue 12 item 4): no reply may be half-way to the
    // guest when it is saved; the servers go on once it is.
    struct ResumeShares {
        std::vector<std::unique_ptr<ShareServer>>& s;
        ~ResumeShares() {
            for (auto& x : s) x->resume();
        }
    } resume_shares{shares_};
    if (std::string why = quiesce_all(shares_); !why.empty()) return "error " + why;
    // --- end stream shares
    try {
        SnapshotLock lock(snapshots_dir(), false);
        save_vm(running(qemu), dest, info, stop);
    } catch (const std::exception& e) {
        if (stop) {
            try {
                qmp_.call("cont");
            } catch (const std::exception&) {
            }
        }
        spdlog::warn("snapshot {} failed: {}", name, e.what());
        return std::string("error ") + e.what();
    }
    if (stop) {
        have_result_ = bye_sent_ = true;
        result_ = 0;
        record_.exit_reason = "stopped after 'ocivm snapshot create --stop' (snapshot " + name + ")";
        stopping_ = true;
        stop_vm();
    }
    return "ok " + name;
}

// A deferred boot's guest has booted and greeted: the first run of these
// options saves it for the runs after (best effort: a run never fails for
// its cache), then every run sends the command it is for.
void Run::on_booted(QemuProcess& qemu) {
    if (command_sent_ || have_result_) return;
    if (start_ == Start::DeferredBoot && !stopping_ && ::access(boot_cache_dir_.c_str(), F_OK) != 0) {
        try {
            {
                SnapshotLock lock(boot_snapshots_dir(), false);
                SnapshotInfo info = snapshot_info("boot-" + boot_key_.substr(0, 16), true);
                save_vm(running(qemu), boot_cache_dir_, info, false);
            }
            spdlog::info("boot snapshot saved: later runs of these options restore it ({})", boot_cache_dir_);
            SnapshotLock exclusive(boot_snapshots_dir(), true);
            evict_boot_snapshots(kMaxBootSnapshots);
        } catch (const std::exception& e) {
            if (::access(boot_cache_dir_.c_str(), F_OK) != 0)  // not a race another run won
                spdlog::warn("cannot save the boot snapshot ({}); the next run boots again", e.what());
        }
    }
    std::string config = guest::encode(o_.guest);
    send_control("command " + std::to_string(config.size()));
    if (control_) write_all(control_.get(), config.data(), config.size());
    command_sent_ = true;
}

// A clone: the device state goes into the QEMU just started (which waits
// with -incoming defer), the VM resumes, and the guest is told it was
// restored, with its new identity; its agent's Hello is the readiness.
void Run::restore_guest(const net::Network& network) {
    qmp_.call("qmp_capabilities", {}, 60);
    spawn_ms_ = static_cast<double>(mono_ns() - qemu_spawned_ns_) / 1e6;
    LoadTimings t = load_vm(qmp_, "snapshot " + snap_->name);
    load_ms_ = t.load_ms;
    resume_ms_ = t.resume_ms;
    if (start_ == Start::Clone) {  // its command runs on (a boot snapshot's gets it after the Hello)
        stage_ = Stage::CommandStarted;
        command_started_ = true;
    }
    hub_->restore(new_identity(o_.guest.hostname, network.qemu().active() ? network.qemu().mac : ""));
    send_control("\nrestore");  // ocivm-init counts the output from here (a newline first ends any stale line)
    restore_sent_ns_ = mono_ns();
}

// The why of a VM that stopped without the command's status.
std::string Run::qemu_failure(int qemu_status) {
    std::string why = "the VM stopped before the command reported its exit status";
    if (WIFSIGNALED(qemu_status)) why += std::string(" (QEMU was killed by ") + strsignal(WTERMSIG(qemu_status)) + ")";
    else if (WEXITSTATUS(qemu_status) != 0) {
        std::string last = qemu_log_tail();
        why += " (QEMU exited with status " + std::to_string(WEXITSTATUS(qemu_status)) + (last.empty() ? "" : ": " + last) + ")";
    }
    return why;
}

// A signal to ocivm (or its supervisor): the first is the command's, a
// second one stops the VM; SIGWINCH carries the terminal's new size.
void Run::on_signal(int sig) {
    if (sig == SIGWINCH) {
        winsize ws{};
        if (o_.guest.tty && ::ioctl(0, TIOCGWINSZ, &ws) == 0)
            send_control("winsize " + std::to_string(ws.ws_row) + " " + std::to_string(ws.ws_col));
        return;
    }
    ++interrupts_;
    if (stage_ == Stage::CommandStarted && interrupts_ == 1 && sig != SIGHUP) {
        spdlog::info("forwarding {} to the command (again to stop the VM)", strsignal(sig));
        send_control("signal " + std::to_string(sig));
    } else if (!have_result_) {
        std::fprintf(stderr, "ocivm: %s: stopping the VM\n", strsignal(sig));
        result_ = 128 + sig;
        have_result_ = true;
        bye_sent_ = true;
        stop_vm();
    }
}

// Until QEMU exits: the command's stdio, the console, QMP, the control
// port, signals, the exec hub, and the start and stop deadlines. Returns
// QEMU's wait status.
int Run::event_loop(QemuProcess& qemu, int sfd, uint64_t deadline) {
    int qemu_status = 0;
    bool qemu_gone = false;
    bool& timed_out = timed_out_;
    char buf[65536];
    while (!qemu_gone) {
        uint64_t now = mono_ns();
        // run -d waits for the agent too: a guest whose agent never greets
        // is a failed start, diagnosed like one, not a caller waiting forever.
        bool waiting_agent = ready_ && command_started_ && !agent_ready_ && !have_result_;
        if ((stage_ < Stage::CommandStarted || waiting_agent) && !timed_out && now >= deadline) {
            timed_out = true;
            char why[160];
            if (waiting_agent && snap_ && restore_sent_ns_)
                std::snprintf(why, sizeof why,
                              "the restored guest did not answer its restore (no Hello with the epoch sent) within "
                              "%.0f s; stopping the VM",
                              o_.timeout_s);
            else if (waiting_agent)
                std::snprintf(why, sizeof why, "the guest's exec agent did not greet within %.0f s; stopping the VM",
                              o_.timeout_s);
            else
                std::snprintf(why, sizeof why, "the command did not start within %.0f s; stopping the VM", o_.timeout_s);
            command_started_ = false;  // run -d fails: the VM is not usable
            diagnose(why);
            result_ = 125;
            stop_vm();
        }
        if (stop_deadline_ && now >= stop_deadline_) {
            spdlog::info("QEMU did not exit in time; killing it");
            if (stopping_ && !have_result_) {
                have_result_ = true;
                result_ = 128 + SIGKILL;
                record_.exit_reason = "killed: the command did not stop in time";
            }
            qemu.kill_now();
            stop_deadline_ = 0;
        }
        std::vector<pollfd> pf = {
            {sfd, POLLIN, 0},      {console_.get(), POLLIN, 0}, {qmp_.fd(), POLLIN, 0},
            {out_.get(), POLLIN, 0},     {err_.get(), POLLIN, 0},     {control_.get(), POLLIN, 0},
            {forward_stdin_ && !stdin_eof_ && pending_in_.size() < (1 << 20) ? 0 : -1, POLLIN, 0},
            {in_ && !pending_in_.empty() && stage_ >= Stage::CommandStarted ? in_.get() : -1, POLLOUT, 0},
        };
        int wait_ms = 1000;
        hub_->tick();
        if ((stage_ < Stage::CommandStarted || waiting_agent) && !timed_out)
            wait_ms = static_cast<int>(std::min<uint64_t>(1000, (deadline - std::min(deadline, now)) / 1000000 + 1));
        hub_->add_pollfds(pf);
        int n = ::poll(pf.data(), pf.size(), wait_ms);
        if (n < 0 && errno != EINTR) throw_errno("poll", errno);
        if (n <= 0) {
            if (qemu.reap(&qemu_status)) qemu_gone = true;
            continue;
        }
        if (pf[0].revents & POLLIN) {
            signalfd_siginfo si;
            while (::read(sfd, &si, sizeof si) == sizeof si) {
                if (si.ssi_signo == SIGCHLD) {
                    if (qemu.reap(&qemu_status)) qemu_gone = true;
                } else {
                    on_signal(static_cast<int>(si.ssi_signo));
                }
            }
        }
        if (pf[1].revents & (POLLIN | POLLHUP)) {
            ssize_t r = ::read(console_.get(), buf, sizeof buf);
            if (r > 0) on_console(buf, static_cast<size_t>(r));
            else if (r == 0) console_.reset();
        }
        if (pf[2].revents & (POLLIN | POLLHUP)) qmp_.read_available();
        for (int k : {3, 4}) {
            if (!(pf[static_cast<size_t>(k)].revents & (POLLIN | POLLHUP))) continue;
            UniqueFd& src = k == 3 ? out_ : err_;
            ssize_t r = ::read(src.get(), buf, sizeof buf);
            if (r > 0) {
                write_out(k == 4, buf, static_cast<size_t>(r));
                (k == 3 ? got_out_ : got_err_) += static_cast<uint64_t>(r);
                maybe_bye();
            } else if (r == 0) {
                src.reset();
            }
        }
        if (pf[5].revents & (POLLIN | POLLHUP))
            read_lines(control_, control_buf_, [this](const std::string& line) { on_control_line(line); });
        if (pf[6].revents & (POLLIN | POLLHUP)) {
            ssize_t r = ::read(0, buf, sizeof buf);
            if (r > 0) pending_in_.append(buf, static_cast<size_t>(r));
            else if (r == 0 || errno != EINTR) stdin_eof_ = true;
        }
        if (in_ && !pending_in_.empty() && (pf[7].revents & POLLOUT)) {
            ssize_t w = ::write(in_.get(), pending_in_.data(), pending_in_.size());
            if (w > 0) pending_in_.erase(0, static_cast<size_t>(w));
        }
        // End of input: a half-close lets QEMU read everything before it sees
        // EOF (a full close would raise HUP and drop what it has not read),
        // and then the guest's port reads EOF.
        if (in_ && stdin_eof_ && pending_in_.empty() && !stdin_shut_) {
            ::shutdown(in_.get(), SHUT_WR);
            stdin_shut_ = true;
        }
        hub_->handle(pf);
        if (qemu.reap(&qemu_status)) qemu_gone = true;
    }
    return qemu_status;
}

void Run::finish_record(int code, const std::string& why) {
    record_.state = "exited";
    record_.finished = utc_now();
    record_.exit_code = code;
    if (record_.exit_reason.empty()) {
        record_.exit_reason = why;
        if (why.empty() && !command_started_) record_.exit_reason = "the command could not be started";
        else if (why.empty())
            record_.exit_reason = code > 128 && code < 160 ? "the command was killed by signal " + std::to_string(code - 128) +
                                                                 " (" + strsignal(code - 128) + ")"
                                                           : "the command exited";
    }
    save_record();
    maybe_ready(true);  // after any diagnosis: run -d returns when it is printed
}

}  // namespace

int run_machine(MachineOptions o) {
    ::signal(SIGPIPE, SIG_IGN);
    Run r(std::move(o));
    return r.go();
}

}  // namespace ocivm::vm
