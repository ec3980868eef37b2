#pragma once
#include <time.h>

#include <cstdint>

namespace ocivm {

// CLOCK_MONOTONIC in nanoseconds (vDSO: no system call).
inline uint64_t mono_ns() {
    timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace ocivm
