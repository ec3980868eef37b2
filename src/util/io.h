#pragma once
// Small I/O helpers shared by ocivm and ocivm-init (no other dependencies:
// the guest's static init links this file too).
#include <cstddef>

namespace ocivm {

// Writes all of n bytes, retrying short writes and EINTR; on a non-blocking
// fd waits (poll, up to a second at a time) for room. False on any other
// error (errno set).
bool write_all(int fd, const void* p, size_t n);

}  // namespace ocivm
