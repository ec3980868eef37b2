#pragma once
// The guest's memory as vhost-user's SET_MEM_TABLE describes it: regions of
// guest-physical addresses, each also known by the front end's (QEMU's)
// virtual address, mapped here from the fds QEMU passes. Every translation
// checks that the whole range lies inside one region.
//
// Nothing the front end says is trusted: a region must lie inside its file
// (fstat), no sum of its addresses, size and offset may wrap, and a region
// is the half-open interval [start, start + size) compared without
// wrap-around. A file the front end shrinks after it was checked cannot
// kill the process either: a fault on a page past the new end is answered
// by mapping a zero page there (see install_fault_guard).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "util/unique_fd.h"

namespace ocivm::transport {

struct MemRegion {
    uint64_t gpa = 0;    // guest physical address
    uint64_t size = 0;
    uint64_t uaddr = 0;  // front end's virtual address
    std::byte* host = nullptr;  // where gpa is mapped here
};

class GuestMemory {
public:
    GuestMemory() = default;
    ~GuestMemory();
    GuestMemory(const GuestMemory&) = delete;
    GuestMemory& operator=(const GuestMemory&) = delete;
    GuestMemory(GuestMemory&&) noexcept;
    GuestMemory& operator=(GuestMemory&&) noexcept;

    // Maps size bytes of fd starting at mmap_offset; returns -errno, with
    // the reason in *why (static text) when it refuses the region.
    int map_region(uint64_t gpa, uint64_t size, uint64_t uaddr, int fd, uint64_t mmap_offset,
                   const char** why = nullptr);
    // A region over memory this process owns (tests, fake tables).
    void add_region(uint64_t gpa, uint64_t size, uint64_t uaddr, std::byte* host);

    // Host pointer for [gpa, gpa+len), or null when it is not wholly inside
    // one region (len 0 is checked as 1 byte).
    std::byte* gpa_to_host(uint64_t gpa, uint64_t len) const;
    std::byte* uaddr_to_host(uint64_t uaddr, uint64_t len) const;
    bool empty() const { return regions_.empty(); }
    size_t regions() const { return regions_.size(); }

    // Installs (once per process) the SIGBUS handler that answers a fault
    // inside a mapped region with a private zero page: the front end may
    // truncate a file after SET_MEM_TABLE was checked. Faults anywhere
    // else keep their previous disposition. Called before a seccomp filter
    // is loaded; map_region calls it too.
    static void install_fault_guard();
    // Pages replaced that way since the process started.
    static uint64_t faults_absorbed();

private:
    struct Mapping {
        void* base = nullptr;
        size_t len = 0;
    };
    std::vector<MemRegion> regions_;
    std::vector<Mapping> mappings_;
    void unmap_all();
    // The host address of [addr, addr+len) where `start` is the region's
    // base in the address space addr belongs to (gpa or uaddr).
    std::byte* translate(uint64_t MemRegion::*start, uint64_t addr, uint64_t len) const;
};

}  // namespace ocivm::transport
