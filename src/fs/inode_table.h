#pragma once
// Nodes the kernel knows (keyed by dev, ino, mnt_id; each holds an O_PATH fd
// and a lookup count) and open file/directory handles. Both tables hand out
// shared_ptrs so a node or handle dropped by FORGET/RELEASE stays valid for a
// request already using it, and an unknown id from a guest is just -EBADF/-ESTALE.
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "util/unique_fd.h"

namespace ocivm::fs {

struct InodeKey {
    uint64_t dev = 0;
    uint64_t ino = 0;
    uint64_t mnt_id = 0;
    bool operator==(const InodeKey&) const = default;
};

struct InodeKeyHash {
    size_t operator()(const InodeKey& k) const noexcept {
        uint64_t h = k.ino * 0x9E3779B97F4A7C15ull;
        h ^= (k.dev + 0x7F4A7C15ull) * 0xBF58476D1CE4E5B9ull;
        h ^= k.mnt_id * 0x94D049BB133111EBull;
        return static_cast<size_t>(h ^ (h >> 31));
    }
};

struct Inode {
    UniqueFd fd;  // O_PATH | O_NOFOLLOW
    InodeKey key;
    uint64_t nodeid = 0;
    mode_t type = 0;       // S_IFMT bits
    uint64_t nlookup = 0;  // guarded by the table's mutex
};

class InodeTable {
public:
    // The root gets nodeid 1 and is never forgotten.
    void set_root(std::shared_ptr<Inode> root);
    std::shared_ptr<Inode> get(uint64_t nodeid) const;
    // Returns the node for key with one more lookup, or null if unknown.
    std::shared_ptr<Inode> ref_existing(const InodeKey& key);
    // Inserts a new node (fd, key, type) with one lookup; if another thread
    // inserted the same key meanwhile, that one gets the lookup instead.
    std::shared_ptr<Inode> insert(UniqueFd fd, const InodeKey& key, mode_t type);
    // True when the key is a node currently known.
    bool contains(const InodeKey& key) const;
    void forget(uint64_t nodeid, uint64_t n);
    void clear();
    size_t size() const;

private:
    mutable std::mutex mu_;
    uint64_t next_id_ = 2;
    std::unordered_map<uint64_t, std::shared_ptr<Inode>> by_id_;
    std::unordered_map<InodeKey, Inode*, InodeKeyHash> by_key_;
};

// getdents64 buffers for directory handles, drawn from one budget. A
// handle holds a buffer only while it has records the kernel has not taken
// yet, so idle open directories cost no buffer; when the budget is spent,
// READDIR works from a per-thread buffer instead (see Passthrough::readdir).
class DirBufferPool {
public:
    static constexpr size_t kBufferSize = 32 * 1024;
    explicit DirBufferPool(size_t max_bytes);
    ~DirBufferPool();
    DirBufferPool(const DirBufferPool&) = delete;
    DirBufferPool& operator=(const DirBufferPool&) = delete;
    // A buffer of kBufferSize bytes, or null when the budget is spent.
    char* acquire();
    void release(char* buf);
    // Bytes allocated (held by handles or idle).
    size_t bytes() const;

private:
    // Idle buffers kept for reuse (so listing directories allocates
    // nothing); more are freed.
    static constexpr size_t kMaxIdle = 8;
    mutable std::mutex mu_;
    size_t max_buffers_;
    size_t allocated_ = 0;
    std::vector<char*> idle_;  // capacity reserved: release never allocates
};

// A directory stream: getdents64 records buffered between READDIR requests.
struct DirStream {
    explicit DirStream(DirBufferPool& p) : pool(p) {}
    ~DirStream() {
        if (buf) pool.release(buf);
    }
    DirStream(const DirStream&) = delete;
    DirStream& operator=(const DirStream&) = delete;
    DirBufferPool& pool;
    std::mutex mu;
    char* buf = nullptr;    // from pool, only while records are pending
    size_t len = 0;         // bytes valid in buf
    size_t pos = 0;         // next record in buf
    uint64_t next_off = 0;  // cookie of the next record to hand out
    bool eof = false;
    // Records read past next_off were dropped (no buffer to keep them in):
    // the host stream must be sought back to next_off first.
    bool need_seek = false;
};

enum class HandleKind : uint8_t { File, Dir };

struct Handle {
    UniqueFd fd;
    HandleKind kind = HandleKind::File;
    std::unique_ptr<DirStream> dir;  // set for directories
};

class HandleTable {
public:
    explicit HandleTable(size_t max_handles) : max_(max_handles) {}
    // 0 when the table is full.
    uint64_t insert(std::shared_ptr<Handle> h);
    // Null unless fh is open and of this kind.
    std::shared_ptr<Handle> get(uint64_t fh) const;
    std::shared_ptr<Handle> get(uint64_t fh, HandleKind kind) const;
    std::shared_ptr<Handle> remove(uint64_t fh, HandleKind kind);
    bool full() const;
    size_t size() const;
    void clear();

private:
    mutable std::mutex mu_;
    size_t max_;
    uint64_t next_fh_ = 1;
    std::unordered_map<uint64_t, std::shared_ptr<Handle>> map_;
};

}  // namespace ocivm::fs
