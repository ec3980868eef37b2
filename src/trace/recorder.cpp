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

Recorder::Recorder(const std::string& trace_path, LivelockDetector::Options lopts,
                   PathLimits limits)
    : slots_(new Slot[kCapacity]), detector_(std::move(lopts)), limits_(limits) {
    for (size_t i = 0; i < kCapacity; ++i) slots_[i].seq.store(i, std::memory_order_relaxed);
    if (!trace_path.empty()) {
        out_ = std::fopen(trace_path.c_str(), "we");
        if (!out_)
            throw std::runtime_error("cannot write the trace to " + trace_path + ": " +
                                     std::strerror(errno));
    }
    paths_[1] = KnownPath{"/", 0};
    path_bytes_ = 1;
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

// Requests whose reply counts a lookup on the node it names.
bool counts_a_lookup(uint32_t op) {
    switch (op) {
        case FUSE_LOOKUP: case FUSE_MKDIR: case FUSE_MKNOD: case FUSE_CREATE: case FUSE_SYMLINK:
        case FUSE_LINK:
            return true;
        default:
            return false;
    }
}

constexpr std::string_view kCut = "(...)";

// dir/name with "." and ".." resolved, at most max bytes (a longer path
// keeps its tail), so no path costs more than max whatever the guest sends.
std::string child_path(const std::string& dir, std::string_view name, size_t max) {
    if (name == ".") return dir;
    if (name == "..") {
        size_t slash = dir.rfind('/');
        if (slash == std::string::npos) return dir;  // unknown or cut: stay
        return slash == 0 ? std::string("/") : dir.substr(0, slash);
    }
    std::string p;
    p.reserve(std::min(dir.size() + 1 + name.size(), max));
    if (dir.empty()) {
        p = name;
    } else {
        p = dir;
        if (dir != "/") p += '/';
        p += name;
    }
    if (p.size() > max && max > kCut.size()) {
        std::string cut(kCut);
        cut.append(p, p.size() - (max - kCut.size()), std::string::npos);
        return cut;
    }
    return p;
}
}  // namespace

std::string Recorder::path_for(const Record& r) {
    std::lock_guard lk(paths_mu_);
    auto it = paths_.find(r.nodeid);
    const std::string& dir = it == paths_.end() ? std::string() : it->second.path;
    if (r.name_len && names_an_entry(r.opcode)) return child_path(dir, r.name_view(), limits_.max_path);
    return dir;
}

void Recorder::count_lookup(const Record& r, const std::string& path) {
    if (!r.result_node || r.error || !counts_a_lookup(r.opcode) || r.result_node == 1) return;
    std::lock_guard lk(paths_mu_);
    auto it = paths_.find(r.result_node);
    if (it != paths_.end()) {
        ++it->second.nlookup;
        return;
    }
    // Unnamed rather than unbounded: past the caps a node is not learned.
    if (path.empty() || paths_.size() >= limits_.max_nodes ||
        path_bytes_ + path.size() > limits_.max_bytes)
        return;
    paths_.emplace(r.result_node, KnownPath{path, 1});
    path_bytes_ += path.size();
}

void Recorder::drop_lookups(uint64_t nodeid, uint64_t n) {
    if (nodeid == 1) return;
    std::lock_guard lk(paths_mu_);
    auto it = paths_.find(nodeid);
    if (it == paths_.end()) return;
    if (n < it->second.nlookup) {
        it->second.nlookup -= n;
        return;
    }
    path_bytes_ -= it->second.path.size();
    paths_.erase(it);
}

void Recorder::drop_all_paths() {
    std::lock_guard lk(paths_mu_);
    std::unordered_map<uint64_t, KnownPath> fresh;
    fresh[1] = KnownPath{"/", 0};
    paths_.swap(fresh);
    path_bytes_ = 1;
}

std::string Recorder::path_of(uint64_t nodeid) {
    std::lock_guard lk(paths_mu_);
    auto it = paths_.find(nodeid);
    return it == paths_.end() ? std::string() : it->second.path;
}

size_t Recorder::path_count() {
    std::lock_guard lk(paths_mu_);
    return paths_.size();
}

size_t Recorder::path_bytes() {
    std::lock_guard lk(paths_mu_);
    return path_bytes_;
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
            if (r.batch_entry) {
                drop_lookups(r.nodeid, r.nlookup);
                processed_.fetch_add(1, std::memory_order_release);
                continue;
            }
            std::string path = path_for(r);
            count_lookup(r, path);
            if (r.opcode == FUSE_FORGET) drop_lookups(r.nodeid, r.nlookup);
            if (r.opcode == FUSE_DESTROY && r.error == 0) drop_all_paths();
            // New to the guest means a path never seen before (node ids are
            // not: under cache=never the same file gets a new one after
            // every FORGET).
            bool new_node = false;
            if (r.result_node && !path.empty()) {
                if (seen_paths_.size() >= kMaxSeenPaths) seen_paths_.clear();
                new_node = seen_paths_.insert(std::hash<std::string>{}(path)).second;
            }
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

void Recorder::note(const std::string& json_object) {
    flush();
    if (!out_) return;
    std::fputs(json_object.c_str(), out_);
    std::fputc('\n', out_);
    std::fflush(out_);
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
