#pragma once
// One directory served to the guest over virtio-fs by a process of its
// own: `ocivm fsd` on the vhost-user socket QEMU is handed, confined in its
// own namespaces with the share as its root, fewer capabilities and a
// seccomp allow-list. A guest that breaks the server holds nothing of the
// supervisor: not QEMU's channels, not the other shares, not the host.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fs/passthrough.h"
#include "util/process.h"
#include "util/unique_fd.h"

namespace ocivm::vm {

class ShareServer {
public:
    struct Config {
        std::string dir;
        fs::CacheMode mode = fs::CacheMode::Auto;
        bool readonly = false, nodev = true, nosuid = true, override_stat = false, trusted_xattrs = false,
             writeback = false;
        // The stream transport (FUSE frames on a virtio-serial port, relayed
        // by the guest's ocivm-init) instead of vhost-user: a share of a VM
        // that can be snapshotted.
        bool stream = false;
        // Nonzero: dir must be this directory (`fsd --shared-dir-identity`).
        uint64_t root_dev = 0, root_ino = 0;
        std::string trace;
        int stderr_fd = SpawnOptions::kInherit;  // a detached VM's servers log to a file
    };
    struct Stats {
        uint64_t requests = 0;
        std::vector<std::string> summary;  // the last 10 s, as lines
        bool livelock = false;
        std::string verdict;
        bool answered = false;
    };

    ShareServer(const Config& c, UniqueFd vhost_sock);
    // QEMU is gone by now, and with it the server's socket: it exits on its
    // own (writing the end of its trace); one that does not is killed.
    ~ShareServer();
    ShareServer(const ShareServer&) = delete;
    ShareServer& operator=(const ShareServer&) = delete;

    // Asks the server for its statistics; `answered` is false when it does
    // not answer within a second (it is gone, or stuck).
    Stats stats();

    // A stream share, around a snapshot: the server pauses the guest's relay
    // (its requests wait in the guest) and stops once nothing is in flight
    // (start_quiesce asks, await_quiesce: "" once so, else why not by
    // deadline_ns, mono_ns() time); resume lets both go on.
    void start_quiesce(int timeout_ms);
    std::string await_quiesce(uint64_t deadline_ns);
    void resume();
    const std::string& dir() const { return dir_; }
    pid_t pid() const { return child_.pid(); }

private:
    // Sends cmd and collects the answer until done(answer so far); "" when
    // that does not come within timeout_ms.
    std::string ask(const std::string& cmd, const std::function<bool(const std::string&)>& done, int timeout_ms);
    bool send_line(const std::string& cmd);
    std::string collect(const std::function<bool(const std::string&)>& done, uint64_t deadline_ns);
    std::string dir_;
    bool quiesce_sent_ = false;
    ChildProcess child_;
    UniqueFd control_;
};

// Pauses every server's guest relay at once, with one deadline for all
// (timeout_ms): "" once all are quiet, else a message naming the share that
// is not (the caller resumes them all either way).
std::string quiesce_all(std::vector<std::unique_ptr<ShareServer>>& servers, int timeout_ms = 10000);

}  // namespace ocivm::vm
