#pragma once
// The FUSE wire protocol on <linux/fuse.h>: checks and parses one request,
// calls the FileSystem, builds the reply. Transport-agnostic and thread-safe.
#include <atomic>
#include <cstdint>
#include <span>

#include "fs/file_system.h"
#include "fuse/reply_writer.h"
#include "trace/recorder.h"

struct fuse_in_header;

namespace ocivm::fuse {

struct ServerOptions {
    uint32_t max_write = 1u << 20;   // bytes of data in one READ/WRITE
    bool cache_symlinks = false;     // FUSE_CACHE_SYMLINKS
    bool auto_inval_data = false;    // FUSE_AUTO_INVAL_DATA
    bool writeback_cache = false;    // FUSE_WRITEBACK_CACHE
    bool submounts = false;          // FUSE_SUBMOUNTS (virtio-fs --announce-submounts)
    // READDIRPLUS: attributes with listings. Worthless without caching (the
    // entries expire at once and are looked up and forgotten again), so
    // off for cache=never.
    bool readdirplus = true;
    // FUSE_ATOMIC_O_TRUNC: O_TRUNC travels with OPEN. Off when the file
    // system declines OPEN (no-open mode), so the kernel truncates by SETATTR.
    bool atomic_o_trunc = true;
};

// Flags the server asks for in INIT (intersected with what the kernel offers).
uint64_t wanted_init_flags(const ServerOptions& o);

class Server {
public:
    enum class Result {
        Replied,    // a reply was committed
        NoReply,    // FORGET, BATCH_FORGET, or a request too short to answer
        Destroyed,  // DESTROY answered: the session is over
    };

    // recorder (optional) gets one record per request: the trace file and
    // the livelock detector.
    Server(fs::FileSystem& fs, ServerOptions opts, trace::Recorder* recorder = nullptr);

    // Handles one request (header and arguments in `in`).
    Result handle(std::span<const std::byte> in, ReplyWriter& out);

    // Size a transport's request buffer must have.
    size_t request_buffer_size() const { return opts_.max_write + 64 * 1024; }
    bool initialized() const { return initialized_.load(std::memory_order_acquire); }
    uint32_t proto_minor() const { return minor_.load(std::memory_order_relaxed); }
    uint64_t negotiated_flags() const { return flags_.load(std::memory_order_relaxed); }
    const ServerOptions& options() const { return opts_; }

private:
    Result handle_request(std::span<const std::byte> in, ReplyWriter& out);
    void record_forgets(const fuse_in_header& h, std::span<const std::byte> in, trace::Record& r);

    fs::FileSystem& fs_;
    ServerOptions opts_;
    trace::Recorder* recorder_ = nullptr;
    std::atomic<bool> initialized_{false};
    std::atomic<uint32_t> minor_{0};
    std::atomic<uint64_t> flags_{0};

    friend struct Dispatch;
};

}  // namespace ocivm::fuse
