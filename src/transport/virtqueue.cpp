#include "transport/virtqueue.h"

#include <atomic>
#include <cstring>

namespace ocivm::transport {

namespace {
template <typename T>
T load(const volatile T* p) {
    return *p;
}
template <typename T>
void store(volatile T* p, T v) {
    *p = v;
}
}  // namespace

void Virtqueue::configure(uint16_t num, vring_desc* desc, vring_avail* avail, vring_used* used) {
    num_ = num;
    desc_ = desc;
    avail_ = avail;
    used_ = used;
    signalled_valid_ = false;
}

uint16_t Virtqueue::avail_idx() const {
    uint16_t idx = load(&avail_->idx);
    // Descriptors the index covers must be read after the index.
    std::atomic_thread_fence(std::memory_order_acquire);
    return idx;
}

Virtqueue::Pop Virtqueue::pop(const GuestMemory& mem, DescChain& out, const char** why) {
    if (!configured()) return Pop::Empty;
    uint16_t avail = avail_idx();
    if (avail == last_avail_) return Pop::Empty;
    if (static_cast<uint16_t>(avail - last_avail_) > num_) {
        *why = "available index moved by more than the queue size";
        last_avail_ = avail;  // resynchronise rather than loop on garbage
        out.head = num_;      // no valid head to return
        return Pop::Bad;
    }
    uint16_t head = load(&avail_->ring[last_avail_ % num_]);
    ++last_avail_;
    out.head = head;
    out.readable.clear();
    out.writable.clear();
    out.readable_len = out.writable_len = 0;
    if (head >= num_) {
        *why = "chain head out of range";
        out.head = num_;
        return Pop::Bad;
    }
    return walk(mem, head, out, why);
}

Virtqueue::Pop Virtqueue::walk(const GuestMemory& mem, uint16_t head, DescChain& out,
                               const char** why) {
    // A chain has at most queue-size descriptors, an indirect table at most
    // queue-size entries (virtio 1.x, 2.7.5.3.1), so the walk, and the
    // iovecs it keeps, are bounded by the queue size whatever lengths the
    // guest writes: a loop ends the walk after num steps. (Bounding by the
    // table's byte length let one 256 MiB indirect descriptor whose entries
    // looped 0 -> 1 -> 0 grow the process by 256 MiB of iovecs.)
    const vring_desc* table = desc_;
    uint32_t table_len = num_;
    uint16_t i = head;
    uint32_t buffers = 0;
    bool in_indirect = false;
    for (;;) {
        if (i >= table_len) {
            *why = "descriptor index out of range";
            return Pop::Bad;
        }
        vring_desc d;
        std::memcpy(&d, const_cast<const vring_desc*>(&table[i]), sizeof d);
        if (d.flags & VRING_DESC_F_INDIRECT) {
            if (!indirect_) {
                *why = "indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC";
                return Pop::Bad;
            }
            if (in_indirect) {
                *why = "nested indirect descriptor table";
                return Pop::Bad;
            }
            if (d.len == 0 || d.len % sizeof(vring_desc) != 0 || (d.flags & VRING_DESC_F_NEXT)) {
                *why = "malformed indirect descriptor";
                return Pop::Bad;
            }
            if (d.len / sizeof(vring_desc) > num_) {
                *why = "indirect table longer than the queue";
                return Pop::Bad;
            }
            auto* t = reinterpret_cast<const vring_desc*>(mem.gpa_to_host(d.addr, d.len));
            if (!t) {
                *why = "indirect table outside guest memory";
                return Pop::Bad;
            }
            table = t;
            table_len = d.len / sizeof(vring_desc);
            in_indirect = true;
            i = 0;
            continue;
        }
        if (++buffers > num_) {
            *why = "descriptor chain longer than the queue (a loop?)";
            return Pop::Bad;
        }
        if (d.len) {
            std::byte* p = mem.gpa_to_host(d.addr, d.len);
            if (!p) {
                *why = "descriptor buffer outside guest memory";
                return Pop::Bad;
            }
            if (d.flags & VRING_DESC_F_WRITE) {
                out.writable.push_back({p, d.len});
                out.writable_len += d.len;
            } else {
                if (!out.writable.empty()) {
                    *why = "readable descriptor after a writable one";
                    return Pop::Bad;
                }
                out.readable.push_back({p, d.len});
                out.readable_len += d.len;
            }
        }
        if (!(d.flags & VRING_DESC_F_NEXT)) break;
        i = d.next;
    }
    return Pop::Ok;
}

void Virtqueue::push(uint16_t head, uint32_t len) {
    if (!configured() || head >= num_) return;
    auto* e = &used_->ring[used_idx_ % num_];
    store(&e->id, static_cast<uint32_t>(head));
    store(&e->len, len);
    // The entry must be visible before the index that publishes it.
    std::atomic_thread_fence(std::memory_order_release);
    ++used_idx_;
    store(&used_->idx, used_idx_);
}

bool Virtqueue::need_notify() {
    if (!configured()) return false;
    // The guest's view of the used index must be published before we read
    // its event index.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (!event_idx_) return !(load(&avail_->flags) & VRING_AVAIL_F_NO_INTERRUPT);
    uint16_t old = signalled_used_;
    bool valid = signalled_valid_;
    signalled_used_ = used_idx_;
    signalled_valid_ = true;
    if (!valid) return true;
    uint16_t event = load(&avail_->ring[num_]);  // used_event lives after the ring
    return vring_need_event(event, used_idx_, old);
}

bool Virtqueue::guest_behind() const {
    if (!configured() || !event_idx_) return false;
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return load(&avail_->ring[num_]) != used_idx_;
}

bool Virtqueue::enable_notify_and_check() {
    if (!configured()) return false;
    if (event_idx_) {
        // avail_event lives after the used ring
        auto* avail_event = reinterpret_cast<volatile uint16_t*>(&used_->ring[num_]);
        *avail_event = last_avail_;
    }
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return avail_idx() != last_avail_;
}

}  // namespace ocivm::transport
