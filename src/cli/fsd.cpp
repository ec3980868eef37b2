// ocivm fsd: a drop-in for virtiofsd. Serves one directory to one VM over a
// vhost-user socket (QEMU's vhost-user-fs-pci) and exits when QEMU goes.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "cli/args.h"
#include "cli/commands.h"
#include "fuse/serve_config.h"
#include "fs/passthrough.h"
#include "fuse/server.h"
#include "transport/devfuse.h"
#include "trace/recorder.h"
#include "transport/seccomp_filter.h"
#include "transport/vhost_user.h"
#include "util/error.h"
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
      --socket-path PATH     listen on this Unix socket (removed once QEMU connects)
      --fd N                 use the already-listening socket on fd N
      --shared-dir DIR       the directory to share (required)
      --cache MODE           never | metadata | auto | always (default: auto);
                             see 'ocivm mount --help'
      --thread-pool-size N   accepted for virtiofsd compatibility; each queue
                             has its own thread
      --sandbox MODE         namespace (default): a new mount namespace in which
                             only DIR (and /proc) is visible; chroot: chroot
                             into DIR; none: no sandbox
      --seccomp MODE         kill | log | none (default: none): after set-up, allow
                             only the system calls serving needs; anything else
                             kills fsd (kill) or is logged by the kernel (log)
      --readonly             refuse every change (EROFS)
      --announce-submounts   tell the guest about mount points inside DIR so it
                             gives each its own device (no inode collisions)
      --xattr / --no-xattr   serve extended attributes (default) or refuse them
      --log-level LEVEL      trace | debug | info | warn | error (default: warn)
      --trace FILE           record every request as a JSON line in FILE (read it
                             with 'ocivm trace summary FILE'); a full buffer drops
                             records rather than slow the guest down

A guest looping on the same few requests (e.g. journald and systemd under
--cache never) is detected with or without --trace: one warning names the
pids, paths and opcodes and suggests a cache mode.
      --print-capabilities   print the JSON libvirt reads and exit
  -h, --help                 show this help
)";

struct FsdOptions {
    std::string socket_path, shared_dir, cache = "auto", sandbox = "namespace",
                seccomp = "none", log_level = "warn", trace;
    int fd = -1;
    bool readonly = false, xattr = true, caps = false, help = false, submounts = false;
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

// A new mount namespace whose root holds only the share (at /share) and
// /proc (the server reopens nodes through /proc/self/fd).
std::string enter_namespace_sandbox(const std::string& dir) {
    if (::unshare(CLONE_NEWNS) < 0)
        throw_errno("cannot create a mount namespace for the sandbox", errno,
                    "run as root, or use --sandbox none");
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_SLAVE, nullptr) < 0)
        throw_errno("sandbox: making / a slave mount", errno);
    // The share is reached through an fd: the tmpfs root may hide its path.
    UniqueFd share(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!share) throw_errno("sandbox: opening " + dir, errno);
    std::string share_path = "/proc/self/fd/" + std::to_string(share.get());
    const char* root = "/tmp";
    if (::mount("ocivm-sandbox", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k") < 0)
        throw_errno("sandbox: mounting a tmpfs root", errno);
    std::string r = root;
    for (auto* d : {"/share", "/proc", "/old"})
        if (::mkdir((r + d).c_str(), 0755) < 0) throw_errno("sandbox: mkdir " + r + d, errno);
    if (::mount(share_path.c_str(), (r + "/share").c_str(), nullptr, MS_BIND | MS_REC, nullptr) < 0)
        throw_errno("sandbox: bind-mounting " + dir, errno);
    if (::mount("proc", (r + "/proc").c_str(), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) < 0)
        throw_errno("sandbox: mounting /proc", errno);
    if (::syscall(SYS_pivot_root, root, (r + "/old").c_str()) < 0)
        throw_errno("sandbox: pivot_root", errno);
    if (::chdir("/") < 0) throw_errno("sandbox: chdir /", errno);
    if (::umount2("/old", MNT_DETACH) < 0) throw_errno("sandbox: detaching the old root", errno);
    ::rmdir("/old");
    ::mount(nullptr, "/", nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr);
    return "/share";
}

}  // namespace

int cmd_fsd(int argc, char** argv) {
    FsdOptions o;
    std::vector<Option> opts = {
        {"socket-path", 0, true, [&](const std::string& v) { o.socket_path = v; }},
        {"fd", 0, true, [&](const std::string& v) { o.fd = static_cast<int>(parse_count("--fd", v, 1 << 20)); }},
        {"shared-dir", 0, true, [&](const std::string& v) { o.shared_dir = v; }},
        {"cache", 0, true, [&](const std::string& v) { o.cache = v; }},
        {"thread-pool-size", 0, true, [&](const std::string& v) { if (v != "0") parse_count("--thread-pool-size", v, 1024); }},
        {"sandbox", 0, true, [&](const std::string& v) { o.sandbox = v; }},
        {"seccomp", 0, true, [&](const std::string& v) { o.seccomp = v; }},
        {"readonly", 0, false, [&](const std::string&) { o.readonly = true; }},
        {"announce-submounts", 0, false, [&](const std::string&) { o.submounts = true; }},
        {"xattr", 0, false, [&](const std::string&) { o.xattr = true; }},
        {"no-xattr", 0, false, [&](const std::string&) { o.xattr = false; }},
        {"log-level", 0, true, [&](const std::string& v) { o.log_level = v; }},
        {"trace", 0, true, [&](const std::string& v) { o.trace = v; }},
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
    if (!pos.empty()) throw UsageError{"unexpected argument '" + pos[0] + "'; see 'ocivm fsd --help'"};
    fs::CacheMode mode;
    if (!fs::parse_cache_mode(o.cache, mode))
        throw UsageError{"invalid --cache '" + o.cache + "': use never, metadata, auto or always"};
    if (o.sandbox != "namespace" && o.sandbox != "chroot" && o.sandbox != "none")
        throw UsageError{"invalid --sandbox '" + o.sandbox + "': use namespace, chroot or none"};
    if (o.sandbox == "chroot")  // /proc must stay reachable: nodes are reopened through it
        throw UsageError{"--sandbox chroot is not supported (the server needs /proc); use namespace or none"};
    transport::SeccompAction seccomp;
    if (!transport::parse_seccomp_action(o.seccomp, seccomp))
        throw UsageError{"invalid --seccomp '" + o.seccomp + "': use kill, log or none"};
    if (o.shared_dir.empty()) throw UsageError{"'ocivm fsd' needs --shared-dir DIR"};
    if ((o.socket_path.empty()) == (o.fd < 0))
        throw UsageError{"'ocivm fsd' needs exactly one of --socket-path PATH and --fd N"};
    struct stat st;
    if (::stat(o.shared_dir.c_str(), &st) < 0 || !S_ISDIR(st.st_mode))
        throw Error("shared directory " + o.shared_dir + " is not an existing directory");
    char real[PATH_MAX];
    if (!::realpath(o.shared_dir.c_str(), real)) throw_errno("resolving " + o.shared_dir, errno);

    // Die with the parent that started us when it asks for it (ocivm run);
    // QEMU's disconnect ends us otherwise.
    ::signal(SIGPIPE, SIG_IGN);
    transport::raise_fd_limit();
    UniqueFd listener(o.fd >= 0 ? o.fd : listen_unix(o.socket_path));
    // Opened before the sandbox hides the host's paths.
    std::unique_ptr<trace::Recorder> recorder;
    try {
        trace::LivelockDetector::Options lo;
        lo.cache_hint = mode == fs::CacheMode::Never ? "metadata" : "always";
        recorder = std::make_unique<trace::Recorder>(o.trace, lo);
    } catch (const std::runtime_error& e) {
        throw Error(e.what());
    }

    spdlog::info("waiting for the front end on {}", o.socket_path.empty() ? "fd " + std::to_string(o.fd) : o.socket_path);
    int conn;
    do conn = ::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC);
    while (conn < 0 && errno == EINTR);
    if (conn < 0) throw_errno("accepting the front end's connection", errno);
    UniqueFd sock(conn);
    listener.reset();
    // Nothing is left behind: the socket goes as soon as QEMU is connected.
    if (!o.socket_path.empty()) ::unlink(o.socket_path.c_str());

    std::string source = real;
    if (o.sandbox == "namespace") {
        source = enter_namespace_sandbox(real);
    }

    auto cfg = fuse::serve_config(source, mode, o.readonly, o.xattr, o.submounts);
    cfg.fs.switch_credentials = fs::prepare_server_process();
    fs::Passthrough passthrough(cfg.fs);
    fuse::Server server(passthrough, cfg.protocol, recorder.get());

    transport::VhostUserBackend backend(server, {});
    // Everything that needs more than the allow-list is set up by now.
    transport::install_seccomp_filter(seccomp);
    int rc = backend.serve(sock.get());
    spdlog::info("served {} requests; {} bad descriptor chains; {} interrupts sent again to a guest that had missed one",
                 backend.stats().requests.load(), backend.stats().bad_chains.load(), backend.stats().renotified.load());
    recorder->flush();
    if (recorder->dropped())
        spdlog::warn("trace: {} records dropped (buffer full)", recorder->dropped());
    return rc == 0 ? 0 : 1;
}

}  // namespace ocivm::cli
