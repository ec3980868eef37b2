#include "transport/stream.h"

#include <linux/fuse.h>
#include <linux/sockios.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>

#include "fuse/reply_writer.h"
#include "guest/stream_protocol.h"
#include "util/error.h"
#include "util/io.h"

namespace ocivm::transport {

namespace {

// One reply, written as one frame: the length goes in the 4 bytes kept
// in front of the reply area.
class StreamReply final : public fuse::BufferReplyWriter {
public:
    StreamReply(std::byte* frame, size_t cap, int fd) : BufferReplyWriter(frame + 4, cap), frame_(frame), fd_(fd) {}
    int commit(size_t len) override {
        stream::put_u32(reinterpret_cast<unsigned char*>(frame_), static_cast<uint32_t>(len));
        if (!write_all(fd_, frame_, len + 4)) return errno ? -errno : -EIO;
        return 0;
    }

private:
    std::byte* frame_;
    int fd_;
};

uint64_t random_session() {
    uint64_t s = 0;
    while (s == 0 || s == UINT64_MAX) {
        if (::getrandom(&s, sizeof s, 0) != static_cast<ssize_t>(sizeof s)) throw_errno("getrandom", errno);
    }
    return s;
}

}  // namespace

StreamSession::StreamSession(fuse::Server& server, uint64_t session)
    : server_(server), session_(session ? session : random_session()), wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (!wake_) throw_errno("eventfd", errno);
}

namespace {
void wake(int fd) {
    uint64_t one = 1;
    if (::write(fd, &one, sizeof one) < 0) spdlog::debug("eventfd: {}", std::strerror(errno));
}
}  // namespace

void StreamSession::park() {
    std::unique_lock lk(mu_);
    if (!pause_wanted_ || pause_seq_ != pause_sent_) return;  // given up on meanwhile
    parked_ = true;
    cv_.notify_all();
    cv_.wait(lk, [this] { return !pause_wanted_; });
    parked_ = false;
}

bool StreamSession::sync_pause(int fd) {
    bool want;
    uint64_t seq;
    {
        std::lock_guard lk(mu_);
        want = pause_wanted_;
        seq = pause_seq_;
    }
    unsigned char f[stream::kControlFrameBytes];
    if (pause_out_ && (!want || seq != pause_sent_)) {
        stream::control_frame(pause_sent_, f, stream::kResume);
        if (!write_all(fd, f, sizeof f)) return false;
        pause_out_ = false;
    }
    if (want && !pause_out_ && seq != pause_sent_) {
        stream::control_frame(seq, f, stream::kPause);
        if (!write_all(fd, f, sizeof f)) return false;
        pause_sent_ = seq;
        pause_out_ = true;
    }
    return true;
}

bool StreamSession::quiesce(int timeout_ms) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    int fd;
    {
        std::unique_lock lk(mu_);
        if (ended_) return true;  // nothing can be in flight on a closed stream
        pause_wanted_ = true;
        ++pause_seq_;
        wake(wake_.get());
        if (!cv_.wait_until(lk, deadline, [this] { return parked_ || ended_; })) {
            // The loop tells the guest to go on.
            pause_wanted_ = false;
            cv_.notify_all();
            wake(wake_.get());
            return false;
        }
        if (ended_) return true;
        fd = fd_;
    }
    // Parked between two requests: every reply is whole in the socket.
    // Done once the peer has read all of it.
    for (;;) {
        int queued = 0;
        if (::ioctl(fd, SIOCOUTQ, &queued) < 0) {
            spdlog::warn("SIOCOUTQ on the stream socket: {}", std::strerror(errno));
            break;
        }
        if (queued == 0) return true;
        if (std::chrono::steady_clock::now() >= deadline) break;
        ::usleep(1000);
    }
    resume();
    return false;
}

void StreamSession::resume() {
    std::lock_guard lk(mu_);
    pause_wanted_ = false;
    cv_.notify_all();
    wake(wake_.get());  // a loop still waiting for "paused" sends "resume" too
}

int StreamSession::serve(int fd) {
    struct Ended {
        StreamSession& s;
        ~Ended() {
            std::lock_guard lk(s.mu_);
            s.ended_ = true;
            s.cv_.notify_all();
        }
    } ended{*this};
    {
        std::lock_guard lk(mu_);
        fd_ = fd;
    }
    unsigned char hello[stream::kControlFrameBytes];
    stream::control_frame(session_, hello);
    if (!write_all(fd, hello, sizeof hello)) {
        spdlog::info("stream: the front end is gone before the hello: {}", std::strerror(errno));
        return 0;
    }
    spdlog::info("stream: session {:016x}: waiting for the guest to attach", session_);
    // The reply area: the largest reply the server makes, plus the length.
    std::vector<std::byte> frame(server_.request_buffer_size() + 4);
    std::vector<unsigned char> chunk(256 * 1024);
    stream::FrameReader reader;
    bool attached = false;
    for (;;) {
        for (;;) {
            if (!attached) {
                size_t before = reader.buffered();
                bool found = reader.seek_control(session_);
                stats_.discarded_bytes += before - reader.buffered();
                if (!found) break;
            }
            const unsigned char* data = nullptr;
            size_t size = 0;
            uint64_t session = 0;
            uint32_t marker = 0;
            auto st = reader.next(&data, &size, &session, &marker);
            if (st == stream::FrameReader::Status::NeedMore) break;
            if (st == stream::FrameReader::Status::TooLong) {
                spdlog::warn("stream: the guest sent a frame longer than {} bytes; dropping the channel",
                             stream::kMaxFrame);
                return -EPROTO;
            }
            if (st == stream::FrameReader::Status::Control) {
                if (marker == stream::kPaused) {
                    // Every request the relay forwarded has its reply, and
                    // it forwards nothing more until told to resume.
                    if (pause_out_ && session == pause_sent_) {
                        ++stats_.pauses;
                        park();
                        if (!sync_pause(fd)) return 0;
                    }
                    continue;
                }
                if (marker != stream::kControl) continue;  // not one a guest sends
                if (session == session_ && !attached) {
                    attached = true;
                    ++stats_.attaches;
                    spdlog::info("stream: the guest attached ({} bytes of an earlier session discarded)",
                                 stats_.discarded_bytes.load());
                }
                continue;  // another session's attach: stale, ignored
            }
            ++stats_.requests;
            StreamReply out(frame.data(), frame.size() - 4, fd);
            server_.handle(std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size), out);
        }
        if (!sync_pause(fd)) {
            spdlog::info("stream: the front end is gone: {}", std::strerror(errno));
            return 0;
        }
        pollfd pf[2] = {{fd, POLLIN, 0}, {wake_.get(), POLLIN, 0}};
        if (::poll(pf, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (pf[1].revents & POLLIN) {  // a quiesce: seen at the top of the loop
            uint64_t v;
            while (::read(wake_.get(), &v, sizeof v) > 0) {
            }
            continue;
        }
        if (!(pf[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t n = ::read(fd, chunk.data(), chunk.size());
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            int e = errno;
            spdlog::info("stream: reading from the front end: {}", std::strerror(e));
            return e == ECONNRESET ? 0 : -e;
        }
        if (n == 0) return 0;
        reader.feed(chunk.data(), static_cast<size_t>(n));
    }
}

}  // namespace ocivm::transport
