#include "vm/qemu.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/error.h"
#include "util/unique_fd.h"

namespace ocivm::vm {

std::pair<std::vector<std::string>, std::vector<int>> qemu_argv(const QemuConfig& c) {
    std::vector<int> fds;
    auto pass = [&fds](int fd) { fds.push_back(fd); return std::to_string(2 + fds.size()); };
    bool micro = c.machine == "microvm";
    if (c.incoming >= 0) pass(c.incoming);  // kIncomingFd
    auto escaped = [](std::string v) {  // QEMU's option syntax: ',' doubled
        for (size_t p = 0; (p = v.find(',', p)) != std::string::npos; p += 2) v.insert(p, ",");
        return v;
    };
    std::vector<std::string> a = {"qemu-system-x86_64", "-name", "ocivm"};
    if (c.kvm) a.insert(a.end(), {"-accel", "kvm", "-cpu", "host"});
    else a.insert(a.end(), {"-accel", "tcg"});
    // microvm has no PIT/HPET by default, and without a KVM clock the kernel
    // cannot calibrate its TSC: keep the legacy timer chips under TCG.
    if (micro) a.insert(a.end(), {"-machine", std::string("microvm,memory-backend=mem") + (c.kvm ? "" : ",pit=on,pic=on,rtc=on")});
    else a.insert(a.end(), {"-machine", "q35,memory-backend=mem"});
    a.insert(a.end(), {"-m", c.memory, "-smp", std::to_string(c.cpus),
                       "-object", c.memory_file.empty()
                                      ? "memory-backend-memfd,id=mem,size=" + c.memory + ",share=on"
                                      : "memory-backend-file,id=mem,size=" + c.memory + ",mem-path=" +
                                            escaped(c.memory_file) + ",share=off",
                       "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                       "-kernel", c.kernel, "-initrd", c.initrd, "-append", c.append});
    a.insert(a.end(), {"-chardev", "socket,id=con,fd=" + pass(c.console), "-serial", "chardev:con"});
    a.insert(a.end(), {"-chardev", "socket,id=qmp,fd=" + pass(c.qmp), "-mon", "chardev=qmp,mode=control"});
    std::string dev = micro ? "-device" : "-device";
    // 5 ports of ocivm's own, and one per stream share (-v of an EROFS-root VM).
    a.insert(a.end(), {dev, micro ? "virtio-serial-device,max_ports=32" : "virtio-serial-pci,max_ports=32"});
    auto port = [&](const char* id, int fd, const char* name) {
        a.insert(a.end(), {"-chardev", std::string("socket,id=") + id + ",fd=" + pass(fd), "-device",
                           std::string("virtserialport,chardev=") + id + ",name=" + name});
    };
    port("pout", c.port_out, "ocivm.stdout");
    port("perr", c.port_err, "ocivm.stderr");
    port("pin", c.port_in, "ocivm.stdin");
    port("pctl", c.port_control, "ocivm.control");
    if (c.port_agent >= 0) port("pagent", c.port_agent, "ocivm.agent");
    for (size_t k = 0; k < c.fs_ports.size(); ++k)
        port(("pfs" + std::to_string(k)).c_str(), c.fs_ports[k].second, c.fs_ports[k].first.c_str());
    if (c.incoming >= 0) a.insert(a.end(), {"-incoming", "defer"});
    auto blk = [&](const std::string& file, const std::string& id, const std::string& opts) {
        a.insert(a.end(), {"-drive", "file=" + escaped(file) + ",if=none,id=" + id + "," + opts, "-device",
                           std::string(micro ? "virtio-blk-device" : "virtio-blk-pci") + ",drive=" + id});
    };
    if (!c.disk.empty()) blk(c.disk, "disk0", "readonly=on,format=" + c.disk_format);
    for (size_t k = 0; k < c.attach.size(); ++k) blk(c.attach[k], "attach" + std::to_string(k), "format=raw");
    for (auto& w : net::qemu_args(c.net, pass)) a.push_back(w);  // network (src/net)
    int i = 0;
    for (auto& [tag, fd] : c.fs) {
        std::string id = "fs" + std::to_string(i++);
        a.insert(a.end(), {"-chardev", "socket,id=" + id + ",fd=" + pass(fd), "-device",
                           std::string(micro ? "vhost-user-fs-device" : "vhost-user-fs-pci") + ",chardev=" + id +
                               ",tag=" + tag + ",queue-size=1024"});
    }
    return {a, fds};
}

void QemuProcess::start(const std::vector<std::string>& argv, const std::vector<int>& fds,
                        const std::string& log_path) {
    UniqueFd log(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!log) throw_errno("cannot create " + log_path, errno);
    SpawnOptions so;
    so.argv = argv;
    so.fds = fds;
    so.stdout_fd = log.get();
    so.stderr_fd = log.get();
    // Its own process group: a Ctrl-C on the terminal is ocivm's to handle.
    so.new_process_group = true;
    child_ = ChildProcess::spawn(so, "install QEMU (apt-get install qemu-system-x86)");
}

bool QemuProcess::reap(int* st) { return child_.reap(st); }

void QemuProcess::kill_now() { child_.kill(SIGKILL); }

}  // namespace ocivm::vm
