#pragma once
// A VM's state directory, $RUNTIME/vms/NAME (runtime_dir(): /run/ocivm as
// root), locked with flock for as long as its ocivm runs. The lock is how a
// later ocivm tells a running VM from one whose ocivm was killed (kill -9,
// OOM): it cleans the state of the latter (clean_stale).
//
// Every start, every clean-up and every removal (--rm) takes the lock of
// the vms directory itself first, so a clean-up never holds a starting
// VM's lock in the moment between its creation and its owner taking it
// (which made two VMs started at once fail with "already running", or lose
// their state), and a finishing VM never removes the directory a new VM
// of the same name has just made its own.
//
// Everything below the vms directory is reached by fd from it, one name at
// a time, never through a symbolic link: what is removed is what ocivm
// made, wherever a link planted in the runtime directory points.
#include <string>

#include "util/unique_fd.h"

namespace ocivm::vm {

class StateDir {
public:
    // Creates and locks base/NAME, cleaning stale state first; Error
    // "already running" when another ocivm holds that name. rm: the whole
    // directory goes when this object does (and, via an "rm" marker, when
    // a later ocivm finds it stale).
    // detached: the directory stays, and its name taken, until `ocivm rm`.
    StateDir(const std::string& name, bool rm, bool detached = false);
    // Removes the state directory of a VM that is not running (ocivm rm);
    // Error when it is running or cannot be removed.
    static void remove(const std::string& name);
    ~StateDir();
    StateDir(const StateDir&) = delete;
    StateDir& operator=(const StateDir&) = delete;

    const std::string& path() const { return path_; }
    // A failed VM's logs outlive --rm: the diagnosis points at them.
    void keep() { rm_ = false; }

    // Removes what VMs whose ocivm was killed left in base (the vms
    // directory): everything with --rm, only the initramfs copy without.
    static void clean_stale(const std::string& base);
    // runtime_dir() + "/vms", created if missing.
    static std::string base_dir();

private:
    std::string name_, path_;
    bool rm_;
    // The vms directory as it was opened at the start: the removal works
    // from it, not from its path, and locks it again.
    UniqueFd base_;
    UniqueFd lock_;
};

}  // namespace ocivm::vm
