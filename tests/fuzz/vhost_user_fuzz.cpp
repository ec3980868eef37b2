// vhost-user message handling against a hostile front end: a stream of
// messages from the input, with file descriptors the harness made (two
// memfds as guest memory, eventfds for kicks and calls) attached by index,
// into VhostUserBackend::serve over a socketpair. The backend has no entry
// point per message, so this is the real one: serve() reads the stream
// until the harness closes its end. Queues the messages start run on the
// backend's own threads over the memfds' contents (FUSE requests in rings
// the input laid out), against a FUSE session on a fresh directory.
//
// Input:
//   u8  flags: bit 0 spin 100 us before sleeping (else 0), bit 1 two
//       request queues (else one), bits 2-5 the session's FuseFixture bits
//       0-3, bit 6 the harness sends a kernel's INIT to the server first,
//       bit 7 a worker pool of two threads (else none)
//   u8, u8: memfd sizes, 4096 << (n % 5) each
//   u16 n, n bytes: memfd 0's contents; u16 n, n bytes: memfd 1's
//   then messages, each:
//     u8  fds: bit i attaches harness fd i (0, 1 the memfds; 2, 3, 5
//         eventfds; 4 an eventfd that is always readable: a guest that
//         kicks without pause); bit 6: the header's size field comes from
//         the input (u32 after flags) instead of the payload's length
//     u32 request, u32 flags, [u32 size], u16 n, n bytes of payload
//
// Oracles: serve() returns (no hang: libFuzzer's -timeout), every reply is
// a whole message with the reply flag and an 8-byte payload, no FIFO or
// device stays open, nothing outside the share changes; AddressSanitizer
// and the signals (a SIGBUS from guest memory past a memfd's end) do the rest.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <climits>
#include <thread>
#include <vector>

#include "fuse_fixture.h"
#include "harness.h"
#include "transport/vhost_user.h"
#include "util/unique_fd.h"

using namespace ocivm;
using namespace ocivm::fuzz;
using namespace ocivm::transport;

namespace {

struct Message {
    std::vector<char> bytes;  // header + payload
    std::vector<int> fds;
};

void send_all(int sock, const std::vector<Message>& msgs) {
    for (auto& m : msgs) {
        iovec iov{const_cast<char*>(m.bytes.data()), m.bytes.size()};
        msghdr h{};
        h.msg_iov = &iov;
        h.msg_iovlen = 1;
        char ctl[CMSG_SPACE(sizeof(int) * 8)] = {};
        if (!m.fds.empty()) {
            h.msg_control = ctl;
            h.msg_controllen = CMSG_SPACE(sizeof(int) * m.fds.size());
            cmsghdr* c = CMSG_FIRSTHDR(&h);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * m.fds.size());
            std::memcpy(CMSG_DATA(c), m.fds.data(), sizeof(int) * m.fds.size());
        }
        ssize_t n;
        do n = ::sendmsg(sock, &h, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        if (n < 0) break;  // the back end stopped reading (a protocol error)
        // A short send is the rest of the stream; the fds went with the first part.
        size_t off = static_cast<size_t>(n);
        while (off < m.bytes.size()) {
            ssize_t k = ::send(sock, m.bytes.data() + off, m.bytes.size() - off, MSG_NOSIGNAL);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) return;
            off += static_cast<size_t>(k);
        }
    }
    ::shutdown(sock, SHUT_WR);  // the front end is done: serve() sees the end
}

std::vector<char> drain(int sock) {
    std::vector<char> out;
    char buf[4096];
    for (;;) {
        ssize_t n = ::read(sock, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return out;
        out.insert(out.end(), buf, buf + n);
    }
}

}  // namespace

int fuzz_one(const uint8_t* data, size_t size) {
    Input in(data, size);
    uint8_t flags = in.u8();
    size_t memsize[2] = {4096u << (in.u8() % 5), 4096u << (in.u8() % 5)};

    FuseFixture fx(static_cast<uint8_t>((flags >> 2) & 15));
    if (flags & 64) fx.init();

    // The harness's fds, in the order the input's fd bits name them.
    UniqueFd own[6];
    for (int i = 0; i < 2; ++i) {
        own[i].reset(::memfd_create("ocivm-fuzz-guest", MFD_CLOEXEC));
        if (!own[i] || ::ftruncate(own[i].get(), static_cast<off_t>(memsize[i])) < 0)
            fail("memfd: %s", std::strerror(errno));
        auto b = in.take(in.u16());
        if (!b.empty() && ::pwrite(own[i].get(), b.data(), std::min(b.size(), memsize[i]), 0) < 0)
            fail("writing a memfd: %s", std::strerror(errno));
    }
    for (int i : {2, 3, 5}) own[i].reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    own[4].reset(::eventfd(UINT_MAX, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE));
    for (auto& f : own)
        if (!f) fail("eventfd: %s", std::strerror(errno));

    // With known crashes tolerated, a memory table that would cause one is
    // left out of the stream.
    bool had_table = false;
    auto crashes_known = [&](uint32_t request, std::span<const uint8_t> payload, const std::vector<int>& idx) {
        if (request == 9 && payload.size() >= 32 && tolerating("vu-misaligned-ring")) {
            uint64_t a[3];  // desc, used, avail
            std::memcpy(a, payload.data() + 8, sizeof a);
            if (a[0] % 16 || a[1] % 4 || a[2] % 2) {
                steered("vu-misaligned-ring", "ring addresses that break virtio's alignment are left out");
                return true;
            }
        }
        if (request != 5) return false;
        if (had_table && tolerating("vu-stale-rings")) {
            steered("vu-stale-rings", "memory tables after the first are left out");
            return true;
        }
        had_table = true;
        if (payload.size() < 8) return false;
        uint32_t n;
        std::memcpy(&n, payload.data(), sizeof n);
        for (uint32_t r = 0; r < n && r < idx.size() && 8 + (r + 1) * 32 <= payload.size(); ++r) {
            uint64_t v[4];  // gpa, size, uaddr, mmap_offset
            std::memcpy(v, payload.data() + 8 + r * 32, sizeof v);
            bool wraps = v[1] + v[3] < v[1];
            if (wraps && tolerating("vu-offset-overflow")) {
                steered("vu-offset-overflow", "memory tables whose size + mmap_offset wraps are left out");
                return true;
            }
            if (!wraps && idx[r] < 2 && v[1] + v[3] > memsize[idx[r]] && tolerating("vu-region-past-fd")) {
                steered("vu-region-past-fd", "memory tables with a region past the end of its memfd are left out");
                return true;
            }
        }
        return false;
    };

    std::vector<Message> msgs;
    while (!in.empty()) {
        uint8_t fdbits = in.u8();
        uint32_t hdr[3];
        hdr[0] = in.u32();
        hdr[1] = in.u32();
        uint32_t raw_size = (fdbits & 64) ? in.u32() : 0;
        auto payload = in.take(in.u16());
        hdr[2] = (fdbits & 64) ? raw_size : static_cast<uint32_t>(payload.size());
        Message m;
        m.bytes.resize(sizeof hdr + payload.size());
        std::memcpy(m.bytes.data(), hdr, sizeof hdr);
        if (!payload.empty()) std::memcpy(m.bytes.data() + sizeof hdr, payload.data(), payload.size());
        std::vector<int> idx;
        for (int i = 0; i < 6; ++i)
            if (fdbits & (1u << i)) {
                m.fds.push_back(own[i].get());
                idx.push_back(i);
            }
        if (crashes_known(hdr[0], payload, idx)) continue;
        msgs.push_back(std::move(m));
    }

    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) fail("socketpair: %s", std::strerror(errno));
    UniqueFd front(sv[0]), back(sv[1]);
    std::vector<char> replies;
    {
        VhostUserOptions o;
        o.request_queues = (flags & 2) ? 2 : 1;
        o.spin_us = (flags & 1) ? 100 : 0;
        o.thread_pool_size = (flags & 128) ? 2 : 0;
        VhostUserBackend backend(fx.server(), o);
        std::thread writer([&] { send_all(front.get(), msgs); });
        std::thread reader([&] { replies = drain(front.get()); });
        int rc = backend.serve(back.get());
        if (verbose())
            std::fprintf(stderr, "serve: %d after %zu messages; %llu requests, %llu bad chains\n", rc, msgs.size(),
                         static_cast<unsigned long long>(backend.stats().requests.load()),
                         static_cast<unsigned long long>(backend.stats().bad_chains.load()));
        // serve() may stop early (a protocol error): unblock the writer,
        // end the reader.
        ::shutdown(back.get(), SHUT_RDWR);
        writer.join();
        reader.join();
    }  // the backend's queue threads are joined here

    for (size_t off = 0; off < replies.size();) {
        uint32_t h[3];
        if (replies.size() - off < sizeof h) {
            finding("vu-reply", "a truncated reply header (%zu bytes)", replies.size() - off);
            break;
        }
        std::memcpy(h, replies.data() + off, sizeof h);
        if (h[1] != 0x5) finding("vu-reply", "reply to request %u has flags %#x", h[0], h[1]);
        if (h[2] != 8) finding("vu-reply", "reply to request %u has a %u-byte payload", h[0], h[2]);
        if (replies.size() - off - sizeof h < h[2]) {
            finding("vu-reply", "reply to request %u is truncated", h[0]);
            break;
        }
        if (verbose() && h[2] >= 8) {
            uint64_t v;
            std::memcpy(&v, replies.data() + off + sizeof h, sizeof v);
            std::fprintf(stderr, "reply: request %u -> %#llx\n", h[0], static_cast<unsigned long long>(v));
        }
        off += sizeof h + h[2];
    }
    fx.finish("the vhost-user session");
    return 0;
}
