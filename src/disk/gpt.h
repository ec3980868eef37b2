#pragma once
// Reading a disk image's GPT: the root partition's PARTUUID, for booting it.
#include <string>

namespace ocivm::disk {

// The unique GUID of the disk's root partition: the first "Linux root
// (x86-64)" partition, else the first "Linux filesystem" one, else the
// first. Raw or qcow2 (read through qemu-img dd). Throws Error when the
// disk has no GPT.
std::string root_partuuid(const std::string& disk);

}  // namespace ocivm::disk
