// The seccomp allow-lists. A system call outside the list stops the server
// with one line naming it (SIGSYS trapped, not a silent kill), so a missing
// entry shows up as a clear failure in the tests rather than a mystery.
#include <seccomp.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "sandbox/sandbox.h"
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

const char* g_who = "ocivm";
const char* g_names[1024];

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
    append(p, end, "), which its seccomp allow-list does not permit; it stops here. "
                   "This is a bug in ocivm: please report it (--seccomp log or none serves without the list)\n");
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

void install_seccomp(SeccompMode mode, SeccompProfile profile, const char* who) {
    if (mode == SeccompMode::None) return;
    (void)profile;  // one profile so far
    g_who = who;
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

    scmp_filter_ctx ctx = seccomp_init(mode == SeccompMode::Kill ? SCMP_ACT_TRAP : SCMP_ACT_LOG);
    if (!ctx) throw Error("cannot create a seccomp filter");
    for (const char* name : kFileServer) {
        int nr = seccomp_syscall_resolve_name(name);
        if (nr == __NR_SCMP_ERROR) continue;  // not on this architecture
        if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) < 0) {
            seccomp_release(ctx);
            throw Error(std::string("seccomp: cannot allow ") + name);
        }
    }
    // clone only for threads, never into new namespaces (nor a fork); clone3
    // passes its flags in memory the filter cannot read, so it is "not
    // implemented" and glibc falls back to clone.
    const uint64_t ns = CLONE_NEWNS | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC |
                        CLONE_NEWCGROUP;
    int rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD | ns, CLONE_THREAD));
    if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    // prctl only to name or read: not PR_SET_PDEATHSIG (outliving ocivm),
    // not PR_SET_DUMPABLE, not PR_SET_SECCOMP.
    for (int opt : {PR_SET_NAME, PR_GET_NAME, PR_GET_SECUREBITS, PR_GET_NO_NEW_PRIVS})
        if (rc == 0)
            rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
                                  SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(opt)));
    if (rc < 0) {
        seccomp_release(ctx);
        throw Error("seccomp: cannot add the clone and prctl rules");
    }
    // Threads started before the filter get it too; a binary tree keeps the
    // cost per system call flat however long the list grows.
    seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
    seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
    // Loading a filter turns on the kernel's speculative-store-bypass
    // mitigation for the process by default (spec_store_bypass_disable=
    // seccomp), which costs every request ~9% here. It guards a process
    // against code running inside it; the server runs none of the guest's
    // code, so the filter is loaded with SECCOMP_FILTER_FLAG_SPEC_ALLOW
    // (docs/security.md).
    seccomp_attr_set(ctx, SCMP_FLTATR_CTL_SSB, 1);
    rc = seccomp_load(ctx);
    seccomp_release(ctx);
    if (rc < 0) throw_errno("cannot load the seccomp filter", -rc, "use --seccomp none");
}

}  // namespace ocivm::sandbox
