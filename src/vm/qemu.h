#pragma once
// QEMU's command line for an ocivm VM and the QEMU process itself. Every
// channel to QEMU is a socketpair handed down as an inherited fd (no socket
// files to leak), and QEMU dies with ocivm (PR_SET_PDEATHSIG).
#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "net/network.h"  // network: net::QemuNetdev
#include "util/process.h"

namespace ocivm::vm {

struct QemuConfig {
    bool kvm = false;
    std::string machine = "microvm";  // microvm (virtio-mmio) or q35 (virtio-pci)
    std::string kernel, initrd, append;
    std::string memory = "512M";
    unsigned cpus = 1;
    // Our peers' ends, in the child's numbering assigned by qemu_argv.
    int console = -1, qmp = -1, port_out = -1, port_err = -1, port_in = -1, port_control = -1, port_agent = -1;
    std::vector<std::pair<std::string, int>> fs;  // tag, vhost-user socket
    // Stream shares: virtio-serial port name ("ocivm.fs.N"), the share
    // server's socket (src/transport/stream.h).
    std::vector<std::pair<std::string, int>> fs_ports;
    std::string disk, disk_format;                // a read-only virtio-blk disk
    std::vector<std::string> attach;              // writable raw virtio-blk disks, after it
    net::QemuNetdev net;                          // network: none unless active()
    // A clone of a snapshot: guest RAM is this file mapped privately
    // (copy-on-write), and QEMU waits for its device state (-incoming
    // defer), which the caller sends as "fd:3" (kIncomingFd: `incoming`,
    // ours, is handed down first).
    std::string memory_file;
    int incoming = -1;
};

inline constexpr int kIncomingFd = 3;

// The argv, and the fds (in the parent) to hand to QEMU as 3, 4, 5, ...
std::pair<std::vector<std::string>, std::vector<int>> qemu_argv(const QemuConfig& c);

// A running QEMU; the destructor kills and reaps it if it is still there.
class QemuProcess {
public:
    // Throws Error when QEMU cannot be started; stderr of QEMU goes to log_path.
    void start(const std::vector<std::string>& argv, const std::vector<int>& fds, const std::string& log_path);
    pid_t pid() const { return child_.pid(); }
    // Non-blocking reap; true once QEMU has exited (status in *st).
    bool reap(int* st);
    void kill_now();
    bool running() const { return child_.running(); }

private:
    ChildProcess child_;
};

}  // namespace ocivm::vm
