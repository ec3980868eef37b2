#include "transport/guest_memory.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <mutex>
#include <utility>

namespace ocivm::transport {

namespace {

// Mapped regions the SIGBUS handler may repair, readable from a signal
// handler: fixed slots of atomics, written under a mutex. A range is
// registered before any thread can touch it and removed before it is
// unmapped; queue threads are stopped before a table is dropped, so no
// fault can race with the removal.
constexpr size_t kGuardSlots = 64;  // vhost-user tables hold 8 regions; a few tables in flight
struct GuardSlot {
    std::atomic<uintptr_t> start{0}, end{0};
};
GuardSlot g_slots[kGuardSlots];
std::mutex g_slots_mu;
std::atomic<uint64_t> g_absorbed{0};
uintptr_t g_page = 4096;
struct sigaction g_previous;
std::once_flag g_installed;

void on_sigbus(int sig, siginfo_t* si, void* ctx) {
    // BUS_ADRERR: an access past the end of a mapped file, and the
    // instruction runs again after we return. (Hardware memory errors and a
    // SIGBUS sent with kill() are not ours to absorb.)
    if (si->si_code == BUS_ADRERR) {
        auto a = reinterpret_cast<uintptr_t>(si->si_addr);
        for (auto& s : g_slots) {
            uintptr_t b = s.start.load(std::memory_order_acquire);
            uintptr_t e = s.end.load(std::memory_order_acquire);
            if (b && a >= b && a < e) {
                // The page lies past the end of a file the front end
                // shrank: reads see zeros, writes go nowhere the guest sees.
                void* page = reinterpret_cast<void*>(a & ~(g_page - 1));
                if (::mmap(page, g_page, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
                    g_absorbed.fetch_add(1, std::memory_order_relaxed);
                    return;
                }
            }
        }
    }
    if ((g_previous.sa_flags & SA_SIGINFO) && g_previous.sa_sigaction) {
        g_previous.sa_sigaction(sig, si, ctx);
        return;
    }
    if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
        g_previous.sa_handler(sig);
        return;
    }
    // Not ours: the default action (a core dump), from the fault itself
    // when we return, or at once for a signal someone sent.
    ::signal(SIGBUS, SIG_DFL);
    if (si->si_code <= 0) ::raise(SIGBUS);
}

void guard(void* base, size_t len) {
    std::lock_guard lk(g_slots_mu);
    for (auto& s : g_slots) {
        if (s.start.load(std::memory_order_relaxed) == 0) {
            s.end.store(reinterpret_cast<uintptr_t>(base) + len, std::memory_order_release);
            s.start.store(reinterpret_cast<uintptr_t>(base), std::memory_order_release);
            return;
        }
    }
    // More live mappings than slots cannot happen (8 regions per table, at
    // most two tables alive at once); an unguarded one only loses the
    // repair of a truncated file.
}

void unguard(void* base) {
    std::lock_guard lk(g_slots_mu);
    for (auto& s : g_slots) {
        if (s.start.load(std::memory_order_relaxed) == reinterpret_cast<uintptr_t>(base)) {
            s.start.store(0, std::memory_order_release);
            s.end.store(0, std::memory_order_release);
            return;
        }
    }
}

}  // namespace

void GuestMemory::install_fault_guard() {
    std::call_once(g_installed, [] {
        long p = ::sysconf(_SC_PAGESIZE);
        if (p > 0) g_page = static_cast<uintptr_t>(p);
        struct sigaction sa {};
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigemptyset(&sa.sa_mask);
        ::sigaction(SIGBUS, &sa, &g_previous);
    });
}

uint64_t GuestMemory::faults_absorbed() { return g_absorbed.load(std::memory_order_relaxed); }

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
    for (auto& m : mappings_) {
        unguard(m.base);
        ::munmap(m.base, m.len);
    }
    mappings_.clear();
    regions_.clear();
}

int GuestMemory::map_region(uint64_t gpa, uint64_t size, uint64_t uaddr, int fd,
                            uint64_t mmap_offset, const char** why) {
    const char* unused;
    if (!why) why = &unused;
    uint64_t end;
    if (size == 0) {
        *why = "the region is empty";
        return -EINVAL;
    }
    // Half-open intervals whose end must be representable: [gpa, gpa+size).
    if (__builtin_add_overflow(gpa, size, &end) || __builtin_add_overflow(uaddr, size, &end)) {
        *why = "the region's address plus its size wraps around";
        return -EINVAL;
    }
    uint64_t file_end;
    if (__builtin_add_overflow(mmap_offset, size, &file_end)) {
        *why = "the region's offset plus its size wraps around";
        return -EINVAL;
    }
    struct stat st;
    if (::fstat(fd, &st) < 0) {
        *why = "cannot fstat the region's file";
        return -errno;
    }
    // memfd, tmpfs, hugetlbfs: guest RAM is a regular file. Anything else
    // (a socket, a device) has no size to check a region against.
    if (!S_ISREG(st.st_mode)) {
        *why = "the region's fd is not a regular file";
        return -EINVAL;
    }
    // A page past the end of the file faults with SIGBUS on first touch.
    if (st.st_size < 0 || file_end > static_cast<uint64_t>(st.st_size)) {
        *why = "the region runs past the end of its file";
        return -EINVAL;
    }
    // Mapped from the offset's page (its huge page on hugetlbfs, whose
    // st_blksize is the huge page size and whose mappings must start at one).
    uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    uint64_t blk = static_cast<uint64_t>(st.st_blksize);
    if (blk > page && (blk & (blk - 1)) == 0) page = blk;
    uint64_t map_off = mmap_offset & ~(page - 1);
    uint64_t delta = mmap_offset - map_off;
    uint64_t len = size + delta;  // <= file_end, which did not overflow
    if (len > SIZE_MAX) {
        *why = "the region does not fit the address space";
        return -EINVAL;
    }
    install_fault_guard();
    void* p = ::mmap(nullptr, static_cast<size_t>(len), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_NORESERVE, fd, static_cast<off_t>(map_off));
    if (p == MAP_FAILED) {
        *why = "mmap of the region failed";
        return -errno;
    }
    guard(p, static_cast<size_t>(len));
    mappings_.push_back({p, static_cast<size_t>(len)});
    regions_.push_back({gpa, size, uaddr, static_cast<std::byte*>(p) + delta});
    return 0;
}

void GuestMemory::add_region(uint64_t gpa, uint64_t size, uint64_t uaddr, std::byte* host) {
    regions_.push_back({gpa, size, uaddr, host});
}

std::byte* GuestMemory::translate(uint64_t MemRegion::*start, uint64_t addr, uint64_t len) const {
    if (len == 0) len = 1;
    for (const auto& r : regions_) {
        uint64_t base = r.*start;
        // addr - base cannot wrap once addr >= base; the length is compared
        // with what is left of the region, never added to an address.
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
