// The seccomp filters. The share servers' is an allow-list: a system call
// outside it stops the server with one line naming it (SIGSYS trapped, not
// a silent kill), so a missing entry shows up as a clear failure in the
// tests rather than a mystery. The image importer's and the disk writer's
// are deny-lists of what such a tool never needs (docs/security.md says
// why), stopping it the same way.
#include <linux/fs.h>
#include <seccomp.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iterator>
#include <vector>

#include "sandbox/sandbox.h"
#include <linux/sockios.h>

#include "util/error.h"

namespace ocivm::sandbox {

namespace {

// The file server's needs, taken from what the servers (vhost-user queues,
// /dev/fuse workers, the passthrough, the trace writer, the control thread
// of `ocivm run`'s shares) call while the tests and benchmarks run.
const char* const kFileServer[] = {
    // file-system operations
    "openat", "openat2", "open", "close", "read", "write", "readv", "writev", "pread64",
    "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2", "lseek", "getdents64",
    "newfstatat", "fstat", "lstat", "stat", "statx", "fstatfs", "statfs", "mkdirat",
    "mknodat", "symlinkat", "unlinkat", "renameat", "renameat2", "linkat", "readlinkat",
    "fchmod", "fchmodat", "chmod", "fchownat", "fchown", "truncate", "ftruncate",
    "utimensat", "fsync", "fdatasync", "syncfs", "sync_file_range", "setxattr", "getxattr",
    "listxattr", "removexattr", "lsetxattr", "lgetxattr", "llistxattr", "lremovexattr",
    "fsetxattr", "fgetxattr", "flistxattr", "fremovexattr", "fallocate", "copy_file_range",
    "fcntl", "flock", "dup", "dup3", "umask", "setfsuid", "setfsgid", "faccessat", "faccessat2",
    // memory, threads, time, signals
    "mmap", "munmap", "mprotect", "mremap", "madvise", "brk", "futex", "set_robust_list",
    "rseq", "exit", "exit_group", "gettid", "getpid", "tgkill",
    "rt_sigreturn", "rt_sigprocmask", "rt_sigaction", "sigaltstack", "sched_yield",
    "sched_getaffinity", "clock_gettime", "clock_nanosleep", "nanosleep", "getrandom",
    "restart_syscall", "getuid", "geteuid", "getgid", "getegid", "membarrier",
    // vhost-user socket, eventfds, the control socket
    "recvmsg", "sendmsg", "sendto", "recvfrom", "poll", "ppoll", "eventfd2", "shutdown",
};

// What neither the importer nor the disk writer (nor the sfdisk,
// mkfs.ext4 and qemu-img it runs, which inherit the filter) ever calls: an
// unpacker reads an archive and writes files, the writer reads a tree and
// writes one file. Each of these is a way out of the tool's confinement or
// into a corner of the kernel it has no business with.
const char* const kToolDenied[] = {
    // mounts and the root: its view of the host's files is fixed
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr",
    // namespaces, once confined (clone's namespace flags: a rule below)
    "unshare", "setns",
    // other processes and their memory
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp", "pidfd_getfd", "migrate_pages",
    "move_pages",
    // the kernel itself: programs, modules, a new kernel, hardware ports
    "bpf", "perf_event_open", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "iopl", "ioperm", "modify_ldt", "uselib", "_sysctl", "lookup_dcookie", "nfsservctl", "userfaultfd",
    // keyrings (the user's and root's secrets live there)
    "keyctl", "add_key", "request_key",
    // files by handle: opens any inode of a file system, past every path check
    "open_by_handle_at", "name_to_handle_at",
    // the host as a whole
    "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog", "vhangup", "fanotify_init",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
    // System V and POSIX message queues, semaphores, shared memory
    "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl", "msgget", "msgsnd", "msgrcv",
    "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
};

// The importer alone: it runs no program (the disk writer runs three), has
// nobody to talk to over a socket, and signals nobody but itself.
const char* const kImporterDenied[] = {
    "execve", "execveat", "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    "tkill", "pidfd_send_signal",
};

// A socket the disk writer's programs might ask for (a name lookup through
// nscd, libuuid's uuidd) is refused with an error they handle rather than
// a kill. None of them needs one; as root the writer's network namespace
// is empty anyway, and as a user (no namespaces) this is its only cut.
const char* const kDiskWriterRefused[] = {"socket", "socketpair", "connect", "bind", "listen", "accept", "accept4"};

const char* g_who = "ocivm";
const char* g_names[1024];
const char* g_why = "";

void append(char*& p, char* end, const char* s) {
    while (*s && p < end) *p++ = *s++;
}

// Async-signal-safe: names were looked up at install time.
void on_sigsys(int, siginfo_t* si, void*) {
    char buf[512];
    char* p = buf;
    char* end = buf + sizeof buf - 1;
    int nr = si->si_syscall;
    char num[16];
    int k = 0;
    unsigned v = static_cast<unsigned>(nr);
    do num[k++] = static_cast<char>('0' + v % 10);
    while ((v /= 10) && k < 15);
    append(p, end, "ocivm: error: ");
    append(p, end, g_who);
    append(p, end, " made system call ");
    append(p, end, nr >= 0 && nr < 1024 && g_names[nr] ? g_names[nr] : "?");
    append(p, end, " (");
    while (k > 0 && p < end) *p++ = num[--k];
    append(p, end, g_why);
    ssize_t w = ::write(2, buf, static_cast<size_t>(p - buf));
    (void)w;
    ::_exit(128 + SIGSYS);
}

}  // namespace

bool parse_seccomp_mode(const std::string& s, SeccompMode& out) {
    if (s == "none") out = SeccompMode::None;
    else if (s == "log") out = SeccompMode::Log;
    else if (s == "kill") out = SeccompMode::Kill;
    else return false;
    return true;
}

namespace {

// The share servers' allow-list.
int add_file_server_rules(scmp_filter_ctx ctx) {
    for (const char* name : kFileServer) {
        int nr = seccomp_syscall_resolve_name(name);
        if (nr == __NR_SCMP_ERROR) continue;  // not on this architecture
        if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) < 0) throw Error(std::string("seccomp: cannot allow ") + name);
    }
    // clone only for threads, never into new namespaces (nor a fork); clone3
    // passes its flags in memory the filter cannot read, so it is "not
    // implemented" and glibc falls back to clone.
    const uint64_t ns = CLONE_NEWNS | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC |
                        CLONE_NEWCGROUP;
    int rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD | ns, CLONE_THREAD));
    if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    // ioctl only for SIOCOUTQ: a stream share's quiesce asks how much of its
    // replies the guest has not taken yet. The kernel reads the request as
    // 32 bits: compare only those.
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
                              SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, static_cast<scmp_datum_t>(SIOCOUTQ)));
    // prctl only to name or read: not PR_SET_PDEATHSIG (outliving ocivm),
    // not PR_SET_DUMPABLE, not PR_SET_SECCOMP.
    for (int opt : {PR_SET_NAME, PR_GET_NAME, PR_GET_SECUREBITS, PR_GET_NO_NEW_PRIVS})
        if (rc == 0)
            rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
                                  SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(opt)));
    return rc;
}

// The tools' deny-list (default: allow). `deny` is the action of every
// refusal that names the call (trap, or log).
int add_tool_rules(scmp_filter_ctx ctx, SeccompProfile profile, uint32_t deny) {
    int rc = 0;
    auto add_all = [&](const char* const* names, size_t n, uint32_t action) {
        for (size_t i = 0; i < n && rc == 0; ++i) {
            int nr = seccomp_syscall_resolve_name(names[i]);
            if (nr < 0) continue;  // not on this architecture (or a multiplexed pseudo-call)
            rc = seccomp_rule_add(ctx, action, nr, 0);
        }
    };
    add_all(kToolDenied, std::size(kToolDenied), deny);
    if (profile == SeccompProfile::Importer) add_all(kImporterDenied, std::size(kImporterDenied), deny);
    else add_all(kDiskWriterRefused, std::size(kDiskWriterRefused), SCMP_ACT_ERRNO(EACCES));
    // No new namespaces from clone either; clone3's flags are in memory the
    // filter cannot read, so it is "not implemented" and glibc falls back
    // to clone (threads, posix_spawn, fork).
    for (int flag : {CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUTS, CLONE_NEWIPC,
                     CLONE_NEWCGROUP, CLONE_NEWTIME}) {
        const auto f = static_cast<scmp_datum_t>(flag);
        if (rc == 0) rc = seccomp_rule_add(ctx, deny, SCMP_SYS(clone), 1, SCMP_A0(SCMP_CMP_MASKED_EQ, f, f));
    }
    if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    // io_uring is probed by libraries (qemu-img does) and they fall back
    // when it is missing: "not implemented", not a kill. Neither tool uses
    // it, and it is a large, separately audited part of the kernel.
    for (auto nr : {SCMP_SYS(io_uring_setup), SCMP_SYS(io_uring_enter), SCMP_SYS(io_uring_register)})
        if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), nr, 0);
    // ioctl: no keystrokes pushed into the terminal the tool writes its
    // progress to (TIOCSTI: the user's shell would run them), no console
    // selection games, no frozen host file system. The kernel reads the
    // request as 32 bits: compare only those, or a set high bit would slip by.
    for (unsigned long req : {static_cast<unsigned long>(TIOCSTI), static_cast<unsigned long>(TIOCLINUX),
                              static_cast<unsigned long>(FIFREEZE), static_cast<unsigned long>(TIOCVHANGUP),
                              static_cast<unsigned long>(TIOCCONS), static_cast<unsigned long>(TIOCSCTTY)})
        if (rc == 0)
            rc = seccomp_rule_add(ctx, deny, SCMP_SYS(ioctl), 1, SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, req));
    // Nor the file systems' own requests that reach past every path or
    // change the host's file system as a whole, answered "not a tty" (a
    // library's probe must not kill the tool): XFS's bulk stat, handles,
    // open and xattrs by handle, parents by handle and fsmap ('X' 59, 63,
    // 101-128); every btrfs request (0x94: tree search, inode-to-path,
    // send, subvolume and quota control, resize, label) but FICLONE,
    // FICLONERANGE, FIDEDUPERANGE and reading the label, which share its
    // type; ext4's resize, boot-loader swap and UUID ('f' 16, 17, 44). An
    // fd of any file on such a file system suffices for most, and the disk
    // writer of a root file system directory keeps sys_admin, which many
    // ask for. Matched on type and number: the size and direction bits
    // vary between versions, and the kernel reads 32 bits.
    std::vector<unsigned> fs_requests;
    for (unsigned nr : {59u, 63u}) fs_requests.push_back(('X' << 8) | nr);
    for (unsigned nr = 101; nr <= 128; ++nr) fs_requests.push_back(('X' << 8) | nr);
    for (unsigned nr = 0; nr <= 80; ++nr)
        if (nr != 9 && nr != 13 && nr != 49 && nr != 54) fs_requests.push_back((0x94u << 8) | nr);
    for (unsigned nr : {16u, 17u, 44u}) fs_requests.push_back(('f' << 8) | nr);
    for (unsigned req : fs_requests)
        if (rc == 0)
            rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOTTY), SCMP_SYS(ioctl), 1,
                                  SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffu, req));
    // No outliving its keeper: the signal it gets when the keeper dies can
    // be set to SIGKILL only (as it is; the programs the disk writer starts
    // set theirs), never cleared or made one it could ignore. The kernel
    // reads the option as 32 bits: compare only those.
    if (rc == 0)
        rc = seccomp_rule_add(ctx, deny, SCMP_SYS(prctl), 2,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, 0xffffffffu, static_cast<scmp_datum_t>(PR_SET_PDEATHSIG)),
                              SCMP_A1(SCMP_CMP_NE, static_cast<scmp_datum_t>(SIGKILL)));
    if (profile == SeccompProfile::Importer) {
        // Signals to itself only (abort() raises SIGABRT that way): as root,
        // or as the user, it could otherwise kill any process of its uid.
        const scmp_datum_t self = static_cast<scmp_datum_t>(::getpid());
        for (auto nr : {SCMP_SYS(kill), SCMP_SYS(tgkill), SCMP_SYS(rt_sigqueueinfo), SCMP_SYS(rt_tgsigqueueinfo)})
            if (rc == 0) rc = seccomp_rule_add(ctx, deny, nr, 1, SCMP_A0(SCMP_CMP_NE, self));
    }
    return rc;
}

}  // namespace

void install_seccomp(SeccompMode mode, SeccompProfile profile, const char* who) {
    if (mode == SeccompMode::None) return;
    g_who = who;
    g_why = profile == SeccompProfile::FileServer
                ? "), which its seccomp allow-list does not permit; it stops here. This is a bug in ocivm: please "
                  "report it (--seccomp log or none serves without the list)\n"
            : profile == SeccompProfile::Importer
                ? "), which an image importer never needs; its seccomp filter stops it here (a hostile image, or a "
                  "bug in ocivm: please report it)\n"
                : "), which a disk writer never needs; its seccomp filter stops it here (a hostile image, or a bug "
                  "in ocivm: please report it)\n";
    for (int nr = 0; nr < 1024; ++nr)
        if (!g_names[nr]) g_names[nr] = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
    struct sigaction sa {};
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (::sigaction(SIGSYS, &sa, nullptr) < 0) throw_errno("seccomp: installing the SIGSYS handler", errno);
    sigset_t sys;
    sigemptyset(&sys);
    sigaddset(&sys, SIGSYS);
    ::pthread_sigmask(SIG_UNBLOCK, &sys, nullptr);

    const uint32_t deny = mode == SeccompMode::Kill ? SCMP_ACT_TRAP : SCMP_ACT_LOG;
    const bool server = profile == SeccompProfile::FileServer;
    scmp_filter_ctx ctx = seccomp_init(server ? deny : SCMP_ACT_ALLOW);
    if (!ctx) throw Error("cannot create a seccomp filter");
    int rc;
    try {
        rc = server ? add_file_server_rules(ctx) : add_tool_rules(ctx, profile, deny);
    } catch (...) {
        seccomp_release(ctx);
        throw;
    }
    if (rc < 0) {
        seccomp_release(ctx);
        throw Error(server ? "seccomp: cannot add the clone and prctl rules"
                           : std::string("seccomp: cannot build ") + who + "'s filter: " + std::strerror(-rc));
    }
    // A call of another architecture's table (int 0x80, x32) is none of
    // the above: it ends the process. (The servers' allow-list gets the
    // same from its default action.)
    if (!server) seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
    // Threads started before the filter get it too; a binary tree keeps the
    // cost per system call flat however long the list grows.
    seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
    seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
    // Loading a filter turns on the kernel's speculative-store-bypass
    // mitigation for the process by default (spec_store_bypass_disable=
    // seccomp), which costs every request ~9% here. It guards a process
    // against code running inside it; the server runs none of the guest's
    // code (nor the importer any of the image's), so the filter is loaded
    // with SECCOMP_FILTER_FLAG_SPEC_ALLOW (docs/security.md).
    seccomp_attr_set(ctx, SCMP_FLTATR_CTL_SSB, 1);
    rc = seccomp_load(ctx);
    seccomp_release(ctx);
    if (rc < 0) throw_errno("cannot load the seccomp filter", -rc, "use --seccomp none");
}

}  // namespace ocivm::sandbox
