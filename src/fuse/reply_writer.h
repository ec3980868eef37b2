#pragma once
// Where reply bytes go. A transport implements it: one contiguous buffer for
// /dev/fuse and the stream transport, a scatter list of guest buffers for
// virtio-fs, so READ data lands in the final memory without an extra copy.
#include <sys/uio.h>

#include <cstddef>

namespace ocivm::fuse {

class ReplyWriter {
public:
    virtual ~ReplyWriter() = default;
    // Largest reply (header included) this writer can hold.
    virtual size_t capacity() const = 0;
    // The reply area as one buffer of at least `size` bytes, or nullptr when
    // the destination is scattered.
    virtual std::byte* contiguous(size_t size) = 0;
    // Scatter list covering reply bytes [off, off+len); returns the count.
    virtual int iov(size_t off, size_t len, struct iovec* out, int max) = 0;
    virtual void copy_in(size_t off, const void* src, size_t len) = 0;
    // The first `len` bytes of the reply are complete: send them. Returns 0
    // or -errno from the transport (the server only logs it).
    virtual int commit(size_t len) = 0;
};

// A ReplyWriter over one caller-owned buffer; commit hands the bytes to a
// sink function (write(2) for /dev/fuse, a test's capture).
class BufferReplyWriter : public ReplyWriter {
public:
    BufferReplyWriter(std::byte* buf, size_t cap) : buf_(buf), cap_(cap) {}
    size_t capacity() const override { return cap_; }
    std::byte* contiguous(size_t size) override { return size <= cap_ ? buf_ : nullptr; }
    int iov(size_t off, size_t len, struct iovec* out, int max) override;
    void copy_in(size_t off, const void* src, size_t len) override;
    std::byte* data() const { return buf_; }

protected:
    std::byte* buf_;
    size_t cap_;
};

}  // namespace ocivm::fuse
