#pragma once
// Saving a running QEMU into a snapshot directory, and loading one into a
// QEMU just started with -incoming defer: the QMP and file work of
// `ocivm snapshot create`, boot snapshots and clones (vm/snapshot.h has
// the directory's layout and the store). The supervisor (vm/machine.cpp)
// decides when; this decides how.
#include <sys/types.h>

#include <string>

#include "guest/agent_protocol.h"
#include "vm/qemu.h"
#include "vm/qmp.h"
#include "vm/snapshot.h"

namespace ocivm::vm {

// A running QEMU as saving it needs it.
struct RunningQemu {
    QmpChannel& qmp;
    pid_t pid;
    const QemuConfig& config;  // kernel, initrd, memory_file (a clone's)
    std::string root_image;    // the EROFS root disk
};

// Saves the VM as the snapshot directory dest, whole or not at all (made
// under a temporary name beside it and renamed; an existing dest is an
// Error). The VM is paused only while its device state (x-ignore-shared:
// no RAM in it) and a sparse copy of its RAM are written, then resumed
// unless keep_paused (also when saving fails); the files are synced and
// the boot files linked while it runs. Fills info's sizes, timings and
// QEMU identity. Throws Error.
void save_vm(const RunningQemu& q, const std::string& dest, SnapshotInfo& info, bool keep_paused);

// The phases of a restore, in ms.
struct LoadTimings {
    double load_ms = 0, resume_ms = 0;
};
// Loads the device state QEMU was handed as fd kIncomingFd (it waits with
// -incoming defer) and resumes the VM. `what` names the snapshot in errors.
LoadTimings load_vm(QmpChannel& qmp, const std::string& what);

// A clone's new identity for the Restore frame: random epoch, seed and
// machine-id, the host's clock now.
agent::RestoreInfo new_identity(const std::string& hostname, const std::string& mac);

// fsync of a file or directory; Error naming it when that fails.
void sync_file(const std::string& path);

}  // namespace ocivm::vm
