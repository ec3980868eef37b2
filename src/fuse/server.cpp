#include "fuse/server.h"

#include "util/clock.h"
#include "util/log.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <linux/limits.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <memory>
#include <vector>

namespace ocivm::fuse {

namespace {

constexpr uint32_t kMaxMinor = FUSE_KERNEL_MINOR_VERSION;
// Older kernels lack fields this server relies on (READDIRPLUS, RENAME2, ...).
constexpr uint32_t kMinMinor = 27;
constexpr size_t kOutHdr = sizeof(fuse_out_header);

// Bounds-checked cursor over a request's arguments. Every get returns null
// when the request is too short, and the handler answers -EINVAL.
class ArgReader {
public:
    ArgReader(const std::byte* p, size_t n) : p_(p), n_(n) {}
    template <typename T>
    const T* get() {
        if (off_ > n_ || n_ - off_ < sizeof(T)) return nullptr;
        const T* r = reinterpret_cast<const T*>(p_ + off_);
        off_ += sizeof(T);
        return r;
    }
    // Skips `len` bytes of a struct whose size depends on the protocol minor.
    const std::byte* bytes(size_t len) {
        if (off_ > n_ || n_ - off_ < len) return nullptr;
        const std::byte* r = p_ + off_;
        off_ += len;
        return r;
    }
    // A NUL-terminated string lying wholly inside the request.
    bool str(std::string_view& out) {
        if (off_ >= n_) return false;
        const char* s = reinterpret_cast<const char*>(p_ + off_);
        const void* z = std::memchr(s, 0, n_ - off_);
        if (!z) return false;
        size_t len = static_cast<const char*>(z) - s;
        out = std::string_view(s, len);
        off_ += len + 1;
        return true;
    }
    size_t remaining() const { return off_ > n_ ? 0 : n_ - off_; }
    const std::byte* here() const { return p_ + off_; }

private:
    const std::byte* p_;
    size_t n_;
    size_t off_ = 0;
};

void to_fuse_attr(const struct stat& st, fuse_attr& a) {
    a.ino = st.st_ino;
    a.size = static_cast<uint64_t>(st.st_size);
    a.blocks = static_cast<uint64_t>(st.st_blocks);
    a.atime = static_cast<uint64_t>(st.st_atim.tv_sec);
    a.mtime = static_cast<uint64_t>(st.st_mtim.tv_sec);
    a.ctime = static_cast<uint64_t>(st.st_ctim.tv_sec);
    a.atimensec = static_cast<uint32_t>(st.st_atim.tv_nsec);
    a.mtimensec = static_cast<uint32_t>(st.st_mtim.tv_nsec);
    a.ctimensec = static_cast<uint32_t>(st.st_ctim.tv_nsec);
    a.mode = st.st_mode;
    a.nlink = static_cast<uint32_t>(st.st_nlink);
    a.uid = st.st_uid;
    a.gid = st.st_gid;
    a.rdev = static_cast<uint32_t>(st.st_rdev);
    a.blksize = static_cast<uint32_t>(st.st_blksize);
    a.flags = 0;
}

void split_timeout(double t, uint64_t& sec, uint32_t& nsec) {
    if (t <= 0) {
        sec = 0;
        nsec = 0;
        return;
    }
    sec = static_cast<uint64_t>(t);
    nsec = static_cast<uint32_t>((t - static_cast<double>(sec)) * 1e9);
}

void to_entry_out(const fs::Entry& e, fuse_entry_out& o) {
    std::memset(&o, 0, sizeof o);
    o.nodeid = e.nodeid;
    o.generation = e.generation;
    split_timeout(e.entry_timeout, o.entry_valid, o.entry_valid_nsec);
    split_timeout(e.attr_timeout, o.attr_valid, o.attr_valid_nsec);
    if (e.nodeid != 0) to_fuse_attr(e.attr, o.attr);
    if (e.submount) o.attr.flags |= FUSE_ATTR_SUBMOUNT;
}

uint32_t fopen_flags(const fs::OpenResult& r) {
    uint32_t f = 0;
    if (r.direct_io) f |= FOPEN_DIRECT_IO;
    if (r.keep_cache) f |= FOPEN_KEEP_CACHE;
    if (r.cache_dir) f |= FOPEN_CACHE_DIR;
    if (r.noflush) f |= FOPEN_NOFLUSH;
    if (r.parallel_direct_writes) f |= FOPEN_PARALLEL_DIRECT_WRITES;
    return f;
}

// The size of the answer of requests whose answer has one fixed size (0 for
// the others). A request is refused with ERANGE before it runs when its
// reply cannot fit: otherwise a guest that offers too little room would get
// an error for a file that was created anyway, a lookup counted that it
// never hears of, or a handle it cannot release.
constexpr size_t fixed_reply_size(uint32_t opcode) {
    switch (opcode) {
        case FUSE_LOOKUP: case FUSE_MKNOD: case FUSE_MKDIR: case FUSE_SYMLINK: case FUSE_LINK:
            return sizeof(fuse_entry_out);
        case FUSE_CREATE: return sizeof(fuse_entry_out) + sizeof(fuse_open_out);
        case FUSE_OPEN: case FUSE_OPENDIR: return sizeof(fuse_open_out);
        case FUSE_GETATTR: case FUSE_SETATTR: return sizeof(fuse_attr_out);
        case FUSE_WRITE: case FUSE_COPY_FILE_RANGE: return sizeof(fuse_write_out);
        case FUSE_STATFS: return sizeof(fuse_statfs_out);
        case FUSE_LSEEK: return sizeof(fuse_lseek_out);
        default: return 0;
    }
}

// Requests a guest can malform at will are warned about at most a few
// times a second (a stream of 4-byte frames must not turn into 17 times as
// many bytes of log), as the vhost-user transport's worth_logging does.
LogLimit g_malformed_log(5);

template <typename... A>
void warn_malformed(spdlog::format_string_t<A...> fmt, A&&... args) {
    uint64_t skipped = 0;
    if (!g_malformed_log.allow(&skipped)) return;
    if (skipped) spdlog::warn("{} more warnings about malformed requests were not logged", skipped);
    spdlog::warn(fmt, std::forward<A>(args)...);
}

// What the current request's reply said, for its trace record.
thread_local int tl_reply_error = 0;
thread_local uint64_t tl_result_node = 0;

// Builds small replies: header plus up to two payload parts.
int send(ReplyWriter& w, uint64_t unique, int error, const void* a = nullptr, size_t alen = 0,
         const void* b = nullptr, size_t blen = 0) {
    size_t len = kOutHdr + alen + blen;
    if (w.capacity() < kOutHdr) {
        warn_malformed("request {}: no room for a reply ({} bytes)", unique, w.capacity());
        return -ERANGE;
    }
    if (len > w.capacity()) {
        // The caller's buffer cannot take this reply: report that instead.
        error = -ERANGE;
        alen = blen = 0;
        len = kOutHdr;
    }
    fuse_out_header h{static_cast<uint32_t>(len), error, unique};
    tl_reply_error = error;
    if (std::byte* p = w.contiguous(len)) {
        std::memcpy(p, &h, kOutHdr);
        if (alen) std::memcpy(p + kOutHdr, a, alen);
        if (blen) std::memcpy(p + kOutHdr + alen, b, blen);
    } else {
        w.copy_in(0, &h, kOutHdr);
        if (alen) w.copy_in(kOutHdr, a, alen);
        if (blen) w.copy_in(kOutHdr + alen, b, blen);
    }
    return w.commit(len);
}

int send_error(ReplyWriter& w, uint64_t unique, int err) { return send(w, unique, err); }

// The largest payload built in scratch memory for a scattered reply: an
// xattr value or list (XATTR_SIZE_MAX, XATTR_LIST_MAX), a symlink target,
// one READDIR's entries (a shorter listing is always a valid reply).
constexpr size_t kScratchSize = 64 * 1024;

// Variable-size payload: written straight into a contiguous reply, or into
// a per-thread scratch buffer of fixed size that is copied into a scattered
// one. What a guest asks for never decides how much memory stays behind.
class Payload {
public:
    Payload(ReplyWriter& w, size_t max) : w_(w) {
        if (std::byte* p = w.contiguous(kOutHdr + max)) {
            p_ = p + kOutHdr;
            cap_ = max;
        } else {
            thread_local std::unique_ptr<std::byte[]> scratch;
            if (!scratch) scratch = std::make_unique<std::byte[]>(kScratchSize);
            p_ = scratch.get();
            cap_ = std::min(max, kScratchSize);
            scattered_ = true;
        }
    }
    std::byte* data() const { return p_; }
    // Bytes that may be written at data(): at most the max asked for.
    size_t capacity() const { return cap_; }
    int finish(uint64_t unique, size_t len) {
        fuse_out_header h{static_cast<uint32_t>(kOutHdr + len), 0, unique};
        tl_reply_error = 0;
        if (scattered_) {
            w_.copy_in(kOutHdr, p_, len);
            w_.copy_in(0, &h, kOutHdr);
        } else {
            std::memcpy(p_ - kOutHdr, &h, kOutHdr);
        }
        return w_.commit(kOutHdr + len);
    }

private:
    ReplyWriter& w_;
    std::byte* p_ = nullptr;
    size_t cap_ = 0;
    bool scattered_ = false;
};

size_t dirent_size(size_t namelen, bool plus) {
    size_t base = plus ? FUSE_NAME_OFFSET_DIRENTPLUS : FUSE_NAME_OFFSET;
    return FUSE_DIRENT_ALIGN(base + namelen);
}

class DirBuffer final : public fs::DirSink {
public:
    DirBuffer(std::byte* p, size_t cap, bool plus) : p_(p), cap_(cap), plus_(plus) {}
    bool fits(size_t name_len) const override {
        return used_ + dirent_size(name_len, plus_) <= cap_;
    }
    void add(std::string_view name, uint64_t ino, uint32_t type, uint64_t off,
             const fs::Entry* e) override {
        size_t sz = dirent_size(name.size(), plus_);
        std::byte* at = p_ + used_;
        std::memset(at, 0, sz);
        fuse_dirent* d;
        if (plus_) {
            auto* dp = reinterpret_cast<fuse_direntplus*>(at);
            if (e) to_entry_out(*e, dp->entry_out);
            d = &dp->dirent;
        } else {
            d = reinterpret_cast<fuse_dirent*>(at);
        }
        d->ino = ino;
        d->off = off;
        d->namelen = static_cast<uint32_t>(name.size());
        d->type = type;
        std::memcpy(d->name, name.data(), name.size());
        used_ += sz;
    }
    size_t used() const { return used_; }

private:
    std::byte* p_;
    size_t cap_;
    bool plus_;
    size_t used_ = 0;
};

fs::Context context_of(const fuse_in_header& h) { return fs::Context{h.uid, h.gid, h.pid}; }

// Where a request's (first) name starts after the header, or -1.
long name_offset(uint32_t opcode) {
    switch (opcode) {
        case FUSE_LOOKUP: case FUSE_UNLINK: case FUSE_RMDIR: case FUSE_SYMLINK:
        case FUSE_REMOVEXATTR: return 0;
        case FUSE_MKDIR: return sizeof(fuse_mkdir_in);
        case FUSE_MKNOD: return sizeof(fuse_mknod_in);
        case FUSE_CREATE: return sizeof(fuse_create_in);
        case FUSE_RENAME: return sizeof(fuse_rename_in);
        case FUSE_RENAME2: return sizeof(fuse_rename2_in);
        case FUSE_LINK: return sizeof(fuse_link_in);
        case FUSE_GETXATTR: return sizeof(fuse_getxattr_in);
        default: return -1;
    }
}

}  // namespace

uint64_t wanted_init_flags(const ServerOptions& o) {
    uint64_t f = FUSE_ASYNC_READ | FUSE_PARALLEL_DIROPS | FUSE_EXPORT_SUPPORT |
                 FUSE_HANDLE_KILLPRIV_V2 | FUSE_MAX_PAGES | FUSE_BIG_WRITES |
                 FUSE_ASYNC_DIO | FUSE_INIT_EXT;
    if (o.cache_symlinks) f |= FUSE_CACHE_SYMLINKS;
    if (o.auto_inval_data) f |= FUSE_AUTO_INVAL_DATA;
    if (o.writeback_cache) f |= FUSE_WRITEBACK_CACHE;
    if (o.submounts) f |= FUSE_SUBMOUNTS;
    if (o.readdirplus) f |= FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO;
    if (o.atomic_o_trunc) f |= FUSE_ATOMIC_O_TRUNC;
    return f;
}

Server::Server(fs::FileSystem& fs, ServerOptions opts, trace::Recorder* recorder)
    : fs_(fs), opts_(opts), recorder_(recorder) {
    if (opts_.max_write < 4096) opts_.max_write = 4096;
}

// All opcode handlers; a struct so they can reach Server's private state.
struct Dispatch {
    Server& s;
    const fuse_in_header& h;
    ArgReader& a;
    ReplyWriter& w;
    fs::FileSystem& fs;
    fs::Context ctx;

    int err(int e) { return send_error(w, h.unique, e); }
    int ok() { return send(w, h.unique, 0); }
    int entry(int r, const fs::Entry& e) {
        if (r < 0) return err(r);
        tl_result_node = e.nodeid;
        fuse_entry_out o;
        to_entry_out(e, o);
        return send(w, h.unique, 0, &o, sizeof o);
    }
    int attr(int r, const fs::Attr& at) {
        if (r < 0) return err(r);
        fuse_attr_out o{};
        split_timeout(at.timeout, o.attr_valid, o.attr_valid_nsec);
        to_fuse_attr(at.st, o.attr);
        return send(w, h.unique, 0, &o, sizeof o);
    }

    int init() {
        // The first 16 bytes are common to every protocol minor.
        struct InitInBase {
            uint32_t major, minor, max_readahead, flags;
        };
        auto* in = a.get<InitInBase>();
        if (!in) return err(-EINVAL);
        if (s.initialized()) return err(-EPROTO);
        fuse_init_out o{};
        o.major = FUSE_KERNEL_VERSION;
        o.minor = kMaxMinor;
        if (in->major > FUSE_KERNEL_VERSION) {
            // The kernel retries INIT with our major.
            return send(w, h.unique, 0, &o, 8);
        }
        if (in->major < FUSE_KERNEL_VERSION || in->minor < kMinMinor) {
            spdlog::error("kernel FUSE protocol {}.{} is too old (need 7.{} or later)",
                          in->major, in->minor, kMinMinor);
            return err(-EPROTO);
        }
        uint64_t offered = in->flags;
        if ((in->flags & FUSE_INIT_EXT) && a.remaining() >= sizeof(uint32_t)) {
            uint32_t flags2;
            std::memcpy(&flags2, a.here(), sizeof flags2);
            offered |= static_cast<uint64_t>(flags2) << 32;
        }
        uint64_t agreed = offered & wanted_init_flags(s.opts_);
        uint32_t minor = std::min<uint32_t>(in->minor, kMaxMinor);
        o.minor = minor;
        o.max_readahead = in->max_readahead;
        o.flags = static_cast<uint32_t>(agreed);
        o.flags2 = static_cast<uint32_t>(agreed >> 32);
        o.max_background = 64;
        o.congestion_threshold = 48;
        o.max_write = s.opts_.max_write;
        o.time_gran = 1;
        o.max_pages = static_cast<uint16_t>((s.opts_.max_write + 4095) / 4096);
        size_t len = minor < 23 ? FUSE_COMPAT_22_INIT_OUT_SIZE : sizeof o;
        // A guest that left no room for the answer never hears that the
        // session started: it stays uninitialised, and an INIT with room
        // can follow (it would get EPROTO otherwise, and every request
        // would run under flags the guest never saw).
        if (w.capacity() < kOutHdr + len) {
            warn_malformed("INIT {} has room for {} reply bytes, not {}: refused", h.unique, w.capacity(),
                         kOutHdr + len);
            return err(-ERANGE);
        }
        s.minor_.store(minor, std::memory_order_relaxed);
        s.flags_.store(agreed, std::memory_order_relaxed);
        s.initialized_.store(true, std::memory_order_release);
        spdlog::debug("INIT: kernel 7.{} offered {:#x}, agreed 7.{} flags {:#x} max_write {}",
                      in->minor, offered, minor, agreed, o.max_write);
        return send(w, h.unique, 0, &o, len);
    }

    int lookup() {
        std::string_view name;
        if (!a.str(name)) return err(-EINVAL);
        fs::Entry e;
        return entry(fs.lookup(ctx, h.nodeid, name, e), e);
    }
    void forget() {
        if (auto* in = a.get<fuse_forget_in>()) fs.forget(h.nodeid, in->nlookup);
    }
    void batch_forget() {
        auto* in = a.get<fuse_batch_forget_in>();
        if (!in) return;
        for (uint32_t i = 0; i < in->count; ++i) {
            auto* one = a.get<fuse_forget_one>();
            if (!one) break;  // truncated list: forget what is there
            fs.forget(one->nodeid, one->nlookup);
        }
    }
    int getattr() {
        auto* in = a.get<fuse_getattr_in>();
        if (!in) return err(-EINVAL);
        fs::Attr at;
        const uint64_t* fh = (in->getattr_flags & FUSE_GETATTR_FH) ? &in->fh : nullptr;
        return attr(fs.getattr(ctx, h.nodeid, fh, at), at);
    }
    int setattr() {
        auto* in = a.get<fuse_setattr_in>();
        if (!in) return err(-EINVAL);
        fs::SetAttr sa;
        uint32_t v = in->valid;
        sa.mode = v & FATTR_MODE;
        sa.uid = v & FATTR_UID;
        sa.gid = v & FATTR_GID;
        sa.size = v & FATTR_SIZE;
        sa.atime = v & FATTR_ATIME;
        sa.mtime = v & FATTR_MTIME;
        sa.atime_now = v & FATTR_ATIME_NOW;
        sa.mtime_now = v & FATTR_MTIME_NOW;
        sa.kill_suidgid = v & FATTR_KILL_SUIDGID;
        sa.mode_value = in->mode & 07777;
        sa.uid_value = in->uid;
        sa.gid_value = in->gid;
        sa.size_value = static_cast<off_t>(in->size);
        sa.atime_value = {static_cast<time_t>(in->atime), static_cast<long>(in->atimensec)};
        sa.mtime_value = {static_cast<time_t>(in->mtime), static_cast<long>(in->mtimensec)};
        if (sa.size && static_cast<int64_t>(in->size) < 0) return err(-EINVAL);
        if ((sa.atime && !sa.atime_now && in->atimensec >= 1000000000u) ||
            (sa.mtime && !sa.mtime_now && in->mtimensec >= 1000000000u))
            return err(-EINVAL);
        const uint64_t* fh = (v & FATTR_FH) ? &in->fh : nullptr;
        fs::Attr at;
        return attr(fs.setattr(ctx, h.nodeid, sa, fh, at), at);
    }
    int readlink() {
        Payload p(w, std::min<size_t>(PATH_MAX, w.capacity() - kOutHdr));
        int r = fs.readlink(ctx, h.nodeid, reinterpret_cast<char*>(p.data()), p.capacity());
        if (r < 0) return err(r);
        return p.finish(h.unique, static_cast<size_t>(r));
    }
    int symlink() {
        std::string_view name, target;
        if (!a.str(name) || !a.str(target)) return err(-EINVAL);
        fs::Entry e;
        return entry(fs.symlink(ctx, h.nodeid, name, target, e), e);
    }
    int mknod() {
        auto* in = a.get<fuse_mknod_in>();
        std::string_view name;
        if (!in || !a.str(name)) return err(-EINVAL);
        fs::Entry e;
        return entry(fs.mknod(ctx, h.nodeid, name, in->mode, in->rdev, e), e);
    }
    int mkdir() {
        auto* in = a.get<fuse_mkdir_in>();
        std::string_view name;
        if (!in || !a.str(name)) return err(-EINVAL);
        fs::Entry e;
        return entry(fs.mkdir(ctx, h.nodeid, name, in->mode & 07777, e), e);
    }
    int unlink(bool dir) {
        std::string_view name;
        if (!a.str(name)) return err(-EINVAL);
        int r = dir ? fs.rmdir(ctx, h.nodeid, name) : fs.unlink(ctx, h.nodeid, name);
        return r < 0 ? err(r) : ok();
    }
    int rename(bool two) {
        uint64_t newdir;
        unsigned flags = 0;
        if (two) {
            auto* in = a.get<fuse_rename2_in>();
            if (!in) return err(-EINVAL);
            newdir = in->newdir;
            flags = in->flags;
        } else {
            auto* in = a.get<fuse_rename_in>();
            if (!in) return err(-EINVAL);
            newdir = in->newdir;
        }
        std::string_view from, to;
        if (!a.str(from) || !a.str(to)) return err(-EINVAL);
        int r = fs.rename(ctx, h.nodeid, from, newdir, to, flags);
        return r < 0 ? err(r) : ok();
    }
    int link() {
        auto* in = a.get<fuse_link_in>();
        std::string_view name;
        if (!in || !a.str(name)) return err(-EINVAL);
        fs::Entry e;
        return entry(fs.link(ctx, in->oldnodeid, h.nodeid, name, e), e);
    }
    int open(bool dir) {
        auto* in = a.get<fuse_open_in>();
        if (!in) return err(-EINVAL);
        fs::OpenResult r;
        int rc = dir ? fs.opendir(ctx, h.nodeid, static_cast<int>(in->flags), r)
                     : fs.open(ctx, h.nodeid, static_cast<int>(in->flags),
                               in->open_flags & FUSE_OPEN_KILL_SUIDGID, r);
        if (rc < 0) return err(rc);
        fuse_open_out o{r.fh, fopen_flags(r), 0};
        return send(w, h.unique, 0, &o, sizeof o);
    }
    int create() {
        auto* in = a.get<fuse_create_in>();
        std::string_view name;
        if (!in || !a.str(name)) return err(-EINVAL);
        fs::Entry e;
        fs::OpenResult r;
        int rc = fs.create(ctx, h.nodeid, name, in->mode & 07777, static_cast<int>(in->flags),
                           in->open_flags & FUSE_OPEN_KILL_SUIDGID, e, r);
        if (rc < 0) return err(rc);
        tl_result_node = e.nodeid;
        fuse_entry_out eo;
        to_entry_out(e, eo);
        fuse_open_out oo{r.fh, fopen_flags(r), 0};
        return send(w, h.unique, 0, &eo, sizeof eo, &oo, sizeof oo);
    }
    int read() {
        auto* in = a.get<fuse_read_in>();
        if (!in) return err(-EINVAL);
        if (static_cast<int64_t>(in->offset) < 0) return err(-EINVAL);
        size_t size = std::min<size_t>(in->size, s.opts_.max_write);
        size = std::min(size, w.capacity() - kOutHdr);
        // A guest's 1 MiB read arrives as 256+ page buffers: room for all.
        thread_local std::vector<struct iovec> iov(1024);
        int cnt = size ? w.iov(kOutHdr, size, iov.data(), static_cast<int>(iov.size())) : 0;
        if (cnt < 0) return err(-EINVAL);
        if (cnt > IOV_MAX) cnt = IOV_MAX;  // preadv's limit: a shorter read
        ssize_t n = fs.read(ctx, h.nodeid, in->fh, static_cast<off_t>(in->offset), iov.data(), cnt);
        if (n < 0) return err(static_cast<int>(n));
        fuse_out_header oh{static_cast<uint32_t>(kOutHdr + static_cast<size_t>(n)), 0, h.unique};
        tl_reply_error = 0;
        w.copy_in(0, &oh, kOutHdr);
        return w.commit(oh.len);
    }
    int write() {
        auto* in = a.get<fuse_write_in>();
        if (!in) return err(-EINVAL);
        if (in->size > a.remaining() || in->size > s.opts_.max_write) return err(-EINVAL);
        if (static_cast<int64_t>(in->offset) < 0) return err(-EINVAL);
        struct iovec iov{const_cast<std::byte*>(a.here()), in->size};
        ssize_t n = fs.write(ctx, h.nodeid, in->fh, static_cast<off_t>(in->offset), &iov, 1,
                             in->write_flags & FUSE_WRITE_KILL_SUIDGID);
        if (n < 0) return err(static_cast<int>(n));
        fuse_write_out o{static_cast<uint32_t>(n), 0};
        return send(w, h.unique, 0, &o, sizeof o);
    }
    int statfs() {
        struct statvfs sv;
        int r = fs.statfs(ctx, h.nodeid, sv);
        if (r < 0) return err(r);
        fuse_statfs_out o{};
        o.st.blocks = sv.f_blocks;
        o.st.bfree = sv.f_bfree;
        o.st.bavail = sv.f_bavail;
        o.st.files = sv.f_files;
        o.st.ffree = sv.f_ffree;
        o.st.bsize = static_cast<uint32_t>(sv.f_bsize);
        o.st.namelen = static_cast<uint32_t>(sv.f_namemax);
        o.st.frsize = static_cast<uint32_t>(sv.f_frsize);
        return send(w, h.unique, 0, &o, sizeof o);
    }
    int release(bool dir) {
        auto* in = a.get<fuse_release_in>();
        if (!in) return err(-EINVAL);
        int r = dir ? fs.releasedir(ctx, h.nodeid, in->fh) : fs.release(ctx, h.nodeid, in->fh);
        return r < 0 ? err(r) : ok();
    }
    int fsync(bool dir) {
        auto* in = a.get<fuse_fsync_in>();
        if (!in) return err(-EINVAL);
        bool ds = in->fsync_flags & FUSE_FSYNC_FDATASYNC;
        int r = dir ? fs.fsyncdir(ctx, h.nodeid, in->fh, ds) : fs.fsync(ctx, h.nodeid, in->fh, ds);
        return r < 0 ? err(r) : ok();
    }
    int setxattr() {
        // Without FUSE_SETXATTR_EXT the kernel sends the 8-byte compat struct.
        bool ext = s.negotiated_flags() & FUSE_SETXATTR_EXT;
        const std::byte* raw = a.bytes(ext ? sizeof(fuse_setxattr_in) : FUSE_COMPAT_SETXATTR_IN_SIZE);
        std::string_view name;
        if (!raw || !a.str(name)) return err(-EINVAL);
        fuse_setxattr_in in{};
        std::memcpy(&in, raw, ext ? sizeof in : FUSE_COMPAT_SETXATTR_IN_SIZE);
        const std::byte* value = a.bytes(in.size);
        if (!value) return err(-EINVAL);
        if (in.size > XATTR_SIZE_MAX) return err(-E2BIG);
        int r = fs.setxattr(ctx, h.nodeid, name, value, in.size, static_cast<int>(in.flags));
        return r < 0 ? err(r) : ok();
    }
    int getxattr(bool list) {
        auto* in = a.get<fuse_getxattr_in>();
        if (!in) return err(-EINVAL);
        std::string_view name;
        if (!list && !a.str(name)) return err(-EINVAL);
        // No xattr value or list is longer than the host allows, whatever
        // buffer the guest offers.
        size_t cap = std::min<size_t>({in->size, list ? size_t{XATTR_LIST_MAX} : size_t{XATTR_SIZE_MAX},
                                      w.capacity() - kOutHdr});
        if (in->size == 0) {
            ssize_t r = list ? fs.listxattr(ctx, h.nodeid, nullptr, 0)
                             : fs.getxattr(ctx, h.nodeid, name, nullptr, 0);
            if (r < 0) return err(static_cast<int>(r));
            fuse_getxattr_out o{static_cast<uint32_t>(r), 0};
            return send(w, h.unique, 0, &o, sizeof o);
        }
        Payload p(w, cap);
        ssize_t r = list ? fs.listxattr(ctx, h.nodeid, reinterpret_cast<char*>(p.data()), p.capacity())
                         : fs.getxattr(ctx, h.nodeid, name, p.data(), p.capacity());
        if (r < 0) return err(static_cast<int>(r));
        return p.finish(h.unique, static_cast<size_t>(r));
    }
    int removexattr() {
        std::string_view name;
        if (!a.str(name)) return err(-EINVAL);
        int r = fs.removexattr(ctx, h.nodeid, name);
        return r < 0 ? err(r) : ok();
    }
    int flush() {
        auto* in = a.get<fuse_flush_in>();
        if (!in) return err(-EINVAL);
        int r = fs.flush(ctx, h.nodeid, in->fh);
        return r < 0 ? err(r) : ok();
    }
    int readdir(bool plus) {
        auto* in = a.get<fuse_read_in>();
        if (!in) return err(-EINVAL);
        size_t size = std::min<size_t>(in->size, w.capacity() - kOutHdr);
        size = std::min<size_t>(size, s.opts_.max_write);
        Payload p(w, size);
        DirBuffer buf(p.data(), p.capacity(), plus);
        int r = fs.readdir(ctx, h.nodeid, in->fh, in->offset, plus, buf);
        if (r < 0) return err(r);
        return p.finish(h.unique, buf.used());
    }
    int access() {
        auto* in = a.get<fuse_access_in>();
        if (!in) return err(-EINVAL);
        int r = fs.access(ctx, h.nodeid, static_cast<int>(in->mask));
        return r < 0 ? err(r) : ok();
    }
    int fallocate() {
        auto* in = a.get<fuse_fallocate_in>();
        if (!in) return err(-EINVAL);
        if (static_cast<int64_t>(in->offset) < 0 || static_cast<int64_t>(in->length) <= 0)
            return err(-EINVAL);
        int r = fs.fallocate(ctx, h.nodeid, in->fh, static_cast<int>(in->mode),
                             static_cast<off_t>(in->offset), static_cast<off_t>(in->length));
        return r < 0 ? err(r) : ok();
    }
    int lseek() {
        auto* in = a.get<fuse_lseek_in>();
        if (!in) return err(-EINVAL);
        off_t r = fs.lseek(ctx, h.nodeid, in->fh, static_cast<off_t>(in->offset),
                           static_cast<int>(in->whence));
        if (r < 0) return err(static_cast<int>(r));
        fuse_lseek_out o{static_cast<uint64_t>(r)};
        return send(w, h.unique, 0, &o, sizeof o);
    }
    int copy_file_range() {
        auto* in = a.get<fuse_copy_file_range_in>();
        if (!in) return err(-EINVAL);
        if (static_cast<int64_t>(in->off_in) < 0 || static_cast<int64_t>(in->off_out) < 0)
            return err(-EINVAL);
        ssize_t r = fs.copy_file_range(ctx, h.nodeid, in->fh_in, static_cast<off_t>(in->off_in),
                                       in->nodeid_out, in->fh_out,
                                       static_cast<off_t>(in->off_out),
                                       std::min<uint64_t>(in->len, 1u << 30),
                                       static_cast<unsigned>(in->flags));
        if (r < 0) return err(static_cast<int>(r));
        fuse_write_out o{static_cast<uint32_t>(r), 0};
        return send(w, h.unique, 0, &o, sizeof o);
    }
    int syncfs() {
        int r = fs.syncfs(ctx);
        return r < 0 ? err(r) : ok();
    }
};

Server::Result Server::handle(std::span<const std::byte> in, ReplyWriter& out) {
    if (!recorder_) return handle_request(in, out);
    uint64_t t0 = mono_ns();
    tl_reply_error = 0;
    tl_result_node = 0;
    Result res = handle_request(in, out);
    if (in.size() < sizeof(fuse_in_header)) return res;
    fuse_in_header h;
    std::memcpy(&h, in.data(), sizeof h);
    trace::Record r;
    r.time_ns = t0;
    r.unique = h.unique;
    r.nodeid = h.nodeid;
    r.result_node = tl_result_node;
    r.opcode = h.opcode;
    r.pid = h.pid;
    r.uid = h.uid;
    r.gid = h.gid;
    r.error = res == Result::NoReply ? 0 : tl_reply_error;
    r.latency_us = static_cast<uint32_t>((mono_ns() - t0) / 1000);
    if (h.len == in.size()) record_forgets(h, in, r);
    long off = name_offset(h.opcode);
    if (off >= 0 && sizeof h + static_cast<size_t>(off) < in.size()) {
        const char* name = reinterpret_cast<const char*>(in.data()) + sizeof h + off;
        size_t max = in.size() - sizeof h - static_cast<size_t>(off);
        size_t len = strnlen(name, max);
        r.name_len = static_cast<uint8_t>(std::min(len, sizeof r.name));
        std::memcpy(r.name, name, r.name_len);
    }
    recorder_->push(r);
    return res;
}

// The recorder's path map follows the kernel's lookup counts: FORGET carries
// its count in its own record, each node of a BATCH_FORGET gets a record
// that only updates the map.
void Server::record_forgets(const fuse_in_header& h, std::span<const std::byte> in,
                            trace::Record& r) {
    size_t off = sizeof h;
    if (h.opcode == FUSE_FORGET && in.size() >= off + sizeof(fuse_forget_in)) {
        fuse_forget_in f;
        std::memcpy(&f, in.data() + off, sizeof f);
        r.nlookup = f.nlookup;
    } else if (h.opcode == FUSE_BATCH_FORGET && in.size() >= off + sizeof(fuse_batch_forget_in)) {
        fuse_batch_forget_in b;
        std::memcpy(&b, in.data() + off, sizeof b);
        off += sizeof b;
        trace::Record e;
        e.batch_entry = true;
        e.opcode = FUSE_BATCH_FORGET;
        e.time_ns = r.time_ns;
        e.unique = h.unique;
        for (uint32_t i = 0; i < b.count && in.size() - off >= sizeof(fuse_forget_one); ++i) {
            fuse_forget_one one;
            std::memcpy(&one, in.data() + off, sizeof one);
            off += sizeof one;
            e.nodeid = one.nodeid;
            e.nlookup = one.nlookup;
            recorder_->push(e);
        }
    }
}

Server::Result Server::handle_request(std::span<const std::byte> in, ReplyWriter& out) {
    if (in.size() < sizeof(fuse_in_header)) {
        warn_malformed("dropping a {}-byte request: shorter than a FUSE header", in.size());
        return Result::NoReply;
    }
    fuse_in_header h;
    std::memcpy(&h, in.data(), sizeof h);
    if (out.capacity() < kOutHdr && h.opcode != FUSE_FORGET && h.opcode != FUSE_BATCH_FORGET) {
        // Nowhere to put even an error (before any error below is sent: a
        // "Replied" with nothing written would leave the guest waiting): the
        // request is dropped unprocessed.
        warn_malformed("request {} (opcode {}) has no room for a reply", h.unique, h.opcode);
        return Result::NoReply;
    }
    if (h.len != in.size() || h.len < sizeof h) {
        warn_malformed("request {} (opcode {}) says {} bytes but has {}", h.unique, h.opcode, h.len,
                     in.size());
        if (h.opcode == FUSE_FORGET || h.opcode == FUSE_BATCH_FORGET) return Result::NoReply;
        send_error(out, h.unique, -EINVAL);
        return Result::Replied;
    }
    // Extensions after the arguments (FUSE_HAS_EXT) are not negotiated; a
    // request carrying them is cut off before them.
    size_t arglen = h.len - sizeof h;
    if (static_cast<size_t>(h.total_extlen) * 8 > arglen) {
        // FORGETs are never answered, not even with an error (and may come
        // with no room for one).
        if (h.opcode == FUSE_FORGET || h.opcode == FUSE_BATCH_FORGET) return Result::NoReply;
        send_error(out, h.unique, -EINVAL);
        return Result::Replied;
    }
    arglen -= static_cast<size_t>(h.total_extlen) * 8;
    ArgReader a(in.data() + sizeof h, arglen);
    Dispatch d{*this, h, a, out, fs_, context_of(h)};
    if (spdlog::should_log(spdlog::level::trace))
        spdlog::trace("request {} opcode {} node {} len {} pid {}", h.unique, h.opcode, h.nodeid,
                      h.len, h.pid);

    if (h.opcode == FUSE_INIT) {
        d.init();
        return Result::Replied;
    }
    if (!initialized()) {
        if (h.opcode == FUSE_FORGET || h.opcode == FUSE_BATCH_FORGET) return Result::NoReply;
        d.err(-EIO);
        return Result::Replied;
    }
    if (size_t need = fixed_reply_size(h.opcode); need && out.capacity() < kOutHdr + need) {
        warn_malformed("request {} (opcode {}) has room for {} reply bytes, not {}: refused", h.unique,
                     h.opcode, out.capacity(), kOutHdr + need);
        d.err(-ERANGE);
        return Result::Replied;
    }
    switch (h.opcode) {
        case FUSE_LOOKUP: d.lookup(); break;
        case FUSE_FORGET: d.forget(); return Result::NoReply;
        case FUSE_BATCH_FORGET: d.batch_forget(); return Result::NoReply;
        case FUSE_GETATTR: d.getattr(); break;
        case FUSE_SETATTR: d.setattr(); break;
        case FUSE_READLINK: d.readlink(); break;
        case FUSE_SYMLINK: d.symlink(); break;
        case FUSE_MKNOD: d.mknod(); break;
        case FUSE_MKDIR: d.mkdir(); break;
        case FUSE_UNLINK: d.unlink(false); break;
        case FUSE_RMDIR: d.unlink(true); break;
        case FUSE_RENAME: d.rename(false); break;
        case FUSE_RENAME2: d.rename(true); break;
        case FUSE_LINK: d.link(); break;
        case FUSE_OPEN: d.open(false); break;
        case FUSE_CREATE: d.create(); break;
        case FUSE_READ: d.read(); break;
        case FUSE_WRITE: d.write(); break;
        case FUSE_STATFS: d.statfs(); break;
        case FUSE_RELEASE: d.release(false); break;
        case FUSE_FSYNC: d.fsync(false); break;
        case FUSE_SETXATTR: d.setxattr(); break;
        case FUSE_GETXATTR: d.getxattr(false); break;
        case FUSE_LISTXATTR: d.getxattr(true); break;
        case FUSE_REMOVEXATTR: d.removexattr(); break;
        case FUSE_FLUSH: d.flush(); break;
        case FUSE_OPENDIR: d.open(true); break;
        case FUSE_READDIR: d.readdir(false); break;
        case FUSE_READDIRPLUS: d.readdir(true); break;
        case FUSE_RELEASEDIR: d.release(true); break;
        case FUSE_FSYNCDIR: d.fsync(true); break;
        case FUSE_ACCESS: d.access(); break;
        case FUSE_FALLOCATE: d.fallocate(); break;
        case FUSE_LSEEK: d.lseek(); break;
        case FUSE_COPY_FILE_RANGE: d.copy_file_range(); break;
        case FUSE_SYNCFS: d.syncfs(); break;
        case FUSE_INTERRUPT:
            // No request here blocks for long (locks are the kernel's), so
            // interrupts are declined once and the kernel stops sending them.
            d.err(-ENOSYS);
            break;
        case FUSE_DESTROY:
            // Back to the state before INIT: every node and handle of the
            // session goes, and the next INIT (a remount of the tag, a
            // rebooted guest) starts a new session, as with virtiofsd.
            fs_.destroy();
            flags_.store(0, std::memory_order_relaxed);
            minor_.store(0, std::memory_order_relaxed);
            initialized_.store(false, std::memory_order_release);
            d.ok();
            return Result::Destroyed;
        default:
            // GETLK/SETLK/SETLKW (locks stay local), BMAP, IOCTL, POLL,
            // SETUPMAPPING/REMOVEMAPPING (no DAX), TMPFILE, unknown opcodes.
            d.err(-ENOSYS);
            break;
    }
    return Result::Replied;
}

int BufferReplyWriter::iov(size_t off, size_t len, struct iovec* out, int max) {
    if (max < 1 || off > cap_ || len > cap_ - off) return -1;
    out[0].iov_base = buf_ + off;
    out[0].iov_len = len;
    return 1;
}

void BufferReplyWriter::copy_in(size_t off, const void* src, size_t len) {
    if (off > cap_ || len > cap_ - off) return;
    if (buf_ + off != src) std::memmove(buf_ + off, src, len);
}

}  // namespace ocivm::fuse
