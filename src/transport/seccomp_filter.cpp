#include "transport/seccomp_filter.h"

#include <seccomp.h>

#include <cerrno>
#include <cstring>

#include "util/error.h"

namespace ocivm::transport {

bool parse_seccomp_action(const std::string& s, SeccompAction& out) {
    if (s == "none") out = SeccompAction::None;
    else if (s == "log") out = SeccompAction::Log;
    else if (s == "kill") out = SeccompAction::Kill;
    else return false;
    return true;
}

void install_seccomp_filter(SeccompAction action) {
    if (action == SeccompAction::None) return;
    scmp_filter_ctx ctx = seccomp_init(action == SeccompAction::Kill ? SCMP_ACT_KILL_PROCESS
                                                                     : SCMP_ACT_LOG);
    if (!ctx) throw Error("cannot create a seccomp filter");
    static const char* const kAllowed[] = {
        // file-system operations
        "openat", "openat2", "open", "close", "read", "write", "readv", "writev", "pread64",
        "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2", "lseek", "getdents64",
        "newfstatat", "fstat", "lstat", "stat", "statx", "fstatfs", "statfs", "mkdirat",
        "mknodat", "symlinkat", "unlinkat", "renameat", "renameat2", "linkat", "readlinkat",
        "fchmod", "fchmodat", "chmod", "fchownat", "fchown", "truncate", "ftruncate",
        "utimensat", "fsync", "fdatasync", "syncfs", "setxattr", "getxattr", "listxattr",
        "removexattr", "lsetxattr", "lgetxattr", "llistxattr", "lremovexattr", "fsetxattr",
        "fgetxattr", "flistxattr", "fremovexattr", "fallocate", "copy_file_range", "fcntl",
        "dup", "dup3", "umask", "setfsuid", "setfsgid", "faccessat", "faccessat2",
        // memory, threads, time, signals
        "mmap", "munmap", "mprotect", "mremap", "madvise", "brk", "futex", "set_robust_list",
        "rseq", "clone", "clone3", "exit", "exit_group", "gettid", "getpid", "tgkill",
        "rt_sigreturn", "rt_sigprocmask", "rt_sigaction", "sigaltstack", "sched_yield",
        "sched_getaffinity", "clock_gettime", "clock_nanosleep", "nanosleep", "getrandom",
        "restart_syscall", "prctl", "getuid", "geteuid", "getgid", "getegid",
        // vhost-user socket and eventfds
        "recvmsg", "sendmsg", "sendto", "recvfrom", "poll", "ppoll", "eventfd2",
    };
    for (const char* name : kAllowed) {
        int nr = seccomp_syscall_resolve_name(name);
        if (nr == __NR_SCMP_ERROR) continue;  // not on this architecture
        if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) < 0) {
            seccomp_release(ctx);
            throw Error(std::string("seccomp: cannot allow ") + name);
        }
    }
    // Threads started before the filter get it too.
    seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
    int rc = seccomp_load(ctx);
    seccomp_release(ctx);
    if (rc < 0) throw_errno("cannot load the seccomp filter", -rc, "use --seccomp none");
}

}  // namespace ocivm::transport
