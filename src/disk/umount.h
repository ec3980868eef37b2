#pragma once
// A safe unmount: sync, unmount (submounts deepest first), retry on EBUSY
// until a deadline, and then either report every holder and give up with
// nothing detached, or (only when asked) remount read-only, freeze and thaw,
// and detach.
#include <string>
#include <vector>

#include "disk/holders.h"

namespace ocivm::disk {

struct UmountResult {
    bool ok = false;
    bool detached = false;
    std::vector<Holder> holders;  // when !ok
    std::vector<std::string> steps;  // what was done, in order
};

UmountResult safe_umount(const std::string& path, double timeout_s, bool lazy_after_sync);

}  // namespace ocivm::disk
