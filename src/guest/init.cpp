// ocivm-init: PID 1 of an ocivm VM, linked statically into the initramfs.
//
// It loads the virtio modules, mounts the image root (virtio-fs, read-only)
// under a tmpfs-backed overlay so the image is never modified, switches into
// it, mounts the API file systems and the -v shares, and then either runs the
// command itself (direct mode) or hands over to the image's systemd, which
// runs "ocivm-init --run-command" from a unit once the system is up. Output
// goes over its own virtio-serial ports, never the kernel console; the exit
// status over the control port (see protocol.h).
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "guest/agent.h"
#include "guest/command.h"
#include "guest/fuse_relay.h"  // stream shares
#include "guest/net_config.h"  // network
#include "guest/protocol.h"
#include "util/io.h"

namespace {

using ocivm::guest::GuestConfig;
using ocivm::guest::mkdir_p;

bool g_pid1 = false;
int g_control = -1;
pid_t g_agent = -1;  // direct mode: the exec agent, a child of PID 1
int g_agent_starts = 0;

void say(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = std::vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > static_cast<int>(sizeof buf) - 2) n = sizeof buf - 2;
    buf[n++] = '\n';
    int fd = ::open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) fd = 2;
    ssize_t w = ::write(fd, "ocivm-init: ", 12);
    w = ::write(fd, buf, static_cast<size_t>(n));
    (void)w;
    if (fd != 2) ::close(fd);
}

using ocivm::write_all;

void control(const std::string& line) {
    if (g_control >= 0) write_all(g_control, (line + "\n").data(), line.size() + 1);
}

[[noreturn]] void power_off() {
    ::sync();
    if (g_pid1) {
        ::reboot(RB_POWER_OFF);
        for (;;) ::pause();
    }
    ::_exit(0);
}

[[noreturn]] void fatal(const char* fmt, ...) {
    char buf[900];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    say("%s", buf);
    control(std::string("error 125 ") + buf);
    power_off();
}

std::string read_file(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return {};
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    ::close(fd);
    return out;
}

bool write_file(const std::string& path, const std::string& data, mode_t mode = 0644) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) return false;
    bool ok = write_all(fd, data.data(), data.size());
    ::close(fd);
    return ok;
}

void must_mount(const char* src, const std::string& dst, const char* type, unsigned long flags,
                const char* data) {
    mkdir_p(dst);
    if (::mount(src, dst.c_str(), type, flags, data) < 0)
        fatal("cannot mount %s (%s) on %s: %s", src, type, dst.c_str(), std::strerror(errno));
}

void load_modules() {
    std::string order = read_file("/ocivm/modules.order");
    size_t pos = 0;
    while (pos < order.size()) {
        size_t nl = order.find('\n', pos);
        if (nl == std::string::npos) nl = order.size();
        std::string name = order.substr(pos, nl - pos);
        pos = nl + 1;
        if (name.empty()) continue;
        std::string path = "/ocivm/modules/" + name;
        int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) fatal("cannot open module %s: %s", path.c_str(), std::strerror(errno));
        if (::syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
            fatal("cannot load module %s: %s", name.c_str(), std::strerror(errno));
        ::close(fd);
    }
}

// virtio-serial ports by name ("ocivm.control" -> "/dev/vport1p4"); they
// appear shortly after virtio_console binds, so wait for all of them.
std::map<std::string, std::string> find_ports(double wait_s) {
    std::map<std::string, std::string> ports;
    for (int tries = 0; tries < static_cast<int>(wait_s * 100); ++tries) {
        ports = ocivm::guest::virtio_ports();
        if (ports.count(ocivm::guest::kPortControl) && ports.count(ocivm::guest::kPortStdout) &&
            ports.count(ocivm::guest::kPortStderr) && ports.count(ocivm::guest::kPortStdin))
            return ports;
        ::usleep(10000);
    }
    return ports;
}

struct Ports {
    int out = -1, err = -1, in = -1;
};

Ports open_ports() {
    auto ports = find_ports(20);
    auto open_port = [&ports](const char* name, int flags) {
        auto it = ports.find(name);
        if (it == ports.end()) fatal("virtio-serial port %s did not appear", name);
        int fd = ::open(it->second.c_str(), flags | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) fatal("cannot open port %s (%s): %s", name, it->second.c_str(), std::strerror(errno));
        return fd;
    };
    g_control = open_port(ocivm::guest::kPortControl, O_RDWR);
    Ports p;
    p.out = open_port(ocivm::guest::kPortStdout, O_WRONLY);
    p.err = open_port(ocivm::guest::kPortStderr, O_WRONLY);
    p.in = open_port(ocivm::guest::kPortStdin, O_RDONLY);
    return p;
}

struct Relay {
    int from = -1, to = -1;
    uint64_t bytes = 0;
};

// Copies what is readable now; returns false at end of file (or error).
bool pump(Relay& r) {
    char buf[65536];
    ssize_t n = ::read(r.from, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
    if (n <= 0) return false;
    if (write_all(r.to, buf, static_cast<size_t>(n))) r.bytes += static_cast<uint64_t>(n);
    return true;
}

// The exec agent in a child of its own, so a crash of it (or of a session
// it serves) never takes PID 1 down; restarted a few times if it dies (its
// Hello tells the host that the sessions it had are gone).
void start_agent() {
    pid_t p = ::fork();
    if (p < 0) {
        say("cannot start the exec agent: %s", std::strerror(errno));
        return;
    }
    if (p == 0) {
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        if (g_control >= 0) ::close(g_control);
        ::_exit(ocivm::guest::agent_main());
    }
    g_agent = p;
    ++g_agent_starts;
}

void respawn_agent() {
    g_agent = -1;
    if (g_agent_starts >= 5) {
        say("the exec agent died %d times; not restarting it", g_agent_starts);
        return;
    }
    say("the exec agent died; restarting it");
    start_agent();
}

// Runs the command with its own session, the configured identity, and its
// output relayed (and counted) to the ports; reports to the host. Returns
// after the host confirmed it has all of the output.
void run_command(const GuestConfig& c, const Ports& ports) {
    int outpipe[2] = {-1, -1}, errout[2] = {-1, -1};
    int master = -1;
    ocivm::guest::CommandStdio io;
    if (c.tty) {
        master = ::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0 || ::grantpt(master) < 0 || ::unlockpt(master) < 0)
            fatal("cannot allocate a pty: %s", std::strerror(errno));
        io.tty = ::ptsname(master);
        ocivm::guest::set_winsize(master, c.rows, c.cols);
    } else if (::pipe2(outpipe, O_CLOEXEC) < 0 || ::pipe2(errout, O_CLOEXEC) < 0) {
        fatal("pipe: %s", std::strerror(errno));
    } else {
        io.in = c.stdin_open ? ports.in : -1;
        io.out = outpipe[1];
        io.err = errout[1];
    }
    sigset_t all;
    sigfillset(&all);
    ocivm::guest::SpawnFailure failure;
    pid_t child = ocivm::guest::spawn_command(c, io, &failure);
    if (!c.tty) {
        ::close(outpipe[1]);
        ::close(errout[1]);
    }
    bool failed = child < 0;
    if (failed) {
        say("%s", failure.message.c_str());
        control("error " + std::to_string(failure.code) + " " + failure.message);
    } else {
        control("started " + std::to_string(child));
    }

    int sfd = ::signalfd(-1, &all, SFD_CLOEXEC | SFD_NONBLOCK);
    std::vector<Relay> relays;
    if (c.tty) {
        relays.push_back({master, ports.out, 0});
    } else {
        relays.push_back({outpipe[0], ports.out, 0});
        relays.push_back({errout[0], ports.err, 0});
    }
    Relay input{c.tty && c.stdin_open ? ports.in : -1, master, 0};
    std::vector<bool> open_relay(relays.size(), true);
    bool child_done = failed;
    int status = 0;
    std::string ctl_buf;
    bool bye = false;
    while (true) {
        bool any_open = false;
        for (bool o : open_relay) any_open |= o;
        if (child_done && !any_open) break;
        std::vector<pollfd> pf;
        pf.push_back({sfd, POLLIN, 0});
        pf.push_back({g_control, POLLIN, 0});
        pf.push_back({input.from, POLLIN, 0});
        for (size_t i = 0; i < relays.size(); ++i) pf.push_back({open_relay[i] ? relays[i].from : -1, POLLIN, 0});
        // Once the command is gone, what is left in the pipes is drained
        // without waiting for writers that may never close them.
        int n = ::poll(pf.data(), pf.size(), child_done ? 0 : -1);
        if (n < 0 && errno != EINTR) fatal("poll: %s", std::strerror(errno));
        if (n == 0 && child_done) break;
        if (pf[0].revents & POLLIN) {
            signalfd_siginfo si;
            while (::read(sfd, &si, sizeof si) == sizeof si) {
                if (si.ssi_signo != SIGCHLD && !child_done) ::kill(child, static_cast<int>(si.ssi_signo));
            }
            int st;
            pid_t p;
            while ((p = ::waitpid(-1, &st, WNOHANG)) > 0) {
                if (p == child && !child_done) {
                    child_done = true;
                    status = st;
                } else if (p == g_agent && !child_done) {
                    respawn_agent();
                }
            }
        }
        if (pf[1].revents & (POLLIN | POLLHUP)) {
            char buf[256];
            ssize_t r = ::read(g_control, buf, sizeof buf);
            if (r > 0) ctl_buf.append(buf, static_cast<size_t>(r));
            size_t nl;
            while ((nl = ctl_buf.find('\n')) != std::string::npos) {
                std::string line = ctl_buf.substr(0, nl);
                ctl_buf.erase(0, nl + 1);
                unsigned a = 0, b = 0;
                if (line == "bye") bye = true;
                // A clone of a snapshot: its host has seen none of the
                // output counted so far, and counts from here.
                else if (line == "restore")
                    for (auto& r : relays) r.bytes = 0;
                else if (std::sscanf(line.c_str(), "signal %u", &a) == 1 && !child_done) ::kill(-child, static_cast<int>(a));
                else if (std::sscanf(line.c_str(), "winsize %u %u", &a, &b) == 2 && master >= 0)
                    ocivm::guest::set_winsize(master, a, b);
            }
        }
        if (pf[2].revents & (POLLIN | POLLHUP)) {
            if (!pump(input)) input.from = -1;
        }
        for (size_t i = 0; i < relays.size(); ++i)
            if (pf[3 + i].revents & (POLLIN | POLLHUP | POLLERR))
                if (!pump(relays[i])) open_relay[i] = false;
    }
    // The command is the container: when it ends, so does everything it left.
    if (g_pid1) {
        ::sync();  // while the relays of stream shares still run
        ::kill(-1, SIGKILL);
        while (::waitpid(-1, nullptr, 0) > 0) {
        }
        for (size_t i = 0; i < relays.size(); ++i)
            while (open_relay[i] && pump(relays[i])) {
            }
    }
    ::sync();
    uint64_t out_bytes = relays[0].bytes, err_bytes = relays.size() > 1 ? relays[1].bytes : 0;
    if (!failed) {
        std::string counts = " " + std::to_string(out_bytes) + " " + std::to_string(err_bytes);
        if (WIFSIGNALED(status)) control("signal " + std::to_string(WTERMSIG(status)) + counts);
        else control("exit " + std::to_string(WEXITSTATUS(status)) + counts);
    }
    // Wait (bounded) for the host to confirm it has read every byte.
    std::string line = ctl_buf;
    for (int i = 0; i < 1000 && !bye && line.find("bye") == std::string::npos; ++i) {
        pollfd p{g_control, POLLIN, 0};
        if (::poll(&p, 1, 10) <= 0) continue;
        char buf[64];
        ssize_t r = ::read(g_control, buf, sizeof buf);
        if (r <= 0) continue;
        line.append(buf, static_cast<size_t>(r));
        if (line.find("bye") != std::string::npos) break;
    }
}

// A deferred boot (GuestConfig::deferred): the command's configuration
// arrives on the control port as "command LEN\n" and LEN bytes, once the
// host has saved the booted VM (or restored one it saved). Other lines
// ("restore") are not for this moment and are dropped.
GuestConfig wait_for_command() {
    control("stage waiting");
    std::string buf;
    while (true) {
        size_t nl;
        while ((nl = buf.find('\n')) != std::string::npos) {
            // "command LEN" exactly: digits up to the newline, nothing else.
            unsigned long n = 0;
            bool is_command = nl > 8 && nl < 16 && buf.compare(0, 8, "command ") == 0;
            for (size_t i = 8; is_command && i < nl; ++i) {
                if (buf[i] < '0' || buf[i] > '9') is_command = false;
                else n = n * 10 + static_cast<unsigned long>(buf[i] - '0');
            }
            if (is_command && n <= (1ul << 20)) {
                if (buf.size() < nl + 1 + n) break;  // the rest is still coming
                GuestConfig c;
                std::string err = ocivm::guest::decode(buf.substr(nl + 1, n), c);
                if (!err.empty()) fatal("bad command configuration from the host: %s", err.c_str());
                return c;
            }
            buf.erase(0, nl + 1);
        }
        if (buf.size() > (2ul << 20)) buf.clear();
        pollfd p{g_control, POLLIN, 0};
        if (::poll(&p, 1, -1) <= 0) continue;
        char chunk[65536];
        ssize_t r = ::read(g_control, chunk, sizeof chunk);
        if (r > 0) buf.append(chunk, static_cast<size_t>(r));
        else if (r == 0) ::usleep(10000);  // no host on the port (yet)
    }
}

GuestConfig load_config(const char* path) {
    GuestConfig c;
    std::string text = read_file(path);
    if (text.empty()) fatal("no configuration at %s", path);
    std::string err = ocivm::guest::decode(text, c);
    if (!err.empty()) fatal("bad configuration: %s", err.c_str());
    return c;
}

void mount_api_filesystems(const GuestConfig& c) {
    must_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
    must_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
    must_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    must_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5");
    ::unlink("/dev/ptmx");
    ::symlink("pts/ptmx", "/dev/ptmx");
    must_mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    ::symlink("/proc/self/fd", "/dev/fd");
    ::symlink("/proc/self/fd/0", "/dev/stdin");
    ::symlink("/proc/self/fd/1", "/dev/stdout");
    ::symlink("/proc/self/fd/2", "/dev/stderr");
    must_mount("run", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    must_mount("tmp", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    for (auto& v : c.volumes) {
        if (v.stream) {  // stream share: a FUSE mount relayed over a virtio-serial port
            std::string err;
            if (ocivm::guest::start_fuse_relay(v, &err) < 0) fatal("%s", err.c_str());
            continue;
        }
        must_mount(v.tag.c_str(), v.path, "virtiofs",
                   (v.readonly ? MS_RDONLY : 0) | (v.nodev ? MS_NODEV : 0) | (v.nosuid ? MS_NOSUID : 0) |
                       (v.noexec ? MS_NOEXEC : 0),
                   nullptr);
    }
}

// The partition with this PARTUUID on a virtio disk, read from the GPT
// itself (no udev, no blkid in here); waits for the disk to appear.
std::string find_partition(const std::string& partuuid) {
    std::string want;
    for (char ch : partuuid) want += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    for (int tries = 0; tries < 1000; ++tries) {
        if (DIR* d = ::opendir("/sys/block")) {
            std::vector<std::string> disks;
            while (dirent* e = ::readdir(d))
                if (std::strncmp(e->d_name, "vd", 2) == 0) disks.push_back(e->d_name);
            ::closedir(d);
            for (auto& disk : disks) {
                int fd = ::open(("/dev/" + disk).c_str(), O_RDONLY | O_CLOEXEC);
                if (fd < 0) continue;
                unsigned char hdr[512];
                std::vector<unsigned char> entries;
                if (::pread(fd, hdr, sizeof hdr, 512) == 512 && std::memcmp(hdr, "EFI PART", 8) == 0) {
                    uint64_t lba;
                    uint32_t n, size;
                    std::memcpy(&lba, hdr + 72, 8);
                    std::memcpy(&n, hdr + 80, 4);
                    std::memcpy(&size, hdr + 84, 4);
                    if (n > 0 && n <= 1024 && size >= 128 && size <= 4096) {
                        entries.resize(static_cast<size_t>(n) * size);
                        if (::pread(fd, entries.data(), entries.size(), static_cast<off_t>(lba * 512)) !=
                            static_cast<ssize_t>(entries.size()))
                            entries.clear();
                        for (uint32_t i = 0; i < n && !entries.empty(); ++i)
                            if (ocivm::guest::gpt_guid_text(entries.data() + static_cast<size_t>(i) * size + 16) == want) {
                                ::close(fd);
                                std::string dev = "/dev/" + disk + std::to_string(i + 1);
                                for (int w = 0; w < 500 && ::access(dev.c_str(), F_OK) != 0; ++w) ::usleep(10000);
                                return dev;
                            }
                    }
                }
                ::close(fd);
            }
        }
        ::usleep(10000);
    }
    fatal("no disk partition with PARTUUID=%s appeared", partuuid.c_str());
}

// The image root, read-only (virtio-fs, an EROFS disk, or the disk's
// partition), under a tmpfs upper layer.
void mount_root(const GuestConfig& c) {
    if (c.root_erofs) {
        // The first virtio-blk disk is the image (no partition table).
        for (int w = 0; w < 1000 && ::access("/dev/vda", F_OK) != 0; ++w) ::usleep(10000);
        must_mount("/dev/vda", "/ocivm/lower", "erofs", MS_RDONLY, nullptr);
    } else if (c.root_partuuid.empty()) {
        must_mount(ocivm::guest::kRootTag, "/ocivm/lower", "virtiofs", MS_RDONLY, nullptr);
    } else {
        std::string dev = find_partition(c.root_partuuid);
        // ocivm disk create makes ext4 or xfs.
        if (::mount(dev.c_str(), "/ocivm/lower", "ext4", MS_RDONLY, nullptr) < 0) {
            int e4 = errno;
            if (::mount(dev.c_str(), "/ocivm/lower", "xfs", MS_RDONLY, nullptr) < 0)
                fatal("cannot mount the root partition %s as ext4 (%s) or xfs (%s)", dev.c_str(), std::strerror(e4),
                      std::strerror(errno));
        }
    }
    must_mount("ocivm-rw", "/ocivm/rw", "tmpfs", 0, "mode=0755");
    struct stat st;
    if (::stat("/ocivm/lower", &st) < 0) fatal("stat of the image root: %s", std::strerror(errno));
    mkdir_p("/ocivm/rw/upper");
    mkdir_p("/ocivm/rw/work");
    ::chmod("/ocivm/rw/upper", st.st_mode & 07777);
    if (::chown("/ocivm/rw/upper", st.st_uid, st.st_gid) < 0) say("chown of the upper layer: %s", std::strerror(errno));
    must_mount("overlay", "/ocivm/root", "overlay", 0,
               "lowerdir=/ocivm/lower,upperdir=/ocivm/rw/upper,workdir=/ocivm/rw/work");
}

void switch_root(const char* newroot) {
    if (::chdir(newroot) < 0 || ::mount(".", "/", nullptr, MS_MOVE, nullptr) < 0 || ::chroot(".") < 0 ||
        ::chdir("/") < 0)
        fatal("cannot switch to the image root: %s", std::strerror(errno));
}

// systemd mode: volatile journal, no getty on the console, and a unit that
// runs the command through this binary once the system is up.
void prepare_systemd(const GuestConfig& c) {
    mkdir_p("/etc/systemd/journald.conf.d");
    write_file("/etc/systemd/journald.conf.d/ocivm.conf", "[Journal]\nStorage=volatile\n");
    mkdir_p("/etc/systemd/system/multi-user.target.wants");
    if (!c.tty) {
        // Every getty systemd might put on the console, VM or container style.
        for (auto* unit : {"serial-getty@ttyS0.service", "getty@tty1.service", "console-getty.service",
                           "container-getty@.service", "serial-getty@hvc0.service"})
            ::symlink("/dev/null", (std::string("/etc/systemd/system/") + unit).c_str());
    }
    write_file("/etc/systemd/system/ocivm-command.service",
               "[Unit]\nDescription=ocivm: the container command\nAfter=basic.target\n"
               "[Service]\nType=idle\nExecStart=/run/ocivm/ocivm-init --run-command\n"
               "StandardInput=null\nStandardOutput=journal+console\nStandardError=journal+console\n");
    ::symlink("/etc/systemd/system/ocivm-command.service",
              "/etc/systemd/system/multi-user.target.wants/ocivm-command.service");
    // The exec agent as early as systemd can start it, restarted if it dies.
    write_file("/etc/systemd/system/ocivm-agent.service",
               "[Unit]\nDescription=ocivm: the exec agent\nDefaultDependencies=no\nAfter=local-fs.target\n"
               "[Service]\nExecStart=/run/ocivm/ocivm-init --agent\nRestart=always\nRestartSec=100ms\n"
               "StandardInput=null\nStandardOutput=journal\nStandardError=journal+console\n");
    ::symlink("/etc/systemd/system/ocivm-agent.service",
              "/etc/systemd/system/multi-user.target.wants/ocivm-agent.service");
}

int pid1_main() {
    g_pid1 = true;
    ::mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    ::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
    ::mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
    say("loading modules");
    load_modules();
    Ports ports = open_ports();
    control("stage init");
    GuestConfig c = load_config("/ocivm/config");
    std::string self = read_file("/proc/self/exe");  // copied into the root for systemd mode
    mount_root(c);
    control("stage root");
    switch_root("/ocivm/root");
    mount_api_filesystems(c);
    ocivm::guest::configure_network(say);  // network: lo, ocivm.net= from the kernel command line
    if (::sethostname(c.hostname.data(), c.hostname.size()) < 0) say("sethostname: %s", std::strerror(errno));
    if (c.systemd) {
        mkdir_p("/run/ocivm");
        if (!write_file("/run/ocivm/ocivm-init", self, 0755) ||
            !write_file("/run/ocivm/config", ocivm::guest::encode(c)))
            fatal("cannot write /run/ocivm: %s", std::strerror(errno));
        prepare_systemd(c);
        const char* inits[] = {"/sbin/init", "/lib/systemd/systemd", "/usr/lib/systemd/systemd"};
        for (auto* init : inits) {
            if (::access(init, X_OK) != 0) continue;
            control(std::string("stage systemd ") + init);
            for (int fd : {ports.out, ports.err, ports.in, g_control}) ::close(fd);
            g_control = -1;
            ::execl(init, init, "systemd.show_status=0", static_cast<char*>(nullptr));
            ports = open_ports();
            fatal("cannot execute %s: %s", init, std::strerror(errno));
        }
        fatal("--systemd: the image has no /sbin/init or /lib/systemd/systemd");
    }
    sigset_t all;
    sigfillset(&all);
    ::sigprocmask(SIG_BLOCK, &all, nullptr);
    start_agent();
    if (c.deferred) {
        c = wait_for_command();
        if (::sethostname(c.hostname.data(), c.hostname.size()) < 0) say("sethostname: %s", std::strerror(errno));
    }
    run_command(c, ports);
    power_off();
}

}  // namespace

int main(int argc, char** argv) {
    if (::getpid() == 1) return pid1_main();
    if (argc > 1 && std::strcmp(argv[1], "--agent") == 0) return ocivm::guest::agent_main();  // systemd's unit
    if (argc > 1 && std::strcmp(argv[1], "--run-command") == 0) {
        // Started by the ocivm-command unit under systemd.
        GuestConfig c = load_config("/run/ocivm/config");
        Ports ports = open_ports();
        sigset_t all;
        sigfillset(&all);
        ::sigprocmask(SIG_BLOCK, &all, nullptr);
        run_command(c, ports);
        ::execl("/bin/systemctl", "systemctl", "poweroff", "--no-block", static_cast<char*>(nullptr));
        return 0;
    }
    std::fprintf(stderr, "ocivm-init is the init of ocivm's VMs; it runs as PID 1 inside the guest\n");
    return 2;
}
