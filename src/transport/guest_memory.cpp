#include "transport/guest_memory.h"

#include <sys/mman.h>

#include <cerrno>
#include <utility>

namespace ocivm::transport {

GuestMemory::~GuestMemory() { unmap_all(); }

GuestMemory::GuestMemory(GuestMemory&& o) noexcept
    : regions_(std::move(o.regions_)), mappings_(std::move(o.mappings_)) {
    o.regions_.clear();
    o.mappings_.clear();
}

GuestMemory& GuestMemory::operator=(GuestMemory&& o) noexcept {
    if (this != &o) {
        unmap_all();
        regions_ = std::move(o.regions_);
        mappings_ = std::move(o.mappings_);
        o.regions_.clear();
        o.mappings_.clear();
    }
    return *this;
}

void GuestMemory::unmap_all() {
    for (auto& m : mappings_) ::munmap(m.base, m.len);
    mappings_.clear();
    regions_.clear();
}

int GuestMemory::map_region(uint64_t gpa, uint64_t size, uint64_t uaddr, int fd,
                            uint64_t mmap_offset) {
    if (size == 0 || gpa + size < gpa || uaddr + size < uaddr) return -EINVAL;
    size_t len = size + mmap_offset;
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED) return -errno;
    mappings_.push_back({p, len});
    regions_.push_back({gpa, size, uaddr, static_cast<std::byte*>(p) + mmap_offset});
    return 0;
}

void GuestMemory::add_region(uint64_t gpa, uint64_t size, uint64_t uaddr, std::byte* host) {
    regions_.push_back({gpa, size, uaddr, host});
}

std::byte* GuestMemory::translate(uint64_t MemRegion::*start, uint64_t addr, uint64_t len) const {
    if (len == 0) len = 1;
    for (const auto& r : regions_) {
        uint64_t base = r.*start;
        if (addr >= base && addr - base < r.size && len <= r.size - (addr - base))
            return r.host + (addr - base);
    }
    return nullptr;
}

std::byte* GuestMemory::gpa_to_host(uint64_t gpa, uint64_t len) const {
    return translate(&MemRegion::gpa, gpa, len);
}

std::byte* GuestMemory::uaddr_to_host(uint64_t ua, uint64_t len) const {
    return translate(&MemRegion::uaddr, ua, len);
}

}  // namespace ocivm::transport
