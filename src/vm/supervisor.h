#pragma once
// `ocivm run -d`: a supervisor process (a grandchild in a session of its
// own, so it outlives its caller and no terminal hangup reaches it) runs
// the VM with run_machine, its output to the state directory's logs. The
// caller waits on a pipe for "ready NAME" (the command runs and the guest
// agent said Hello) or "exit CODE" (it could not be started; the
// supervisor's diagnosis went to the caller's stderr, which the supervisor
// keeps until then).
#include "vm/machine.h"

namespace ocivm::vm {

// Returns 0 once the VM is ready (its name printed on stdout), or the
// status of a command that could not be started (126, 127, 125).
int run_detached(MachineOptions o);

}  // namespace ocivm::vm
