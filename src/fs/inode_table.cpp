#include "fs/inode_table.h"

namespace ocivm::fs {

void InodeTable::set_root(std::shared_ptr<Inode> root) {
    std::lock_guard lk(mu_);
    root->nodeid = 1;
    root->nlookup = 1;
    by_key_[root->key] = root.get();
    by_id_[1] = std::move(root);
}

std::shared_ptr<Inode> InodeTable::get(uint64_t nodeid) const {
    std::lock_guard lk(mu_);
    auto it = by_id_.find(nodeid);
    return it == by_id_.end() ? nullptr : it->second;
}

std::shared_ptr<Inode> InodeTable::ref_existing(const InodeKey& key) {
    std::lock_guard lk(mu_);
    auto it = by_key_.find(key);
    if (it == by_key_.end()) return nullptr;
    Inode* n = it->second;
    ++n->nlookup;
    return by_id_.find(n->nodeid)->second;
}

std::shared_ptr<Inode> InodeTable::insert(UniqueFd fd, const InodeKey& key, mode_t type) {
    std::lock_guard lk(mu_);
    auto it = by_key_.find(key);
    if (it != by_key_.end()) {
        ++it->second->nlookup;
        return by_id_.find(it->second->nodeid)->second;
    }
    auto n = std::make_shared<Inode>();
    n->fd = std::move(fd);
    n->key = key;
    n->type = type;
    n->nodeid = next_id_++;
    n->nlookup = 1;
    by_key_[key] = n.get();
    by_id_[n->nodeid] = n;
    return n;
}

bool InodeTable::contains(const InodeKey& key) const {
    std::lock_guard lk(mu_);
    return by_key_.count(key) != 0;
}

void InodeTable::forget(uint64_t nodeid, uint64_t n) {
    std::shared_ptr<Inode> dropped;  // closed outside the lock
    std::lock_guard lk(mu_);
    auto it = by_id_.find(nodeid);
    if (it == by_id_.end() || nodeid == 1) return;
    Inode* node = it->second.get();
    node->nlookup = n >= node->nlookup ? 0 : node->nlookup - n;
    if (node->nlookup == 0) {
        by_key_.erase(node->key);
        dropped = std::move(it->second);
        by_id_.erase(it);
    }
}

void InodeTable::clear() {
    std::lock_guard lk(mu_);
    auto root = by_id_.find(1);
    std::shared_ptr<Inode> keep = root == by_id_.end() ? nullptr : root->second;
    by_id_.clear();
    by_key_.clear();
    if (keep) {
        by_key_[keep->key] = keep.get();
        by_id_[1] = keep;
    }
}

size_t InodeTable::size() const {
    std::lock_guard lk(mu_);
    return by_id_.size();
}

DirBufferPool::DirBufferPool(size_t max_bytes) : max_buffers_(max_bytes / kBufferSize) {
    idle_.reserve(kMaxIdle);
}

DirBufferPool::~DirBufferPool() {
    for (char* b : idle_) delete[] b;
}

char* DirBufferPool::acquire() {
    std::lock_guard lk(mu_);
    if (!idle_.empty()) {
        char* b = idle_.back();
        idle_.pop_back();
        return b;
    }
    if (allocated_ >= max_buffers_) return nullptr;
    ++allocated_;
    return new char[kBufferSize];
}

void DirBufferPool::release(char* buf) {
    {
        std::lock_guard lk(mu_);
        if (idle_.size() < kMaxIdle) {
            idle_.push_back(buf);
            return;
        }
        --allocated_;
    }
    delete[] buf;
}

size_t DirBufferPool::bytes() const {
    std::lock_guard lk(mu_);
    return allocated_ * kBufferSize;
}

uint64_t HandleTable::insert(std::shared_ptr<Handle> h) {
    std::lock_guard lk(mu_);
    if (map_.size() >= max_) return 0;
    uint64_t fh = next_fh_++;
    map_.emplace(fh, std::move(h));
    return fh;
}

std::shared_ptr<Handle> HandleTable::get(uint64_t fh) const {
    std::lock_guard lk(mu_);
    auto it = map_.find(fh);
    return it == map_.end() ? nullptr : it->second;
}

std::shared_ptr<Handle> HandleTable::get(uint64_t fh, HandleKind kind) const {
    std::lock_guard lk(mu_);
    auto it = map_.find(fh);
    return it == map_.end() || it->second->kind != kind ? nullptr : it->second;
}

std::shared_ptr<Handle> HandleTable::remove(uint64_t fh, HandleKind kind) {
    std::lock_guard lk(mu_);
    auto it = map_.find(fh);
    if (it == map_.end() || it->second->kind != kind) return nullptr;
    auto h = std::move(it->second);
    map_.erase(it);
    return h;
}

bool HandleTable::full() const {
    std::lock_guard lk(mu_);
    return map_.size() >= max_;
}

size_t HandleTable::size() const {
    std::lock_guard lk(mu_);
    return map_.size();
}

void HandleTable::clear() {
    std::unordered_map<uint64_t, std::shared_ptr<Handle>> old;
    {
        std::lock_guard lk(mu_);
        old.swap(map_);
    }
}

}  // namespace ocivm::fs
