#include "vm/qemu.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/error.h"

namespace ocivm::vm {

std::pair<std::vector<std::string>, std::vector<int>> qemu_argv(const QemuConfig& c) {
    std::vector<int> fds;
    auto pass = [&fds](int fd) { fds.push_back(fd); return std::to_string(2 + fds.size()); };
    bool micro = c.machine == "microvm";
    std::vector<std::string> a = {"qemu-system-x86_64", "-name", "ocivm"};
    if (c.kvm) a.insert(a.end(), {"-accel", "kvm", "-cpu", "host"});
    else a.insert(a.end(), {"-accel", "tcg"});
    // microvm has no PIT/HPET by default, and without a KVM clock the kernel
    // cannot calibrate its TSC: keep the legacy timer chips under TCG.
    if (micro) a.insert(a.end(), {"-machine", std::string("microvm,memory-backend=mem") + (c.kvm ? "" : ",pit=on,pic=on,rtc=on")});
    else a.insert(a.end(), {"-machine", "q35,memory-backend=mem"});
    a.insert(a.end(), {"-m", c.memory, "-smp", std::to_string(c.cpus),
                       "-object", "memory-backend-memfd,id=mem,size=" + c.memory + ",share=on",
                       "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                       "-kernel", c.kernel, "-initrd", c.initrd, "-append", c.append});
    a.insert(a.end(), {"-chardev", "socket,id=con,fd=" + pass(c.console), "-serial", "chardev:con"});
    a.insert(a.end(), {"-chardev", "socket,id=qmp,fd=" + pass(c.qmp), "-mon", "chardev=qmp,mode=control"});
    std::string dev = micro ? "-device" : "-device";
    a.insert(a.end(), {dev, micro ? "virtio-serial-device,max_ports=8" : "virtio-serial-pci,max_ports=8"});
    auto port = [&](const char* id, int fd, const char* name) {
        a.insert(a.end(), {"-chardev", std::string("socket,id=") + id + ",fd=" + pass(fd), "-device",
                           std::string("virtserialport,chardev=") + id + ",name=" + name});
    };
    port("pout", c.port_out, "ocivm.stdout");
    port("perr", c.port_err, "ocivm.stderr");
    port("pin", c.port_in, "ocivm.stdin");
    port("pctl", c.port_control, "ocivm.control");
    auto blk = [&](std::string file, const std::string& id, const std::string& opts) {
        for (size_t p = 0; (p = file.find(',', p)) != std::string::npos; p += 2) file.insert(p, ",");  // QEMU's escaping
        a.insert(a.end(), {"-drive", "file=" + file + ",if=none,id=" + id + "," + opts, "-device",
                           std::string(micro ? "virtio-blk-device" : "virtio-blk-pci") + ",drive=" + id});
    };
    if (!c.disk.empty()) blk(c.disk, "disk0", "readonly=on,format=" + c.disk_format);
    for (size_t k = 0; k < c.attach.size(); ++k) blk(c.attach[k], "attach" + std::to_string(k), "format=raw");
    int i = 0;
    for (auto& [tag, fd] : c.fs) {
        std::string id = "fs" + std::to_string(i++);
        a.insert(a.end(), {"-chardev", "socket,id=" + id + ",fd=" + pass(fd), "-device",
                           std::string(micro ? "vhost-user-fs-device" : "vhost-user-fs-pci") + ",chardev=" + id +
                               ",tag=" + tag + ",queue-size=1024"});
    }
    return {a, fds};
}

QemuProcess::~QemuProcess() {
    if (pid_ > 0) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
    }
}

void QemuProcess::start(const std::vector<std::string>& argv, const std::vector<int>& fds,
                        const std::string& log_path) {
    int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log < 0) throw_errno("cannot create " + log_path, errno);
    int errpipe[2];
    if (::pipe2(errpipe, O_CLOEXEC) < 0) throw_errno("pipe", errno);
    pid_t parent = ::getpid();
    pid_t pid = ::fork();
    if (pid < 0) throw_errno("cannot fork QEMU", errno);
    if (pid == 0) {
        // QEMU goes when ocivm goes, whatever kills it.
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(127);
        // Its own process group: a Ctrl-C on the terminal is ocivm's to handle.
        ::setpgid(0, 0);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        // Move the fds above every target number first, then down to 3, 4, ...
        std::vector<int> high;
        for (int fd : fds) high.push_back(::fcntl(fd, F_DUPFD_CLOEXEC, 1000));
        for (size_t i = 0; i < high.size(); ++i) ::dup2(high[i], static_cast<int>(3 + i));  // dup2 clears CLOEXEC
        int null = ::open("/dev/null", O_RDWR);
        ::dup2(null, 0);
        ::dup2(log, 1);
        ::dup2(log, 2);
        std::vector<char*> a;
        for (auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
        a.push_back(nullptr);
        ::execvp(a[0], a.data());
        int e = errno;
        ssize_t w = ::write(errpipe[1], &e, sizeof e);
        (void)w;
        ::_exit(127);
    }
    ::close(log);
    ::close(errpipe[1]);
    int e = 0;
    ssize_t n = ::read(errpipe[0], &e, sizeof e);
    ::close(errpipe[0]);
    if (n == sizeof e) {
        ::waitpid(pid, nullptr, 0);
        throw_errno("cannot run " + argv[0], e, "install QEMU (apt-get install qemu-system-x86)");
    }
    pid_ = pid;
}

bool QemuProcess::reap(int* st) {
    if (pid_ <= 0) return true;
    pid_t r = ::waitpid(pid_, st, WNOHANG);
    if (r == pid_) {
        pid_ = -1;
        return true;
    }
    return false;
}

void QemuProcess::kill_now() {
    if (pid_ > 0) ::kill(pid_, SIGKILL);
}

}  // namespace ocivm::vm
