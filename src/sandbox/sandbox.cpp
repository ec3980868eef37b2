#include "sandbox/sandbox.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <linux/openat2.h>
#include <limits.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "util/error.h"
#include "util/io.h"
#include "util/log.h"
#include "util/open_beneath.h"
#include "util/paths.h"
#include "util/process.h"
#include "util/unique_fd.h"
#include "sandbox/tool_root.h"

namespace ocivm::sandbox {

namespace {

void write_proc(const std::string& path, const std::string& data) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd || !write_all(fd.get(), data.data(), data.size()))
        throw_errno("sandbox: writing " + path, errno);
}

// The keeper: waits for the server, passes termination on as SIGKILL (the
// server is PID 1 of its namespace and ignores signals it has no handler
// for), and leaves with the server's exit code.
[[noreturn]] void keep(pid_t server, UniqueFd alive) {
    sigset_t set;
    sigemptyset(&set);
    for (int s : {SIGCHLD, SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaddset(&set, s);
    ::sigprocmask(SIG_BLOCK, &set, nullptr);
    int asked = 0;  // the signal that told us to stop, if one did
    for (;;) {
        int st = 0;
        pid_t r = ::waitpid(server, &st, WNOHANG);
        if (r == server && WIFSIGNALED(st)) {
            // Died the way the server died, so whoever waits for us sees
            // the crash (SIGSEGV, SIGBUS) and not an exit code; when we
            // killed it because we were told to stop, by that signal
            // (130/143 for a shell, not a SIGKILL that looks like the OOM
            // killer's).
            int sig = asked && WTERMSIG(st) == SIGKILL ? asked : WTERMSIG(st);
            ::signal(sig, SIG_DFL);
            sigset_t one;
            sigemptyset(&one);
            sigaddset(&one, sig);
            ::sigprocmask(SIG_UNBLOCK, &one, nullptr);
            ::kill(::getpid(), sig);
            ::_exit(128 + sig);
        }
        if (r == server) ::_exit(exit_code(st));
        if (r < 0 && errno != EINTR) ::_exit(125);
        siginfo_t si;
        int sig = ::sigwaitinfo(&set, &si);
        if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP || sig == SIGQUIT) {
            if (!asked) asked = sig;
            ::kill(server, SIGKILL);
        }
    }
    (void)alive;  // held open until we exit: the server's sign that we live
}

}  // namespace

namespace {

// After unshare(CLONE_NEWPID): forks the process that is PID 1 of the new
// namespace and returns in it, killed if the caller dies (PR_SET_PDEATHSIG,
// race-free); the caller becomes its keeper and never returns.
void fork_keeper(const std::string& who) {
    int alive[2];
    if (::pipe2(alive, O_CLOEXEC) < 0) throw_errno("pipe", errno);
    UniqueFd alive_r(alive[0]), alive_w(alive[1]);
    pid_t pid = ::fork();
    if (pid < 0) throw_errno(who + ": cannot fork into its PID namespace", errno);
    if (pid > 0) {
        alive_r.reset();
        // The keeper lives in the child's mount namespace, and a working
        // directory left in the copy of the host's tree (wherever ocivm was
        // started) would keep that copy alive after the child detaches it.
        // As a user the copy's mounts are locked together, so it is all of
        // them: a host file system unmounted meanwhile (`ocivm mount`'s own
        // FUSE mount on SIGTERM or fusermount3 -u) would never go, and its
        // server would wait for requests forever. "/" now is the old root,
        // which the child's pivot_root moves to its new root; after the
        // pivot "/" is that root itself.
        if (::chdir("/") < 0)
            std::fprintf(stderr, "ocivm: warning: %s: chdir /: %s\n", who.c_str(), std::strerror(errno));
        // The keeper needs no privilege to wait and to kill its own child.
        try {
            drop_privileges({});
        } catch (const Error& e) {
            std::fprintf(stderr, "ocivm: warning: %s: %s\n", who.c_str(), e.what());
        }
        keep(pid, std::move(alive_w));
    }
    alive_w.reset();
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    // The keeper may have died before the line above: then its end of the
    // pipe is closed already.
    pollfd p{alive_r.get(), POLLIN, 0};
    if (::poll(&p, 1, 0) != 0) ::_exit(125);
}

}  // namespace

void enter_namespaces(const std::string& who) {
    const bool root = ::geteuid() == 0;
    const uid_t uid = ::geteuid();
    const gid_t gid = ::getegid();
    if (!root) {
        if (::unshare(CLONE_NEWUSER) < 0)
            throw_errno(who + ": cannot create a user namespace for the sandbox", errno,
                        "enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) "
                        "or run with --sandbox none");
        write_proc("/proc/self/setgroups", "deny");
        write_proc("/proc/self/uid_map", std::to_string(uid) + " " + std::to_string(uid) + " 1\n");
        write_proc("/proc/self/gid_map", std::to_string(gid) + " " + std::to_string(gid) + " 1\n");
    }
    if (::unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS) < 0)
        throw_errno(who + ": cannot create namespaces for the sandbox", errno,
                    root ? "run with --sandbox none to serve without one" : "run as root, or with --sandbox none");
    fork_keeper(who);
    // Our mounts never propagate to the host; the host's unmounts still reach us.
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_SLAVE, nullptr) < 0)
        throw_errno(who + ": sandbox: making the mount tree private", errno);
    // A /proc of the new PID namespace: /proc/1 is this server, not the
    // host's init. Only the process directories (subset=pid): no sys/,
    // sysrq-trigger or other global knobs a uid-0 server could still write
    // without any capability; read-only besides.
    if (::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "subset=pid") < 0) {
        int e = errno;
        // The kernel lets a user namespace mount a proc only where the
        // current one is fully visible: none of its paths covered by
        // another mount, as a container's runtime covers /proc/sys,
        // /proc/kcore and the like.
        if (!root && e == EPERM)
            throw_errno(who + ": sandbox: mounting a /proc of its own", e,
                        "as a user, a new /proc may only be mounted where /proc is fully visible, and here "
                        "paths in it are covered by other mounts (a container's masked /proc); run as root, "
                        "or with --sandbox none");
        throw_errno(who + ": sandbox: mounting /proc", e);
    }
}

UniqueFd open_share(const std::string& real) {
    // No symlink in any component: the caller resolved the user's path
    // (realpath); a component swapped for a symlink since then (a user who
    // owns a parent directory) fails here instead of redirecting root.
    int fd = openat2_fd(AT_FDCWD, real, O_PATH | O_DIRECTORY, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
    if (fd < 0) {
        int e = errno;
        throw_errno("cannot open the shared directory " + real, e,
                    e == ELOOP ? "a component of it became a symbolic link; check who can change its parents"
                               : "check that it exists and is a directory");
    }
    return UniqueFd(fd);
}

UniqueFd bind_root(int share_fd, const std::string& real, bool readonly) {
    // open_tree clones mounts of the caller's own namespace only, and the
    // fd was opened in the host's: the same path here must be the very
    // directory the fd holds (the same inode), or someone swapped it.
    UniqueFd here = open_share(real);
    struct stat a, b;
    if (::fstat(share_fd, &a) < 0 || ::fstat(here.get(), &b) < 0) throw_errno("sandbox: fstat of the share", errno);
    if (a.st_dev != b.st_dev || a.st_ino != b.st_ino)
        throw Error("sandbox: " + real + " changed while the server started (it is another directory now); "
                    "check who can change its parents");
    // A copy of the share's mount tree, made from the fd (never a path
    // again), attached on top of the share itself.
    int tree = ::open_tree(here.get(), "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | AT_EMPTY_PATH);
    if (tree < 0) throw_errno("sandbox: cloning the share's mount tree (open_tree)", errno);
    UniqueFd root(tree);
    // The server's own view: no device can be opened and no set-id file
    // runs through it whatever the guest creates, and a read-only share is
    // read-only for the kernel too (the server is uid 0 and could otherwise
    // write any file root owns).
    mount_attr attr{};
    attr.attr_set = MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID | (readonly ? MOUNT_ATTR_RDONLY : 0);
    if (::mount_setattr(root.get(), "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) < 0)
        throw_errno("sandbox: making the share nodev,nosuid" + std::string(readonly ? ",ro" : ""), errno);
    if (::move_mount(root.get(), "", here.get(), "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
        throw_errno("sandbox: attaching the share's copy (move_mount)", errno);
    return root;
}

void pivot_into(int root_fd, bool cwd_proc_fd) {
    // The time zone is read now, from the host: once "/" is the share, a
    // guest-made /etc/localtime would be parsed instead.
    ::tzset();
    UniqueFd proc_fd;
    if (cwd_proc_fd) {
        proc_fd.reset(::open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC));
        if (!proc_fd) throw_errno("sandbox: opening /proc/self/fd", errno);
    }
    if (::fchdir(root_fd) < 0) throw_errno("sandbox: fchdir into its new root", errno);
    // pivot_root(".", "."): the old root ends up stacked on the new one,
    // and detaching "." then removes it.
    if (::syscall(SYS_pivot_root, ".", ".") < 0) throw_errno("sandbox: pivot_root into its new root", errno);
    if (::umount2(".", MNT_DETACH) < 0) throw_errno("sandbox: detaching the host's root", errno);
    if (::chdir("/") < 0) throw_errno("sandbox: chdir /", errno);
    if (proc_fd && ::fchdir(proc_fd.get()) < 0) throw_errno("sandbox: fchdir /proc/self/fd", errno);
}

std::vector<int> file_server_caps(bool readonly, bool nodev, bool nosuid) {
    if (readonly) return {CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH};
    if (::geteuid() != 0) {
        // A user's server: its user namespace maps its own uid and gid
        // only, and a capability there acts on files owned by mapped ids
        // alone, all of which the server owns. chown, setuid and setgid
        // have no other id to go to (and credentials are not switched:
        // fs::prepare_server_process), fowner adds nothing to an owner,
        // mknod and setfcap need the host's root (device nodes; file
        // capabilities need a uid 0 in the namespace). What is left: mode
        // bits that deny the owner (a guest's root expects to read a 0400
        // file) and keeping set-id bits on write.
        std::vector<int> caps = {CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH};
        if (!nosuid) caps.push_back(CAP_FSETID);
        return caps;
    }
    std::vector<int> caps = {CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER,
                             CAP_SETGID, CAP_SETUID};
    if (!nodev) caps.push_back(CAP_MKNOD);
    if (!nosuid) {
        caps.push_back(CAP_FSETID);
        caps.push_back(CAP_SETFCAP);
    }
    return caps;
}

void drop_privileges(const std::vector<int>& wanted) {
    // What we do not have cannot be kept (a user without capabilities, or
    // --sandbox none as a user).
    unsigned long long have = 0;
    {
        __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
        __user_cap_data_struct cur[2] = {};
        if (::syscall(SYS_capget, &hdr, cur) < 0) throw_errno("sandbox: reading capabilities", errno);
        have = (static_cast<unsigned long long>(cur[1].permitted) << 32) | cur[0].permitted;
    }
    std::vector<int> keep;
    for (int c : wanted)
        if (have & (1ull << c)) keep.push_back(c);
    auto kept = [&](int c) { return std::find(keep.begin(), keep.end(), c) != keep.end(); };
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes
    // below. Every number up to 63, not /proc/sys/kernel/cap_last_cap:
    // the keeper may run after its server mounted a /proc without sys/ on
    // the namespace they share, and a kernel newer than our headers may
    // know more capabilities; numbers it does not know fail with EINVAL.
    if (have & (1ull << CAP_SETPCAP)) {
        for (int c = 0; c < 64; ++c)
            if (!kept(c) && ::prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
                throw_errno("sandbox: dropping capability " + std::to_string(c) + " from the bounding set", errno);
    }
    ::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    int bits = ::prctl(PR_GET_SECUREBITS);
    if (bits >= 0 && (have & (1ull << CAP_SETPCAP))) {
        // No exec could make root privileged again; whatever the server set
        // (SECBIT_NO_SETUID_FIXUP for per-thread fsuid) stays as it is.
        bits |= SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
                SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
        if (::prctl(PR_SET_SECUREBITS, bits) < 0) throw_errno("sandbox: setting securebits", errno);
    }
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2] = {};
    for (int c : keep) {
        data[c / 32].effective |= 1u << (c % 32);
        data[c / 32].permitted |= 1u << (c % 32);
    }
    if (::syscall(SYS_capset, &hdr, data) < 0) throw_errno("sandbox: dropping capabilities", errno);
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) throw_errno("sandbox: setting no_new_privs", errno);
    rlimit none{0, 0};
    ::setrlimit(RLIMIT_CORE, &none);
}

namespace {

// A user namespace that maps the caller's own uid and gid to themselves
// and nothing else: the same ids, so files, chown and the store behave as
// they did, but capabilities (all of them, until dropped) that act on
// nothing but the caller's own files, and the right to make the other
// namespaces. "" on success, else why not (unshare's error): the caller
// decides whether to go on without it. A namespace made but not mapped
// cannot be left again, and nothing works in it: that throws.
std::string enter_own_user_namespace(const std::string& who) {
    const uid_t uid = ::geteuid();
    const gid_t gid = ::getegid();
    if (::unshare(CLONE_NEWUSER) < 0) {
        int e = errno;
        if (e == ENOSPC) return std::string(std::strerror(e)) + ": user.max_user_namespaces is 0 or reached";
        if (e == EPERM) return std::string(std::strerror(e)) + ": unprivileged user namespaces are disabled";
        return std::strerror(e);
    }
    try {
        // setgroups first: a process without CAP_SETGID in the parent may
        // write a gid_map only once it can no longer drop groups (which
        // could grant access a group's deny bits refuse).
        write_proc("/proc/self/setgroups", "deny");
        write_proc("/proc/self/uid_map", std::to_string(uid) + " " + std::to_string(uid) + " 1\n");
        write_proc("/proc/self/gid_map", std::to_string(gid) + " " + std::to_string(gid) + " 1\n");
    } catch (const Error& e) {
        throw Error(who + ": a user namespace was made but its ids could not be mapped (" + e.what() +
                    "); nothing can run in it. Check what limits user namespaces here (an LSM policy)");
    }
    return "";
}


}  // namespace

void confine_tool(const char* who, SeccompProfile profile, const std::vector<int>& keep, const ToolView& view) {
    const std::string w = who;
    const bool root = ::geteuid() == 0;
    bool namespaces = root;
    std::string why_not;  // why a user's tool has no namespaces of its own
    if (!root && !view.others_files) {
        why_not = enter_own_user_namespace(w);
        if (why_not.empty()) namespaces = true;
        else why_not = "cannot create a user namespace (" + why_not + ")";
    }
    if (namespaces && ::unshare(CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS) < 0) {
        int e = errno;
        if (root)
            throw_errno(w + ": cannot create its own PID, network, IPC, UTS and mount namespaces", e,
                        "a container that forbids new namespaces cannot confine it; run ocivm on the host");
        // In a user namespace of our own and still refused: an LSM's policy
        // on unprivileged user namespaces (Ubuntu's AppArmor one).
        namespaces = false;
        why_not = std::string("cannot create PID, network, IPC, UTS and mount namespaces in its user namespace (") +
                  std::strerror(e) + ")";
    }
    bool own_proc = true;
    if (namespaces) {
        // Nothing it inherited may lead out of the root it is about to get:
        // an fd of a host directory would (openat of ".." walks up from it).
        close_fds_except(view.keep_fds);
        fork_keeper(w);
        // A session of its own: no controlling terminal to take over
        // (TIOCSPGRP) and a process group in which kill(0, ...) reaches
        // nobody but itself and its programs, not the user's shell.
        if (::setsid() < 0) throw_errno(w + ": setsid", errno);
        // Nothing of ours reaches the host, and nothing the host mounts
        // later (rw, with devices) appears here: private, not a slave.
        if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0)
            throw_errno(w + ": making its mount tree private", errno);
        ToolRoot r(w);
        for (auto& p : view.writable) r.add(p, ToolRoot::Access::Write);
        for (auto& p : view.readable) r.add(p, ToolRoot::Access::Read);
        if (!view.programs.empty()) {
            r.add_system();
            for (auto& prog : view.programs)
                if (prog.rfind("/usr/", 0) != 0) r.add_program(prog);
        }
        r.add_harmless_devices();
        own_proc = r.enter(/*host_proc_fallback=*/!root);
    }
    // In the user namespace capabilities act on the user's own files only,
    // and the tools need none there: with none they do exactly what a
    // user's tool did before (chown to its own ids only, no device nodes,
    // modes that bind it too).
    drop_privileges(root ? keep : std::vector<int>{});
    install_seccomp(SeccompMode::Kill, profile, who);
    char caps[32];
    std::snprintf(caps, sizeof caps, "%llx", effective_caps());
    if (namespaces) {
        std::string shown;
        for (auto& p : view.writable) shown += (shown.empty() ? "" : ", ") + p + " (writable)";
        for (auto& p : view.readable) shown += (shown.empty() ? "" : ", ") + p;
        if (!view.programs.empty()) shown += (shown.empty() ? "" : ", ") + std::string("/usr and its programs");
        spdlog::info("{}: no network; capabilities cut to CapEff {}; no_new_privs; its own PID and mount namespaces, "
                     "a root that shows only {}; seccomp filter",
                     who, caps, shown.empty() ? std::string("nothing") : shown);
        if (!own_proc)
            spdlog::info("{}: a /proc of its own cannot be mounted here (/proc is partly covered, as in a container); "
                         "its /proc shows its own process directory of the host's alone",
                         who);
    }
    else if (!why_not.empty())
        spdlog::warn("{}: {}: it runs with the host's PID, network, IPC and mount namespaces and may write wherever you "
                     "may; what still confines it is no capabilities, no_new_privs and its seccomp filter (no "
                     "sockets, {}no mount, no ptrace: docs/security.md). Allow unprivileged user namespaces "
                     "(sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone=1, or Ubuntu's "
                     "kernel.apparmor_restrict_unprivileged_userns=0) to confine it fully",
                     who, why_not, profile == SeccompProfile::Importer ? "no exec, " : "");
    else
        spdlog::info("{}: capabilities cut to CapEff {}; no_new_privs; seccomp filter (no sockets); as a user "
                     "copying other users' files it has no namespaces of its own",
                     who, caps);
}

unsigned long long effective_caps() {
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2] = {};
    if (::syscall(SYS_capget, &hdr, data) < 0) return 0;
    return (static_cast<unsigned long long>(data[1].effective) << 32) | data[0].effective;
}

}  // namespace ocivm::sandbox
