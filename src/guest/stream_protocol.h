#pragma once
// The stream transport's wire (a -v share of a snapshot-capable VM): FUSE
// requests and replies over one virtio-serial port "ocivm.fs.N". Shared by
// the host's server (src/transport/stream.cpp) and the guest's relay
// (src/guest/fuse_relay.cpp, static, libc only), so the two never disagree.
//
// Every frame is a u32 little-endian length and that many bytes:
//   guest -> host: a raw FUSE request (fuse_in_header, arguments)
//   host -> guest: a raw FUSE reply (fuse_out_header, data)
// A length of 0xFFFFFFFF (or one of the three below it) is a control frame,
// followed by 8 bytes. 0xFFFFFFFF carries a session id:
//   host -> guest "hello": the server's random session id, sent first. A
//                  hello with a new id means a new server (a clone after a
//                  restore, or none before): the guest rebuilds its state.
//   guest -> host "attach": the session id the guest has seen. The host
//                  discards everything before it: bytes still queued in the
//                  VM's virtio-serial device when it was saved belong to
//                  the snapshot's server and reach a clone's server half-cut.
// The pause handshake, around a snapshot (8 bytes: the pause's number):
//   host -> guest "pause" (0xFFFFFFFE): the relay forwards no new request
//                  (it holds the kernel's in its own memory, which the
//                  snapshot carries) and answers
//   guest -> host "paused" (0xFFFFFFFD) once every request it forwarded
//                  has its reply: nothing is in flight either way, so a
//                  snapshot taken now never has a request a clone would
//                  send again after the source's server has done it.
//   host -> guest "resume" (0xFFFFFFFC): the relay sends what it held. A
//                  relay restored into a clone resumes by itself on the new
//                  server's hello.
// A frame longer than kMaxFrame is a protocol error: the host drops the
// channel (it never allocates what a guest asks for).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace ocivm::stream {

inline constexpr uint32_t kControl = 0xFFFFFFFFu;  // hello / attach
inline constexpr uint32_t kPause = 0xFFFFFFFEu;
inline constexpr uint32_t kPaused = 0xFFFFFFFDu;
inline constexpr uint32_t kResume = 0xFFFFFFFCu;
inline constexpr bool is_control(uint32_t marker) { return marker >= kResume; }
inline constexpr size_t kSessionBytes = 8;
inline constexpr size_t kControlFrameBytes = 4 + kSessionBytes;
// Data in one READ/WRITE (the relay caps the kernel's max_write at it).
inline constexpr uint32_t kMaxData = 1u << 20;
// Headers and arguments beside the data (names, xattr values: at most 64 KiB).
inline constexpr uint32_t kMaxFrame = kMaxData + 68 * 1024;
inline constexpr const char* kPortPrefix = "ocivm.fs.";

inline void put_u32(unsigned char* p, uint32_t v) {
    p[0] = static_cast<unsigned char>(v);
    p[1] = static_cast<unsigned char>(v >> 8);
    p[2] = static_cast<unsigned char>(v >> 16);
    p[3] = static_cast<unsigned char>(v >> 24);
}
inline uint32_t get_u32(const unsigned char* p) {
    return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
           static_cast<uint32_t>(p[3]) << 24;
}
inline void put_u64(unsigned char* p, uint64_t v) {
    put_u32(p, static_cast<uint32_t>(v));
    put_u32(p + 4, static_cast<uint32_t>(v >> 32));
}
inline uint64_t get_u64(const unsigned char* p) { return get_u32(p) | static_cast<uint64_t>(get_u32(p + 4)) << 32; }

// A control frame (hello or attach, or with marker one of the pause
// handshake's) carrying session (or the pause's number).
inline void control_frame(uint64_t session, unsigned char out[kControlFrameBytes], uint32_t marker = kControl) {
    put_u32(out, marker);
    put_u64(out + 4, session);
}

// Splits a byte stream into frames. Bytes go in with feed(); next() hands
// out whole frames. The buffer never holds more than one frame plus what
// one feed() added.
class FrameReader {
public:
    enum class Status { NeedMore, Data, Control, TooLong };

    void feed(const void* p, size_t n) {
        compact();
        const auto* b = static_cast<const unsigned char*>(p);
        buf_.insert(buf_.end(), b, b + n);
    }

    // The next frame: Data (payload in data/size, valid until the next
    // feed()), Control (its session id or number, its marker in *marker),
    // NeedMore, or TooLong (a length past kMaxFrame: the stream is broken).
    Status next(const unsigned char** data, size_t* size, uint64_t* session, uint32_t* marker = nullptr) {
        size_t avail = buf_.size() - pos_;
        if (avail < 4) return Status::NeedMore;
        uint32_t len = get_u32(buf_.data() + pos_);
        if (is_control(len)) {
            if (avail < kControlFrameBytes) return Status::NeedMore;
            *session = get_u64(buf_.data() + pos_ + 4);
            if (marker) *marker = len;
            pos_ += kControlFrameBytes;
            return Status::Control;
        }
        if (len > kMaxFrame) return Status::TooLong;
        if (avail < 4 + static_cast<size_t>(len)) return Status::NeedMore;
        *data = buf_.data() + pos_ + 4;
        *size = len;
        pos_ += 4 + static_cast<size_t>(len);
        return Status::Data;
    }

    // Drops everything up to (not including) the control frame carrying
    // session; true once it is at the front. Without it, only the bytes
    // that could start one are kept.
    bool seek_control(uint64_t session) {
        unsigned char want[kControlFrameBytes];
        control_frame(session, want);
        const unsigned char* b = buf_.data() + pos_;
        size_t avail = buf_.size() - pos_;
        for (size_t i = 0; i + kControlFrameBytes <= avail; ++i) {
            if (std::memcmp(b + i, want, kControlFrameBytes) == 0) {
                pos_ += i;
                return true;
            }
        }
        if (avail >= kControlFrameBytes) pos_ += avail - (kControlFrameBytes - 1);
        return false;
    }

    void clear() {
        buf_.clear();
        pos_ = 0;
    }
    size_t buffered() const { return buf_.size() - pos_; }

private:
    void compact() {
        if (pos_ == 0) return;
        buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(pos_));
        pos_ = 0;
    }
    std::vector<unsigned char> buf_;
    size_t pos_ = 0;
};

}  // namespace ocivm::stream
