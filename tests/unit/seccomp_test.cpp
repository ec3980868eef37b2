// fsd's seccomp allow-list: what serving needs works, anything else kills.
// The importer's and disk writer's deny-lists: what they never need kills,
// naming the call; what they do still works.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sched.h>
#include <linux/fs.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "util/error.h"

#include "sandbox/sandbox.h"
#include "unit/test_util.h"

using namespace ocivm::sandbox;

namespace {
// Runs f in a child with the filter installed; returns the wait status.
template <typename F>
int in_filtered_child(SeccompMode a, F f) {
    pid_t pid = ::fork();
    if (pid == 0) {
        install_seccomp(a, SeccompProfile::FileServer, "test");
        ::_exit(f());
    }
    int st = 0;
    ::waitpid(pid, &st, 0);
    return st;
}
}  // namespace

TEST(Seccomp, ServingSyscallsAreAllowed) {
    int st = in_filtered_child(SeccompMode::Kill, [] {
        int fd = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
        char buf[64];
        if (fd < 0 || ::read(fd, buf, sizeof buf) <= 0) return 2;
        ::close(fd);
        std::thread t([] {});  // queue threads start after the filter
        t.join();
        return 0;
    });
    ASSERT_TRUE(WIFEXITED(st)) << "killed by signal " << WTERMSIG(st);
    EXPECT_EQ(WEXITSTATUS(st), 0);
}

TEST(Seccomp, OtherSyscallsStopTheServerNamingTheCall) {
    int pipefd[2];
    ASSERT_EQ(::pipe(pipefd), 0);
    pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(pipefd[1], 2);
        install_seccomp(SeccompMode::Kill, SeccompProfile::FileServer, "test server");
        // a server has no business opening network sockets or exec'ing
        ::_exit(::socket(AF_INET, SOCK_STREAM, 0) >= 0 ? 0 : 1);
    }
    ::close(pipefd[1]);
    int st = 0;
    ::waitpid(pid, &st, 0);
    char buf[1024] = {};
    ssize_t n = ::read(pipefd[0], buf, sizeof buf - 1);
    ::close(pipefd[0]);
    ASSERT_TRUE(WIFEXITED(st));
    EXPECT_EQ(WEXITSTATUS(st), 128 + SIGSYS);
    ASSERT_GT(n, 0);
    std::string msg(buf);
    EXPECT_NE(msg.find("test server made system call socket ("), std::string::npos) << msg;
}

// A stream share's quiesce asks SIOCOUTQ of its socket; no other ioctl
// (terminal, file system freezing) gets through, high bits or not.
TEST(Seccomp, OnlySiocoutqOfTheIoctls) {
    auto killed_by_filter = [](int st) { return WIFEXITED(st) && WEXITSTATUS(st) == 128 + SIGSYS; };
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);  // made before the filter, as fsd's is
    int st = in_filtered_child(SeccompMode::Kill, [&sv] {
        int queued = -1;
        if (::write(sv[0], "abc", 3) != 3 || ::ioctl(sv[0], SIOCOUTQ, &queued) < 0) return 3;
        return queued > 0 ? 0 : 4;
    });
    ::close(sv[0]);
    ::close(sv[1]);
    ASSERT_TRUE(WIFEXITED(st)) << "killed by signal " << WTERMSIG(st);
    EXPECT_EQ(WEXITSTATUS(st), 0);
    EXPECT_TRUE(killed_by_filter(in_filtered_child(SeccompMode::Kill, [] {
        int n = 0;
        return ::ioctl(0, FIONREAD, &n) == 0 ? 0 : 1;
    })));
    EXPECT_TRUE(killed_by_filter(in_filtered_child(SeccompMode::Kill, [] {
        int n = 0;
        return ::syscall(SYS_ioctl, 0, 0x100000000ul | FIONREAD, &n) == 0 ? 0 : 1;
    })));
}

TEST(Seccomp, ParseModes) {
    SeccompMode a;
    EXPECT_TRUE(parse_seccomp_mode("kill", a));
    EXPECT_EQ(a, SeccompMode::Kill);
    EXPECT_TRUE(parse_seccomp_mode("log", a));
    EXPECT_TRUE(parse_seccomp_mode("none", a));
    EXPECT_FALSE(parse_seccomp_mode("strict", a));
}

// A server taken over by a guest must not outlive its keeper
// (PR_SET_PDEATHSIG 0) nor make itself new namespaces to attack the kernel
// from; threads still start (clone3 answers ENOSYS, glibc falls back).
TEST(Seccomp, NoPdeathsigResetNoNamespacesButThreads) {
    auto killed_by_filter = [](int st) { return WIFEXITED(st) && WEXITSTATUS(st) == 128 + SIGSYS; };
    EXPECT_TRUE(killed_by_filter(in_filtered_child(SeccompMode::Kill, [] {
        return ::prctl(PR_SET_PDEATHSIG, 0) == 0 ? 0 : 1;
    })));
    EXPECT_TRUE(killed_by_filter(in_filtered_child(SeccompMode::Kill, [] {
        return ::prctl(PR_SET_DUMPABLE, 1) == 0 ? 0 : 1;
    })));
    EXPECT_TRUE(killed_by_filter(in_filtered_child(SeccompMode::Kill, [] {
        // a fork (no CLONE_THREAD) and a clone into a new user namespace
        long r = ::syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (r == 0) ::_exit(0);
        return r > 0 ? 0 : 1;
    })));
    int st = in_filtered_child(SeccompMode::Kill, [] {
        int v = 0;
        std::thread t([&] { v = 7; });
        t.join();
        char name[16] = {};
        return v == 7 && ::prctl(PR_GET_NAME, name) == 0 ? 0 : 1;
    });
    ASSERT_TRUE(WIFEXITED(st));
    EXPECT_EQ(WEXITSTATUS(st), 0);
}

// The shared directory is opened once, from its resolved path, with no
// symbolic link in any component: one swapped in after realpath fails.
TEST(Sandbox, OpenShareRefusesASymlinkInAnyComponent) {
    char tmpl[] = "/tmp/ocivm-share-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    std::string d = tmpl;
    ASSERT_EQ(::mkdir((d + "/real").c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((d + "/real/share").c_str(), 0755), 0);
    ASSERT_EQ(::symlink("real", (d + "/swapped").c_str()), 0);
    EXPECT_TRUE(ocivm::sandbox::open_share(d + "/real/share"));
    try {
        ocivm::sandbox::open_share(d + "/swapped/share");
        ADD_FAILURE() << "a path through a symlink was opened";
    } catch (const ocivm::Error& e) {
        EXPECT_NE(std::string(e.what()).find("symbolic link"), std::string::npos) << e.what();
    }
    std::filesystem::remove_all(d);
}

// --- The tools' deny-lists (image importer, disk writer) --------------------

namespace {

// A scratch directory under the test's TMPDIR, removed however the test ends.
struct TempDir {
    std::string path = ocivm::test::make_temp_dir();
    ~TempDir() { ocivm::test::remove_tree(path); }
};

struct Outcome {
    int status = 0;
    std::string err;  // what the child wrote on stderr
};

// f() in a child, after setup(), its stderr captured; its exit status
// (status 99 << 8 and err saying why when there is no child).
Outcome in_child(const std::function<void()>& setup, const std::function<int()>& f) {
    int pipefd[2];
    if (::pipe(pipefd) != 0) return {99 << 8, std::string("pipe: ") + std::strerror(errno)};
    pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(pipefd[1], 2);
        setup();
        ::_exit(f());
    }
    ::close(pipefd[1]);
    Outcome o;
    char buf[1024];
    for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof buf)) > 0;) o.err.append(buf, static_cast<size_t>(n));
    ::close(pipefd[0]);
    ::waitpid(pid, &o.status, 0);
    return o;
}

// f() in a child that installed `profile`'s filter, its stderr captured.
Outcome in_tool_child(SeccompProfile profile, const char* who, const std::function<int()>& f) {
    return in_child([&] { install_seccomp(SeccompMode::Kill, profile, who); }, f);
}

bool stopped_naming(const Outcome& o, const std::string& who, const std::string& call) {
    return WIFEXITED(o.status) && WEXITSTATUS(o.status) == 128 + SIGSYS &&
           o.err.find(who + " made system call " + call + " (") != std::string::npos;
}

}  // namespace

// Each is a way out of an importer's confinement (or into a corner of the
// kernel it has no use for): it stops the importer, naming the call.
TEST(ToolSeccomp, TheImporterIsStoppedNamingTheCall) {
    struct Case {
        const char* call;
        std::function<int()> f;
    };
    const pid_t parent = ::getpid();
    std::vector<Case> cases = {
        {"socket", [] { return ::socket(AF_INET, SOCK_STREAM, 0) >= 0 ? 0 : 1; }},
        {"socket", [] { return ::socket(AF_UNIX, SOCK_STREAM, 0) >= 0 ? 0 : 1; }},
        {"execve", [] {
             char* argv[] = {const_cast<char*>("/bin/true"), nullptr};
             ::execv("/bin/true", argv);
             return 1;
         }},
        {"mount", [] { return ::syscall(SYS_mount, "none", "/mnt", "tmpfs", 0, nullptr) == 0 ? 0 : 1; }},
        {"unshare", [] { return ::unshare(CLONE_NEWNS) == 0 ? 0 : 1; }},
        {"setns", [] { return ::syscall(SYS_setns, 0, 0) == 0 ? 0 : 1; }},
        {"ptrace", [] { return ::syscall(SYS_ptrace, 16 /* PTRACE_ATTACH */, 1, 0, 0) == 0 ? 0 : 1; }},
        {"bpf", [] { return ::syscall(SYS_bpf, 0, nullptr, 0) == 0 ? 0 : 1; }},
        {"keyctl", [] { return ::syscall(SYS_keyctl, 0, 0, 0, 0, 0) == 0 ? 0 : 1; }},
        {"open_by_handle_at", [] { return ::syscall(SYS_open_by_handle_at, AT_FDCWD, nullptr, 0) >= 0 ? 0 : 1; }},
        {"shmget", [] { return ::syscall(SYS_shmget, 0, 4096, 0600) >= 0 ? 0 : 1; }},
        {"kill", [parent] { return ::kill(parent, 0) == 0 ? 0 : 1; }},  // another process: never
        {"kill", [] { return ::kill(-1, 0) == 0 ? 0 : 1; }},
        {"clone", [] {
             long r = ::syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
             if (r == 0) ::_exit(0);
             return r > 0 ? 0 : 1;
         }},
        // keystrokes pushed into the terminal: the request's high bits set
        // must not slip past the filter (the kernel reads 32 bits)
        {"ioctl", [] {
             char c = 'x';
             return ::syscall(SYS_ioctl, 2, 0x100000000ul | TIOCSTI, &c) == 0 ? 0 : 1;
         }},
        // a controlling terminal taken, the death signal cleared (also with
        // the option's high bits set: the kernel reads 32)
        {"ioctl", [] { return ::syscall(SYS_ioctl, 2, TIOCSCTTY, 1) == 0 ? 0 : 1; }},
        {"prctl", [] { return ::prctl(PR_SET_PDEATHSIG, 0) == 0 ? 0 : 1; }},
        {"prctl", [] { return ::prctl(PR_SET_PDEATHSIG, SIGCHLD) == 0 ? 0 : 1; }},
        {"prctl", [] { return ::syscall(SYS_prctl, (1ul << 32) | PR_SET_PDEATHSIG, 0) == 0 ? 0 : 1; }},
    };
    for (auto& c : cases) {
        Outcome o = in_tool_child(SeccompProfile::Importer, "image import", c.f);
        EXPECT_TRUE(stopped_naming(o, "image import", c.call))
            << c.call << ": status " << o.status << ", stderr: " << o.err;
        EXPECT_NE(o.err.find("an image importer never needs"), std::string::npos) << o.err;
    }
}

// What unpacking does still works: files, fifos, xattrs, threads (clone3
// says ENOSYS, glibc falls back to clone), a signal to itself, and
// io_uring reads as missing rather than killing.
TEST(ToolSeccomp, TheImporterStillUnpacks) {
    TempDir td;
    const std::string& d = td.path;
    Outcome o = in_tool_child(SeccompProfile::Importer, "image import", [&] {
        int dir = ::open(d.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
        int fd = ::openat(dir, "f", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (dir < 0 || fd < 0 || ::write(fd, "x", 1) != 1) return 2;
        if (::fchownat(dir, "f", ::geteuid(), ::getegid(), AT_SYMLINK_NOFOLLOW) < 0) return 3;
        if (::mknodat(dir, "p", S_IFIFO | 0600, 0) < 0 || ::linkat(dir, "f", dir, "g", 0) < 0) return 4;
        if (::fsetxattr(fd, "user.t", "v", 1, 0) < 0 && errno != ENOTSUP) return 5;
        int v = 0;
        std::thread t([&] { v = 7; });
        t.join();
        if (v != 7) return 6;
        if (::kill(::getpid(), 0) < 0 || ::syscall(SYS_tgkill, ::getpid(), ::gettid(), 0) < 0) return 7;
        if (::syscall(SYS_io_uring_setup, 1, nullptr) != -1 || errno != ENOSYS) return 8;
        // FICLONE shares btrfs's ioctl type and stays allowed (reflinks);
        // here it fails on what the fds are, not in the filter.
        if (::ioctl(fd, FICLONE, fd) == 0 || errno == ENOTTY) return 9;
        // The file systems' ways past every path answer "not a tty", in any
        // encoding: XFS_IOC_OPEN_BY_HANDLE (_IOWR('X', 107, 48 bytes)),
        // BTRFS_IOC_TREE_SEARCH (_IOWR(0x94, 17, 4096)) and its v2 (another
        // size), FS_IOC_SETFSLABEL (0x94, 50), EXT4_IOC_SETFSUUID ('f' 44),
        // one with the high bits set.
        for (unsigned long req : {0xc030586bul, 0xd0009411ul, 0xc0709411ul, 0x41009432ul, 0x4008662cul,
                                  (1ul << 32) | 0xc030586bul}) {
            errno = 0;
            if (::syscall(SYS_ioctl, fd, req, nullptr) != -1 || errno != ENOTTY) return 11;
        }
        // the programs the writer starts keep their death signal: SIGKILL
        if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) return 10;
        return 0;
    });
    ASSERT_TRUE(WIFEXITED(o.status)) << "killed by signal " << WTERMSIG(o.status) << ": " << o.err;
    EXPECT_EQ(WEXITSTATUS(o.status), 0) << o.err;
}

// The disk writer runs sfdisk, mkfs.ext4 and qemu-img: exec and fork work
// under its filter (and the filter goes with them), a socket is refused
// with an error its programs handle, a mount still stops it.
TEST(ToolSeccomp, TheDiskWriterRunsProgramsButNoMount) {
    Outcome o = in_tool_child(SeccompProfile::DiskWriter, "disk create", [] {
        pid_t c = ::fork();
        if (c == 0) {
            char* argv[] = {const_cast<char*>("/bin/sh"), const_cast<char*>("-c"),
                            const_cast<char*>("grep -q '^Seccomp:.*2' /proc/self/status"), nullptr};
            ::execv("/bin/sh", argv);
            ::_exit(127);
        }
        int st = 0;
        if (c < 0 || ::waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return 2;
        if (::socket(AF_UNIX, SOCK_STREAM, 0) != -1 || errno != EACCES) return 3;
        return 0;
    });
    ASSERT_TRUE(WIFEXITED(o.status)) << "killed by signal " << WTERMSIG(o.status) << ": " << o.err;
    EXPECT_EQ(WEXITSTATUS(o.status), 0) << o.err;
    Outcome m = in_tool_child(SeccompProfile::DiskWriter, "disk create", [] {
        return ::syscall(SYS_umount2, "/", 0) == 0 ? 0 : 1;
    });
    EXPECT_TRUE(stopped_naming(m, "disk create", "umount2")) << m.status << ": " << m.err;
    EXPECT_NE(m.err.find("a disk writer never needs"), std::string::npos) << m.err;
}

// Runs `checks` in a child confined by confine_tool(profile, view); its
// exit status (0: all held; 10: confine_tool failed) and its stderr.
Outcome in_confined_tool(SeccompProfile profile, const ToolView& view, const std::function<int()>& checks) {
    return in_child(
        [&] {
            try {
                confine_tool("test tool", profile, {}, view);
            } catch (const std::exception& e) {
                std::fprintf(stderr, "confine_tool: %s\n", e.what());
                ::_exit(10);
            }
        },
        checks);
}

// confine_tool's view of the host, in a child (root: its own namespaces;
// a user: the same inside a user namespace): a root of its own that shows
// the writable and readable paths alone, at their own paths (no host file
// such as /etc/passwd; /proc/sys not writable: uid 0 needs no capability
// to write core_pattern), the harmless devices, a PID namespace of its own
// (it is PID 1, /proc is its namespace's) and no network.
TEST(Sandbox, ConfinedToolSeesOnlyItsView) {
    TempDir td;
    const std::string d = std::filesystem::canonical(td.path).string();
    struct stat host_net, host_pid;
    ASSERT_EQ(::stat("/proc/self/ns/net", &host_net), 0);
    ASSERT_EQ(::stat("/proc/self/ns/pid", &host_pid), 0);
    ASSERT_EQ(::access("/etc/passwd", F_OK), 0);
    ASSERT_EQ(::mkdir((d + "/store").c_str(), 0700), 0);
    ASSERT_EQ(::mkdir((d + "/source").c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((d + "/outside").c_str(), 0700), 0);
    { std::ofstream(d + "/source/layer") << "layer"; }
    { std::ofstream(d + "/outside/secret") << "secret"; }
    ToolView view;
    view.writable = {d + "/store"};
    view.readable = {d + "/source"};
    // An fd it keeps, and a directory fd it must not: openat(.., "..")
    // from it would walk the host's tree.
    const int kept = ::open("/dev/null", O_RDONLY);
    const int leaked = ::open(d.c_str(), O_PATH | O_DIRECTORY);
    ASSERT_GE(kept, 3);
    ASSERT_GE(leaked, 3);
    view.keep_fds = {kept};
    Outcome c = in_confined_tool(SeccompProfile::Importer, view, [&] {
        // only the fds it keeps: the pipe to the test is fd 2
        for (int fd = 3; fd < 64; ++fd)
            if (::fcntl(fd, F_GETFD) >= 0 && fd != kept) {
                char l[256] = {};
                (void)!::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), l, sizeof l - 1);
                std::fprintf(stderr, "fd %d -> %s\n", fd, l);
                return 23;
            }
        int in = ::open((d + "/store/f").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (in < 0) return 11;
        char buf[16] = {};
        int src = ::open((d + "/source/layer").c_str(), O_RDONLY | O_CLOEXEC);
        if (src < 0 || ::read(src, buf, sizeof buf) != 5) return 12;
        errno = 0;
        if (::open((d + "/source/new").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600) >= 0 || errno != EROFS) return 13;
        errno = 0;
        if (::open((d + "/outside/secret").c_str(), O_RDONLY | O_CLOEXEC) >= 0 || errno != ENOENT) return 14;
        errno = 0;
        if (::open("/etc/passwd", O_RDONLY | O_CLOEXEC) >= 0 || errno != ENOENT) return 15;
        // Its own /proc (subset=pid) has no sys/: ENOENT; a read-only one EROFS.
        errno = 0;
        if (::open("/proc/sys/kernel/core_pattern", O_WRONLY | O_CLOEXEC) >= 0 || (errno != ENOENT && errno != EROFS))
            return 16;
        if (::open("/dev/null", O_RDWR | O_CLOEXEC) < 0) return 17;
        struct stat st;
        if (::stat("/proc/self/ns/net", &st) < 0 || st.st_ino == host_net.st_ino) return 18;
        if (::getpid() != 1 || ::stat("/proc/1/fd", &st) < 0) return 19;
        if (::stat("/proc/self/ns/pid", &st) < 0 || st.st_ino == host_pid.st_ino) return 20;
        errno = 0;
        if (::mkdir("/new", 0755) == 0 || errno != EROFS) return 21;
        if (::getsid(0) != ::getpid()) return 22;  // a session of its own: kill(0) reaches nobody else
        return 0;
    });
    ::close(kept);
    ::close(leaked);
    bool written = std::filesystem::exists(d + "/store/f");
    ASSERT_TRUE(WIFEXITED(c.status)) << "killed by signal " << WTERMSIG(c.status) << ": " << c.err;
    EXPECT_EQ(WEXITSTATUS(c.status), 0)
        << "(10: confine_tool failed, 11: no write in the store, 12: the source unreadable, 13: the source "
           "writable, 14: a host file outside the view readable, 15: /etc/passwd visible, 16: core_pattern "
           "writable, 17: no /dev/null, 18: the host's network, 19: not PID 1 with a /proc of its own, 20: the "
           "host's PID namespace, 21: its root writable, 22: not a session of its own, 23: an fd it was not "
           "given) "
        << c.err;
    EXPECT_TRUE(written);
    EXPECT_FALSE(std::filesystem::exists(d + "/source/new"));
    // The warning of a user without user namespaces would mean none of this
    // was checked: enable them (sysctl user.max_user_namespaces) to run it.
    EXPECT_EQ(c.err.find("cannot create a user namespace"), std::string::npos) << c.err;
}

// The disk writer's view adds what running its programs takes: /usr (and
// /bin, /sbin as links), the dynamic linker's cache, and a program outside
// /usr (that file alone); still no host secret, and OUTPUT's directory the
// only place it writes, where nothing runs. (As a user it is the same, in
// a user namespace of its own.)
TEST(Sandbox, ConfinedDiskWriterRunsItsPrograms) {
    TempDir td;
    const std::string d = std::filesystem::canonical(td.path).string();
    ASSERT_EQ(::mkdir((d + "/out").c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((d + "/bin").c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((d + "/tree").c_str(), 0755), 0);
    {
        std::ofstream sh(d + "/bin/tool");
        sh << "#!/bin/sh\necho ran > \"$1\"\n";
    }
    ASSERT_EQ(::chmod((d + "/bin/tool").c_str(), 0755), 0);
    ToolView view;
    view.writable = {d + "/out"};
    view.readable = {d + "/tree"};
    view.programs = {d + "/bin/tool", "/usr/bin/true"};
    ASSERT_TRUE(std::filesystem::copy_file("/usr/bin/true", d + "/out/true"));
    { std::ofstream(d + "/bin/other") << "not shown"; }
    Outcome c = in_confined_tool(SeccompProfile::DiskWriter, view, [&] {
        auto run = [](std::vector<std::string> argv) {
            pid_t p = ::fork();
            if (p == 0) {
                std::vector<char*> a;
                for (auto& s : argv) a.push_back(s.data());
                a.push_back(nullptr);
                ::execv(a[0], a.data());
                ::_exit(127);
            }
            int st = 0;
            return p > 0 && ::waitpid(p, &st, 0) == p && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        };
        if (run({"/bin/true"}) != 0) return 11;
        if (run({d + "/bin/tool", d + "/out/x"}) != 0) return 12;
        if (run({d + "/out/true"}) != 127) return 16;  // OUTPUT's directory is noexec
        errno = 0;
        if (::open("/etc/shadow", O_RDONLY | O_CLOEXEC) >= 0 || errno != ENOENT) return 13;
        errno = 0;
        if (::open((d + "/bin/y").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600) >= 0 || errno != EROFS) return 14;
        errno = 0;
        if (::open("/usr/z", O_WRONLY | O_CREAT | O_CLOEXEC, 0600) >= 0 || errno != EROFS) return 15;
        // A program outside /usr is shown alone, not its directory.
        if (::access((d + "/bin/other").c_str(), F_OK) == 0) return 17;
        return 0;
    });
    ASSERT_TRUE(WIFEXITED(c.status)) << "killed by signal " << WTERMSIG(c.status) << ": " << c.err;
    EXPECT_EQ(WEXITSTATUS(c.status), 0) << "(10: confine_tool failed, 11: /bin/true did not run, 12: a program "
                                           "outside /usr did not run, 13: /etc/shadow visible, 14: a program's "
                                           "directory writable, 15: /usr writable, 16: a program in OUTPUT's "
                                           "directory ran, 17: a program's directory shown whole) "
                                        << c.err;
    std::ifstream in(d + "/out/x");
    std::string line;
    std::getline(in, line);
    EXPECT_EQ(line, "ran");
}
