#pragma once
// The caller's end of an exec session (`ocivm exec`): sends the request to
// the VM's supervisor, relays stdin (within the guest's credit), stdout and
// stderr (returning credit as they are written), window-size changes and
// signals, and returns the exit status podman would.
#include "guest/protocol.h"
#include "vm/vm_state.h"

namespace ocivm::vm {

// c: argv, env, cwd, identity, tty/stdin_open and window size already
// resolved. Returns the command's status, 128+N for signal N, 126/127 when
// it cannot be run, 125 when ocivm fails (the supervisor or the channel
// gone: reported at once, never waited for).
int exec_session(const VmEntry& vm, const guest::GuestConfig& c);

}  // namespace ocivm::vm
