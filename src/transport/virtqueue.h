#pragma once
// One split virtqueue (virtio 1.x, section 2.7): pops descriptor chains the
// guest made available and returns them through the used ring. Every
// guest-controlled index, length and address is checked; a bad chain is an
// error for that chain only.
#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <vector>

#include "transport/guest_memory.h"

namespace ocivm::transport {

// Split-virtqueue layout (virtio 1.x, 2.7; little-endian as on x86).
struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};
struct vring_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[];  // then used_event
};
struct vring_used_elem {
    uint32_t id;
    uint32_t len;
};
struct vring_used {
    uint16_t flags;
    uint16_t idx;
    vring_used_elem ring[];  // then avail_event
};
constexpr uint16_t VRING_DESC_F_NEXT = 1;
constexpr uint16_t VRING_DESC_F_WRITE = 2;
constexpr uint16_t VRING_DESC_F_INDIRECT = 4;
constexpr uint16_t VRING_AVAIL_F_NO_INTERRUPT = 1;

// The driver wants an interrupt when the used index passes event_idx.
inline bool vring_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old) {
    return static_cast<uint16_t>(new_idx - event_idx - 1) < static_cast<uint16_t>(new_idx - old);
}

// A popped chain: guest memory to read the request from, then to write the
// reply into. A chain holds at most queue-size buffers in all: reserve()
// once per queue and pop() never allocates.
struct DescChain {
    void reserve(uint16_t num) {
        readable.reserve(num);
        writable.reserve(num);
    }
    uint16_t head = 0;
    std::vector<struct iovec> readable;
    std::vector<struct iovec> writable;
    size_t readable_len = 0;
    size_t writable_len = 0;
};

class Virtqueue {
public:
    enum class Pop { Empty, Ok, Bad };

    // Ring addresses are host pointers (already translated).
    void configure(uint16_t num, vring_desc* desc, vring_avail* avail, vring_used* used);
    void set_features(bool indirect, bool event_idx) {
        indirect_ = indirect;
        event_idx_ = event_idx;
    }
    void set_base(uint16_t last_avail) { last_avail_ = last_avail; used_idx_ = last_avail; }
    uint16_t base() const { return last_avail_; }
    uint16_t num() const { return num_; }
    bool configured() const { return num_ != 0 && desc_ && avail_ && used_; }

    // Takes the next available chain. Bad: the chain broke a rule (its
    // head is in out.head when valid; `why` says what) and was consumed.
    Pop pop(const GuestMemory& mem, DescChain& out, const char** why);
    // Returns a chain to the guest with `len` bytes written.
    void push(uint16_t head, uint32_t len);
    // Whether the guest wants an interrupt for what was pushed since the
    // last call (VIRTIO_RING_F_EVENT_IDX, or the NO_INTERRUPT flag).
    bool need_notify();
    // With EVENT_IDX: asks for a kick at the next available entry, then
    // re-checks; true when more work arrived meanwhile.
    bool enable_notify_and_check();
    // Whether the guest made chains available that pop() has not taken.
    bool available() const { return configured() && avail_idx() != last_avail_; }
    // How many chains the guest made available that pop() has not taken.
    uint16_t pending() const { return configured() ? static_cast<uint16_t>(avail_idx() - last_avail_) : 0; }
    // With EVENT_IDX: whether the guest's used_event says it has not seen
    // every chain returned (it sets used_event to the last used index it
    // took when it asks for the next interrupt).
    bool guest_behind() const;

private:
    Pop walk(const GuestMemory& mem, uint16_t head, DescChain& out, const char** why);
    uint16_t avail_idx() const;

    uint16_t num_ = 0;
    vring_desc* desc_ = nullptr;
    vring_avail* avail_ = nullptr;
    vring_used* used_ = nullptr;
    bool indirect_ = false;
    bool event_idx_ = false;
    uint16_t last_avail_ = 0;
    uint16_t used_idx_ = 0;
    uint16_t signalled_used_ = 0;
    bool signalled_valid_ = false;
};

}  // namespace ocivm::transport
