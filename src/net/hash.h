#pragma once
// ocivm's one small, stable hash for names derived from longer ones (a VM's
// MAC address, its host-side device and nft table): FNV-1a, 32 bits. Not
// for anything an attacker chooses to collide with.
#include <cstdint>
#include <string_view>

namespace ocivm::net {

inline uint32_t fnv1a(std::string_view s) {
    uint32_t h = 2166136261u;
    for (unsigned char c : s) h = (h ^ c) * 16777619u;
    return h;
}

}  // namespace ocivm::net
