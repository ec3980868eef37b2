#include "guest/fuse_relay.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>

#include "guest/command.h"
#include "guest/stream_protocol.h"

namespace ocivm::guest {

namespace {

constexpr size_t kIn = sizeof(fuse_in_header);
constexpr size_t kOut = sizeof(fuse_out_header);
constexpr uint64_t kRoot = FUSE_ROOT_ID;

template <typename T>
bool get(const unsigned char* p, size_t n, size_t off, T* v) {
    if (off > n || n - off < sizeof(T)) return false;
    std::memcpy(v, p + off, sizeof(T));
    return true;
}
template <typename T>
bool get(const Bytes& b, size_t off, T* v) {
    return get(b.data(), b.size(), off, v);
}
template <typename T>
bool put(unsigned char* p, size_t n, size_t off, const T& v) {
    if (off > n || n - off < sizeof(T)) return false;
    std::memcpy(p + off, &v, sizeof(T));
    return true;
}
template <typename T>
bool put(Bytes& b, size_t off, const T& v) {
    return put(b.data(), b.size(), off, v);
}

// The NUL-terminated string at body offset off of a request; false if none.
bool cstr(const Bytes& req, size_t off, std::string* s, size_t* next = nullptr) {
    size_t start = kIn + off;
    if (start >= req.size()) return false;
    const void* z = std::memchr(req.data() + start, 0, req.size() - start);
    if (!z) return false;
    size_t end = static_cast<size_t>(static_cast<const unsigned char*>(z) - req.data());
    s->assign(reinterpret_cast<const char*>(req.data() + start), end - start);
    if (next) *next = end + 1 - kIn;
    return true;
}

Bytes request(uint32_t opcode, uint64_t unique, uint64_t nodeid, const void* body, size_t len) {
    Bytes r(kIn + len);
    fuse_in_header h{};
    h.len = static_cast<uint32_t>(r.size());
    h.opcode = opcode;
    h.unique = unique;
    h.nodeid = nodeid;
    std::memcpy(r.data(), &h, kIn);
    if (len) std::memcpy(r.data() + kIn, body, len);
    return r;
}

// The opcodes whose ids the relay translates, both ways.
bool relayed(uint32_t opcode) {
    switch (opcode) {
        case FUSE_LOOKUP: case FUSE_GETATTR: case FUSE_SETATTR: case FUSE_READLINK: case FUSE_SYMLINK:
        case FUSE_MKNOD: case FUSE_MKDIR: case FUSE_UNLINK: case FUSE_RMDIR: case FUSE_RENAME: case FUSE_LINK:
        case FUSE_OPEN: case FUSE_READ: case FUSE_WRITE: case FUSE_STATFS: case FUSE_RELEASE: case FUSE_FSYNC:
        case FUSE_SETXATTR: case FUSE_GETXATTR: case FUSE_LISTXATTR: case FUSE_REMOVEXATTR: case FUSE_FLUSH:
        case FUSE_INIT: case FUSE_OPENDIR: case FUSE_READDIR: case FUSE_RELEASEDIR: case FUSE_FSYNCDIR:
        case FUSE_GETLK: case FUSE_SETLK: case FUSE_SETLKW: case FUSE_ACCESS: case FUSE_CREATE: case FUSE_INTERRUPT:
        case FUSE_DESTROY: case FUSE_IOCTL: case FUSE_POLL: case FUSE_FALLOCATE: case FUSE_READDIRPLUS:
        case FUSE_RENAME2: case FUSE_LSEEK: case FUSE_COPY_FILE_RANGE: case FUSE_SYNCFS:
            return true;
        default:
            return false;
    }
}

}  // namespace

RelayCore::RelayCore() {
    Node root;
    root.host = kRoot;
    nodes_[kRoot] = root;
    by_host_[kRoot] = kRoot;
}

void RelayCore::reply_error(uint64_t unique, int err) {
    Bytes r(kOut);
    fuse_out_header o{};
    o.len = kOut;
    o.error = -err;
    o.unique = unique;
    std::memcpy(r.data(), &o, kOut);
    to_kernel_.push_back(std::move(r));
}

void RelayCore::forget(uint64_t guest, uint64_t n) {
    auto it = nodes_.find(guest);
    if (it == nodes_.end()) return;
    Node& nd = it->second;
    nd.guest_n -= std::min(n, nd.guest_n);
    if (nd.guest_n > 0) return;
    // The kernel holds it no more: the host server may let go of every
    // lookup it counted for it in this session.
    if (nd.host_n > 0 && (state_ == State::Ready || state_ == State::Rebuilding)) {
        fuse_forget_in f{};
        f.nlookup = nd.host_n;
        to_host(request(FUSE_FORGET, internal_unique(), nd.host, &f, sizeof f));
    }
    nd.host_n = 0;
    if (guest == kRoot) return;
    if (nd.named) {
        auto k = names_.find({nd.parent, nd.name});
        if (k != names_.end() && k->second == guest) names_.erase(k);
    }
    auto h = by_host_.find(nd.host);
    if (h != by_host_.end() && h->second == guest) by_host_.erase(h);
    nodes_.erase(it);
}

void RelayCore::on_kernel_request(const unsigned char* p, size_t n) {
    fuse_in_header h{};
    if (!get(p, n, 0, &h)) return;
    Bytes r(p, p + n);
    if (h.opcode == FUSE_FORGET) {
        fuse_forget_in f{};
        if (get(r, kIn, &f)) forget(h.nodeid, f.nlookup);
        return;
    }
    if (h.opcode == FUSE_BATCH_FORGET) {
        fuse_batch_forget_in b{};
        if (!get(r, kIn, &b)) return;
        for (uint32_t i = 0; i < b.count; ++i) {
            fuse_forget_one one{};
            if (!get(r, kIn + sizeof b + i * sizeof one, &one)) break;
            forget(one.nodeid, one.nlookup);
        }
        return;
    }
    if (!relayed(h.opcode)) {
        // Node ids or handles in places the relay does not translate
        // (FUSE_TMPFILE's entry, DAX mappings): not passed on with the
        // host's ids unmapped. The kernel takes ENOSYS as "not supported".
        reply_error(h.unique, ENOSYS);
        return;
    }
    if (h.opcode == FUSE_INIT && init_req_.empty()) init_req_ = r;
    if (state_ == State::Down) {
        if (h.opcode == FUSE_RELEASE || h.opcode == FUSE_RELEASEDIR) {
            uint64_t fh{};
            if (get(r, kIn, &fh)) handles_.erase(fh);
            reply_error(h.unique, 0);
            return;
        }
        reply_error(h.unique, EIO);
        return;
    }
    if (state_ != State::Ready || paused_) {
        if (paused_) ++counters_.held_over_pause;
        held_.push_back(std::move(r));
        return;
    }
    pending_[h.unique] = Pending{std::move(r)};
    send(h.unique, false);
}

void RelayCore::to_host(Bytes b) {
    if (paused_) deferred_.push_back(std::move(b));
    else to_host_.push_back(std::move(b));
}

void RelayCore::release_held() {
    while (!held_.empty() && state_ == State::Ready && !paused_) {
        Bytes r = std::move(held_.front());
        held_.pop_front();
        fuse_in_header h{};
        get(r, 0, &h);
        pending_[h.unique] = Pending{std::move(r)};
        send(h.unique, false);
    }
}

void RelayCore::on_pause(uint64_t seq) {
    if (state_ == State::Down || state_ == State::Waiting) return;  // no server to pause for
    ++counters_.pauses;
    paused_ = true;
    pause_seq_ = seq;
    paused_due_ = paused_sent_ = false;
    check_paused();
}

void RelayCore::check_paused() {
    // A rebuild in progress has internal requests in flight: it finishes first.
    if (paused_ && !paused_sent_ && state_ == State::Ready && pending_.empty()) paused_due_ = true;
}

bool RelayCore::take_paused(uint64_t* seq) {
    if (!paused_due_) return false;
    paused_due_ = false;
    paused_sent_ = true;
    *seq = pause_seq_;
    return true;
}

void RelayCore::on_resume(uint64_t seq) {
    // A resume for an earlier pause (one the host gave up on) is not this one's.
    if (!paused_ || seq != pause_seq_) return;
    paused_ = false;
    paused_due_ = paused_sent_ = false;
    for (auto& b : deferred_) to_host_.push_back(std::move(b));
    deferred_.clear();
    release_held();
}

bool RelayCore::translate(Bytes& r, int* err) {
    fuse_in_header h{};
    if (!get(r, 0, &h)) {
        *err = EINVAL;
        return false;
    }
    auto node_host = [this](uint64_t g, uint64_t* out) {
        if (g == 0) {
            *out = 0;
            return true;
        }
        auto it = nodes_.find(g);
        if (it == nodes_.end() || it->second.stale) return false;
        *out = it->second.host;
        return true;
    };
    // A handle in the body at off: 0, or the errno to answer with.
    auto fh_host = [&](size_t off) {
        uint64_t g{};
        if (!get(r, off, &g)) return 0;  // short: the server refuses it
        // 0: no handle (the server declined OPEN with ENOSYS, and the kernel
        // sends 0 from then on; the server goes by the node). Relay handles
        // start at 1.
        if (g == 0) return 0;
        auto it = handles_.find(g);
        if (it == handles_.end()) return EBADF;
        if (it->second.stale) return EIO;
        put(r, off, it->second.host);
        return 0;
    };
    auto node_field = [&](size_t off) {
        uint64_t g, host;
        if (!get(r, off, &g)) return 0;
        if (!node_host(g, &host)) return ESTALE;
        put(r, off, host);
        return 0;
    };
    if (h.opcode != FUSE_INIT && h.nodeid) {
        uint64_t host{};
        if (!node_host(h.nodeid, &host)) {
            *err = ESTALE;
            return false;
        }
        h.nodeid = host;
        put(r, 0, h);
    }
    int e = 0;
    switch (h.opcode) {
        case FUSE_READ: case FUSE_WRITE: case FUSE_READDIR: case FUSE_READDIRPLUS: case FUSE_FLUSH:
        case FUSE_FSYNC: case FUSE_FSYNCDIR: case FUSE_LSEEK: case FUSE_FALLOCATE: case FUSE_GETLK:
        case FUSE_SETLK: case FUSE_SETLKW: case FUSE_IOCTL: case FUSE_POLL:
            e = fh_host(kIn);
            break;
        case FUSE_RELEASE: case FUSE_RELEASEDIR: {
            uint64_t g{};
            if (!get(r, kIn, &g) || g == 0) break;
            auto it = handles_.find(g);
            if (it == handles_.end() || it->second.stale) {
                // Nothing to close on this server: done.
                if (it != handles_.end()) handles_.erase(it);
                *err = 0;
                return false;
            }
            put(r, kIn, it->second.host);
            break;
        }
        case FUSE_GETATTR: {
            fuse_getattr_in g{};
            if (get(r, kIn, &g) && (g.getattr_flags & FUSE_GETATTR_FH)) e = fh_host(kIn + offsetof(fuse_getattr_in, fh));
            break;
        }
        case FUSE_SETATTR: {
            fuse_setattr_in s{};
            if (get(r, kIn, &s) && (s.valid & FATTR_FH)) e = fh_host(kIn + offsetof(fuse_setattr_in, fh));
            break;
        }
        case FUSE_COPY_FILE_RANGE:
            e = fh_host(kIn + offsetof(fuse_copy_file_range_in, fh_in));
            if (!e) e = node_field(kIn + offsetof(fuse_copy_file_range_in, nodeid_out));
            if (!e) e = fh_host(kIn + offsetof(fuse_copy_file_range_in, fh_out));
            break;
        case FUSE_RENAME: case FUSE_RENAME2:
            e = node_field(kIn);  // newdir, first in both
            break;
        case FUSE_LINK:
            e = node_field(kIn + offsetof(fuse_link_in, oldnodeid));
            break;
        default:
            break;
    }
    if (e) {
        *err = e;
        return false;
    }
    return true;
}

void RelayCore::send(uint64_t unique, bool replay) {
    auto it = pending_.find(unique);
    if (it == pending_.end()) return;
    Bytes r = it->second.req;
    int err = 0;
    if (!translate(r, &err)) {
        pending_.erase(it);
        reply_error(unique, err);
        return;
    }
    if (replay) ++counters_.replayed;
    to_host_.push_back(std::move(r));
}

void RelayCore::set_name(uint64_t node, uint64_t parent, const std::string& name) {
    auto it = nodes_.find(node);
    if (it == nodes_.end() || node == kRoot || name.empty() || name == "." || name == "..") return;
    Node& nd = it->second;
    if (nd.named) {
        auto k = names_.find({nd.parent, nd.name});
        if (k != names_.end() && k->second == node) names_.erase(k);
    }
    auto key = std::make_pair(parent, name);
    auto old = names_.find(key);
    if (old != names_.end() && old->second != node) {
        auto o = nodes_.find(old->second);
        if (o != nodes_.end()) o->second.named = false;
    }
    names_[key] = node;
    nd.parent = parent;
    nd.name = name;
    nd.named = true;
}

void RelayCore::drop_name(uint64_t parent, const std::string& name) {
    auto k = names_.find({parent, name});
    if (k == names_.end()) return;
    auto it = nodes_.find(k->second);
    if (it != nodes_.end()) it->second.named = false;
    names_.erase(k);
}

uint64_t RelayCore::map_entry(uint64_t parent, const std::string& name, unsigned char* entry) {
    fuse_entry_out e{};
    std::memcpy(&e, entry, sizeof e);
    if (e.nodeid == 0) return 0;  // a negative entry
    uint64_t g{};
    auto it = by_host_.find(e.nodeid);
    if (it != by_host_.end()) {
        g = it->second;
    } else {
        g = next_node_++;
        Node nd;
        nd.host = e.nodeid;
        nodes_[g] = nd;
        by_host_[e.nodeid] = g;
    }
    Node& nd = nodes_[g];
    ++nd.guest_n;
    ++nd.host_n;
    nd.ino = e.attr.ino;
    set_name(g, parent, name);
    e.nodeid = g;
    std::memcpy(entry, &e, sizeof e);
    return g;
}

void RelayCore::after_reply(const Bytes& req, unsigned char* p, size_t n) {
    fuse_in_header h{};
    if (!get(req, 0, &h)) return;
    std::string name, name2;
    size_t next = 0;
    auto entry_at = [&](size_t name_off) -> uint64_t {
        if (!cstr(req, name_off, &name) || n < kOut + sizeof(fuse_entry_out)) return 0;
        return map_entry(h.nodeid, name, p + kOut);
    };
    auto new_handle = [&](size_t off, uint64_t node, uint32_t flags, bool dir) {
        fuse_open_out o{};
        if (!get(p, n, off, &o)) return;
        uint64_t g = next_fh_++;
        handles_[g] = Handle{o.fh, node, flags, dir, false};
        o.fh = g;
        put(p, n, off, o);
    };
    switch (h.opcode) {
        case FUSE_INIT: {
            // What the kernel was told: a new server after a restore must
            // agree (it is not asked again).
            if (!initialized_) get(p, n, kOut, &init_out_);
            // Frames are bounded (stream_protocol.h): so is the data in one request.
            uint32_t mw{};
            if (get(p, n, kOut + offsetof(fuse_init_out, max_write), &mw) && mw > stream::kMaxData)
                put(p, n, kOut + offsetof(fuse_init_out, max_write), stream::kMaxData);
            uint16_t mp{};
            constexpr uint16_t kMaxPages = stream::kMaxData / 4096;
            if (get(p, n, kOut + offsetof(fuse_init_out, max_pages), &mp) && mp > kMaxPages)
                put(p, n, kOut + offsetof(fuse_init_out, max_pages), kMaxPages);
            initialized_ = true;
            break;
        }
        case FUSE_LOOKUP: entry_at(0); break;
        case FUSE_MKNOD: entry_at(sizeof(fuse_mknod_in)); break;
        case FUSE_MKDIR: entry_at(sizeof(fuse_mkdir_in)); break;
        case FUSE_SYMLINK: entry_at(0); break;
        case FUSE_LINK: entry_at(sizeof(fuse_link_in)); break;
        case FUSE_CREATE: {
            fuse_create_in c{};
            uint64_t g = entry_at(sizeof(fuse_create_in));
            if (g && get(req, kIn, &c)) new_handle(kOut + sizeof(fuse_entry_out), g, c.flags, false);
            break;
        }
        case FUSE_OPEN: case FUSE_OPENDIR: {
            fuse_open_in o{};
            if (get(req, kIn, &o)) new_handle(kOut, h.nodeid, o.flags, h.opcode == FUSE_OPENDIR);
            break;
        }
        case FUSE_READDIRPLUS: {
            size_t off = kOut;
            while (off + FUSE_NAME_OFFSET_DIRENTPLUS <= n) {
                fuse_direntplus d{};
                std::memcpy(&d, p + off, FUSE_NAME_OFFSET_DIRENTPLUS);
                size_t size = FUSE_DIRENTPLUS_SIZE(&d);
                if (d.dirent.namelen > 4096 || off + FUSE_NAME_OFFSET_DIRENTPLUS + d.dirent.namelen > n) break;
                std::string nm(reinterpret_cast<const char*>(p + off + FUSE_NAME_OFFSET_DIRENTPLUS), d.dirent.namelen);
                // The kernel counts a lookup for every entry with a node,
                // except . and .. (as the server does).
                if (nm != "." && nm != "..") map_entry(h.nodeid, nm, p + off);
                off += size;
            }
            break;
        }
        case FUSE_RENAME: case FUSE_RENAME2: {
            size_t skip = h.opcode == FUSE_RENAME ? sizeof(fuse_rename_in) : sizeof(fuse_rename2_in);
            uint64_t newdir{};
            uint32_t flags = 0;
            if (!get(req, kIn, &newdir) || !cstr(req, skip, &name, &next) || !cstr(req, next, &name2)) break;
            if (h.opcode == FUSE_RENAME2) get(req, kIn + offsetof(fuse_rename2_in, flags), &flags);
            auto a = names_.find({h.nodeid, name});
            uint64_t moved = a == names_.end() ? 0 : a->second;
            if (flags & RENAME_EXCHANGE) {
                auto b = names_.find({newdir, name2});
                uint64_t other = b == names_.end() ? 0 : b->second;
                if (a != names_.end()) names_.erase(a);
                b = names_.find({newdir, name2});
                if (b != names_.end()) names_.erase(b);
                if (moved) nodes_[moved].named = false, set_name(moved, newdir, name2);
                if (other) nodes_[other].named = false, set_name(other, h.nodeid, name);
            } else {
                drop_name(newdir, name2);  // what it replaced has no name now
                if (moved) set_name(moved, newdir, name2);
            }
            break;
        }
        case FUSE_UNLINK: case FUSE_RMDIR:
            if (cstr(req, 0, &name)) drop_name(h.nodeid, name);
            break;
        default:
            break;
    }
}

void RelayCore::on_host_reply(const unsigned char* p, size_t n) {
    fuse_out_header o{};
    if (!get(p, n, 0, &o) || o.unique == 0) return;  // notifications are not relayed
    if (o.unique & (1ull << 63)) {
        on_internal_reply(p, n);
        return;
    }
    auto it = pending_.find(o.unique);
    if (it == pending_.end()) return;
    Bytes req = std::move(it->second.req);
    pending_.erase(it);
    Bytes rep(p, p + n);
    o.len = static_cast<uint32_t>(n);
    put(rep, 0, o);
    fuse_in_header h{};
    get(req, 0, &h);
    if (o.error == 0) after_reply(req, rep.data(), rep.size());
    if (h.opcode == FUSE_RELEASE || h.opcode == FUSE_RELEASEDIR) {
        uint64_t fh{};
        if (get(req, kIn, &fh)) handles_.erase(fh);
    }
    to_kernel_.push_back(std::move(rep));
    check_paused();
}

bool RelayCore::on_hello(uint64_t session) {
    if (session == session_ && state_ != State::Down) return false;
    session_ = session;
    // A pause belonged to the server before (a clone's relay comes up paused,
    // as its source was saved): a new one resumes it. What the pause held
    // back from the old server (FORGETs of nodes the relay has let go of) is
    // nothing the new one knows.
    paused_ = paused_due_ = paused_sent_ = false;
    deferred_.clear();
    if (!initialized_) {
        // Never talked to a server yet: the kernel's own INIT (held, or in
        // flight to a server that went before answering) goes first.
        state_ = State::Ready;
        std::vector<uint64_t> again;
        for (auto& [u, pd] : pending_) again.push_back(u);
        for (uint64_t u : again) send(u, true);
        release_held();
        return true;
    }
    // A new server: it knows none of the ids the kernel holds.
    ++counters_.rebuilds;
    state_ = State::Rebuilding;
    by_host_.clear();
    // What a rebuild before found stale is looked for again (a clone of a
    // clone: the directory may have it back).
    for (auto& [g, nd] : nodes_) {
        nd.host = g == kRoot ? kRoot : 0;
        nd.host_n = 0;
        nd.stale = false;
    }
    by_host_[kRoot] = kRoot;
    for (auto& [g, hd] : handles_) {
        hd.host = 0;
        hd.stale = false;
    }
    // Parents before children.
    std::vector<std::pair<size_t, uint64_t>> order;
    for (auto& [g, nd] : nodes_) {
        if (g == kRoot) continue;
        size_t depth = 0;
        uint64_t cur = g;
        while (cur != kRoot && depth < 4096) {
            auto it = nodes_.find(cur);
            if (it == nodes_.end() || !it->second.named) break;
            cur = it->second.parent;
            ++depth;
        }
        order.emplace_back(cur == kRoot ? depth : SIZE_MAX, g);
    }
    std::sort(order.begin(), order.end());
    rb_nodes_.clear();
    for (auto& [d, g] : order) rb_nodes_.push_back(g);
    rb_handles_.clear();
    for (auto& [g, hd] : handles_) rb_handles_.push_back(g);
    std::sort(rb_handles_.begin(), rb_handles_.end());
    rb_pos_ = 0;
    rb_step_ = Step::Init;
    rb_unique_ = internal_unique();
    Bytes init = init_req_;
    fuse_in_header h{};
    get(init, 0, &h);
    h.unique = rb_unique_;
    put(init, 0, h);
    to_host_.push_back(std::move(init));
    return true;
}

void RelayCore::rebuild_step() {
    while (rb_step_ == Step::Lookup && rb_pos_ < rb_nodes_.size()) {
        auto it = nodes_.find(rb_nodes_[rb_pos_]);
        if (it == nodes_.end()) {  // forgotten meanwhile
            ++rb_pos_;
            continue;
        }
        Node& nd = it->second;
        auto parent = nodes_.find(nd.parent);
        if (!nd.named || parent == nodes_.end() || parent->second.stale || parent->second.host == 0) {
            nd.stale = true;
            ++counters_.stale_nodes;
            ++rb_pos_;
            continue;
        }
        rb_unique_ = internal_unique();
        std::string body = nd.name;
        body.push_back('\0');
        to_host_.push_back(request(FUSE_LOOKUP, rb_unique_, parent->second.host, body.data(), body.size()));
        return;
    }
    if (rb_step_ == Step::Lookup) {
        rb_step_ = Step::Open;
        rb_pos_ = 0;
    }
    while (rb_step_ == Step::Open && rb_pos_ < rb_handles_.size()) {
        auto it = handles_.find(rb_handles_[rb_pos_]);
        if (it == handles_.end()) {
            ++rb_pos_;
            continue;
        }
        Handle& hd = it->second;
        auto nd = nodes_.find(hd.node);
        if (nd == nodes_.end() || nd->second.stale || nd->second.host == 0) {
            hd.stale = true;
            ++counters_.stale_handles;
            counters_.handle_error = -1;
            ++rb_pos_;
            continue;
        }
        fuse_open_in o{};
        // Opened again, never created or truncated again.
        o.flags = hd.flags & ~static_cast<uint32_t>(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY);
        rb_unique_ = internal_unique();
        to_host_.push_back(request(hd.dir ? FUSE_OPENDIR : FUSE_OPEN, rb_unique_, nd->second.host, &o, sizeof o));
        return;
    }
    finish_rebuild();
}

void RelayCore::on_internal_reply(const unsigned char* p, size_t n) {
    fuse_out_header o{};
    get(p, n, 0, &o);
    if (state_ != State::Rebuilding || o.unique != rb_unique_) return;  // a FORGET has no reply; nothing else is ours
    switch (rb_step_) {
        case Step::Init: {
            if (o.error != 0) {
                // No session with the new server: every request would fail
                // or be served under terms the kernel never agreed to.
                char buf[160];
                std::snprintf(buf, sizeof buf,
                              "the new server refused INIT (%s): the share fails with EIO until another one greets",
                              std::strerror(-o.error));
                notes_.push_back(buf);
                on_disconnect();
                return;
            }
            fuse_init_out now{};
            get(p, n, kOut, &now);
            if (now.major != init_out_.major || now.minor != init_out_.minor || now.flags != init_out_.flags ||
                now.flags2 != init_out_.flags2 || now.max_write != init_out_.max_write) {
                // The kernel keeps what the first server agreed to; a
                // difference is worth knowing about (a clone started with
                // other options or by another build).
                ++counters_.init_changed;
                char buf[240];
                std::snprintf(buf, sizeof buf,
                              "the new server's INIT differs from the first's (protocol %u.%u flags %#x/%#x max_write "
                              "%u, was %u.%u %#x/%#x %u); the kernel keeps the first's",
                              now.major, now.minor, now.flags, now.flags2, now.max_write, init_out_.major,
                              init_out_.minor, init_out_.flags, init_out_.flags2, init_out_.max_write);
                notes_.push_back(buf);
            }
            rb_step_ = Step::Lookup;
            rb_pos_ = 0;
            break;
        }
        case Step::Lookup: {
            fuse_entry_out e{};
            bool found = o.error == 0 && get(p, n, kOut, &e) && e.nodeid != 0;
            auto it = nodes_.find(rb_nodes_[rb_pos_]);
            if (it == nodes_.end()) {
                // The kernel forgot it while its LOOKUP was on the way: the
                // host counted a lookup nobody holds.
                if (found) {
                    fuse_forget_in f{};
                    f.nlookup = 1;
                    to_host(request(FUSE_FORGET, internal_unique(), e.nodeid, &f, sizeof f));
                }
                ++rb_pos_;
                break;
            }
            Node& nd = it->second;
            if (found && nd.ino != 0 && e.attr.ino != nd.ino) {
                // Another file by that name now: not the one the kernel means.
                fuse_forget_in f{};
                f.nlookup = 1;
                to_host_.push_back(request(FUSE_FORGET, internal_unique(), e.nodeid, &f, sizeof f));
                found = false;
            }
            if (found) {
                nd.host = e.nodeid;
                nd.host_n = 1;
                by_host_.emplace(e.nodeid, rb_nodes_[rb_pos_]);
                ++counters_.relookups;
            } else {
                nd.stale = true;
                ++counters_.stale_nodes;
            }
            ++rb_pos_;
            break;
        }
        case Step::Open: {
            auto it = handles_.find(rb_handles_[rb_pos_]);
            fuse_open_out out{};
            if (it != handles_.end()) {
                if (o.error == 0 && get(p, n, kOut, &out)) {
                    it->second.host = out.fh;
                    ++counters_.reopened;
                } else if (o.error == -ENOSYS) {
                    // A server that opens nothing (its CREATE answered
                    // handle 0, as the first one's did): the handle goes by
                    // its node, as before the restore.
                    it->second.host = 0;
                    ++counters_.reopened;
                } else {
                    it->second.stale = true;
                    ++counters_.stale_handles;
                    counters_.handle_error = o.error ? -o.error : EPROTO;
                }
            }
            ++rb_pos_;
            break;
        }
        case Step::None:
            return;
    }
    rebuild_step();
}

void RelayCore::finish_rebuild() {
    state_ = State::Ready;
    rb_step_ = Step::None;
    std::vector<uint64_t> again;
    for (auto& [u, pd] : pending_) again.push_back(u);
    for (uint64_t u : again) send(u, true);
    release_held();
    check_paused();
}

void RelayCore::on_disconnect() {
    if (session_ == 0) return;  // no server yet: the kernel's INIT waits for one
    state_ = State::Down;
    rb_step_ = Step::None;
    paused_ = paused_due_ = paused_sent_ = false;
    deferred_.clear();
    for (auto& [u, pd] : pending_) {
        fuse_in_header h{};
        get(pd.req, 0, &h);
        if (h.opcode == FUSE_RELEASE || h.opcode == FUSE_RELEASEDIR) {
            uint64_t fh{};
            if (get(pd.req, kIn, &fh)) handles_.erase(fh);
        }
        reply_error(u, EIO);
    }
    pending_.clear();
    while (!held_.empty()) {
        fuse_in_header h{};
        if (get(held_.front(), 0, &h)) reply_error(h.unique, EIO);
        held_.pop_front();
    }
}

// ---- the process

namespace {

void note(const char* fmt, const char* a, const char* b = "") {
    char buf[512];
    int n = std::snprintf(buf, sizeof buf, "ocivm-init: fuse relay: ");
    n += std::snprintf(buf + n, sizeof buf - static_cast<size_t>(n), fmt, a, b);
    if (n > static_cast<int>(sizeof buf) - 2) n = sizeof buf - 2;
    buf[n++] = '\n';
    int fd = ::open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t w = ::write(fd, buf, static_cast<size_t>(n));
    (void)w;
    ::close(fd);
}

uint64_t now_ms() {
    timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1000000;
}

int relay_main(int fuse_fd, const std::string& port_name) {
    int port = -1;
    for (int tries = 0; tries < 3000 && port < 0; ++tries) {
        auto ports = virtio_ports();
        auto it = ports.find(port_name);
        if (it != ports.end()) port = ::open(it->second.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (port < 0) ::usleep(10000);
    }
    if (port < 0) {
        note("virtio-serial port %s did not appear; the share answers nothing%s", port_name.c_str());
        return 1;
    }
    RelayCore core;
    stream::FrameReader frames;
    Bytes kbuf(stream::kMaxFrame + 4096);
    Bytes chunk(256 * 1024);
    Bytes out;  // framed bytes not yet taken by the port
    size_t out_pos = 0;
    // After EOF the port reads as hung up until a server connects again:
    // it is then only looked at twice a second.
    bool quiet = false;
    uint64_t next_probe = 0;
    bool announce = false;  // a rebuild is under way: its counters go to the console when done
    auto queue = [&](const Bytes& b) {
        unsigned char len[4];
        stream::put_u32(len, static_cast<uint32_t>(b.size()));
        out.insert(out.end(), len, len + 4);
        out.insert(out.end(), b.begin(), b.end());
    };
    auto flush_kernel = [&] {
        for (auto& r : core.take_to_kernel()) {
            // ENOENT: the request was interrupted and is gone.
            while (::write(fuse_fd, r.data(), r.size()) < 0 && errno == EINTR) {
            }
        }
    };
    auto flush_host = [&] {
        for (auto& r : core.take_to_host())
            if (!core.down()) queue(r);
        // After every request it answers: nothing follows it until the resume.
        if (uint64_t seq; core.take_paused(&seq) && !core.down()) {
            unsigned char paused[stream::kControlFrameBytes];
            stream::control_frame(seq, paused, stream::kPaused);
            out.insert(out.end(), paused, paused + sizeof paused);
        }
    };
    auto disconnect = [&] {
        quiet = true;
        next_probe = now_ms() + 500;
        if (core.down()) return;
        core.on_disconnect();
        out.clear();
        out_pos = 0;
        frames.clear();
        note("the host's server of %s is gone: its requests fail with EIO until a new one greets%s",
             port_name.c_str());
    };
    for (;;) {
        bool probe = !quiet || now_ms() >= next_probe;
        pollfd pf[2] = {{fuse_fd, POLLIN, 0},
                        {probe ? port : -1, static_cast<short>(POLLIN | (out_pos < out.size() ? POLLOUT : 0)), 0}};
        int rc = ::poll(pf, 2, quiet ? 500 : -1);
        if (rc < 0 && errno != EINTR) return 1;
        if (rc <= 0) continue;
        if (pf[0].revents & POLLIN) {
            ssize_t n = ::read(fuse_fd, kbuf.data(), kbuf.size());
            if (n < 0 && errno == ENODEV) return 0;  // unmounted
            if (n > 0) core.on_kernel_request(kbuf.data(), static_cast<size_t>(n));
            flush_host();  // translated for the server of now, before a hello below changes it
        } else if (pf[0].revents & (POLLERR | POLLHUP)) {
            return 0;
        }
        if (pf[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = ::read(port, chunk.data(), chunk.size());
            if (n > 0) {
                quiet = false;
                frames.feed(chunk.data(), static_cast<size_t>(n));
                for (;;) {
                    const unsigned char* data = nullptr;
                    size_t size = 0;
                    uint64_t session = 0;
                    uint32_t marker = 0;
                    auto st = frames.next(&data, &size, &session, &marker);
                    if (st == stream::FrameReader::Status::NeedMore) break;
                    if (st == stream::FrameReader::Status::TooLong) {
                        disconnect();
                        break;
                    }
                    if (st == stream::FrameReader::Status::Data) {
                        core.on_host_reply(data, size);
                        continue;
                    }
                    if (marker == stream::kPause) {
                        flush_host();  // what was forwarded before goes first
                        core.on_pause(session);
                        continue;
                    }
                    if (marker == stream::kResume) {
                        core.on_resume(session);
                        continue;
                    }
                    if (marker != stream::kControl) continue;  // not one a host sends
                    bool was_down = core.down();
                    flush_host();
                    uint64_t rebuilds = core.counters().rebuilds;
                    if (core.on_hello(session)) {
                        announce = core.counters().rebuilds != rebuilds;
                        // Whatever the last server did not take is dropped:
                        // the new one discards all before the attach, and
                        // the relay re-sends the requests that matter.
                        out.clear();
                        out_pos = 0;
                        unsigned char attach[stream::kControlFrameBytes];
                        stream::control_frame(session, attach);
                        out.insert(out.end(), attach, attach + sizeof attach);
                        if (was_down) note("a server of %s greets again%s", port_name.c_str());
                    }
                }
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                disconnect();
            } else if (quiet) {
                next_probe = now_ms() + 500;
            }
        }
        flush_host();
        flush_kernel();
        if (out_pos < out.size() && !core.down()) {
            ssize_t w = ::write(port, out.data() + out_pos, out.size() - out_pos);
            if (w > 0) out_pos += static_cast<size_t>(w);
            else if (w < 0 && errno != EAGAIN && errno != EINTR) disconnect();
            if (out_pos == out.size()) {
                out.clear();
                out_pos = 0;
            } else if (out_pos > (1u << 20)) {
                out.erase(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(out_pos));
                out_pos = 0;
            }
        }
        flush_kernel();
        for (auto& n : core.take_notes()) note("%s: %s", port_name.c_str(), n.c_str());
        if (announce && core.ready()) {
            announce = false;
            // What the rebuild did, where a user (and the VM tests) can see it.
            const auto& c = core.counters();
            char buf[320];
            std::snprintf(buf, sizeof buf,
                          "rebuilt for a new server: nodes found again %llu, stale %llu; handles opened again %llu, "
                          "stale %llu (%d); requests sent again %llu; held over the pause %llu",
                          static_cast<unsigned long long>(c.relookups), static_cast<unsigned long long>(c.stale_nodes),
                          static_cast<unsigned long long>(c.reopened), static_cast<unsigned long long>(c.stale_handles),
                          c.handle_error,
                          static_cast<unsigned long long>(c.replayed),
                          static_cast<unsigned long long>(c.held_over_pause));
            note("%s: %s", port_name.c_str(), buf);
        }
    }
}

}  // namespace

pid_t start_fuse_relay(const Volume& v, std::string* error) {
    int fd = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        *error = std::string("cannot open /dev/fuse: ") + std::strerror(errno);
        return -1;
    }
    mkdir_p(v.path);
    // No default_permissions: the host's server checks as the caller, as
    // with virtio-fs.
    std::string opts = "fd=" + std::to_string(fd) + ",rootmode=40000,user_id=0,group_id=0,allow_other";
    unsigned long flags = (v.readonly ? MS_RDONLY : 0) | (v.nodev ? MS_NODEV : 0) | (v.nosuid ? MS_NOSUID : 0) |
                          (v.noexec ? MS_NOEXEC : 0);
    if (::mount(v.tag.c_str(), v.path.c_str(), "fuse.ocivm", flags, opts.c_str()) < 0) {
        *error = "cannot mount the stream share on " + v.path + ": " + std::strerror(errno);
        ::close(fd);
        return -1;
    }
    pid_t pid = ::fork();
    if (pid < 0) {
        *error = std::string("cannot start the fuse relay: ") + std::strerror(errno);
        ::close(fd);
        ::umount2(v.path.c_str(), MNT_DETACH);
        return -1;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::signal(SIGPIPE, SIG_IGN);
        // Only the connection: not PID 1's ports, nor anything else it holds.
        if (fd != 3) {
            ::dup2(fd, 3);
            ::close(fd);
        }
        ::syscall(SYS_close_range, 4u, ~0u, 0u);
        ::prctl(PR_SET_NAME, "ocivm-fuse-relay", 0, 0, 0);
        ::_exit(relay_main(3, v.tag));
    }
    // PID 1 keeps no copy: when the relay goes, the connection is aborted
    // (requests fail with ENOTCONN) instead of waiting forever.
    ::close(fd);
    return pid;
}

}  // namespace ocivm::guest
