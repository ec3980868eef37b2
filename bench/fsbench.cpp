// fsbench: the same file-system workloads on a native directory, through
// bindfs (libfuse passthrough) and through `ocivm mount` in each cache mode,
// interleaved and repeated in one run; prints medians and ratios.
//
//   fsbench --ocivm build/ocivm [--files 10000] [--tree 7000] [--big-mib 1024]
//           [--reps 3] [--modes never,metadata,auto,always] [--dir /var/tmp]
//           [--baseline OTHER_OCIVM]   (e.g. the previous commit's build: base-MODE
//                                       columns and a ratio table against it)
//           [--contend N]   N busy-loop processes, each in a session of its
//                           own, compete for the CPUs during every timed
//                           phase of every target (never while a target is
//                           being mounted, set up or unmounted)
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "util/error.h"
#include "util/mountinfo.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace stdfs = std::filesystem;

struct Args {
    std::string ocivm;
    int files = 10000;
    int tree = 7000;
    int big_mib = 1024;
    int reps = 3;
    std::vector<std::string> modes = {"never", "metadata", "auto", "always"};
    std::string dir = "/var/tmp";
    bool bindfs = true;
    std::string threads;  // --threads for ocivm mount, when given
    std::string spin;     // --spin-us for ocivm mount, when given
    std::string baseline; // another ocivm (the previous commit's), measured alongside
    int contend = 0;      // busy-loop processes during the timed phases
} g;

// The busy loops of --contend: separate processes (not threads of this one,
// so they compete for the CPUs as any other program would, each in a
// session of its own), forked once and held stopped (SIGSTOP) outside the
// timed phases so that mounting, setting up, dropping caches and
// unmounting run on a quiet machine. Plain globals: the signal handler and
// atexit() must reach them.
pid_t g_main_pid = 0;
pid_t g_spinners[64];
int g_nspinners = 0;

// The mount being measured and its server, for the same reason: a failure
// or a signal mid-run must not leave a FUSE server and its mount behind.
char g_mounted[4096];
pid_t g_server = -1;
char g_scratch[4096];  // the run's directory under --dir, removed on the way out

// Kills and reaps the busy loops, stops the server of the mount being
// measured and detaches the mount; async-signal-safe (kill, waitpid,
// umount2 only).
void kill_spinners() {
    if (getpid() != g_main_pid) return;  // a forked child between fork and exec
    for (int i = 0; i < g_nspinners; ++i) kill(g_spinners[i], SIGKILL);
    for (int i = 0; i < g_nspinners; ++i) waitpid(g_spinners[i], nullptr, 0);
    g_nspinners = 0;
    if (g_server > 0) {
        kill(g_server, SIGTERM);
        waitpid(g_server, nullptr, 0);
        g_server = -1;
    }
    if (g_mounted[0]) {
        umount2(g_mounted, MNT_DETACH | UMOUNT_NOFOLLOW);
        g_mounted[0] = 0;
    }
}

void on_fatal_signal(int sig) {
    kill_spinners();
    // Removing a tree is no work for a signal handler: say where it is.
    if (g_scratch[0] && getpid() == g_main_pid) {
        const char m[] = "fsbench: stopped by a signal; its files are left in ";
        (void)!write(2, m, sizeof m - 1);
        (void)!write(2, g_scratch, strlen(g_scratch));
        (void)!write(2, "\n", 1);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

[[noreturn]] void die(const std::string& m) {
    std::fprintf(stderr, "fsbench: %s\n", m.c_str());
    kill_spinners();  // no busy loop, server or mount outlives a failure (also at exit)
    if (g_scratch[0]) {
        std::error_code ec;
        stdfs::remove_all(g_scratch, ec);
    }
    std::exit(1);
}

// Once, before anything is started: kill_spinners at exit and on a fatal
// signal (SIGPIPE too: fsbench piped into head must not leave a mount).
void install_cleanup() {
    g_main_pid = getpid();
    std::atexit(kill_spinners);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGABRT, SIGSEGV, SIGPIPE}) signal(sig, on_fatal_signal);
}

void start_spinners(int n) {
    for (int i = 0; i < n; ++i) {
        pid_t pid = fork();
        if (pid < 0) die(std::string("cannot fork a busy loop: ") + strerror(errno));
        if (pid == 0) {
            for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGABRT, SIGSEGV, SIGPIPE}) signal(sig, SIG_DFL);
            // Even a SIGKILLed fsbench leaves no busy loop behind.
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != g_main_pid) _exit(0);
            // A session of its own, as a program started elsewhere has: with
            // autogroup scheduling (the kernel's default without systemd's
            // slices) a session's processes share one CPU share, and loops
            // in fsbench's session would compete inside it with fsbench and
            // the servers (docs/benchmarks.md, session 12). Ctrl-Z stops
            // fsbench, not them.
            if (setsid() < 0) _exit(1);  // the parent then says the loop did not start
            raise(SIGSTOP);
            volatile unsigned long spin = 0;
            for (;;) spin = spin + 1;
        }
        g_spinners[g_nspinners++] = pid;
        // Stopped before the next is forked: none runs before the first phase.
        int st = 0;
        if (waitpid(pid, &st, WUNTRACED) != pid || !WIFSTOPPED(st)) die("a busy loop did not start");
    }
}

// Around each timed phase: the loops spin exactly while the clock runs.
void contention_on() {
    for (int i = 0; i < g_nspinners; ++i) kill(g_spinners[i], SIGCONT);
}
void contention_off() {
    for (int i = 0; i < g_nspinners; ++i) kill(g_spinners[i], SIGSTOP);
    // Wait until each has really stopped, so the untimed work that follows
    // (drop_caches, unmount, the next target's mount) is not contended.
    for (int i = 0; i < g_nspinners; ++i) {
        int st = 0;
        if (waitpid(g_spinners[i], &st, WUNTRACED) != g_spinners[i] || !WIFSTOPPED(st))
            die("a busy loop did not stop");
    }
}

// From the mount table (libmount), not stat(): a FUSE mount whose server has
// not answered INIT yet would block a stat.
bool mounted(const std::string& path) {
    try {
        return ocivm::find_mount(path).has_value();
    } catch (const ocivm::Error& e) {
        die(e.what());
    }
}

pid_t spawn(const std::vector<std::string>& args, bool quiet = true) {
    pid_t pid = fork();
    if (pid == 0) {
        if (quiet) {
            int fd = open("/dev/null", O_WRONLY);
            dup2(fd, 1);
        }
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        execvp(argv[0], argv.data());
        std::fprintf(stderr, "fsbench: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return pid;
}
int wait_for(pid_t pid) {
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void drop_caches() {
    sync();
    std::ofstream("/proc/sys/vm/drop_caches") << "3";
}

// One file system under test: how to mount its source at its mount point.
struct Target {
    std::string name;  // "native", "bindfs", "ocivm-always", ...
    std::string src, mnt;
    pid_t server = -1;

    std::string root() const { return name == "native" ? src : mnt; }

    void mount_it() {
        if (name == "native") return;
        if (name == "bindfs") {
            // In the foreground, in fsbench's session beside the client, as
            // `ocivm mount` runs: where a server runs decides a contended
            // figure (docs/benchmarks.md, session 12).
            server = spawn({"bindfs", "-f", src, mnt});
            g_server = server;
        } else {
            bool base = name.rfind("base-", 0) == 0;
            std::string mode = name.substr(name.find('-') + 1);
            std::vector<std::string> cmd = {base ? g.baseline : g.ocivm, "mount", src, mnt, "--cache", mode};
            if (!g.threads.empty()) cmd.insert(cmd.end(), {"--threads", g.threads});
            if (!g.spin.empty()) cmd.insert(cmd.end(), {"--spin-us", g.spin});
            server = spawn(cmd);
            g_server = server;
        }
        std::snprintf(g_mounted, sizeof g_mounted, "%s", mnt.c_str());
        for (int i = 0; i < 1000 && !mounted(mnt); ++i) usleep(5000);
        if (!mounted(mnt)) die(name + " did not mount " + mnt);
    }
    void unmount_it() {
        if (name == "native") return;
        if (server > 0) {
            kill(server, SIGTERM);
            wait_for(server);
            server = g_server = -1;
        } else {
            umount2(mnt.c_str(), UMOUNT_NOFOLLOW);
        }
        for (int i = 0; i < 1000 && mounted(mnt); ++i) usleep(5000);
        g_mounted[0] = 0;
    }
};

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Times one phase; the busy loops (if any) run from just before the clock
// starts until just after it stops.
struct Stopwatch {
    Clock::time_point t0;
    void start() {
        contention_on();
        t0 = Clock::now();
    }
    double stop() {
        double s = seconds_since(t0);
        contention_off();
        return s;
    }
};

std::string fname(const std::string& dir, int i) { return dir + "/file" + std::to_string(i); }

// Each workload returns microseconds per operation (or MB/s for the big ones).
std::map<std::string, double> run_workloads(const Target& t) {
    std::map<std::string, double> r;
    std::string dir = t.root() + "/files";
    mkdir(dir.c_str(), 0755);
    std::string block(4096, 'b');
    char buf[4096];

    Stopwatch timer;
    timer.start();
    for (int i = 0; i < g.files; ++i) {
        int fd = open(fname(dir, i).c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd < 0 || write(fd, block.data(), block.size()) != 4096) die("create failed on " + t.name);
        close(fd);
    }
    r["create"] = timer.stop() * 1e6 / g.files;

    timer.start();
    for (int i = 0; i < g.files; ++i) {
        struct stat st;
        if (stat(fname(dir, i).c_str(), &st) != 0) die("stat failed on " + t.name);
    }
    r["stat"] = timer.stop() * 1e6 / g.files;

    timer.start();
    for (int i = 0; i < g.files; ++i) {
        int fd = open(fname(dir, i).c_str(), O_RDONLY);
        if (fd < 0 || read(fd, buf, sizeof buf) != 4096) die("read failed on " + t.name);
        close(fd);
    }
    r["open+read 4K"] = timer.stop() * 1e6 / g.files;

    timer.start();
    for (int i = 0; i < g.files; ++i)
        if (unlink(fname(dir, i).c_str()) != 0) die("unlink failed on " + t.name);
    r["unlink"] = timer.stop() * 1e6 / g.files;
    rmdir(dir.c_str());

    // ls -lR of the prepared tree, cold (caches dropped) then warm.
    drop_caches();
    for (const char* phase : {"ls -lR cold", "ls -lR warm"}) {
        timer.start();
        if (wait_for(spawn({"ls", "-lR", t.root() + "/tree"})) != 0) die("ls -lR failed on " + t.name);
        r[phase] = timer.stop() * 1e6 / g.tree;
    }

    // Sequential write then read of one big file in 1 MiB blocks.
    std::string big = t.root() + "/big";
    std::string mib(1 << 20, 'w');
    timer.start();
    int fd = open(big.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
    for (int i = 0; i < g.big_mib; ++i)
        if (write(fd, mib.data(), mib.size()) != static_cast<ssize_t>(mib.size())) die("write failed on " + t.name);
    close(fd);
    // Timed to close: the FUSE path, not the disk's writeback (flushed below).
    r["seq write MB/s"] = g.big_mib * 1.048576 / timer.stop();
    drop_caches();
    timer.start();
    fd = open(big.c_str(), O_RDONLY);
    ssize_t n;
    size_t total = 0;
    while ((n = read(fd, mib.data(), mib.size())) > 0) total += static_cast<size_t>(n);
    close(fd);
    double read_s = timer.stop();
    if (total != static_cast<size_t>(g.big_mib) << 20) die("short read on " + t.name);
    r["seq read MB/s"] = g.big_mib * 1.048576 / read_s;
    unlink(big.c_str());
    return r;
}

void make_tree(const std::string& root) {
    // tree/dNN/fMMM: 70 directories of files, g.tree entries in all.
    std::string tree = root + "/tree";
    mkdir(tree.c_str(), 0755);
    int per_dir = 100, made = 0;
    for (int d = 0; made < g.tree; ++d) {
        std::string dd = tree + "/d" + std::to_string(d);
        mkdir(dd.c_str(), 0755);
        ++made;
        for (int f = 0; f < per_dir - 1 && made < g.tree; ++f, ++made) {
            int fd = open((dd + "/f" + std::to_string(f)).c_str(), O_CREAT | O_WRONLY, 0644);
            close(fd);
        }
    }
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) die("option " + a + " needs a value");
            return argv[++i];
        };
        if (a == "--ocivm") g.ocivm = next();
        else if (a == "--files") g.files = std::stoi(next());
        else if (a == "--tree") g.tree = std::stoi(next());
        else if (a == "--big-mib") g.big_mib = std::stoi(next());
        else if (a == "--reps") g.reps = std::stoi(next());
        else if (a == "--dir") g.dir = next();
        else if (a == "--no-bindfs") g.bindfs = false;
        else if (a == "--threads") g.threads = next();
        else if (a == "--spin-us") g.spin = next();
        else if (a == "--baseline") g.baseline = next();
        else if (a == "--contend") g.contend = std::stoi(next());
        else if (a == "--modes") {
            g.modes.clear();
            std::stringstream ss(next());
            std::string m;
            while (std::getline(ss, m, ',')) g.modes.push_back(m);
        } else {
            die("unknown option " + a +
                "; usage: fsbench --ocivm PATH [--files N] [--tree N] [--big-mib N] [--reps N] "
                "[--modes LIST] [--dir DIR] [--no-bindfs] [--threads N] [--spin-us N] [--baseline OTHER_OCIVM] "
                "[--contend N]");
        }
    }
    if (g.ocivm.empty()) die("--ocivm PATH is required");
    if (g.contend < 0 || g.contend > static_cast<int>(sizeof g_spinners / sizeof g_spinners[0]))
        die("--contend takes 0 to 64 busy loops");
    if (geteuid() != 0) die("run as root (mounts and drop_caches)");
    if (g.bindfs && system("command -v bindfs >/dev/null") != 0)
        die("bindfs is not installed: apt-get install bindfs (or scripts/install-deps.sh)");
    install_cleanup();
    if (g.contend > 0) start_spinners(g.contend);
    // Every table of a contended run says so: its figures are not the quiet ones.
    std::string contended =
        g.contend > 0 ? " [CONTENDED: " + std::to_string(g.contend) + " busy loops, each in its own session, during every timed phase]" : "";

    // A fresh directory of fsbench's own (mkdtemp: 0700, never one that was
    // there before): everything below is created, mounted on and removed
    // as root, through paths that follow symlinks.
    std::string tmpl = g.dir + "/ocivm-fsbench.XXXXXX";
    if (tmpl.size() >= sizeof g_scratch) die("--dir is too long");
    std::snprintf(g_scratch, sizeof g_scratch, "%s", tmpl.c_str());
    if (!mkdtemp(g_scratch)) {
        int e = errno;
        g_scratch[0] = 0;
        die("cannot make a scratch directory in " + g.dir + ": " + strerror(e));
    }
    // As the mount table names it (mounted() compares paths): --dir may
    // run through a symlink.
    char* real = realpath(g_scratch, nullptr);
    if (!real) die(std::string("cannot resolve ") + g_scratch + ": " + strerror(errno));
    const std::string base = real;
    free(real);
    std::vector<Target> targets;
    std::vector<std::string> names = {"native"};
    if (g.bindfs) names.push_back("bindfs");
    for (auto& m : g.modes) names.push_back("ocivm-" + m);
    if (!g.baseline.empty())
        for (auto& m : g.modes) names.push_back("base-" + m);
    for (auto& n : names) {
        Target t{n, base + "/" + n + "-src", base + "/" + n + "-mnt"};
        stdfs::create_directories(t.src);
        stdfs::create_directories(t.mnt);
        make_tree(t.src);
        targets.push_back(t);
    }
    std::printf("fsbench: %d files, %d-entry tree, %d MiB sequential, %d repetitions, %u cores, in %s%s\n",
                g.files, g.tree, g.big_mib, g.reps, std::thread::hardware_concurrency(), g.dir.c_str(),
                contended.c_str());
    std::map<std::string, std::map<std::string, std::vector<double>>> results;
    for (int rep = 0; rep < g.reps; ++rep) {
        for (auto& t : targets) {
            t.mount_it();
            auto r = run_workloads(t);
            t.unmount_it();
            for (auto& [k, v] : r) results[t.name][k].push_back(v);
            std::fprintf(stderr, "  rep %d/%d %-16s done\n", rep + 1, g.reps, t.name.c_str());
        }
    }

    const std::vector<std::string> rows = {"create", "stat", "open+read 4K", "unlink",
                                           "ls -lR cold", "ls -lR warm", "seq write MB/s",
                                           "seq read MB/s"};
    std::printf("\nmedian of %d; per-op rows in us/entry (lower is better), MB/s rows higher is better%s\n\n",
                g.reps, contended.c_str());
    std::printf("| workload |");
    for (auto& t : targets) std::printf(" %s |", t.name.c_str());
    std::printf("\n|---|");
    for (size_t i = 0; i < targets.size(); ++i) std::printf("---|");
    std::printf("\n");
    for (auto& row : rows) {
        std::printf("| %s |", row.c_str());
        for (auto& t : targets) std::printf(" %.1f |", median(results[t.name][row]));
        std::printf("\n");
    }
    // Ratios: time of ocivm / time of peer (for MB/s rows: peer MB/s / ocivm MB/s),
    // so below 1.0 means ocivm is faster.
    for (const char* peer : {"bindfs", "native"}) {
        if (!results.count(peer)) continue;
        std::printf("\nratio ocivm time / %s time (below 1.0: ocivm faster)%s\n\n| workload |", peer,
                    contended.c_str());
        for (auto& t : targets)
            if (t.name.rfind("ocivm-", 0) == 0) std::printf(" %s |", t.name.c_str());
        std::printf("\n|---|");
        for (auto& t : targets)
            if (t.name.rfind("ocivm-", 0) == 0) std::printf("---|");
        std::printf("\n");
        for (auto& row : rows) {
            bool rate = row.find("MB/s") != std::string::npos;
            std::printf("| %s |", row.c_str());
            for (auto& t : targets) {
                if (t.name.rfind("ocivm-", 0) != 0) continue;
                double o = median(results[t.name][row]), p = median(results[peer][row]);
                std::printf(" %.2f |", rate ? p / o : o / p);
            }
            std::printf("\n");
        }
    }
    if (!g.baseline.empty()) {
        std::printf("\nratio ocivm time / baseline time, same mode (%s; below 1.0: this build faster)%s\n\n"
                    "| workload |",
                    g.baseline.c_str(), contended.c_str());
        for (auto& m : g.modes) std::printf(" %s |", m.c_str());
        std::printf("\n|---|");
        for (size_t i = 0; i < g.modes.size(); ++i) std::printf("---|");
        std::printf("\n");
        for (auto& row : rows) {
            bool rate = row.find("MB/s") != std::string::npos;
            std::printf("| %s |", row.c_str());
            for (auto& m : g.modes) {
                double o = median(results["ocivm-" + m][row]), b = median(results["base-" + m][row]);
                std::printf(" %.2f |", rate ? b / o : o / b);
            }
            std::printf("\n");
        }
    }
    stdfs::remove_all(base);
    kill_spinners();
    return 0;
}
