#include "image/gunzip.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "util/error.h"

namespace ocivm::image {

namespace {

const char* inflate_error(int r) {
    switch (r) {
        case ISAL_INVALID_BLOCK: return "invalid deflate block";
        case ISAL_INVALID_SYMBOL: return "invalid deflate symbol";
        case ISAL_INVALID_LOOKBACK: return "invalid back-reference distance";
        case ISAL_INVALID_WRAPPER: return "invalid gzip header";
        case ISAL_UNSUPPORTED_METHOD: return "unsupported compression method";
        case ISAL_INCORRECT_CHECKSUM: return "CRC-32 or length mismatch";
        case ISAL_NEED_DICT: return "needs a preset dictionary";
        default: return "decompression failed";
    }
}

}  // namespace

bool is_gzip_file(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    unsigned char m[2];
    return fd && ::pread(fd.get(), m, 2, 0) == 2 && m[0] == 0x1f && m[1] == 0x8b;
}

Gunzip::Gunzip(const std::string& path) : path_(path), in_(1 << 20) {
    fd_ = UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd_) throw_errno("cannot read layer " + path, errno);
    ::posix_fadvise(fd_.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    isal_inflate_init(&st_);
    st_.crc_flag = ISAL_GZIP;
    st_.next_in = in_.data();
    st_.avail_in = 0;
}

bool Gunzip::fill() {
    if (file_end_) return false;
    // Keep what is left, then top up.
    if (st_.avail_in > 0 && st_.next_in != in_.data()) std::move(st_.next_in, st_.next_in + st_.avail_in, in_.begin());
    st_.next_in = in_.data();
    ssize_t n;
    do n = ::read(fd_.get(), in_.data() + st_.avail_in, in_.size() - st_.avail_in);
    while (n < 0 && errno == EINTR);
    if (n < 0) throw_errno("gzip: cannot read the stream", errno);
    if (n == 0) {
        file_end_ = true;
        return false;
    }
    st_.avail_in += static_cast<uint32_t>(n);
    return true;
}

size_t Gunzip::read(char* buf, size_t size) {
    size_t got = 0;
    while (got < size && !done_) {
        if (member_done_) {
            // Another member, zero padding, or the end.
            if (st_.avail_in < 2 && !file_end_) fill();
            if (st_.avail_in == 0) {
                done_ = true;
                break;
            }
            if (st_.avail_in >= 2 && st_.next_in[0] == 0x1f && st_.next_in[1] == 0x8b) {
                uint8_t* next = st_.next_in;
                uint32_t avail = st_.avail_in;
                isal_inflate_reset(&st_);
                st_.crc_flag = ISAL_GZIP;
                st_.next_in = next;
                st_.avail_in = avail;
                member_done_ = false;
                continue;
            }
            if (std::all_of(st_.next_in, st_.next_in + st_.avail_in, [](uint8_t b) { return b == 0; })) {
                st_.avail_in = 0;
                if (!fill()) done_ = true;
                continue;
            }
            throw Error("gzip: data after the end of the stream");
        }
        if (st_.avail_in == 0 && !fill())
            throw Error("gzip: the stream ends too early (truncated or damaged)");
        st_.next_out = reinterpret_cast<uint8_t*>(buf + got);
        st_.avail_out = static_cast<uint32_t>(std::min<size_t>(size - got, UINT32_MAX));
        uint32_t before = st_.avail_out, before_in = st_.avail_in;
        int r = isal_inflate(&st_);
        if (r < 0 || r == ISAL_NEED_DICT)
            throw Error(std::string("gzip: ") + inflate_error(r));
        got += before - st_.avail_out;
        if (st_.block_state == ISAL_BLOCK_FINISH) {
            member_done_ = true;
        } else if (st_.avail_out == before && st_.avail_in == before_in && !fill()) {
            throw Error("gzip: the stream ends too early (truncated or damaged)");
        }
    }
    return got;
}

}  // namespace ocivm::image
