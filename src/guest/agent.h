#pragma once
// The guest side of `ocivm exec`: ocivm-init's exec agent (agent_protocol.h).
#include <string>

#include "guest/agent_protocol.h"

namespace ocivm::guest {

// Serves the "ocivm.agent" port until the VM ends; returns only when it
// cannot (no such port, an error of poll), with the exit status.
int agent_main();

// The agent's loop on an fd already open (the port; a socket in the unit
// tests), which it makes non-blocking. It takes the process over: SIGCHLD
// blocked (read through a signalfd), SIGPIPE ignored, every child reaped. It
// returns only on an error of poll; an fd whose other end is gone reads 0
// and is retried (a port with no host), so a test ends it by killing it.
// on_restore takes the identity of a Restore frame (nullptr: apply_restore,
// guest/restore.h, which sets the clock and host name: the unit tests,
// which run on the host, give their own).
using RestoreHook = void (*)(const agent::RestoreInfo& r, void (*report)(const char* fmt, ...));
int serve_agent(int fd, RestoreHook on_restore = nullptr);

// The device of the agent's port, waiting up to wait_s for it; "" if none.
std::string find_agent_port(double wait_s);

}  // namespace ocivm::guest
