// Virtqueue descriptor walking over fake guest memory: a split ring and up
// to three guest memory regions built from the input, then a program of
// guest writes and device operations (pop/walk, push, notification checks).
// The descriptor table, both rings and every region are heap blocks of
// exactly their size, so AddressSanitizer sees any access past one of them.
//
// Input:
//   u8  flags: bit 0 VIRTIO_RING_F_INDIRECT_DESC, bit 1 VIRTIO_RING_F_EVENT_IDX,
//       bit 2 serve each good chain through VhostUserBackend::handle_chain
//       (a FUSE session on a fresh directory), bit 3 with a kernel's INIT
//       sent first, bits 4-7 the session's FuseFixture bits 0-3
//   u8  queue size: 1 << (n % 16)
//   u16 last_avail (set_base)
//   u8  regions: 1 + n % 3, each: u64 gpa, u16 size - 1, then its bytes
//   the descriptor table (16 * size bytes), then the available ring
//   (6 + 2 * size bytes); what the input lacks is zero
//   then operations, each a u8 (n % 9) and its arguments:
//     0 pop (and push what it returns, as the vhost-user queue loop does)
//     1 u16: the guest publishes avail->idx
//     2 u16 i, 16 bytes: the guest writes descriptor i % size
//     3 u16 i, u16 v: the guest writes avail->ring[i % (size + 1)] (used_event)
//     4 u8 r, u16 off, u8 n, n % 32 bytes: the guest writes region memory
//     5 need_notify  6 enable_notify_and_check  7 guest_behind, available
//     8 u16: set_base
//
// Oracles: a chain's buffers lie wholly inside one region each, its lengths
// add up, its head is a valid index; pop() says Empty only when available()
// agrees; push() publishes exactly one used element with the head and
// length given; a served chain's reply fits its writable buffers and its
// header says its length.
#include <linux/fuse.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <vector>

#include "fuse_fixture.h"
#include "harness.h"
#include "transport/guest_memory.h"
#include "transport/vhost_user.h"
#include "transport/virtqueue.h"

using namespace ocivm;
using namespace ocivm::fuzz;
using namespace ocivm::transport;

namespace {

struct Region {
    uint64_t gpa = 0;
    size_t size = 0;
    std::unique_ptr<std::byte[]> host;
};

struct Block {
    std::unique_ptr<std::byte[]> p;
    size_t size = 0;
    explicit Block(size_t n) : p(new std::byte[n]()), size(n) {}
    void fill(std::span<const uint8_t> src) {
        if (!src.empty()) std::memcpy(p.get(), src.data(), std::min(src.size(), size));
    }
};

// Whether any two buffers of the chain share guest memory. A guest that
// aliases its own buffers (or points one at its rings) reads back whatever
// was written last: its own doing, no harm to the host, so the reply's
// content is not checked then.
bool buffers_alias(const DescChain& c) {
    std::vector<std::pair<uintptr_t, uintptr_t>> spans;
    for (auto* v : {&c.readable, &c.writable})
        for (auto& io : *v)
            if (io.iov_len) spans.emplace_back(reinterpret_cast<uintptr_t>(io.iov_base),
                                               reinterpret_cast<uintptr_t>(io.iov_base) + io.iov_len);
    std::sort(spans.begin(), spans.end());
    for (size_t i = 1; i < spans.size(); ++i)
        if (spans[i].first < spans[i - 1].second) return true;
    return false;
}

void check_iovs(const std::vector<struct iovec>& v, size_t want_total, const std::vector<Region>& regions,
                const char* kind) {
    size_t total = 0;
    for (auto& io : v) {
        auto* b = static_cast<std::byte*>(io.iov_base);
        bool inside = false;
        for (auto& r : regions)
            if (b >= r.host.get() && io.iov_len <= r.size && b - r.host.get() <= static_cast<ptrdiff_t>(r.size - io.iov_len))
                inside = true;
        if (!inside)
            finding("vq-chain", "a %s buffer of %zu bytes lies outside every guest memory region", kind, io.iov_len);
        if (io.iov_len == 0) finding("vq-chain", "an empty %s buffer in a chain", kind);
        total += io.iov_len;
    }
    if (total != want_total) finding("vq-chain", "the chain's %s length is %zu, its buffers add up to %zu", kind, want_total, total);
}

void gather(const std::vector<struct iovec>& v, void* dst, size_t len) {
    size_t done = 0;
    for (auto& io : v) {
        if (done == len) break;
        size_t n = std::min(io.iov_len, len - done);
        std::memcpy(static_cast<std::byte*>(dst) + done, io.iov_base, n);
        done += n;
    }
}

}  // namespace

int fuzz_one(const uint8_t* data, size_t size) {
    Input in(data, size);
    uint8_t flags = in.u8();
    uint16_t num = static_cast<uint16_t>(1u << (in.u8() % 16));
    uint16_t base = in.u16();

    std::vector<Region> regions(1 + in.u8() % 3);
    GuestMemory mem;
    for (auto& r : regions) {
        r.gpa = in.u64();
        r.size = static_cast<size_t>(in.u16()) + 1;
        r.host.reset(new std::byte[r.size]());
        auto src = in.take(r.size);
        if (!src.empty()) std::memcpy(r.host.get(), src.data(), src.size());
        mem.add_region(r.gpa, r.size, 0x7f0000000000ull + r.gpa, r.host.get());
    }
    Block desc(16u * num), avail(6u + 2u * num), used(6u + 8u * num);
    desc.fill(in.take(desc.size));
    avail.fill(in.take(avail.size));
    auto* d = reinterpret_cast<vring_desc*>(desc.p.get());
    auto* a = reinterpret_cast<vring_avail*>(avail.p.get());
    auto* u = reinterpret_cast<vring_used*>(used.p.get());

    Virtqueue vq;
    vq.configure(num, d, a, u);
    vq.set_features(flags & 1, flags & 2);
    vq.set_base(base);

    std::optional<FuseFixture> fx;
    std::unique_ptr<VhostUserBackend> backend;
    std::vector<std::byte> scratch;
    if (flags & 4) {
        fx.emplace(static_cast<uint8_t>(flags >> 4));
        if (flags & 8) fx->init();
        backend = std::make_unique<VhostUserBackend>(fx->server(), VhostUserOptions{});
    }

    // The used index the device should publish next: set_base restarts it
    // (a queue restarted at base has returned everything it took).
    uint16_t used_next = base;
    auto push = [&](uint16_t head, uint32_t len) {
        uint16_t before = used_next++;
        vq.push(head, len);
        if (u->idx != used_next) finding("vq-push", "push published used index %u, expected %u", u->idx, used_next);
        const vring_used_elem& e = u->ring[before % num];
        if (e.id != head || e.len != len)
            finding("vq-push", "push wrote used element {%u, %u} for head %u length %u", e.id, e.len, head, len);
    };

    DescChain chain;
    while (!in.empty()) {
        switch (in.u8() % 9) {
            case 0: {
                const char* why = "";
                auto r = vq.pop(mem, chain, &why);
                if (verbose())
                    std::fprintf(stderr, "pop: %s %s (head %u, %zu+%zu bytes)\n",
                                 r == Virtqueue::Pop::Ok ? "ok" : r == Virtqueue::Pop::Bad ? "bad" : "empty",
                                 r == Virtqueue::Pop::Bad ? why : "", chain.head, chain.readable_len,
                                 chain.writable_len);
                if (r == Virtqueue::Pop::Empty) {
                    if (vq.available()) finding("vq-pop", "pop() found the ring empty but available() disagrees");
                    break;
                }
                if (r == Virtqueue::Pop::Bad) {
                    if (chain.head < num) push(chain.head, 0);
                    break;
                }
                if (chain.head >= num) {
                    finding("vq-pop", "pop() returned head %u of a %u-entry queue", chain.head, num);
                    break;
                }
                check_iovs(chain.readable, chain.readable_len, regions, "readable");
                check_iovs(chain.writable, chain.writable_len, regions, "writable");
                uint32_t len = 0;
                if (backend) {
                    len = backend->handle_chain(chain, scratch);
                    if (len > chain.writable_len)
                        finding("vq-reply", "a %u-byte reply for %zu writable bytes", len, chain.writable_len);
                    if (verbose()) std::fprintf(stderr, "served: %u reply bytes\n", len);
                    fuse_out_header oh{};
                    if (len && len < sizeof oh) {
                        finding("vq-reply", "a %u-byte reply is shorter than its header", len);
                    } else if (len && !buffers_alias(chain)) {
                        gather(chain.writable, &oh, sizeof oh);
                        if (oh.len != len) finding("vq-reply", "reply header says %u bytes, %u were returned", oh.len, len);
                    }
                }
                push(chain.head, len);
                break;
            }
            case 1: a->idx = in.u16(); break;
            case 2: {
                uint16_t i = in.u16() % num;
                auto b = in.take(sizeof(vring_desc));
                if (!b.empty()) std::memcpy(&d[i], b.data(), b.size());
                break;
            }
            case 3: {
                uint16_t i = in.u16() % (num + 1);
                a->ring[i] = in.u16();
                break;
            }
            case 4: {
                Region& r = regions[in.u8() % regions.size()];
                size_t off = in.u16() % r.size;
                size_t n = std::min<size_t>(in.u8() % 32, r.size - off);
                auto b = in.take(n);
                if (!b.empty()) std::memcpy(r.host.get() + off, b.data(), b.size());
                break;
            }
            case 5: (void)vq.need_notify(); break;
            case 6: (void)vq.enable_notify_and_check(); break;
            case 7:
                (void)vq.guest_behind();
                (void)vq.available();
                break;
            case 8:
                used_next = in.u16();
                vq.set_base(used_next);
                break;
        }
    }
    backend.reset();
    if (fx) fx->finish("the chains");
    return 0;
}
