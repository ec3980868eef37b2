#include "trace/recorder.h"

#include <linux/fuse.h>

#include <cstring>
#include <stdexcept>

namespace ocivm::trace {

const char* opcode_name(uint32_t op) {
    switch (op) {
        case FUSE_LOOKUP: return "LOOKUP";
        case FUSE_FORGET: return "FORGET";
        case FUSE_GETATTR: return "GETATTR";
        case FUSE_SETATTR: return "SETATTR";
        case FUSE_READLINK: return "READLINK";
        case FUSE_SYMLINK: return "SYMLINK";
        case FUSE_MKNOD: return "MKNOD";
        case FUSE_MKDIR: return "MKDIR";
        case FUSE_UNLINK: return "UNLINK";
        case FUSE_RMDIR: return "RMDIR";
        case FUSE_RENAME: return "RENAME";
        case FUSE_LINK: return "LINK";
        case FUSE_OPEN: return "OPEN";
        case FUSE_READ: return "READ";
        case FUSE_WRITE: return "WRITE";
        case FUSE_STATFS: return "STATFS";
        case FUSE_RELEASE: return "RELEASE";
        case FUSE_FSYNC: return "FSYNC";
        case FUSE_SETXATTR: return "SETXATTR";
        case FUSE_GETXATTR: return "GETXATTR";
        case FUSE_LISTXATTR: return "LISTXATTR";
        case FUSE_REMOVEXATTR: return "REMOVEXATTR";
        case FUSE_FLUSH: return "FLUSH";
        case FUSE_INIT: return "INIT";
        case FUSE_OPENDIR: return "OPENDIR";
        case FUSE_READDIR: return "READDIR";
        case FUSE_RELEASEDIR: return "RELEASEDIR";
        case FUSE_FSYNCDIR: return "FSYNCDIR";
        case FUSE_GETLK: return "GETLK";
        case FUSE_SETLK: return "SETLK";
        case FUSE_SETLKW: return "SETLKW";
        case FUSE_ACCESS: return "ACCESS";
        case FUSE_CREATE: return "CREATE";
        case FUSE_INTERRUPT: return "INTERRUPT";
        case FUSE_BMAP: return "BMAP";
        case FUSE_DESTROY: return "DESTROY";
        case FUSE_IOCTL: return "IOCTL";
        case FUSE_POLL: return "POLL";
        case FUSE_BATCH_FORGET: return "BATCH_FORGET";
        case FUSE_FALLOCATE: return "FALLOCATE";
        case FUSE_READDIRPLUS: return "READDIRPLUS";
        case FUSE_RENAME2: return "RENAME2";
        case FUSE_LSEEK: return "LSEEK";
        case FUSE_COPY_FILE_RANGE: return "COPY_FILE_RANGE";
        case FUSE_SYNCFS: return "SYNCFS";
        default: return "UNKNOWN";
    }
}

Recorder::Recorder(const std::string& trace_path, LivelockDetector::Options lopts)
    : slots_(new Slot[kCapacity]), detector_(std::move(lopts)) {
    for (size_t i = 0; i < kCapacity; ++i) slots_[i].seq.store(i, std::memory_order_relaxed);
    if (!trace_path.empty()) {
        out_ = std::fopen(trace_path.c_str(), "we");
        if (!out_)
            throw std::runtime_error("cannot write the trace to " + trace_path + ": " +
                                     std::strerror(errno));
    }
    paths_[1] = "/";
    thread_ = std::thread([this] { run(); });
}

Recorder::~Recorder() {
    flush();
    stop_ = true;
    wake_.notify_all();
    thread_.join();
    if (out_) std::fclose(out_);
}

// Bounded multi-producer queue (per-slot sequence numbers): a producer
// claims a slot with one CAS; a full queue drops the record.
void Recorder::push(const Record& r) {
    uint64_t pos = head_.load(std::memory_order_relaxed);
    for (;;) {
        Slot& s = slots_[pos & (kCapacity - 1)];
        uint64_t seq = s.seq.load(std::memory_order_acquire);
        int64_t diff = static_cast<int64_t>(seq) - static_cast<int64_t>(pos);
        if (diff == 0) {
            if (head_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
                s.rec = r;
                s.seq.store(pos + 1, std::memory_order_release);
                recorded_.fetch_add(1, std::memory_order_relaxed);
                return;
            }
        } else if (diff < 0) {
            dropped_.fetch_add(1, std::memory_order_relaxed);
            return;
        } else {
            pos = head_.load(std::memory_order_relaxed);
        }
    }
}

bool Recorder::pop(Record& out) {
    Slot& s = slots_[tail_ & (kCapacity - 1)];
    uint64_t seq = s.seq.load(std::memory_order_acquire);
    if (seq != tail_ + 1) return false;
    out = s.rec;
    s.seq.store(tail_ + kCapacity, std::memory_order_release);
    ++tail_;
    return true;
}

namespace {
// Requests whose name argument is a directory entry (not an xattr name).
bool names_an_entry(uint32_t op) {
    switch (op) {
        case FUSE_LOOKUP: case FUSE_MKDIR: case FUSE_MKNOD: case FUSE_CREATE: case FUSE_UNLINK:
        case FUSE_RMDIR: case FUSE_SYMLINK: case FUSE_RENAME: case FUSE_RENAME2: case FUSE_LINK:
            return true;
        default:
            return false;
    }
}
std::string join(const std::string& dir, std::string_view name) {
    if (dir.empty()) return std::string(name);
    if (dir == "/") return "/" + std::string(name);
    return dir + "/" + std::string(name);
}
}  // namespace

void Recorder::learn_path(const Record& r) {
    if (!r.result_node || r.error) return;
    std::lock_guard lk(paths_mu_);
    auto it = paths_.find(r.nodeid);
    if (it == paths_.end() || r.name_len == 0) return;
    paths_[r.result_node] = join(it->second, r.name_view());
}

std::string Recorder::path_of(uint64_t nodeid) {
    std::lock_guard lk(paths_mu_);
    auto it = paths_.find(nodeid);
    return it == paths_.end() ? std::string() : it->second;
}

namespace {
void json_string(FILE* f, std::string_view s) {
    std::fputc('"', f);
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') std::fprintf(f, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f) std::fprintf(f, "\\u%04x", c);
        else std::fputc(c, f);
    }
    std::fputc('"', f);
}
}  // namespace

void Recorder::write_json(const Record& r, const std::string& path) {
    std::fprintf(out_, "{\"t\":%llu.%06llu,\"unique\":%llu,\"op\":\"%s\",\"nodeid\":%llu,\"path\":",
                 static_cast<unsigned long long>(r.time_ns / 1000000000ull),
                 static_cast<unsigned long long>((r.time_ns / 1000) % 1000000),
                 static_cast<unsigned long long>(r.unique), opcode_name(r.opcode),
                 static_cast<unsigned long long>(r.nodeid));
    json_string(out_, path);
    std::fprintf(out_, ",\"pid\":%u,\"uid\":%u,\"gid\":%u,\"error\":%d,\"us\":%u}\n", r.pid,
                 r.uid, r.gid, r.error, r.latency_us);
}

void Recorder::run() {
    Record r;
    for (;;) {
        bool any = false;
        while (pop(r)) {
            any = true;
            std::string path;
            {
                std::lock_guard lk(paths_mu_);
                auto it = paths_.find(r.nodeid);
                if (it != paths_.end()) path = it->second;
            }
            if (r.name_len && names_an_entry(r.opcode)) path = join(path, r.name_view());
            learn_path(r);
            // New to the guest means a path never seen before (node ids are
            // not: under cache=never the same file gets a new one after
            // every FORGET).
            bool new_node = false;
            if (r.result_node && !path.empty() && seen_paths_.size() < kMaxSeenPaths)
                new_node = seen_paths_.insert(path).second;
            detector_.add(r, path, new_node);
            if (out_) write_json(r, path);
            processed_.fetch_add(1, std::memory_order_release);
        }
        if (out_ && any) std::fflush(out_);
        if (stop_.load() && !any) return;
        std::unique_lock lk(wake_mu_);
        wake_.wait_for(lk, std::chrono::milliseconds(any ? 0 : 20));
    }
}

void Recorder::flush() {
    uint64_t target = recorded_.load();
    while (processed_.load(std::memory_order_acquire) < target) {
        wake_.notify_all();
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (out_) std::fflush(out_);
}

}  // namespace ocivm::trace
