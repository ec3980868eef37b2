#pragma once
// Starting a command in the guest the way a container runtime does: its own
// session, the configured groups, uid, gid, working directory (created when
// missing, as podman's -w) and environment, the program found through the
// command's own PATH. Shared by ocivm-init's main command and the exec
// agent's sessions (both in the static guest binary: libc only).
#include <sys/types.h>

#include <map>
#include <string>

#include "guest/protocol.h"

namespace ocivm::guest {

struct CommandStdio {
    int in = -1, out = -1, err = -1;  // dup'ed to 0, 1, 2 (in -1: /dev/null)
    std::string tty;                  // a pty slave: 0, 1 and 2, and the controlling terminal
};

struct SpawnFailure {
    int code = 0;  // 125 (ours), 126 (not executable), 127 (not found)
    std::string message;
};

// Forks and execs c.argv; returns the pid once the program runs (the exec
// has succeeded), or -1 with *failure filled (the child is reaped).
pid_t spawn_command(const GuestConfig& c, const CommandStdio& io, SpawnFailure* failure);

void set_winsize(int fd, unsigned rows, unsigned cols);
// The virtio-serial ports present now, by name ("ocivm.control" ->
// "/dev/vport1p4").
std::map<std::string, std::string> virtio_ports();
void mkdir_p(const std::string& path, mode_t mode = 0755);

}  // namespace ocivm::guest
