#include "harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "util/error.h"
#include "util/hash.h"
#include "util/mountinfo.h"

namespace ocivm::fuzz {

namespace {

std::string g_root;       // what init_process made; the reaper removes it
std::string g_workspace;  // g_root/work
std::set<int> g_special_fds_at_init;
dev_t g_workspace_dev = 0;
unsigned long g_dir_counter = 0;

// FIFOs and devices that live in the workspace (what the code under test
// creates there); pipes, /dev/null and the like are not its business.
bool is_special(const struct stat& st) {
    return st.st_dev == g_workspace_dev && (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode));
}

std::set<int> special_fds() {
    std::set<int> out;
    DIR* d = ::opendir("/proc/self/fd");
    if (!d) fail("cannot list /proc/self/fd: %s", std::strerror(errno));
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        int fd = std::atoi(e->d_name);
        if (fd == ::dirfd(d)) continue;
        int fl = ::fcntl(fd, F_GETFL);
        if (fl < 0 || (fl & O_PATH)) continue;
        struct stat st;
        if (::fstat(fd, &st) == 0 && is_special(st)) out.insert(fd);
    }
    ::closedir(d);
    return out;
}

std::string real_path(const std::string& p) {
    char buf[PATH_MAX];
    if (!::realpath(p.c_str(), buf)) return {};
    return buf;
}

std::string dir_of(const std::string& p) {
    size_t s = p.rfind('/');
    if (s == std::string::npos) return ".";
    return s == 0 ? "/" : p.substr(0, s);
}

// Directories libFuzzer writes to, from its command line.
std::set<std::string> writable_dirs(int* argc, char*** argv) {
    std::set<std::string> w;
    auto add = [&](const std::string& p) {
        std::string r = real_path(p);
        if (!r.empty()) w.insert(r);
    };
    char cwd[PATH_MAX];
    if (::getcwd(cwd, sizeof cwd)) add(cwd);
    if (const char* env = std::getenv("OCIVM_FUZZ_WRITABLE")) {
        std::stringstream ss(env);
        for (std::string p; std::getline(ss, p, ':');)
            if (!p.empty()) add(p);
    }
    if (argc && argv) {
        for (int i = 1; i < *argc; ++i) {
            std::string a = (*argv)[i];
            auto value = [&](const char* flag) -> std::string {
                std::string f = std::string("-") + flag + "=";
                return a.rfind(f, 0) == 0 ? a.substr(f.size()) : std::string();
            };
            if (a[0] != '-') {
                struct stat st;
                if (::stat(a.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) add(a);
                continue;
            }
            std::string v = value("artifact_prefix");
            if (!v.empty()) add(v.back() == '/' ? v : dir_of(v));
            for (const char* f : {"exact_artifact_path", "merge_control_file", "features_dir"})
                if (std::string x = value(f); !x.empty()) add(std::string(f) == "features_dir" ? x : dir_of(x));
        }
    }
    return w;
}

// See init_process: everything read-only and nodev but the workspace and
// what libFuzzer writes.
void confine(const std::set<std::string>& writable) {
    // A new mount namespace applies to the calling thread only.
    std::vector<std::string> tasks = list_dir("/proc/self/task");
    if (tasks.size() != 1)
        fail("init_process must run before any thread exists (%zu threads)", tasks.size());
    if (::unshare(CLONE_NEWNS) < 0) fail("unshare(CLONE_NEWNS): %s", std::strerror(errno));
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0)
        fail("making / private: %s", std::strerror(errno));
    std::set<std::string> keep = writable;
    for (auto& w : writable)
        if (::mount(w.c_str(), w.c_str(), nullptr, MS_BIND | MS_REC, nullptr) < 0)
            fail("bind-mounting %s: %s", w.c_str(), std::strerror(errno));
    // The few devices a process may legitimately open stay usable.
    for (const char* dev : {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}) {
        if (::access(dev, F_OK) != 0) continue;
        if (::mount(dev, dev, nullptr, MS_BIND, nullptr) < 0)
            fail("bind-mounting %s: %s", dev, std::strerror(errno));
        keep.insert(dev);
    }
    if (::mount("ocivm-fuzz", g_root.c_str(), "tmpfs", MS_NODEV | MS_NOSUID, "size=1g,mode=0755") < 0)
        fail("mounting a tmpfs on %s: %s", g_root.c_str(), std::strerror(errno));
    keep.insert(g_root);

    std::vector<MountEntry> mounts;
    try {
        mounts = self_mounts();
    } catch (const Error& e) {
        fail("%s", e.what());
    }
    for (auto& m : mounts) {
        const std::string& point = m.target;
        if (keep.count(point)) continue;
        std::set<std::string> o;
        std::stringstream os(m.vfs_options);
        for (std::string x; std::getline(os, x, ',');) o.insert(x);
        if (o.count("ro") && o.count("nodev")) continue;
        unsigned long flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NODEV | MS_NOSUID;
        if (o.count("noexec")) flags |= MS_NOEXEC;
        if (::mount(nullptr, point.c_str(), nullptr, flags, nullptr) < 0) {
            if (errno == ENOENT) continue;  // shadowed by a later mount on a parent
            fail("remounting %s read-only: %s", point.c_str(), std::strerror(errno));
        }
    }
    // The working directory must be the bind mount, not the read-only
    // directory under it.
    char cwd[PATH_MAX];
    if (::getcwd(cwd, sizeof cwd) && ::chdir(cwd) < 0) fail("chdir %s: %s", cwd, std::strerror(errno));
}

// Waits for the fuzzing process to end (the pipe's write end closes with
// it, whatever kills it) and removes its workspace.
void start_reaper() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) < 0) fail("pipe2: %s", std::strerror(errno));
    pid_t pid = ::fork();
    if (pid < 0) fail("fork: %s", std::strerror(errno));
    if (pid == 0) {
        ::close(p[1]);
        // Nothing of the fuzzer's but the pipe and stderr stays open here.
        if (p[0] > 3) ::close_range(3, static_cast<unsigned>(p[0]) - 1, 0);
        ::close_range(static_cast<unsigned>(p[0]) + 1, ~0u, 0);
        if (p[0] != 0) ::close(0);
        if (p[0] != 1) ::close(1);
        for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) ::signal(s, SIG_IGN);
        ::prctl(PR_SET_NAME, "ocivm-fuzz-reap");
        char c;
        ssize_t n;
        do n = ::read(p[0], &c, 1);
        while (n < 0 && errno == EINTR);
        remove_tree(g_root);
        ::_exit(0);
    }
    ::close(p[0]);
    // p[1] stays open (close-on-exec) for the life of this process.
}

}  // namespace

// OCIVM_FUZZ_TOLERATE=ID,ID...: findings already reported (and not yet
// fixed) that a long exploratory run should step over to find others.
bool tolerating(const char* id) {
    static const std::set<std::string> ids = [] {
        std::set<std::string> out;
        if (const char* e = std::getenv("OCIVM_FUZZ_TOLERATE")) {
            std::stringstream ss(e);
            for (std::string x; std::getline(ss, x, ',');)
                if (!x.empty()) out.insert(x);
        }
        return out;
    }();
    return ids.count(id) != 0;
}

void finding(const char* id, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char msg[1024];
    std::vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (tolerating(id)) {
        static std::set<std::string> said;
        if (said.insert(id).second)
            std::fprintf(stderr, "ocivm-fuzz: tolerating known finding [%s] (OCIVM_FUZZ_TOLERATE): %s\n", id, msg);
        return;
    }
    fail("[%s] %s", id, msg);
}

void steered(const char* id, const char* what) {
    static std::set<std::string> said;
    if (said.insert(id).second)
        std::fprintf(stderr, "ocivm-fuzz: tolerating known finding [%s] (OCIVM_FUZZ_TOLERATE): %s\n", id, what);
}

void fail(const char* fmt, ...) {
    std::fprintf(stderr, "ocivm-fuzz: FINDING: ");
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "\n");
    std::fflush(stderr);
    std::abort();
}

void init_process(int* argc, char*** argv) {
    static bool done = false;
    if (done) return;
    done = true;

    auto logger = std::make_shared<spdlog::logger>("ocivm-fuzz", std::make_shared<spdlog::sinks::null_sink_mt>());
    logger->set_level(spdlog::level::trace);
    spdlog::set_default_logger(logger);

    struct rlimit fsize{64u << 20, 64u << 20};
    if (::setrlimit(RLIMIT_FSIZE, &fsize) < 0) fail("setrlimit(RLIMIT_FSIZE): %s", std::strerror(errno));
    ::signal(SIGXFSZ, SIG_IGN);  // EFBIG instead of death

    const char* tmp = std::getenv("TMPDIR");
    std::string base = tmp && *tmp ? tmp : "/tmp";
    std::string name = base + "/ocivm-fuzz-" + program_invocation_short_name + "-XXXXXX";
    if (!::mkdtemp(name.data())) fail("mkdtemp %s: %s", name.c_str(), std::strerror(errno));
    g_root = real_path(name);
    g_workspace = g_root + "/work";
    start_reaper();
    if (::geteuid() == 0) {
        auto w = writable_dirs(argc, argv);
        confine(w);
        // What runs from here (libFuzzer's -minimize_crash and -fork
        // children, which confine themselves in turn) finds a writable
        // TMPDIR in this tmpfs.
        std::string tmpdir = g_root + "/tmp";
        if (::mkdir(tmpdir.c_str(), 0700) < 0) fail("mkdir %s: %s", tmpdir.c_str(), std::strerror(errno));
        ::setenv("TMPDIR", tmpdir.c_str(), 1);
        if (verbose()) {
            std::fprintf(stderr, "ocivm-fuzz: confined; workspace %s (tmpfs); writable:", g_workspace.c_str());
            for (auto& d : w) std::fprintf(stderr, " %s", d.c_str());
            std::fprintf(stderr, "\n");
        }
    } else if (verbose()) {
        std::fprintf(stderr, "ocivm-fuzz: not root, not confined; workspace %s\n", g_workspace.c_str());
    }
    if (::mkdir(g_workspace.c_str(), 0755) < 0) fail("mkdir %s: %s", g_workspace.c_str(), std::strerror(errno));
    struct stat ws;
    if (::stat(g_workspace.c_str(), &ws) < 0) fail("stat %s: %s", g_workspace.c_str(), std::strerror(errno));
    g_workspace_dev = ws.st_dev;
    g_special_fds_at_init = special_fds();
}

bool verbose() {
    static const bool v = [] {
        const char* e = std::getenv("OCIVM_FUZZ_VERBOSE");
        return e && *e && std::strcmp(e, "0") != 0;
    }();
    return v;
}

const std::string& workspace() { return g_workspace; }

std::string fresh_dir(const char* tag) {
    std::string p = g_workspace + "/" + tag + "-" + std::to_string(++g_dir_counter);
    if (::mkdir(p.c_str(), 0755) < 0) fail("mkdir %s: %s", p.c_str(), std::strerror(errno));
    return p;
}

namespace {
void remove_at(int dirfd, const char* name) {
    struct stat st;
    if (::fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) return;
    if (S_ISDIR(st.st_mode)) {
        int fd = ::openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno == EACCES) {
            ::fchmodat(dirfd, name, 0700, 0);
            fd = ::openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        if (fd >= 0) {
            if ((st.st_mode & 0700) != 0700) ::fchmod(fd, 0700);
            DIR* d = ::fdopendir(fd);
            std::vector<std::string> names;
            while (dirent* e = ::readdir(d))
                if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, "..")) names.push_back(e->d_name);
            for (auto& n : names) remove_at(::dirfd(d), n.c_str());
            ::closedir(d);
        }
        ::unlinkat(dirfd, name, AT_REMOVEDIR);
    } else {
        ::unlinkat(dirfd, name, 0);
    }
}
}  // namespace

void remove_tree(const std::string& path) {
    if (path.empty()) return;
    remove_at(AT_FDCWD, path.c_str());
}

std::vector<std::string> list_dir(const std::string& path) {
    DIR* d = ::opendir(path.c_str());
    if (!d) fail("cannot list %s: %s", path.c_str(), std::strerror(errno));
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d))
        if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, "..")) names.push_back(e->d_name);
    ::closedir(d);
    std::sort(names.begin(), names.end());
    return names;
}

void expect_entries(const std::string& dir, std::vector<std::string> names, const char* id, const char* why) {
    std::sort(names.begin(), names.end());
    auto got = list_dir(dir);
    if (got == names) return;
    std::string g;
    for (auto& n : got) g += " '" + n + "'";
    finding(id, "%s: %s holds%s", why, dir.c_str(), g.empty() ? " nothing" : g.c_str());
}

void write_file(const std::string& path, const void* data, size_t len) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) fail("cannot create %s: %s", path.c_str(), std::strerror(errno));
    const char* p = static_cast<const char*>(data);
    while (len) {
        ssize_t n = ::write(fd, p, len);
        if (n <= 0) fail("cannot write %s: %s", path.c_str(), std::strerror(errno));
        p += n;
        len -= static_cast<size_t>(n);
    }
    ::close(fd);
}

std::string read_file_or_empty(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void check_no_special_fds(const char* after) {
    for (int fd : special_fds()) {
        if (fd <= 2 || g_special_fds_at_init.count(fd)) continue;
        char link[PATH_MAX] = {};
        std::string p = "/proc/self/fd/" + std::to_string(fd);
        ssize_t n = ::readlink(p.c_str(), link, sizeof link - 1);
        if (n < 0) link[0] = 0;
        finding("special-fd", "after %s the process holds fd %d open on a FIFO or device (%s)", after, fd, link);
    }
}

std::string sha256_hex(const void* data, size_t len) {
    Sha256 h;
    h.update(data, len);
    return h.hex();
}

}  // namespace ocivm::fuzz
