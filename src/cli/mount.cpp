// ocivm mount: serve a host directory through /dev/fuse until unmounted.
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "cli/args.h"
#include "cli/commands.h"
#include "fuse/serve_config.h"
#include "fs/passthrough.h"
#include "fuse/server.h"
#include "transport/devfuse.h"
#include "util/error.h"
#include "util/log.h"
#include "util/mountinfo.h"

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
                         next one for N microseconds before sleeping: fewer
                         wakeups for a busy client, a little CPU when idle
                         (default: 50; 0 turns it off)
      --readonly         refuse every change (EROFS)
      --no-xattr         refuse extended attributes (EOPNOTSUPP)
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
    bool readonly = false, no_xattr = false, help = false;
    std::vector<Option> opts = {
        {"cache", 0, true, [&](const std::string& v) { cache = v; }},
        {"threads", 0, true, [&](const std::string& v) { threads = parse_count("--threads", v, 256); }},
        {"spin-us", 0, true, [&](const std::string& v) {
             spin_us = v == "0" ? 0 : parse_count("--spin-us", v, 100000);
         }},
        {"readonly", 0, false, [&](const std::string&) { readonly = true; }},
        {"no-xattr", 0, false, [&](const std::string&) { no_xattr = true; }},
        {"log-level", 0, true, [&](const std::string& v) { log_level = v; }},
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
    if (pos.size() != 2)
        throw UsageError{"'ocivm mount' needs SOURCE and MOUNTPOINT; see 'ocivm mount --help'"};

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

    auto cfg = fuse::serve_config(abs_path(source), mode, readonly, !no_xattr, false);
    cfg.fs.switch_credentials = fs::prepare_server_process();
    fs::Passthrough passthrough(cfg.fs);
    fuse::Server server(passthrough, cfg.protocol);

    transport::raise_fd_limit();
    // Signals are taken by one thread with sigwait; workers never see them.
    sigset_t set;
    sigemptyset(&set);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGUSR1}) sigaddset(&set, s);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);

    transport::DevFuseOptions dopts;
    dopts.fsname = "ocivm:" + cfg.fs.source;
    dopts.mountpoint = mountpoint;
    dopts.threads = threads;
    dopts.readonly = readonly;
    dopts.spin_us = spin_us;
    transport::DevFuseSession session(server, dopts);
    spdlog::info("serving {} on {} (cache={}, threads={}{})", cfg.fs.source, mountpoint, cache,
                 threads, readonly ? ", read-only" : "");

    std::thread signals([&] {
        int sig = 0;
        sigwait(&set, &sig);
        if (sig != SIGUSR1) {
            spdlog::info("signal {}: unmounting {}", sig, mountpoint);
            session.stop();
        }
    });
    session.run();
    pthread_kill(signals.native_handle(), SIGUSR1);
    signals.join();
    spdlog::info("{} unmounted", mountpoint);
    return 0;
}

}  // namespace ocivm::cli
