// FUSE request parsing and dispatch: a sequence of requests from the input
// through fuse::Server::handle over a Passthrough on a fresh directory, with
// the reply going to a contiguous buffer (/dev/fuse, stream) or scattered
// over small segments (virtio-fs), each segment a heap block of its own so
// AddressSanitizer sees a write past any of them.
//
// Input:
//   u8  session: FuseFixture bits 0-6; bit 7: the harness sends a kernel's
//       INIT first (else the input's own requests must)
//   u8  reply writer: bits 0-1 kind (0 contiguous 1 MiB + 4 KiB, 1
//       contiguous of (bits 2-7) * 97 bytes, 2 scattered: a first segment of
//       ((bits 2-7) + 1) * 8 bytes then 4 KiB ones up to 68 KiB, 3 scattered
//       in equal segments of that first size up to 16 KiB)
//   then requests, each: u16 n (bit 15: send the header's len as it is;
//   else the harness sets it to n), n bytes (fuse_in_header + arguments).
//
// Oracles: FORGET and BATCH_FORGET are never answered; every other reply is
// committed once, fits the writer, carries the
// request's unique, a valid -errno, a header length equal to the bytes
// committed, and the payload size the opcode's reply has; no FIFO or device
// stays open; nothing outside the share changes.
#include <linux/fuse.h>
#include <sys/stat.h>

#include <climits>
#include <memory>
#include <vector>

#include "fuse/reply_writer.h"
#include "fuse_fixture.h"
#include "harness.h"

using namespace ocivm;
using namespace ocivm::fuzz;

namespace {

constexpr size_t kOutHdr = sizeof(fuse_out_header);

// A ReplyWriter whose bytes the oracle can read back.
class CheckedWriter : public fuse::ReplyWriter {
public:
    int commit(size_t len) override {
        ++commits;
        committed = len;
        return 0;
    }
    virtual void gather(size_t off, void* dst, size_t len) const = 0;
    int commits = 0;
    size_t committed = 0;
};

class ContiguousWriter final : public CheckedWriter {
public:
    explicit ContiguousWriter(std::vector<std::byte>& buf) : buf_(buf) {}
    size_t capacity() const override { return buf_.size(); }
    std::byte* contiguous(size_t size) override { return size <= buf_.size() ? buf_.data() : nullptr; }
    int iov(size_t off, size_t len, struct iovec* out, int max) override {
        if (max < 1 || off > buf_.size() || len > buf_.size() - off) return -1;
        out[0] = {buf_.data() + off, len};
        return 1;
    }
    void copy_in(size_t off, const void* src, size_t len) override {
        if (off > buf_.size() || len > buf_.size() - off)
            return finding("fuse-copy-in-range", "copy_in of %zu bytes at %zu past a %zu-byte reply buffer", len, off,
                           buf_.size());
        if (buf_.data() + off != src) std::memmove(buf_.data() + off, src, len);
    }
    void gather(size_t off, void* dst, size_t len) const override { std::memcpy(dst, buf_.data() + off, len); }

private:
    std::vector<std::byte>& buf_;
};

// Segments like a guest's descriptor chain: contiguous() only when the first
// segment holds the whole reply (as vhost-user's ChainReplyWriter).
class ScatterWriter final : public CheckedWriter {
public:
    explicit ScatterWriter(std::vector<std::unique_ptr<std::byte[]>>& segs, const std::vector<size_t>& sizes)
        : segs_(segs), sizes_(sizes) {
        for (size_t s : sizes_) cap_ += s;
    }
    size_t capacity() const override { return cap_; }
    std::byte* contiguous(size_t size) override {
        return !sizes_.empty() && sizes_[0] >= size ? segs_[0].get() : nullptr;
    }
    int iov(size_t off, size_t len, struct iovec* out, int max) override {
        if (off > cap_ || len > cap_ - off) return -1;
        int n = 0;
        size_t pos = 0;
        for (size_t i = 0; i < sizes_.size() && len; ++i) {
            size_t end = pos + sizes_[i];
            if (off < end) {
                if (n == max) break;
                size_t skip = off - pos, take = std::min(sizes_[i] - skip, len);
                out[n++] = {segs_[i].get() + skip, take};
                off += take;
                len -= take;
            }
            pos = end;
        }
        return n;
    }
    void copy_in(size_t off, const void* src, size_t len) override {
        if (off > cap_ || len > cap_ - off)
            return finding("fuse-copy-in-range", "copy_in of %zu bytes at %zu past a %zu-byte scattered reply", len,
                           off, cap_);
        walk(off, len, [&](std::byte* seg, size_t done, size_t n) {
            std::memmove(seg, static_cast<const std::byte*>(src) + done, n);
        });
    }
    void gather(size_t off, void* dst, size_t len) const override {
        const_cast<ScatterWriter*>(this)->walk(off, len, [&](std::byte* seg, size_t done, size_t n) {
            std::memcpy(static_cast<std::byte*>(dst) + done, seg, n);
        });
    }

private:
    template <typename F>
    void walk(size_t off, size_t len, F f) {
        size_t pos = 0, done = 0;
        for (size_t i = 0; i < sizes_.size() && done < len; ++i) {
            size_t end = pos + sizes_[i];
            if (off + done < end) {
                size_t skip = off + done - pos, n = std::min(sizes_[i] - skip, len - done);
                f(segs_[i].get() + skip, done, n);
                done += n;
            }
            pos = end;
        }
    }
    std::vector<std::unique_ptr<std::byte[]>>& segs_;
    const std::vector<size_t>& sizes_;
    size_t cap_ = 0;
};

// The payload size a successful reply to this request must have: exact, or
// at most `max` when variable.
struct Expect {
    bool known = false;
    bool exact = true;
    size_t size = 0;
};

Expect expected_payload(const fuse_in_header& h, const std::vector<std::byte>& req, uint32_t max_write) {
    auto at = [&](size_t off, auto& v) {
        if (req.size() >= sizeof h + off + sizeof v) std::memcpy(&v, req.data() + sizeof h + off, sizeof v);
    };
    switch (h.opcode) {
        case FUSE_LOOKUP: case FUSE_MKNOD: case FUSE_MKDIR: case FUSE_SYMLINK: case FUSE_LINK:
            return {true, true, sizeof(fuse_entry_out)};
        case FUSE_GETATTR: case FUSE_SETATTR: return {true, true, sizeof(fuse_attr_out)};
        case FUSE_OPEN: case FUSE_OPENDIR: return {true, true, sizeof(fuse_open_out)};
        case FUSE_CREATE: return {true, true, sizeof(fuse_entry_out) + sizeof(fuse_open_out)};
        case FUSE_WRITE: case FUSE_COPY_FILE_RANGE: return {true, true, sizeof(fuse_write_out)};
        case FUSE_STATFS: return {true, true, sizeof(fuse_statfs_out)};
        case FUSE_LSEEK: return {true, true, sizeof(fuse_lseek_out)};
        case FUSE_READLINK: return {true, false, PATH_MAX};
        case FUSE_INIT: return {true, false, sizeof(fuse_init_out)};
        case FUSE_READ: case FUSE_READDIR: case FUSE_READDIRPLUS: {
            fuse_read_in in{};
            at(0, in);
            return {true, false, std::min<size_t>(in.size, max_write)};
        }
        case FUSE_GETXATTR: case FUSE_LISTXATTR: {
            fuse_getxattr_in in{};
            at(0, in);
            if (in.size == 0) return {true, true, sizeof(fuse_getxattr_out)};
            return {true, false, in.size};
        }
        case FUSE_UNLINK: case FUSE_RMDIR: case FUSE_RENAME: case FUSE_RENAME2: case FUSE_RELEASE:
        case FUSE_RELEASEDIR: case FUSE_FSYNC: case FUSE_FSYNCDIR: case FUSE_FLUSH: case FUSE_SETXATTR:
        case FUSE_REMOVEXATTR: case FUSE_ACCESS: case FUSE_FALLOCATE: case FUSE_SYNCFS: case FUSE_DESTROY:
            return {true, true, 0};
        default:
            return {};
    }
}

void check_reply(const fuse_in_header& h, bool have_header, const std::vector<std::byte>& req,
                 fuse::Server::Result res, const CheckedWriter& w, uint32_t max_write) {
    using R = fuse::Server::Result;
    // The kernel never waits for (nor expects) a reply to these.
    if (have_header && (h.opcode == FUSE_FORGET || h.opcode == FUSE_BATCH_FORGET) && res != R::NoReply)
        return finding("fuse-forget-replied", "opcode %u was answered (%d commits)", h.opcode, w.commits);
    if (res == R::NoReply) {
        if (w.commits) finding("fuse-result", "opcode %u: a reply was committed but handle() says NoReply", h.opcode);
        return;
    }
    if (w.commits == 0)
        return finding("fuse-replied-without-commit", "opcode %u: handle() says Replied, nothing was committed",
                       h.opcode);
    if (w.commits != 1) return finding("fuse-result", "opcode %u: %d replies committed", h.opcode, w.commits);
    if (res == R::Destroyed && h.opcode != FUSE_DESTROY)
        return finding("fuse-result", "opcode %u ended the session", h.opcode);
    if (w.committed < kOutHdr || w.committed > w.capacity())
        return finding("fuse-reply-size", "opcode %u: %zu reply bytes committed (capacity %zu)", h.opcode, w.committed,
                       w.capacity());
    fuse_out_header oh;
    w.gather(0, &oh, sizeof oh);
    if (oh.len != w.committed)
        return finding("fuse-reply-header", "opcode %u: reply header says %u bytes, %zu committed", h.opcode, oh.len,
                       w.committed);
    if (have_header && oh.unique != h.unique)
        return finding("fuse-reply-header", "opcode %u: reply unique %llu for request %llu", h.opcode,
                       static_cast<unsigned long long>(oh.unique), static_cast<unsigned long long>(h.unique));
    if (oh.error > 0 || oh.error < -4095)
        return finding("fuse-reply-header", "opcode %u: reply error %d is no -errno", h.opcode, oh.error);
    size_t payload = oh.len - kOutHdr;
    if (oh.error != 0) {
        if (payload)
            finding("fuse-reply-size", "opcode %u: error %d reply carries %zu payload bytes", h.opcode, oh.error,
                    payload);
        return;
    }
    Expect e = expected_payload(h, req, max_write);
    if (!e.known) return finding("fuse-reply-size", "opcode %u (unsupported) got a success reply", h.opcode);
    if (e.exact ? payload != e.size : payload > e.size)
        finding("fuse-reply-size", "opcode %u: success reply of %zu payload bytes (expected %s%zu)", h.opcode, payload,
                e.exact ? "" : "at most ", e.size);
}

}  // namespace

int fuzz_one(const uint8_t* data, size_t size) {
    Input in(data, size);
    uint8_t session = in.u8();
    uint8_t wcfg = in.u8();
    FuseFixture fx(session);
    if (session & 128) fx.init();

    unsigned kind = wcfg & 3, param = wcfg >> 2;
    std::vector<std::byte> buf;
    std::vector<std::unique_ptr<std::byte[]>> segs;
    std::vector<size_t> sizes;
    if (kind == 0) buf.resize((1u << 20) + 4096);
    else if (kind == 1) buf.resize(param * 97);
    else {
        size_t first = (param + 1) * 8, total = kind == 2 ? 68 * 1024 : 16 * 1024;
        for (size_t used = 0; used < total;) {
            size_t s = sizes.empty() || kind == 3 ? first : 4096;
            sizes.push_back(s);
            segs.emplace_back(new std::byte[s]);
            used += s;
        }
    }
    uint32_t max_write = fx.server().options().max_write;

    while (!in.empty()) {
        uint16_t n = in.u16();
        bool raw = n & 0x8000;
        auto bytes = in.take(n & 0x7fff);
        std::vector<std::byte> req(bytes.size());  // exact size: ASan sees an over-read
        if (!bytes.empty()) std::memcpy(req.data(), bytes.data(), bytes.size());
        fuse_in_header h{};
        bool have_header = req.size() >= sizeof h;
        if (have_header) {
            if (!raw) {
                uint32_t len = static_cast<uint32_t>(req.size());
                std::memcpy(req.data() + offsetof(fuse_in_header, len), &len, sizeof len);
            }
            std::memcpy(&h, req.data(), sizeof h);
        }
        if (have_header && h.opcode == FUSE_MKNOD && req.size() >= sizeof h + sizeof(fuse_mknod_in) &&
            tolerating("fuse-create-opens-fifo")) {
            fuse_mknod_in mi;
            std::memcpy(&mi, req.data() + sizeof h, sizeof mi);
            if ((mi.mode & S_IFMT) == S_IFIFO) {
                steered("fuse-create-opens-fifo", "MKNOD of a FIFO is left out (CREATE would open it)");
                continue;
            }
        }
        std::unique_ptr<CheckedWriter> w;
        if (kind <= 1) w = std::make_unique<ContiguousWriter>(buf);
        else w = std::make_unique<ScatterWriter>(segs, sizes);
        auto res = fx.server().handle({req.data(), req.size()}, *w);
        if (verbose()) {
            fuse_out_header oh{};
            if (w->commits && w->committed >= sizeof oh) w->gather(0, &oh, sizeof oh);
            std::fprintf(stderr, "fuse: opcode %u node %llu (%zu bytes) -> %s error %d, %u bytes\n", h.opcode,
                         static_cast<unsigned long long>(h.nodeid), req.size(),
                         res == fuse::Server::Result::NoReply ? "no reply" : "reply", oh.error, oh.len);
        }
        check_reply(h, have_header, req, res, *w, max_write);
    }
    fx.finish("the requests");
    return 0;
}
