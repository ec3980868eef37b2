#pragma once
// Helpers for the hostile-guest tests: heap accounting that does not depend on
// time, a reply writer shaped like virtio-fs guest buffers, and the
// prerequisite checks (these tests make device nodes, so they need root).
#include <gtest/gtest.h>
#include <malloc.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "fuse/reply_writer.h"
#include "unit/test_util.h"

namespace ocivm::test {

// Bytes the allocator has handed out (arenas and mmapped chunks, all
// threads): what the server keeps, whatever the page cache does.
inline size_t heap_in_use() {
    struct mallinfo2 m = ::mallinfo2();
    return m.uordblks + m.hblkhd;
}

// Fails the test loudly when not root: mknod of devices and trusted.* need it.
#define OCIVM_REQUIRE_ROOT()                                                                  \
    do {                                                                                      \
        if (::geteuid() != 0)                                                                 \
            FAIL() << "this test needs root (ctest label fs): it makes device nodes on the " \
                      "host; run it as root";                                                 \
    } while (0)

// A reply writer like virtio-fs's: scattered (no contiguous buffer) and as
// large as the guest says, so the server must use its own scratch space.
// Only the bytes actually written are kept.
class ScatterWriter final : public fuse::ReplyWriter {
public:
    // Room for replies up to 256 KiB is reserved up front, so the writer's
    // own memory does not show up in a heap measurement.
    explicit ScatterWriter(size_t capacity) : cap_(capacity) { bytes_.reserve(256 * 1024); }
    size_t capacity() const override { return cap_; }
    std::byte* contiguous(size_t) override { return nullptr; }
    int iov(size_t, size_t, struct iovec*, int) override { return -1; }
    void copy_in(size_t off, const void* src, size_t len) override {
        if (bytes_.size() < off + len) bytes_.resize(off + len);
        std::memcpy(bytes_.data() + off, src, len);
    }
    int commit(size_t len) override {
        committed_ = len;
        return 0;
    }
    int error() const {
        fuse_out_header h{};
        if (bytes_.size() >= sizeof h) std::memcpy(&h, bytes_.data(), sizeof h);
        return h.error;
    }
    std::string payload() const {
        if (committed_ < sizeof(fuse_out_header) || bytes_.size() < committed_) return {};
        return std::string(reinterpret_cast<const char*>(bytes_.data()) + sizeof(fuse_out_header),
                           committed_ - sizeof(fuse_out_header));
    }

private:
    size_t cap_;
    size_t committed_ = 0;
    std::vector<std::byte> bytes_;
};

inline std::string text_of(const Reply& r) {
    return std::string(reinterpret_cast<const char*>(r.payload.data()), r.payload.size());
}

}  // namespace ocivm::test
