#pragma once
// Starts `ocivm mount` over a fresh share for the host-mount tests. All names
// are unique per process (pid + counter) so runs can overlap.
#include <sys/types.h>

#include <string>
#include <vector>

namespace ocivm::test {

struct Config {
    std::string ocivm;  // path to the ocivm binary
    std::string cache = "auto";
};
Config& config();

// A tmpfs holding share/ (served), native/ (the reference) and mnt/.
class Workspace {
public:
    Workspace();
    // Inside a VM: the mount is already there (virtio-fs at guest_mnt); only
    // the native reference directory is made, on a guest tmpfs.
    explicit Workspace(const std::string& guest_mnt);
    ~Workspace();
    std::string base, share, native, mnt;
    bool guest = false;
};

// One `ocivm mount` process; unmounted with SIGTERM on destruction.
class Mount {
public:
    Mount(const std::string& source, const std::string& mountpoint,
          const std::vector<std::string>& extra = {});
    ~Mount();
    // Sends SIGTERM and waits; returns the exit status (-1 if signalled).
    int stop();
    pid_t pid() const { return pid_; }

private:
    std::string mountpoint_;
    pid_t pid_ = -1;
};

bool is_mounted(const std::string& path);
std::string unique_name(const std::string& prefix);

}  // namespace ocivm::test
