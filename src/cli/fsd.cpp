// ocivm fsd: a drop-in for virtiofsd. Serves one directory to one VM over a
// vhost-user socket (QEMU's vhost-user-fs-pci) and exits when QEMU goes.
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <linux/capability.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <thread>

#include "cli/args.h"
#include "cli/commands.h"
#include "fuse/serve_config.h"
#include "fs/passthrough.h"
#include "fuse/server.h"
#include "transport/devfuse.h"
#include "transport/stream.h"
#include "trace/recorder.h"
#include "transport/vhost_user.h"
#include "sandbox/sandbox.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/io.h"
#include "util/process.h"
#include "util/log.h"

namespace ocivm::cli {

namespace {

const char kHelp[] = R"(Usage: ocivm fsd [OPTIONS] --shared-dir DIR (--socket-path PATH | --fd N)

A virtio-fs back end, drop-in for virtiofsd: serves DIR to one VM through
QEMU's vhost-user-fs-pci device, with ocivm's passthrough file system, and
exits 0 when QEMU disconnects. Start it first, then QEMU with:

  -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem
  -chardev socket,id=fs0,path=PATH
  -device vhost-user-fs-pci,chardev=fs0,tag=TAG

and in the guest: mount -t virtiofs TAG /mnt

Options:
      --socket-path PATH     listen on this Unix socket (removed once QEMU
                             connects)
      --fd N                 use the socket on fd N: a listening one (as
                             virtiofsd), or one already connected to the front
                             end
      --shared-dir DIR       the directory to share (required)
      --shared-dir-identity DEV:INO
                             DIR must be this directory (st_dev:st_ino): it is
                             then opened as given, with no symbolic link in any
                             component, and refused if it is another one (a
                             clone's share: the directory its snapshot recorded)
      --cache MODE           never | metadata | auto | always (default: auto);
                             see 'ocivm mount --help'
      --rlimit-nofile N      the file descriptor limit, which caps the files and
                             directories the guest can make fsd hold at once
                             (one descriptor each; past it LOOKUP fails with
                             EMFILE). Default: raised to the hard limit (as root
                             to fs.nr_open); 0 leaves the limit as it is
      --thread-pool-size N   worker threads (default: 8; 0: none) for requests
                             that may wait long (fsync, fallocate, syncfs) and
                             for requests queued behind one being served; a lone
                             quick request is served by its queue's thread
      --spin-us N            after serving, a vhost-user queue's thread watches
                             its ring for the next request for up to N
                             microseconds before it sleeps: no kick, no wakeup
                             for a guest that sends requests back to back. The
                             window adapts to how soon requests come, and
                             nobody watches while the host's CPUs are contended
                             (default: 200; 0 turns it off; not used by
                             --transport stream)
      --sandbox MODE         namespace (default): the server runs in new mount,
                             PID, network and IPC namespaces (and a user
                             namespace when not root) with DIR as its root
                             (pivot_root), a /proc of its own PID namespace,
                             only the capabilities a file server needs and
                             no_new_privs; none: no namespaces (debugging)
      --seccomp MODE         kill | log | none (default: kill): once serving,
                             allow only the system calls serving needs; anything
                             else stops fsd with a message naming the call
                             (kill) or is logged by the kernel (log)
      --readonly             refuse every change (EROFS)
      --writeback            the guest's kernel caches writes and sends them
                             later in large batches (FUSE writeback cache, as
                             virtiofsd's --writeback): much faster writes, but
                             the guest takes file sizes and mtimes from its own
                             cache, and changes made to DIR on the host while
                             the guest runs may be missed or overwritten. Only
                             for a directory nothing else writes to
                             (docs/filesystem.md, "Writeback cache"); needs
                             --cache auto or always
      --nodev                the guest cannot create device nodes (EPERM); the
                             server also gives up CAP_MKNOD
      --nosuid               no set-user/group-ID bits on files the guest
                             creates or changes; the server gives up CAP_FSETID
                             and CAP_SETFCAP
      --xattr-policy P       what the guest's security.* and trusted.* xattrs
                             become on the host: passthrough (default: as they
                             are), remap (stored as user.ocivm.security.* and
                             user.ocivm.trusted.*, shown back under their own
                             names; host names under user.ocivm. are hidden), or
                             refuse (EPERM)
      --override-stat        serve owners, modes and device numbers from the
                             user.containers.override_stat xattr (a store
                             imported without root)
      --trusted-xattrs       keep CAP_SYS_ADMIN, which reading and writing
                             trusted.* xattrs takes (seccomp still forbids
                             mounts); for a tree of your own that must be copied
                             whole
      --control-fd N         answer "stats" requests on the socket on fd N (used
                             by 'ocivm run', which reports them in its
                             diagnosis; with --transport stream also
                             "quiesce" and "resume" around a snapshot)
      --transport T          vhost-user (default: QEMU's vhost-user-fs device)
                             or stream: length-prefixed FUSE frames on the
                             socket (--fd), whose other end is a virtio-serial
                             port the guest's ocivm-init relays a FUSE mount
                             over (docs/vm.md, "Stream shares")
      --announce-submounts   tell the guest about mount points inside DIR so it
                             gives each its own device (no inode collisions)
      --xattr / --no-xattr   serve extended attributes (default) or refuse them
      --log-level LEVEL      trace | debug | info | warn | error (default: warn)
      --trace FILE           record every request as a JSON line in FILE (read
                             it with 'ocivm trace summary FILE'); a full buffer
                             drops records rather than slow the guest down

      --print-capabilities   print the JSON libvirt reads and exit
  -h, --help                 show this help

A guest looping on the same few requests (e.g. journald and systemd under
--cache never) is detected with or without --trace: one warning names the
pids, paths and opcodes and suggests a cache mode. What the sandbox stops,
and what it does not: docs/security.md.
)";

struct FsdOptions {
    std::string socket_path, shared_dir, cache = "auto", sandbox = "namespace",
                seccomp = "kill", log_level = "warn", trace, xattr_policy = "passthrough",
                transport = "vhost-user";
    int fd = -1, control_fd = -1;
    std::optional<unsigned long> fd_limit;  // --rlimit-nofile
    std::optional<std::pair<uint64_t, uint64_t>> identity;  // --shared-dir-identity
    unsigned thread_pool = 8;               // --thread-pool-size
    unsigned spin_us = transport::VhostUserOptions{}.spin_us;  // --spin-us
    static_assert(transport::VhostUserOptions{}.spin_us == 200, "fsd --help states the default of --spin-us");
    bool readonly = false, writeback = false, xattr = true, caps = false, help = false, submounts = false,
         nodev = false, nosuid = false, override_stat = false, trusted_xattrs = false;
};

int listen_unix(const std::string& path) {
    sockaddr_un addr{};
    if (path.size() >= sizeof addr.sun_path)
        throw Error("socket path " + path + " is too long (at most " +
                    std::to_string(sizeof addr.sun_path - 1) + " bytes)");
    struct stat st;
    if (::lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) throw Error(path + " exists and is not a socket; choose another --socket-path");
        ::unlink(path.c_str());  // a stale socket from an earlier run
    }
    int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) throw_errno("socket", errno);
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size());
    if (::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
        int e = errno;
        ::close(s);
        throw_errno("cannot listen on " + path, e, "check that its directory exists and is writable");
    }
    if (::listen(s, 1) < 0) throw_errno("listen on " + path, errno);
    return s;
}

// Accepts the front end on a listening socket; a connected socket (as
// `ocivm run` hands its share servers) is used as it is.
UniqueFd front_end(UniqueFd sock) {
    int listening = 0;
    socklen_t len = sizeof listening;
    if (::getsockopt(sock.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0)
        throw_errno("--fd " + std::to_string(sock.get()) + " is not a socket", errno,
                    "pass a listening (or connected) Unix socket");
    if (!listening) return sock;
    int conn;
    do conn = ::accept4(sock.get(), nullptr, nullptr, SOCK_CLOEXEC);
    while (conn < 0 && errno == EINTR);
    if (conn < 0) throw_errno("accepting the front end's connection", errno);
    return UniqueFd(conn);
}

// Waits for the front end on a socket file of fsd's own and removes the
// file once it is connected. A SIGINT, SIGTERM or SIGHUP meanwhile (a
// Ctrl-C before QEMU came, a service manager stopping fsd) removes the file
// too, and fsd then ends by that signal (its status says which): no path
// leaves the socket file behind. A signal the caller had ignored (a background job
// of a shell script) stays ignored.
UniqueFd accept_on_path(const std::string& path) {
    sigset_t watch, old;
    sigemptyset(&watch);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
        struct sigaction sa {};
        if (::sigaction(sig, nullptr, &sa) == 0 && sa.sa_handler != SIG_IGN) sigaddset(&watch, sig);
    }
    ::pthread_sigmask(SIG_BLOCK, &watch, &old);
    struct RestoreMask {
        sigset_t m;
        ~RestoreMask() { ::pthread_sigmask(SIG_SETMASK, &m, nullptr); }
    } restore{old};
    UniqueFd signals(::signalfd(-1, &watch, SFD_CLOEXEC));
    if (!signals) throw_errno("signalfd", errno);
    UniqueFd listener(listen_unix(path));
    spdlog::info("waiting for the front end on {}", path);
    for (;;) {
        pollfd p[2] = {{listener.get(), POLLIN, 0}, {signals.get(), POLLIN, 0}};
        if (::poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            ::unlink(path.c_str());
            throw_errno("waiting for the front end on " + path, e);
        }
        if (p[1].revents & POLLIN) {
            signalfd_siginfo si{};
            int sig = ::read(signals.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si)
                          ? static_cast<int>(si.ssi_signo) : SIGTERM;
            ::unlink(path.c_str());
            spdlog::info("signal {} before the front end connected: {} removed", sig, path);
            spdlog::default_logger()->flush();
            ::signal(sig, SIG_DFL);
            ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
            ::raise(sig);
            ::_exit(128 + sig);  // not reached: sig is unblocked with its default action
        }
        if (p[0].revents & (POLLIN | POLLERR | POLLHUP)) {
            int conn = ::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
            if (conn < 0) {
                if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED) continue;
                int e = errno;
                ::unlink(path.c_str());
                throw_errno("accepting the front end's connection", e);
            }
            // Nothing is left behind: the socket goes as soon as QEMU is connected.
            ::unlink(path.c_str());
            return UniqueFd(conn);
        }
    }
}

// `ocivm run` asks its share servers for their statistics over this socket
// (the servers are separate, confined processes): "stats" is answered with
// the request count, the last 10 s of requests and the livelock verdict.
// A stream server also takes "quiesce" (answered "quiet" once no reply is
// left on its way to the guest, or "busy") and "resume"; a supervisor that
// goes away while it is quiesced resumes it.
void serve_control(int fd, const trace::Recorder& recorder, const std::function<uint64_t()>& requests,
                   transport::StreamSession* stream) {
    struct ResumeAtEnd {
        transport::StreamSession* s;
        ~ResumeAtEnd() {
            if (s) s->resume();
        }
    } resume_at_end{stream};
    std::string pending;
    char buf[256];
    for (;;) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        pending.append(buf, static_cast<size_t>(n));
        if (pending.size() > 4096) return;  // not a command we would ever send
        size_t nl;
        while ((nl = pending.find('\n')) != std::string::npos) {
            std::string cmd = pending.substr(0, nl);
            pending.erase(0, nl + 1);
            bool quiesce = cmd == "quiesce" || cmd.rfind("quiesce ", 0) == 0;
            if (stream && (quiesce || cmd == "resume")) {
                // "quiesce MS": how long the guest has to pause (default 5 s).
                int ms = 5000;
                if (cmd.size() > 8) ms = static_cast<int>(std::min(60000ul, std::strtoul(cmd.c_str() + 8, nullptr, 10)));
                std::string ans = cmd == "resume" ? (stream->resume(), "resumed\n")
                                                  : stream->quiesce(ms) ? "quiet\n" : "busy\n";
                if (!write_all(fd, ans.data(), ans.size())) return;
                continue;
            }
            if (cmd != "stats") continue;
            uint64_t now = mono_ns();
            const auto& det = recorder.detector();
            // Paths and names in the summary are the guest's: no control
            // character (a newline above all) reaches the supervisor's
            // parser or its terminal.
            auto clean = [](std::string s) {
                for (char& c : s)
                    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
                return s;
            };
            std::string out = "requests " + std::to_string(requests()) + "\n";
            for (auto& l : det.window_summary(now, 10)) out += "summary " + clean(l) + "\n";
            auto v = det.verdict();
            out += std::string("verdict ") + (v.livelock ? "1 " : "0 ") + clean(v.message) + "\n";
            out += "end\n";
            if (!write_all(fd, out.data(), out.size())) return;
        }
    }
}

}  // namespace

int cmd_fsd(int argc, char** argv) {
    FsdOptions o;
    std::vector<Option> opts = {
        {"socket-path", 0, true, [&](const std::string& v) { o.socket_path = v; }},
        {"fd", 0, true, [&](const std::string& v) { o.fd = static_cast<int>(parse_count("--fd", v, 1 << 20)); }},
        {"control-fd", 0, true, [&](const std::string& v) { o.control_fd = static_cast<int>(parse_count("--control-fd", v, 1 << 20)); }},
        {"nodev", 0, false, [&](const std::string&) { o.nodev = true; }},
        {"nosuid", 0, false, [&](const std::string&) { o.nosuid = true; }},
        {"override-stat", 0, false, [&](const std::string&) { o.override_stat = true; }},
        {"trusted-xattrs", 0, false, [&](const std::string&) { o.trusted_xattrs = true; }},
        {"xattr-policy", 0, true, [&](const std::string& v) { o.xattr_policy = v; }},
        {"shared-dir", 0, true, [&](const std::string& v) { o.shared_dir = v; }},
        {"shared-dir-identity", 0, true, [&](const std::string& v) {
             unsigned long long dev = 0, ino = 0;
             char end = 0;
             if (std::sscanf(v.c_str(), "%llu:%llu%c", &dev, &ino, &end) != 2)
                 throw UsageError{"invalid --shared-dir-identity '" + v + "': use DEV:INO (decimal st_dev and st_ino)"};
             o.identity.emplace(dev, ino);
         }},
        {"cache", 0, true, [&](const std::string& v) { o.cache = v; }},
        {"rlimit-nofile", 0, true, [&](const std::string& v) {
             o.fd_limit = parse_count_or_zero("--rlimit-nofile", v, 1u << 30);
         }},
        {"thread-pool-size", 0, true, [&](const std::string& v) {
             // virtiofsd takes up to 1024; more than kMaxPoolThreads buys nothing here.
             o.thread_pool = parse_count_or_zero("--thread-pool-size", v, 1024);
             if (o.thread_pool > transport::kMaxPoolThreads) {
                 spdlog::warn("--thread-pool-size {}: using {} worker threads, the most fsd starts", o.thread_pool,
                              transport::kMaxPoolThreads);
                 o.thread_pool = transport::kMaxPoolThreads;
             } }},
        {"spin-us", 0, true, [&](const std::string& v) {
             o.spin_us = parse_count_or_zero("--spin-us", v, transport::SpinWindow::kMaxSettableUs);
         }},
        {"sandbox", 0, true, [&](const std::string& v) { o.sandbox = v; }},
        {"seccomp", 0, true, [&](const std::string& v) { o.seccomp = v; }},
        {"readonly", 0, false, [&](const std::string&) { o.readonly = true; }},
        {"writeback", 0, false, [&](const std::string&) { o.writeback = true; }},
        {"announce-submounts", 0, false, [&](const std::string&) { o.submounts = true; }},
        {"xattr", 0, false, [&](const std::string&) { o.xattr = true; }},
        {"no-xattr", 0, false, [&](const std::string&) { o.xattr = false; }},
        {"log-level", 0, true, [&](const std::string& v) { o.log_level = v; }},
        {"trace", 0, true, [&](const std::string& v) { o.trace = v; }},
        {"transport", 0, true, [&](const std::string& v) { o.transport = v; }},
        {"print-capabilities", 0, false, [&](const std::string&) { o.caps = true; }},
    };
    auto pos = parse_args("fsd", argc, argv, 2, opts, &o.help);
    if (o.help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    if (o.caps) {
        std::puts("{\n  \"type\": \"fs\",\n  \"features\": []\n}");
        return 0;
    }
    setup_logging(o.log_level);
    // A server's log is a file a guest can make it write to (servers.log of
    // a detached VM): capped.
    cap_log_file(kServerLogCap);
    if (!pos.empty()) throw UsageError{"unexpected argument '" + pos[0] + "'; see 'ocivm fsd --help'"};
    fs::CacheMode mode;
    if (!fs::parse_cache_mode(o.cache, mode))
        throw UsageError{"invalid --cache '" + o.cache + "': use never, metadata, auto or always"};
    if (o.writeback) {
        if (auto why = fuse::writeback_refusal(mode, o.readonly); !why.empty()) throw UsageError{"--writeback: " + why};
    }
    if (o.sandbox != "namespace" && o.sandbox != "chroot" && o.sandbox != "none")
        throw UsageError{"invalid --sandbox '" + o.sandbox + "': use namespace, chroot or none"};
    if (o.sandbox == "chroot")  // the namespace sandbox is a pivot_root into DIR, which is stronger
        throw UsageError{"--sandbox chroot is not supported; use namespace (a pivot_root into DIR) or none"};
    fs::XattrPolicy xattr_policy;
    if (!fs::parse_xattr_policy(o.xattr_policy, xattr_policy))
        throw UsageError{"invalid --xattr-policy '" + o.xattr_policy + "': use passthrough, remap or refuse"};
    sandbox::SeccompMode seccomp;
    if (!sandbox::parse_seccomp_mode(o.seccomp, seccomp))
        throw UsageError{"invalid --seccomp '" + o.seccomp + "': use kill, log or none"};
    if (o.shared_dir.empty()) throw UsageError{"'ocivm fsd' needs --shared-dir DIR"};
    if (o.transport != "vhost-user" && o.transport != "stream")
        throw UsageError{"invalid --transport '" + o.transport + "': use vhost-user or stream"};
    bool stream = o.transport == "stream";
    if ((o.socket_path.empty()) == (o.fd < 0))
        throw UsageError{"'ocivm fsd' needs exactly one of --socket-path PATH and --fd N"};
    // Nothing inherited by accident reaches the server (a directory fd
    // would be a way out of the share after the pivot).
    close_fds_except({o.fd, o.control_fd});
    struct stat st;
    if (::stat(o.shared_dir.c_str(), &st) < 0 || !S_ISDIR(st.st_mode))
        throw Error("shared directory " + o.shared_dir + " is not an existing directory");
    char real[PATH_MAX];
    if (o.identity) {
        // Not resolved: the path as given, and no symbolic link on the way
        // (open_share), must be the directory recorded.
        if (o.shared_dir.size() >= sizeof real || o.shared_dir[0] != '/')
            throw UsageError{"--shared-dir-identity needs an absolute --shared-dir"};
        std::snprintf(real, sizeof real, "%s", o.shared_dir.c_str());
    } else if (!::realpath(o.shared_dir.c_str(), real)) {
        throw_errno("resolving " + o.shared_dir, errno);
    }
    // Opened once; everything below works from this fd.
    UniqueFd share = sandbox::open_share(real);
    if (o.identity) {
        struct stat got;
        if (::fstat(share.get(), &got) < 0) throw_errno("fstat of " + std::string(real), errno);
        if (static_cast<uint64_t>(got.st_dev) != o.identity->first ||
            static_cast<uint64_t>(got.st_ino) != o.identity->second)
            throw Error("shared directory " + std::string(real) + " is not the directory it must be (device:inode " +
                        std::to_string(got.st_dev) + ":" + std::to_string(got.st_ino) + ", not " +
                        std::to_string(o.identity->first) + ":" + std::to_string(o.identity->second) +
                        "): it was replaced; refusing to serve it");
    }

    ::signal(SIGPIPE, SIG_IGN);
    transport::set_fd_limit(o.fd_limit);
    UniqueFd sock;
    if (o.fd >= 0) {
        spdlog::info("waiting for the front end on fd {}", o.fd);
        sock = front_end(UniqueFd(o.fd));
    } else {
        sock = accept_on_path(o.socket_path);
    }
    UniqueFd control(o.control_fd);

    // From here on the server is a process of its own in new namespaces
    // (the keeper that forked it waits outside); everything it needs from
    // the host is opened before the pivot_root into the share.
    // Read through an fd opened here: the sandbox's /proc (subset=pid) has
    // neither /proc/pressure nor /proc/loadavg.
    transport::HostLoad host_load;
    UniqueFd root;
    if (o.sandbox == "namespace") {
        sandbox::enter_namespaces("ocivm fsd");
        root = sandbox::bind_root(share.get(), real, o.readonly);
    }
    std::unique_ptr<trace::Recorder> recorder;
    try {
        trace::LivelockDetector::Options lo;
        lo.cache_hint = mode == fs::CacheMode::Never ? "metadata" : "always";
        recorder = std::make_unique<trace::Recorder>(o.trace, lo);
    } catch (const std::runtime_error& e) {
        throw Error(e.what());
    }
    auto cfg = fuse::serve_config("/proc/self/fd/" + std::to_string(root ? root.get() : share.get()), mode,
                                  o.readonly, o.xattr, o.submounts, o.writeback);
    cfg.fs.override_stat = o.override_stat;
    cfg.fs.proc_fd_cwd = o.sandbox == "namespace";
    cfg.fs.switch_credentials = fs::prepare_server_process();
    cfg.fs.nodev = o.nodev;
    cfg.fs.nosuid = o.nosuid;
    cfg.fs.xattr_policy = xattr_policy;
    fs::Passthrough passthrough(cfg.fs);
    if (root) {
        sandbox::pivot_into(root.get(), /*cwd_proc_fd=*/true);
        root.reset();
        share.reset();
    }
    auto caps = sandbox::file_server_caps(o.readonly, o.nodev, o.nosuid);
    if (o.trusted_xattrs) caps.push_back(CAP_SYS_ADMIN);
    sandbox::drop_privileges(caps);
    fuse::Server server(passthrough, cfg.protocol, recorder.get());

    transport::VhostUserOptions vo;
    vo.thread_pool_size = o.thread_pool;
    vo.spin_us = o.spin_us;
    vo.load = &host_load;
    std::optional<transport::VhostUserBackend> backend;
    std::optional<transport::StreamSession> session;
    if (stream) session.emplace(server);
    else backend.emplace(server, vo);
    std::function<uint64_t()> requests = [&] {
        return stream ? session->stats().requests.load() : backend->stats().requests.load();
    };
    std::thread control_thread;
    if (control) {
        control_thread = std::thread([fd = control.get(), &recorder, &requests, s = stream ? &*session : nullptr] {
            serve_control(fd, *recorder, requests, s);
        });
    }
    struct JoinControl {
        std::thread& t;
        int fd;
        ~JoinControl() {
            if (!t.joinable()) return;
            ::shutdown(fd, SHUT_RDWR);  // its read() returns, it ends
            t.join();
        }
    } join_control{control_thread, control.get()};
    // Everything that needs more than the allow-list is set up by now.
    sandbox::install_seccomp(seccomp, sandbox::SeccompProfile::FileServer, "ocivm fsd");
    if (stream) {
        int rc = session->serve(sock.get());
        spdlog::info("served {} requests over the stream ({} attaches, {} bytes of earlier sessions discarded)",
                     session->stats().requests.load(), session->stats().attaches.load(),
                     session->stats().discarded_bytes.load());
        recorder->flush();
        if (recorder->dropped()) spdlog::warn("trace: {} records dropped (buffer full)", recorder->dropped());
        return rc == 0 ? 0 : 1;
    }
    int rc = backend->serve(sock.get());
    spdlog::info("served {} requests ({} by the worker pool); {} bad descriptor chains; {} interrupts sent again "
                 "to a guest that had missed one",
                 backend->stats().requests.load(), backend->stats().pooled.load(), backend->stats().bad_chains.load(),
                 backend->stats().renotified.load());
    for (const auto& l : backend->poll_lines()) spdlog::info("polling (host load from {}), {}", host_load.source(), l);
    for (const auto& l : backend->poll_lines(true)) recorder->note(l);
    recorder->flush();
    if (recorder->dropped())
        spdlog::warn("trace: {} records dropped (buffer full)", recorder->dropped());
    return rc == 0 ? 0 : 1;
}

}  // namespace ocivm::cli
