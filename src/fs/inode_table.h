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

// A directory stream: getdents64 records buffered between READDIR requests.
struct DirStream {
    std::mutex mu;
    std::unique_ptr<char[]> buf;
    size_t len = 0;         // bytes valid in buf
    size_t pos = 0;         // next record in buf
    uint64_t next_off = 0;  // cookie of the next record to hand out
    bool eof = false;
};

struct Handle {
    UniqueFd fd;
    std::unique_ptr<DirStream> dir;  // set for directories
};

class HandleTable {
public:
    uint64_t insert(std::shared_ptr<Handle> h);
    std::shared_ptr<Handle> get(uint64_t fh) const;
    std::shared_ptr<Handle> remove(uint64_t fh);
    void clear();

private:
    mutable std::mutex mu_;
    uint64_t next_fh_ = 1;
    std::unordered_map<uint64_t, std::shared_ptr<Handle>> map_;
};

}  // namespace ocivm::fs
