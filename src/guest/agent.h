#pragma once
// The guest side of `ocivm exec`: ocivm-init's exec agent (agent_protocol.h).
#include <string>

namespace ocivm::guest {

// Serves the "ocivm.agent" port until the VM ends; returns only when it
// cannot (no such port, an error of poll), with the exit status.
int agent_main();

// The device of the agent's port, waiting up to wait_s for it; "" if none.
std::string find_agent_port(double wait_s);

}  // namespace ocivm::guest
