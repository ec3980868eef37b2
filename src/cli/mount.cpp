// ocivm mount: serve a host directory through /dev/fuse until unmounted.
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <thread>

#include "cli/args.h"
#include "cli/commands.h"
#include "fuse/serve_config.h"
#include "fs/passthrough.h"
#include "fuse/server.h"
#include "transport/devfuse.h"
#include "util/error.h"
#include "util/log.h"
#include "sandbox/sandbox.h"
#include "util/mountinfo.h"
#include "util/process.h"

namespace ocivm::cli {

namespace {

const char kHelp[] = R"(Usage: ocivm mount [OPTIONS] SOURCE MOUNTPOINT

Serves the host directory SOURCE at MOUNTPOINT through /dev/fuse with ocivm's
passthrough file system, in the foreground, until MOUNTPOINT is unmounted
(umount, fusermount3 -u) or ocivm gets SIGINT/SIGTERM, which unmount it.

Files keep their real owners and modes; every user of the mount gets the
permission checks of a local file system. Nothing outside SOURCE is
reachable through the mount.

Options:
      --cache MODE       never | metadata | auto | always (default: auto)
                           never     no caching: every access asks the server
                           metadata  names and attributes cached 1 day, data not
                           auto      1 s timeouts, page cache dropped when a
                                     file's mtime or size changes
                           always    everything cached 1 day (best when only
                                     the mount changes SOURCE)
      --threads N        worker threads serving requests (default: 2)
      --spin-us N        after each request, one thread keeps polling for the
                         next one for up to N microseconds before sleeping:
                         fewer wakeups for a busy client. The window adapts
                         to how soon requests come, and nobody polls while
                         the host's CPUs are contended (default: 50; 0 turns
                         it off)
      --readonly         refuse every change (EROFS)
      --writeback        the kernel caches writes and sends them later in large
                         batches (FUSE writeback cache): much faster writes, but
                         the sizes and mtimes of files come from the mount's own
                         cache, and changes made to SOURCE other than through
                         the mount may be missed or overwritten. Only for a
                         directory nothing else writes to while it is mounted
                         (docs/filesystem.md, "Writeback cache"); needs --cache
                         auto or always
      --rlimit-nofile N  the server's file descriptor limit, which caps the
                         files and directories the kernel can make it hold at
                         once (one descriptor each; past it LOOKUP fails with
                         EMFILE). Default: raised to the hard limit (as root to
                         fs.nr_open); 0 leaves the limit as it is
      --no-xattr         refuse extended attributes (EOPNOTSUPP)
      --sandbox MODE     namespace (default): the server is a process of its own
                         in new mount, PID, network and IPC namespaces (a user
                         namespace too when not root), with SOURCE as its root
                         (pivot_root), only the capabilities a file server needs
                         and no_new_privs; this process keeps the mount and
                         unmounts it on a signal. none: serve from this process,
                         with no sandbox and no seccomp (debugging)
      --seccomp MODE     kill | log | none (default: kill): the server may make
                         only the system calls serving needs; another one stops
                         it with a message naming the call (kill) or is logged
                         by the kernel (log)
      --log-level LEVEL  trace | debug | info | warn | error (default: warn)
  -h, --help             show this help

As root ocivm mounts with mount(2); as a user through fusermount3 (fuse3).

Examples:
  ocivm mount /srv/rootfs /mnt/rootfs --cache always &
  ls /mnt/rootfs
  umount /mnt/rootfs
)";

std::string abs_path(const std::string& p) {
    char buf[PATH_MAX];
    if (!::realpath(p.c_str(), buf)) return p;
    return buf;
}

}  // namespace

int cmd_mount(int argc, char** argv) {
    std::string cache = "auto", log_level = "warn";
    unsigned threads = 2, spin_us = 50;
    bool readonly = false, no_xattr = false, writeback = false, help = false;
    std::string sandbox_mode = "namespace", seccomp_mode = "kill";
    std::optional<unsigned long> fd_limit;
    std::vector<Option> opts = {
        {"rlimit-nofile", 0, true, [&](const std::string& v) {
             fd_limit = parse_count_or_zero("--rlimit-nofile", v, 1u << 30);
         }},
        {"cache", 0, true, [&](const std::string& v) { cache = v; }},
        {"threads", 0, true, [&](const std::string& v) { threads = parse_count("--threads", v, 256); }},
        {"spin-us", 0, true, [&](const std::string& v) {
             spin_us = parse_count_or_zero("--spin-us", v, transport::SpinWindow::kMaxSettableUs);
         }},
        {"readonly", 0, false, [&](const std::string&) { readonly = true; }},
        {"writeback", 0, false, [&](const std::string&) { writeback = true; }},
        {"no-xattr", 0, false, [&](const std::string&) { no_xattr = true; }},
        {"log-level", 0, true, [&](const std::string& v) { log_level = v; }},
        {"sandbox", 0, true, [&](const std::string& v) { sandbox_mode = v; }},
        {"seccomp", 0, true, [&](const std::string& v) { seccomp_mode = v; }},
    };
    auto pos = parse_args("mount", argc, argv, 2, opts, &help);
    if (help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    setup_logging(log_level);
    fs::CacheMode mode;
    if (!fs::parse_cache_mode(cache, mode))
        throw UsageError{"invalid --cache '" + cache + "': use never, metadata, auto or always"};
    if (writeback) {
        if (auto why = fuse::writeback_refusal(mode, readonly); !why.empty()) throw UsageError{"--writeback: " + why};
    }
    if (sandbox_mode != "namespace" && sandbox_mode != "none")
        throw UsageError{"invalid --sandbox '" + sandbox_mode + "': use namespace or none"};
    sandbox::SeccompMode seccomp;
    if (!sandbox::parse_seccomp_mode(seccomp_mode, seccomp))
        throw UsageError{"invalid --seccomp '" + seccomp_mode + "': use kill, log or none"};
    if (pos.size() != 2)
        throw UsageError{"'ocivm mount' needs SOURCE and MOUNTPOINT; see 'ocivm mount --help'"};

    close_fds_except({});  // nothing inherited by accident reaches the server
    struct stat st;
    const std::string& source = pos[0];
    if (::stat(source.c_str(), &st) < 0)
        throw Error("source directory " + source + " does not exist (" + std::strerror(errno) + ")");
    if (!S_ISDIR(st.st_mode)) throw Error("source " + source + " is not a directory; give a directory to share");
    if (::stat(pos[1].c_str(), &st) < 0)
        throw Error("mount point " + pos[1] + " does not exist; create it with 'mkdir -p " + pos[1] + "'");
    if (!S_ISDIR(st.st_mode)) throw Error("mount point " + pos[1] + " is not a directory");
    std::string mountpoint = abs_path(pos[1]);
    if (auto m = find_mount(mountpoint))
        throw Error("mount point " + mountpoint + " is busy: a " + m->fs_type +
                    " file system is mounted there; unmount it first or choose another directory");
    if (::access("/dev/fuse", F_OK) < 0)
        throw Error("no /dev/fuse on this machine; load the fuse module with 'modprobe fuse'");

    // Opened once; the server works from this fd (nobody who can change a
    // parent of SOURCE can swap another directory in after the checks).
    UniqueFd share = sandbox::open_share(abs_path(source));
    transport::set_fd_limit(fd_limit);
    transport::DevFuseOptions dopts;
    dopts.fsname = "ocivm:" + abs_path(source);
    dopts.mountpoint = mountpoint;
    dopts.threads = threads;
    dopts.readonly = readonly;
    dopts.spin_us = spin_us;
    // Opened here, before the server's sandbox, whose /proc (subset=pid)
    // has no /proc/pressure (docs/filesystem.md, "Polling and threads").
    transport::HostLoad host_load;
    dopts.load = &host_load;
    auto cfg = fuse::serve_config("/proc/self/fd/" + std::to_string(share.get()), mode, readonly, !no_xattr, false,
                                  writeback);

    // Signals are taken by sigwait; workers never see them.
    sigset_t set;
    sigemptyset(&set);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGCHLD}) sigaddset(&set, s);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);

    transport::FuseMount mnt(dopts);
    spdlog::info("serving {} on {} (cache={}{}, threads={}{}, sandbox={})", abs_path(source), mountpoint, cache,
                 writeback ? ", writeback" : "", threads, readonly ? ", read-only" : "", sandbox_mode);

    if (sandbox_mode == "none") {
        cfg.fs.switch_credentials = fs::prepare_server_process();
        fs::Passthrough passthrough(cfg.fs);
        fuse::Server server(passthrough, cfg.protocol);
        transport::DevFuseSession session(server, mnt.take_fd(), dopts);
        // No seccomp here: this process also unmounts (umount2, fusermount3),
        // which the file server's allow-list rightly forbids. --sandbox none
        // is for debugging; the confined server is the default.
        (void)seccomp;
        std::thread signals([&] {
            int sig = 0;
            sigwait(&set, &sig);
            while (sig == SIGCHLD) sigwait(&set, &sig);
            if (sig != SIGUSR1) {
                spdlog::info("signal {}: unmounting {}", sig, mountpoint);
                mnt.stop();
            }
        });
        session.run();
        pthread_kill(signals.native_handle(), SIGUSR1);
        signals.join();
        spdlog::info("{} unmounted", mountpoint);
        return 0;
    }

    // The server is a process of its own, confined like `ocivm fsd`'s; this
    // one keeps the mount (in the host's mount namespace) and unmounts it
    // on a signal, which ends the server.
    pid_t parent = ::getpid();
    pid_t pid = ::fork();
    if (pid < 0) throw_errno("cannot fork the file-system server", errno);
    if (pid == 0) {
        mnt.disown();
        // The server's keeper goes with this process, whatever kills it.
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(125);
        // A process group of its own: a terminal's Ctrl-C is the parent's
        // to handle (it unmounts, and the server ends with the mount). In
        // the parent's group the keeper would get it too, kill the server
        // (SIGKILL) and die so, which the parent reports as a failed server
        // ("stopped (exit 137)", exit 125) after a clean Ctrl-C. No stop
        // on writing an error to the terminal from that group (tostop).
        ::setpgid(0, 0);
        ::signal(SIGTTOU, SIG_IGN);
        try {
            UniqueFd fd = mnt.take_fd();
            sandbox::enter_namespaces("ocivm mount");
            UniqueFd root = sandbox::bind_root(share.get(), abs_path(source), readonly);
            cfg.fs.source = "/proc/self/fd/" + std::to_string(root.get());
            cfg.fs.proc_fd_cwd = true;
            cfg.fs.switch_credentials = fs::prepare_server_process();
            fs::Passthrough passthrough(cfg.fs);
            fuse::Server server(passthrough, cfg.protocol);
            transport::DevFuseSession session(server, std::move(fd), dopts);
            sandbox::pivot_into(root.get(), /*cwd_proc_fd=*/true);
            root.reset();
            share.reset();
            sandbox::drop_privileges(sandbox::file_server_caps(readonly, false, false));
            sandbox::install_seccomp(seccomp, sandbox::SeccompProfile::FileServer, "ocivm mount");
            session.run();
        } catch (const std::exception& e) {
            std::fprintf(stderr, "ocivm: error: %s\n", e.what());
            ::_exit(125);
        }
        ::_exit(0);
    }
    ::setpgid(pid, pid);  // as the child does: whichever runs first
    mnt.take_fd();  // the server holds the connection now; ours would keep it alive
    share.reset();
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        if (sig == SIGCHLD) {
            int st = 0;
            pid_t r = ::waitpid(pid, &st, WNOHANG);
            if (r == pid) {
                mnt.stop();  // a server that died leaves no dead mount behind
                int code = exit_code(st);
                if (code == 0) spdlog::info("{} unmounted", mountpoint);
                else std::fprintf(stderr, "ocivm: error: the file-system server for %s stopped (exit %d); %s unmounted\n",
                                  abs_path(source).c_str(), code, mountpoint.c_str());
                return code == 0 ? 0 : 125;
            }
        } else if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
            spdlog::info("signal {}: unmounting {}", sig, mountpoint);
            mnt.stop();
        }
    }
}

}  // namespace ocivm::cli
