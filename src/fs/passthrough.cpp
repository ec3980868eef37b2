#include "fs/passthrough.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/limits.h>
#include <linux/securebits.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "util/error.h"

namespace ocivm::fs {

namespace {

constexpr size_t kDirBufSize = DirBufferPool::kBufferSize;

// A READDIR's working buffer when the directory-buffer budget is spent:
// one per serving thread, allocated on its first use.
char* thread_dir_scratch() {
    thread_local std::unique_ptr<char[]> buf;
    if (!buf) buf = std::make_unique<char[]>(kDirBufSize);
    return buf.get();
}

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

// Names are single components: never empty, never containing '/'.
bool bad_name(std::string_view name) {
    return name.empty() || name.find('/') != std::string_view::npos ||
           name.find('\0') != std::string_view::npos;
}

bool is_dot(std::string_view n) { return n == "."; }
bool is_dotdot(std::string_view n) { return n == ".."; }

// Names arrive as views into the request; the host needs NUL-terminated
// strings. The protocol layer guarantees a terminator right after the view.
const char* cstr(std::string_view s) { return s.data(); }

void statx_to_stat(const struct statx& x, struct stat& st) {
    std::memset(&st, 0, sizeof st);
    st.st_dev = makedev(x.stx_dev_major, x.stx_dev_minor);
    st.st_ino = x.stx_ino;
    st.st_mode = x.stx_mode;
    st.st_nlink = x.stx_nlink;
    st.st_uid = x.stx_uid;
    st.st_gid = x.stx_gid;
    st.st_rdev = makedev(x.stx_rdev_major, x.stx_rdev_minor);
    st.st_size = static_cast<off_t>(x.stx_size);
    st.st_blksize = x.stx_blksize;
    st.st_blocks = static_cast<blkcnt_t>(x.stx_blocks);
    st.st_atim = {x.stx_atime.tv_sec, x.stx_atime.tv_nsec};
    st.st_mtim = {x.stx_mtime.tv_sec, x.stx_mtime.tv_nsec};
    st.st_ctim = {x.stx_ctime.tv_sec, x.stx_ctime.tv_nsec};
}

constexpr unsigned kStatxMask = STATX_BASIC_STATS | STATX_MNT_ID;

int statx_at(int dirfd, const char* name, int flags, struct statx& x) {
    if (::statx(dirfd, name, flags | AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, kStatxMask, &x) < 0)
        return -errno;
    return 0;
}

InodeKey key_of(const struct statx& x) {
    return InodeKey{makedev(x.stx_dev_major, x.stx_dev_minor), x.stx_ino,
                    (x.stx_mask & STATX_MNT_ID) ? x.stx_mnt_id : 0};
}

// The path of an fd through /proc for calls that take no dirfd (xattrs,
// chmod, truncate, utimensat on a symlink), in a thread-local buffer (no
// allocation): "N" when the working directory is /proc/self/fd (a
// sandboxed server whose root is the share has no /proc to name),
// "/proc/self/fd/N" otherwise.
bool g_proc_cwd = false;
const char* proc_path(int fd) {
    thread_local char buf[40];
    std::snprintf(buf, sizeof buf, g_proc_cwd ? "%d" : "/proc/self/fd/%d", fd);
    return buf;
}
const char* fd_name(int fd) {
    thread_local char buf[16];
    std::snprintf(buf, sizeof buf, "%d", fd);
    return buf;
}

// Runs host calls that create files with the caller's fsuid/fsgid so the new
// file's owner is the caller's, as on a local file system. The kernel already
// checked permissions (default_permissions); SECBIT_NO_SETUID_FIXUP keeps our
// capabilities so the host does not check them again without the caller's
// supplementary groups. Per thread: setfsuid is a per-thread credential.
class CredGuard {
public:
    CredGuard(bool enabled, uint32_t uid, uint32_t gid) {
        if (!enabled) return;
        if (tl_uid != uid) { ::syscall(SYS_setfsuid, uid); tl_uid = uid; }
        if (tl_gid != gid) { ::syscall(SYS_setfsgid, gid); tl_gid = gid; }
        active_ = true;
    }
    ~CredGuard() {
        if (!active_) return;
        if (tl_uid != 0) { ::syscall(SYS_setfsuid, 0); tl_uid = 0; }
        if (tl_gid != 0) { ::syscall(SYS_setfsgid, 0); tl_gid = 0; }
    }
    CredGuard(const CredGuard&) = delete;
    CredGuard& operator=(const CredGuard&) = delete;

private:
    static thread_local uint32_t tl_uid, tl_gid;
    bool active_ = false;
};
thread_local uint32_t CredGuard::tl_uid = 0;
thread_local uint32_t CredGuard::tl_gid = 0;

int kill_suid_sgid(int fd) {
    struct stat st;
    if (::fstat(fd, &st) < 0) return -errno;
    mode_t m = st.st_mode & 07777;
    mode_t nm = m & ~S_ISUID;
    if (m & S_IXGRP) nm &= ~S_ISGID;
    if (nm != m && ::fchmod(fd, nm) < 0) return -errno;
    return 0;
}

bool writes(int flags) {
    return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

bool starts_with(std::string_view s, std::string_view prefix) {
    return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

// Where Remap keeps a guest's security.* and trusted.* attributes.
constexpr std::string_view kRemapPrefix = "user.ocivm.";

// Names a guest's kernel gives meaning to on the host if passed through:
// file capabilities, LSM labels, overlayfs and other trusted metadata.
bool privileged_xattr(std::string_view name) {
    return starts_with(name, "security.") || starts_with(name, "trusted.");
}

// The reply a node of this type gets from OPEN (and from CREATE of an
// existing name): only regular files are ever opened on the host. A fifo
// would block the thread, a device would be the host's own.
int openable(mode_t type) {
    if (S_ISREG(type)) return 0;
    if (S_ISLNK(type)) return -ELOOP;
    if (S_ISDIR(type)) return -EISDIR;
    return -ENXIO;
}

}  // namespace

bool parse_cache_mode(std::string_view s, CacheMode& out) {
    if (s == "never") out = CacheMode::Never;
    else if (s == "metadata") out = CacheMode::Metadata;
    else if (s == "auto") out = CacheMode::Auto;
    else if (s == "always") out = CacheMode::Always;
    else return false;
    return true;
}

bool parse_xattr_policy(std::string_view s, XattrPolicy& out) {
    if (s == "passthrough") out = XattrPolicy::Passthrough;
    else if (s == "remap") out = XattrPolicy::Remap;
    else if (s == "refuse") out = XattrPolicy::Refuse;
    else return false;
    return true;
}

const char* xattr_policy_name(XattrPolicy p) {
    switch (p) {
        case XattrPolicy::Passthrough: return "passthrough";
        case XattrPolicy::Remap: return "remap";
        case XattrPolicy::Refuse: return "refuse";
    }
    return "?";
}

bool prepare_server_process() {
    ::umask(0);
    if (::geteuid() != 0) return false;
    int bits = ::prctl(PR_GET_SECUREBITS);
    return bits >= 0 && ::prctl(PR_SET_SECUREBITS, bits | SECBIT_NO_SETUID_FIXUP) == 0;
}

const char* cache_mode_name(CacheMode m) {
    switch (m) {
        case CacheMode::Never: return "never";
        case CacheMode::Metadata: return "metadata";
        case CacheMode::Auto: return "auto";
        case CacheMode::Always: return "always";
    }
    return "?";
}

Passthrough::Passthrough(PassthroughOptions opts)
    : opts_(std::move(opts)),
      switch_creds_(opts_.switch_credentials),
      dir_buffers_(opts_.max_dir_buffer_bytes),
      handles_(opts_.max_handles) {
    UniqueFd root(::open(opts_.source.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!root) {
        int e = errno;
        throw_errno("cannot open shared directory " + opts_.source, e,
                    e == ENOTDIR ? "give a directory" : "check that the directory exists");
    }
    proc_fd_.reset(::open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!proc_fd_) throw_errno("cannot open /proc/self/fd", errno, "mount /proc");
    g_proc_cwd = opts_.proc_fd_cwd;

    struct statx x;
    if (int r = statx_at(root.get(), "", AT_EMPTY_PATH, x); r < 0)
        throw_errno("cannot stat " + opts_.source, -r);
    auto node = std::make_shared<Inode>();
    node->key = key_of(x);
    node->type = x.stx_mode & S_IFMT;
    node->fd = UniqueFd(::fcntl(root.get(), F_DUPFD_CLOEXEC, 0));
    root_fd_ = std::move(root);
    inodes_.set_root(std::move(node));

    switch (opts_.cache) {
        case CacheMode::Never: timeout_ = 0; break;
        case CacheMode::Metadata: timeout_ = 86400; break;
        case CacheMode::Auto: timeout_ = 1; break;
        case CacheMode::Always: timeout_ = 86400; break;
    }
}

Passthrough::~Passthrough() = default;

bool parse_override_stat(const std::string& v, struct stat& st) {
    unsigned uid = 0, gid = 0, mode = 0;
    char type[64] = {};
    int n = std::sscanf(v.c_str(), "%u:%u:%o:%63s", &uid, &gid, &mode, type);
    if (n < 3 || mode > 07777) return false;
    mode_t fmt = st.st_mode & S_IFMT;
    dev_t rdev = st.st_rdev;
    unsigned maj = 0, min = 0;
    std::string t = n == 4 ? type : "";
    if (t == "file") fmt = S_IFREG;
    else if (t == "dir") fmt = S_IFDIR;
    else if (t == "symlink") fmt = S_IFLNK;
    else if (t == "pipe") fmt = S_IFIFO;
    else if (t == "socket") fmt = S_IFSOCK;
    else if (std::sscanf(t.c_str(), "char-%u-%u", &maj, &min) == 2) fmt = S_IFCHR, rdev = makedev(maj, min);
    else if (std::sscanf(t.c_str(), "block-%u-%u", &maj, &min) == 2) fmt = S_IFBLK, rdev = makedev(maj, min);
    else if (!t.empty()) return false;
    st.st_uid = uid;
    st.st_gid = gid;
    st.st_mode = fmt | mode;
    st.st_rdev = rdev;
    return true;
}

void Passthrough::apply_override(int fd, struct stat& st) const {
    char buf[128];
    ssize_t n = ::getxattr(proc_path(fd), "user.containers.override_stat", buf, sizeof buf - 1);
    if (n <= 0) return;
    parse_override_stat(std::string(buf, static_cast<size_t>(n)), st);
}

void Passthrough::fill_entry(const Inode& node, const struct stat& st, Entry& e) const {
    e.nodeid = node.nodeid;
    e.generation = 0;
    e.attr = st;
    if (opts_.override_stat && !S_ISLNK(st.st_mode)) apply_override(node.fd.get(), e.attr);
    e.entry_timeout = timeout_;
    e.attr_timeout = timeout_;
}

int Passthrough::do_lookup(const Inode& parent, std::string_view name, Entry& e) {
    if (bad_name(name)) return -EINVAL;
    if (!S_ISDIR(parent.type)) return -ENOTDIR;
    if (is_dotdot(name)) return lookup_dotdot(parent, e);
    struct statx x;
    if (is_dot(name)) {
        if (int r = statx_at(parent.fd.get(), "", AT_EMPTY_PATH, x); r < 0) return r;
    } else if (int r = statx_at(parent.fd.get(), cstr(name), 0, x); r < 0) {
        return r;
    }
    struct stat st;
    statx_to_stat(x, st);
    InodeKey key = key_of(x);
    if (auto n = inodes_.ref_existing(key)) {
        fill_entry(*n, st, e);
        e.submount = opts_.announce_submounts && S_ISDIR(n->type) && n->key.mnt_id != parent.key.mnt_id;
        return 0;
    }
    UniqueFd fd(::openat(parent.fd.get(), cstr(name), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) return -errno;
    // The name may have been replaced between statx and openat: trust the fd.
    if (int r = statx_at(fd.get(), "", AT_EMPTY_PATH, x); r < 0) return r;
    statx_to_stat(x, st);
    auto n = inodes_.insert(std::move(fd), key_of(x), x.stx_mode & S_IFMT);
    fill_entry(*n, st, e);
    e.submount = opts_.announce_submounts && S_ISDIR(n->type) && n->key.mnt_id != parent.key.mnt_id;
    return 0;
}

// ".." is only answered with a node the kernel already knows: a directory
// moved out of the share by the host must not lead the guest to its new
// (outside) parent.
int Passthrough::lookup_dotdot(const Inode& parent, Entry& e) {
    struct statx x;
    if (parent.nodeid == kRootNode) {
        if (int r = statx_at(parent.fd.get(), "", AT_EMPTY_PATH, x); r < 0) return r;
    } else if (int r = statx_at(parent.fd.get(), "..", 0, x); r < 0) {
        return r;
    }
    auto n = inodes_.ref_existing(key_of(x));
    if (!n) return -EACCES;
    struct stat st;
    statx_to_stat(x, st);
    fill_entry(*n, st, e);
    return 0;
}

int Passthrough::lookup(const Context&, uint64_t parent, std::string_view name, Entry& e) {
    auto p = inodes_.get(parent);
    if (!p) return -ESTALE;
    int r = do_lookup(*p, name, e);
    if (r == -ENOENT && timeout_ > 0) {
        // A negative entry the kernel may cache for the mode's timeout.
        e = Entry{};
        e.entry_timeout = timeout_;
        return 0;
    }
    return r;
}

void Passthrough::forget(uint64_t node, uint64_t nlookup) { inodes_.forget(node, nlookup); }

int Passthrough::getattr(const Context&, uint64_t node, const uint64_t* fh, Attr& a) {
    struct statx x;
    int r;
    if (fh && *fh != 0) {
        auto h = handles_.get(*fh);
        if (!h) return -EBADF;
        r = statx_at(h->fd.get(), "", AT_EMPTY_PATH, x);
    } else {
        auto n = inodes_.get(node);
        if (!n) return -ESTALE;
        r = statx_at(n->fd.get(), "", AT_EMPTY_PATH, x);
    }
    if (r < 0) return r;
    statx_to_stat(x, a.st);
    if (opts_.override_stat && !S_ISLNK(a.st.st_mode)) {
        auto n = inodes_.get(node);
        if (n) apply_override(n->fd.get(), a.st);
    }
    a.timeout = timeout_;
    return 0;
}

int Passthrough::setattr(const Context& ctx, uint64_t node, const SetAttr& s,
                         const uint64_t* fh, Attr& a) {
    if (opts_.readonly) return -EROFS;
    auto n = inodes_.get(node);
    if (!n) return -ESTALE;
    std::shared_ptr<Handle> h;
    if (fh && *fh != 0) {
        h = handles_.get(*fh, HandleKind::File);
        if (!h) return -EBADF;
    }
    int ofd = h ? h->fd.get() : -1;
    const char* path = proc_path(n->fd.get());
    bool lnk = S_ISLNK(n->type);

    if (s.mode) {
        if (lnk) return -EOPNOTSUPP;
        mode_t m = s.mode_value;
        // Set-id directories only pass their group on: harmless, and
        // shared project directories use it.
        if (opts_.nosuid && !S_ISDIR(n->type)) m &= ~(S_ISUID | S_ISGID);
        int r = ofd >= 0 ? ::fchmod(ofd, m) : ::chmod(path, m);
        if (r < 0) return -errno;
    }
    if (s.uid || s.gid) {
        uid_t u = s.uid ? s.uid_value : static_cast<uid_t>(-1);
        gid_t g = s.gid ? s.gid_value : static_cast<gid_t>(-1);
        if (::fchownat(n->fd.get(), "", u, g, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
            return -errno;
    }
    if (s.size) {
        if (S_ISDIR(n->type)) return -EISDIR;
        if (!S_ISREG(n->type)) return -EINVAL;
        int r;
        if (ofd >= 0) {
            r = ::ftruncate(ofd, s.size_value);
        } else {
            // Through an fd opened without blocking (a host user's lease
            // must not stall the queue); truncation by a caller without
            // CAP_FSETID clears set-id bits as truncate(2) would.
            UniqueFd w(::openat(proc_fd_.get(), fd_name(n->fd.get()), O_WRONLY | O_CLOEXEC | O_NONBLOCK));
            r = w ? ::ftruncate(w.get(), s.size_value) : -1;
        }
        if (r < 0) return -errno;
        if (s.kill_suidgid) {
            UniqueFd w(ofd >= 0 ? -1 : ::openat(proc_fd_.get(), fd_name(n->fd.get()), O_RDONLY | O_CLOEXEC));
            if (int k = kill_suid_sgid(ofd >= 0 ? ofd : w.get()); k < 0) return k;
        }
    }
    if (s.atime || s.mtime) {
        struct timespec ts[2];
        ts[0].tv_nsec = UTIME_OMIT;
        ts[1].tv_nsec = UTIME_OMIT;
        if (s.atime) ts[0] = s.atime_now ? timespec{0, UTIME_NOW} : s.atime_value;
        if (s.mtime) ts[1] = s.mtime_now ? timespec{0, UTIME_NOW} : s.mtime_value;
        int r = ofd >= 0 && !lnk ? ::futimens(ofd, ts) : ::utimensat(AT_FDCWD, path, ts, 0);
        if (r < 0) return -errno;
    }
    (void)ctx;
    return getattr(ctx, node, nullptr, a);
}

int Passthrough::readlink(const Context&, uint64_t node, char* buf, size_t size) {
    auto n = inodes_.get(node);
    if (!n) return -ESTALE;
    if (!S_ISLNK(n->type)) return -EINVAL;
    ssize_t r = ::readlinkat(n->fd.get(), "", buf, size);
    if (r < 0) return -errno;
    return static_cast<int>(r);
}

int Passthrough::make_node_entry(const Inode& parent, std::string_view name, Entry& e) {
    return do_lookup(parent, name, e);
}

int Passthrough::symlink(const Context& ctx, uint64_t parent, std::string_view name,
                         std::string_view target, Entry& e) {
    if (opts_.readonly) return -EROFS;
    auto p = inodes_.get(parent);
    if (!p) return -ESTALE;
    if (bad_name(name) || is_dot(name) || is_dotdot(name)) return -EINVAL;
    {
        CredGuard g(switch_creds_, ctx.uid, ctx.gid);
        if (::symlinkat(cstr(target), p->fd.get(), cstr(name)) < 0) return -errno;
    }
    return make_node_entry(*p, name, e);
}

int Passthrough::mknod(const Context& ctx, uint64_t parent, std::string_view name, mode_t mode,
                       dev_t rdev, Entry& e) {
    if (opts_.readonly) return -EROFS;
    auto p = inodes_.get(parent);
    if (!p) return -ESTALE;
    if (bad_name(name) || is_dot(name) || is_dotdot(name)) return -EINVAL;
    if (opts_.nodev && (S_ISCHR(mode) || S_ISBLK(mode))) return -EPERM;
    if (opts_.nosuid) mode &= ~(S_ISUID | S_ISGID);
    {
        CredGuard g(switch_creds_, ctx.uid, ctx.gid);
        if (::mknodat(p->fd.get(), cstr(name), mode, rdev) < 0) return -errno;
    }
    return make_node_entry(*p, name, e);
}

int Passthrough::mkdir(const Context& ctx, uint64_t parent, std::string_view name, mode_t mode,
                       Entry& e) {
    if (opts_.readonly) return -EROFS;
    auto p = inodes_.get(parent);
    if (!p) return -ESTALE;
    if (bad_name(name) || is_dot(name) || is_dotdot(name)) return -EINVAL;
    {
        CredGuard g(switch_creds_, ctx.uid, ctx.gid);
        if (::mkdirat(p->fd.get(), cstr(name), mode) < 0) return -errno;
    }
    return make_node_entry(*p, name, e);
}

int Passthrough::unlink(const Context&, uint64_t parent, std::string_view name) {
    if (opts_.readonly) return -EROFS;
    auto p = inodes_.get(parent);
    if (!p) return -ESTALE;
    if (bad_name(name)) return -EINVAL;
    if (::unlinkat(p->fd.get(), cstr(name), 0) < 0) return -errno;
    return 0;
}

int Passthrough::rmdir(const Context&, uint64_t parent, std::string_view name) {
    if (opts_.readonly) return -EROFS;
    auto p = inodes_.get(parent);
    if (!p) return -ESTALE;
    if (bad_name(name)) return -EINVAL;
    if (is_dot(name)) return -EINVAL;
    if (is_dotdot(name)) return -ENOTEMPTY;
    if (::unlinkat(p->fd.get(), cstr(name), AT_REMOVEDIR) < 0) return -errno;
    return 0;
}

int Passthrough::rename(const Context&, uint64_t parent, std::string_view name,
                        uint64_t newparent, std::string_view newname, unsigned flags) {
    if (opts_.readonly) return -EROFS;
    auto p = inodes_.get(parent);
    auto np = inodes_.get(newparent);
    if (!p || !np) return -ESTALE;
    if (bad_name(name) || bad_name(newname) || is_dot(name) || is_dotdot(name) ||
        is_dot(newname) || is_dotdot(newname))
        return -EINVAL;
    if (::renameat2(p->fd.get(), cstr(name), np->fd.get(), cstr(newname), flags) < 0)
        return -errno;
    return 0;
}

int Passthrough::link(const Context&, uint64_t node, uint64_t newparent,
                      std::string_view newname, Entry& e) {
    if (opts_.readonly) return -EROFS;
    auto n = inodes_.get(node);
    auto np = inodes_.get(newparent);
    if (!n || !np) return -ESTALE;
    if (bad_name(newname) || is_dot(newname) || is_dotdot(newname)) return -EINVAL;
    if (S_ISDIR(n->type)) return -EPERM;
    if (::linkat(n->fd.get(), "", np->fd.get(), cstr(newname), AT_EMPTY_PATH) < 0) {
        if (errno != ENOENT && errno != EPERM) return -errno;
        // Without CAP_DAC_READ_SEARCH AT_EMPTY_PATH is refused; go through /proc.
        if (::linkat(AT_FDCWD, proc_path(n->fd.get()), np->fd.get(), cstr(newname),
                     AT_SYMLINK_FOLLOW) < 0)
            return -errno;
    }
    return make_node_entry(*np, newname, e);
}

void Passthrough::set_open_flags(bool dir, OpenResult& r) const {
    // Writes reach the host file synchronously and locks are the kernel's,
    // so close() has nothing to flush: spare the FLUSH round trip.
    r.noflush = !dir;
    switch (opts_.cache) {
        case CacheMode::Never:
            r.direct_io = !dir;
            r.parallel_direct_writes = !dir;
            break;
        case CacheMode::Metadata:
            r.direct_io = !dir;
            r.parallel_direct_writes = !dir;
            r.cache_dir = dir;
            break;
        case CacheMode::Auto:
            // Kept across opens; AUTO_INVAL_DATA drops it when a refresh of
            // the attributes (every second) shows another mtime or size.
            r.keep_cache = !dir;
            break;
        case CacheMode::Always:
            r.keep_cache = true;
            r.cache_dir = dir;
            break;
    }
}

namespace {
// Flags for reopening a node through /proc: never create, never follow (the
// /proc link itself must be followed, so O_NOFOLLOW goes), no O_DIRECT
// (request buffers are not aligned for it), never O_PATH, O_TMPFILE or
// O_DIRECTORY from the guest (O_PATH would make the kernel drop
// O_CREAT|O_EXCL). Always O_NONBLOCK: a host user's file lease makes a
// blocking open for write wait up to lease-break-time (45 s) and stall the
// queue; non-blocking it fails with EWOULDBLOCK instead. Reads and writes
// of regular files ignore O_NONBLOCK, so it stays on the handle.
int reopen_flags(int flags) {
    flags &= ~(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW | O_DIRECT | O_PATH | __O_TMPFILE | O_DIRECTORY);
    return flags | O_CLOEXEC | O_NONBLOCK;
}

// Host flags for a handle under FUSE_WRITEBACK_CACHE. A write into part of
// a page makes the kernel read that page first, through the handle being
// written: a write-only handle is opened read-write. The kernel computes
// O_APPEND offsets itself and writes whole cached pages back from their
// start: an O_APPEND host fd would put each of them at the host's end of
// file instead, so O_APPEND goes (appends are then only as atomic as the
// kernel's cache is right: docs/filesystem.md).
int writeback_flags(int flags) {
    if ((flags & O_ACCMODE) == O_WRONLY) flags = (flags & ~O_ACCMODE) | O_RDWR;
    return flags & ~O_APPEND;
}
}  // namespace

int Passthrough::open(const Context&, uint64_t node, int flags, bool kill_suidgid,
                      OpenResult& r) {
    auto n = inodes_.get(node);
    if (!n) return -ESTALE;
    if (opts_.readonly && writes(flags)) return -EROFS;
    return open_node(*n, flags, kill_suidgid, false, r);
}

int Passthrough::open_node(const Inode& n, int flags, bool kill_suidgid, bool from_create,
                           OpenResult& r) {
    // The type is the inode's own (statx through the node's O_PATH fd), and
    // reopening that fd through /proc opens that very inode: whatever the
    // name points to by now, nothing but a regular file is ever opened.
    if (int t = openable(n.type); t < 0) return t;
    r = OpenResult{};
    if (opts_.no_open) {
        if (!from_create) return -ENOSYS;
        // CREATE answers handle 0 here; O_TRUNC still applies.
        if (flags & O_TRUNC) {
            UniqueFd fd(::openat(proc_fd_.get(), fd_name(n.fd.get()),
                                 O_WRONLY | O_TRUNC | O_CLOEXEC | O_NONBLOCK));
            if (!fd) return -errno;
            if (kill_suidgid) {
                if (int k = kill_suid_sgid(fd.get()); k < 0) return k;
            }
        }
        set_open_flags(false, r);
        return 0;
    }
    if (handles_.full()) return -ENFILE;
    int of = reopen_flags(flags);
    UniqueFd fd(::openat(proc_fd_.get(), fd_name(n.fd.get()), opts_.writeback ? writeback_flags(of) : of));
    if (!fd && opts_.writeback && errno == EACCES && (of & O_ACCMODE) == O_WRONLY) {
        // The host lets the server write this file but not read it (a
        // rootless server and a file of an unmapped owner, an LSM): the
        // handle stays write-only. Writes of whole pages and past the end
        // work; one into part of a page the kernel has not cached fails
        // with its page fill (EACCES, see read()).
        fd.reset(::openat(proc_fd_.get(), fd_name(n.fd.get()), of & ~O_APPEND));
    }
    if (!fd) return -errno;
    if (kill_suidgid && (flags & O_TRUNC)) {
        if (int k = kill_suid_sgid(fd.get()); k < 0) return k;
    }
    auto h = std::make_shared<Handle>();
    h->fd = std::move(fd);
    h->kind = HandleKind::File;
    r.fh = handles_.insert(std::move(h));
    if (r.fh == 0) return -ENFILE;
    set_open_flags(false, r);
    return 0;
}

int Passthrough::create(const Context& ctx, uint64_t parent, std::string_view name, mode_t mode,
                        int flags, bool kill_suidgid, Entry& e, OpenResult& r) {
    if (opts_.readonly) return -EROFS;
    auto p = inodes_.get(parent);
    if (!p) return -ESTALE;
    if (bad_name(name) || is_dot(name) || is_dotdot(name)) return -EINVAL;
    if (!S_ISDIR(p->type)) return -ENOTDIR;
    if (!opts_.no_open && handles_.full()) return -ENFILE;
    if (opts_.nosuid) mode &= ~(S_ISUID | S_ISGID);
    // Always a new file: with O_EXCL (and O_NOFOLLOW) open(2) never opens
    // anything that already exists, so it cannot block on a fifo, reach a
    // host device, follow a symlink, or truncate a file the guest asked to
    // create exclusively.
    int of = reopen_flags(flags) | O_CREAT | O_EXCL | O_NOFOLLOW;
    // Opening a file one creates checks no permission: read-write always works.
    if (opts_.writeback) of = writeback_flags(of);
    UniqueFd fd;
    int err = 0;
    {
        CredGuard g(switch_creds_, ctx.uid, ctx.gid);
        fd.reset(::openat(p->fd.get(), cstr(name), of, mode & 07777));
        if (!fd) err = errno;
    }
    if (!fd) {
        if (err != EEXIST || (flags & O_EXCL)) return -err;
        // The guest's kernel thought the name missing (another client
        // made it since): open the existing node as OPEN would.
        Entry found;
        if (int rc = do_lookup(*p, name, found); rc < 0) return rc;
        auto n = inodes_.get(found.nodeid);
        int rc = n ? open_node(*n, flags, kill_suidgid, true, r) : -ESTALE;
        if (rc < 0) {
            inodes_.forget(found.nodeid, 1);  // the lookup do_lookup counted
            return rc;
        }
        e = found;
        return 0;
    }
    // The node's O_PATH fd comes from the file just opened, not from the name,
    // which another process could already have replaced.
    UniqueFd path_fd(::openat(proc_fd_.get(), fd_name(fd.get()), O_PATH | O_CLOEXEC));
    if (!path_fd) return -errno;
    struct statx x;
    if (int rr = statx_at(path_fd.get(), "", AT_EMPTY_PATH, x); rr < 0) return rr;
    struct stat st;
    statx_to_stat(x, st);
    auto n = inodes_.insert(std::move(path_fd), key_of(x), x.stx_mode & S_IFMT);
    r = OpenResult{};
    if (!opts_.no_open) {
        auto h = std::make_shared<Handle>();
        h->fd = std::move(fd);
        h->kind = HandleKind::File;
        r.fh = handles_.insert(std::move(h));
        if (r.fh == 0) {
            // Filled by another thread since the check above: the file
            // stays created, the guest gets no node for it.
            inodes_.forget(n->nodeid, 1);
            return -ENFILE;
        }
    }  // else: handle 0, the node's own fd serves I/O (no RELEASE will come)
    fill_entry(*n, st, e);
    set_open_flags(false, r);
    return 0;
}

int Passthrough::io_fd(uint64_t node, uint64_t fh, bool write, IoFd& out) {
    if (fh != 0) {
        out.handle = handles_.get(fh, HandleKind::File);
        if (!out.handle) return -EBADF;
        out.fd = out.handle->fd.get();
        return 0;
    }
    if (!opts_.no_open) return -EBADF;
    auto n = inodes_.get(node);
    if (!n) return -ESTALE;
    if (!S_ISREG(n->type)) return -EBADF;
    // A fresh fd per request, not one kept per node: kept fds would double
    // the server's fds per known file (EMFILE at 10,000 files under a
    // 20,000 limit). Reopening through /proc costs a few microseconds.
    // Write-only for writes: a file the server may write but not read (a
    // rootless server, a file of an unmapped owner) still takes them.
    out.own.reset(::openat(proc_fd_.get(), fd_name(n->fd.get()),
                           (write ? O_WRONLY : O_RDONLY) | O_CLOEXEC | O_NONBLOCK));
    if (!out.own) return -errno;
    out.fd = out.own.get();
    return 0;
}

ssize_t Passthrough::read(const Context&, uint64_t node, uint64_t fh, off_t off,
                          const struct iovec* dst, int cnt) {
    IoFd f;
    if (int r = io_fd(node, fh, false, f); r < 0) return r;
    ssize_t n = ::preadv(f.fd, dst, cnt, off);
    if (n >= 0) return n;
    // A handle the host let the server open write-only (writeback, see
    // open_node): the kernel's page fill is refused as the host refused
    // reading, not with a bad-descriptor error the guest's writer could
    // not explain.
    return errno == EBADF ? -EACCES : -errno;
}

ssize_t Passthrough::write(const Context&, uint64_t node, uint64_t fh, off_t off,
                           const struct iovec* src, int cnt, bool kill_suidgid) {
    if (opts_.readonly) return -EROFS;
    IoFd f;
    if (int r = io_fd(node, fh, true, f); r < 0) return r;
    if (kill_suidgid) {
        if (int k = kill_suid_sgid(f.fd); k < 0) return k;
    }
    ssize_t n = ::pwritev(f.fd, src, cnt, off);
    return n < 0 ? -errno : n;
}

int Passthrough::flush(const Context&, uint64_t, uint64_t fh) {
    // Writes go straight to the host file, so there is nothing to flush;
    // locks are the kernel's local ones (see docs/filesystem.md). Handle 0
    // (no-open mode): ENOSYS tells the kernel to stop sending FLUSH.
    if (fh == 0) return opts_.no_open ? -ENOSYS : -EBADF;
    return handles_.get(fh, HandleKind::File) ? 0 : -EBADF;
}

int Passthrough::release(const Context&, uint64_t, uint64_t fh) {
    if (fh == 0) return opts_.no_open ? 0 : -EBADF;
    return handles_.remove(fh, HandleKind::File) ? 0 : -EBADF;
}

int Passthrough::fsync(const Context&, uint64_t node, uint64_t fh, bool datasync) {
    IoFd f;
    if (int r = io_fd(node, fh, false, f); r < 0) return r;
    int r = datasync ? ::fdatasync(f.fd) : ::fsync(f.fd);
    return r < 0 ? -errno : 0;
}

int Passthrough::opendir(const Context&, uint64_t node, int, OpenResult& r) {
    auto n = inodes_.get(node);
    if (!n) return -ESTALE;
    if (!S_ISDIR(n->type)) return -ENOTDIR;
    if (handles_.full()) return -ENFILE;
    UniqueFd fd(::openat(proc_fd_.get(), fd_name(n->fd.get()),
                         O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd) return -errno;
    auto h = std::make_shared<Handle>();
    h->fd = std::move(fd);
    h->kind = HandleKind::Dir;
    h->dir = std::make_unique<DirStream>(dir_buffers_);
    r = OpenResult{};
    r.fh = handles_.insert(std::move(h));
    if (r.fh == 0) return -ENFILE;
    set_open_flags(true, r);
    return 0;
}

int Passthrough::readdir(const Context&, uint64_t node, uint64_t fh, uint64_t off, bool plus,
                         DirSink& sink) {
    auto h = handles_.get(fh, HandleKind::Dir);
    if (!h) return -EBADF;
    std::shared_ptr<Inode> dir;
    if (plus) {
        dir = inodes_.get(node);
        if (!dir) return -ESTALE;
    }
    DirStream& ds = *h->dir;
    std::lock_guard lk(ds.mu);
    // Offset 0 always restarts the host stream, so a rewinddir sees every
    // change made before it; any other offset is a getdents64 d_off cookie.
    if (off == 0 || off != ds.next_off || ds.need_seek) {
        if (::lseek(h->fd.get(), static_cast<off_t>(off), SEEK_SET) < 0) return -errno;
        ds.len = ds.pos = 0;
        ds.next_off = off;
        ds.eof = false;
        ds.need_seek = false;
    }
    // Records still pending are in the handle's buffer; new ones are read
    // into a buffer from the pool, or, with the pool's budget spent, into
    // this thread's scratch buffer, whose leftovers are dropped at the end
    // (the next READDIR seeks back to the cookie instead).
    char* buf = ds.buf;
    if (!buf) {
        buf = dir_buffers_.acquire();
        if (buf) ds.buf = buf;
        else buf = thread_dir_scratch();
    }
    int rc = fill_dir(ds, h->fd.get(), buf, dir.get(), plus, sink);
    if (ds.pos < ds.len) {
        if (buf != ds.buf) {
            ds.len = ds.pos = 0;
            ds.need_seek = true;
        }
    } else {
        // Nothing pending: an idle open directory holds no buffer.
        ds.len = ds.pos = 0;
        if (ds.buf) {
            dir_buffers_.release(ds.buf);
            ds.buf = nullptr;
        }
    }
    return rc;
}

int Passthrough::fill_dir(DirStream& ds, int fd, char* buf, const Inode* dir, bool plus,
                          DirSink& sink) {
    int emitted = 0;
    for (;;) {
        if (ds.pos >= ds.len) {
            if (ds.eof) break;
            long n = ::syscall(SYS_getdents64, fd, buf, kDirBufSize);
            if (n < 0) {
                int e = errno;
                return emitted ? 0 : -e;
            }
            if (n == 0) {
                ds.eof = true;
                break;
            }
            ds.len = static_cast<size_t>(n);
            ds.pos = 0;
        }
        auto* d = reinterpret_cast<linux_dirent64*>(buf + ds.pos);
        std::string_view name(d->d_name);
        if (!sink.fits(name.size())) break;
        if (plus) {
            Entry e;
            if (is_dot(name) || is_dotdot(name)) {
                // The kernel ignores attributes of . and ..; counting a lookup
                // on them would leak it.
                e.attr.st_ino = d->d_ino;
                e.attr.st_mode = static_cast<mode_t>(d->d_type) << 12;
            } else {
                int r = do_lookup(*dir, name, e);
                if (r == -ENOENT) {  // removed since getdents64: skip it
                    ds.pos += d->d_reclen;
                    ds.next_off = static_cast<uint64_t>(d->d_off);
                    continue;
                }
                if (r < 0) {
                    if (emitted) break;
                    return r;
                }
            }
            sink.add(name, d->d_ino, d->d_type, static_cast<uint64_t>(d->d_off), &e);
        } else {
            sink.add(name, d->d_ino, d->d_type, static_cast<uint64_t>(d->d_off), nullptr);
        }
        ++emitted;
        ds.pos += d->d_reclen;
        ds.next_off = static_cast<uint64_t>(d->d_off);
    }
    return 0;
}

int Passthrough::releasedir(const Context&, uint64_t, uint64_t fh) {
    return handles_.remove(fh, HandleKind::Dir) ? 0 : -EBADF;
}

int Passthrough::fsyncdir(const Context&, uint64_t, uint64_t fh, bool datasync) {
    auto h = handles_.get(fh, HandleKind::Dir);
    if (!h) return -EBADF;
    int r = datasync ? ::fdatasync(h->fd.get()) : ::fsync(h->fd.get());
    return r < 0 ? -errno : 0;
}

int Passthrough::statfs(const Context&, uint64_t node, struct statvfs& out) {
    auto n = inodes_.get(node);
    if (!n) return -ESTALE;
    if (::fstatvfs(n->fd.get(), &out) < 0) return -errno;
    return 0;
}

int Passthrough::access(const Context& ctx, uint64_t node, int mask) {
    auto n = inodes_.get(node);
    if (!n) return -ESTALE;
    struct statx x;
    if (int r = statx_at(n->fd.get(), "", AT_EMPTY_PATH, x); r < 0) return r;
    if (mask == F_OK) return 0;
    if (opts_.readonly && (mask & W_OK) && !S_ISLNK(x.stx_mode)) return -EROFS;
    mode_t m = x.stx_mode;
    if (ctx.uid == 0) {
        // root may do anything but execute a file no one may execute
        if ((mask & X_OK) && !S_ISDIR(m) && !(m & (S_IXUSR | S_IXGRP | S_IXOTH))) return -EACCES;
        return 0;
    }
    mode_t bits = ctx.uid == x.stx_uid ? (m >> 6) : ctx.gid == x.stx_gid ? (m >> 3) : m;
    if ((mask & R_OK) && !(bits & 4)) return -EACCES;
    if ((mask & W_OK) && !(bits & 2)) return -EACCES;
    if ((mask & X_OK) && !(bits & 1)) return -EACCES;
    return 0;
}

int Passthrough::host_xattr_name(std::string_view guest, bool write, char* buf, size_t cap,
                                 const char*& out) const {
    out = cstr(guest);
    switch (opts_.xattr_policy) {
        case XattrPolicy::Passthrough:
            return 0;
        case XattrPolicy::Refuse:
            if (privileged_xattr(guest)) return write ? -EPERM : -ENODATA;
            return 0;
        case XattrPolicy::Remap:
            // The guest must not reach the host copies by their stored names,
            // or it could forge what its security.* reads back.
            if (starts_with(guest, kRemapPrefix)) return write ? -EPERM : -ENODATA;
            if (!privileged_xattr(guest)) return 0;
            if (kRemapPrefix.size() + guest.size() + 1 > cap) return -ERANGE;
            std::memcpy(buf, kRemapPrefix.data(), kRemapPrefix.size());
            std::memcpy(buf + kRemapPrefix.size(), guest.data(), guest.size());
            buf[kRemapPrefix.size() + guest.size()] = '\0';
            out = buf;
            return 0;
    }
    return -EINVAL;
}

// Room for "user.ocivm." and the longest name the host accepts.
constexpr size_t kHostXattrName = kRemapPrefix.size() + XATTR_NAME_MAX + 1;

int Passthrough::setxattr(const Context&, uint64_t node, std::string_view name,
                          const void* value, size_t size, int flags) {
    if (!opts_.xattr) return -EOPNOTSUPP;
    if (opts_.readonly) return -EROFS;
    auto n = inodes_.get(node);
    if (!n) return -ESTALE;
    if (S_ISLNK(n->type)) return -EPERM;
    char buf[kHostXattrName];
    const char* host;
    if (int r = host_xattr_name(name, true, buf, sizeof buf, host); r < 0) return r;
    if (::setxattr(proc_path(n->fd.get()), host, value, size, flags) < 0) return -errno;
    return 0;
}

ssize_t Passthrough::getxattr(const Context&, uint64_t node, std::string_view name, void* buf,
                              size_t size) {
    if (!opts_.xattr) return -EOPNOTSUPP;
    auto n = inodes_.get(node);
    if (!n) return -ESTALE;
    if (S_ISLNK(n->type)) return -ENODATA;
    char nbuf[kHostXattrName];
    const char* host;
    if (int r = host_xattr_name(name, false, nbuf, sizeof nbuf, host); r < 0) return r;
    ssize_t r = ::getxattr(proc_path(n->fd.get()), host, buf, size);
    return r < 0 ? -errno : r;
}

// The host's list, filtered and renamed by the xattr policy. Names only
// get shorter or vanish, so a host list that fits XATTR_LIST_MAX does too.
ssize_t Passthrough::list_mapped_xattrs(const char* path, char* buf, size_t size) const {
    thread_local std::unique_ptr<char[]> host_list;
    if (!host_list) host_list = std::make_unique<char[]>(XATTR_LIST_MAX);
    ssize_t n = ::listxattr(path, host_list.get(), XATTR_LIST_MAX);
    if (n < 0) return -errno;
    size_t out = 0;
    for (size_t pos = 0; pos < static_cast<size_t>(n);) {
        std::string_view name(host_list.get() + pos, strnlen(host_list.get() + pos, static_cast<size_t>(n) - pos));
        pos += name.size() + 1;
        std::string_view shown = name;
        if (opts_.xattr_policy == XattrPolicy::Remap) {
            if (starts_with(name, kRemapPrefix)) {
                shown = name.substr(kRemapPrefix.size());
                if (!privileged_xattr(shown)) continue;  // ours, not the guest's
            } else if (privileged_xattr(name)) {
                continue;  // the host's own, not what the guest set
            }
        } else if (privileged_xattr(name)) {
            continue;
        }
        if (size) {
            if (out + shown.size() + 1 > size) return -ERANGE;
            std::memcpy(buf + out, shown.data(), shown.size());
            buf[out + shown.size()] = '\0';
        }
        out += shown.size() + 1;
    }
    return static_cast<ssize_t>(out);
}

ssize_t Passthrough::listxattr(const Context&, uint64_t node, char* buf, size_t size) {
    if (!opts_.xattr) return -EOPNOTSUPP;
    auto n = inodes_.get(node);
    if (!n) return -ESTALE;
    if (S_ISLNK(n->type)) return 0;
    if (opts_.xattr_policy != XattrPolicy::Passthrough)
        return list_mapped_xattrs(proc_path(n->fd.get()), buf, size);
    ssize_t r = ::listxattr(proc_path(n->fd.get()), buf, size);
    return r < 0 ? -errno : r;
}

int Passthrough::removexattr(const Context&, uint64_t node, std::string_view name) {
    if (!opts_.xattr) return -EOPNOTSUPP;
    if (opts_.readonly) return -EROFS;
    auto n = inodes_.get(node);
    if (!n) return -ESTALE;
    if (S_ISLNK(n->type)) return -EPERM;
    char buf[kHostXattrName];
    const char* host;
    if (int r = host_xattr_name(name, true, buf, sizeof buf, host); r < 0) return r;
    if (::removexattr(proc_path(n->fd.get()), host) < 0) return -errno;
    return 0;
}

int Passthrough::fallocate(const Context&, uint64_t node, uint64_t fh, int mode, off_t off,
                           off_t len) {
    if (opts_.readonly) return -EROFS;
    IoFd f;
    if (int r = io_fd(node, fh, true, f); r < 0) return r;
    if (::fallocate(f.fd, mode, off, len) < 0) return -errno;
    return 0;
}

off_t Passthrough::lseek(const Context&, uint64_t node, uint64_t fh, off_t off, int whence) {
    // The kernel sends SEEK_DATA and SEEK_HOLE without writing its dirty
    // pages back first: under the writeback cache the host file can still
    // have a hole where the guest has data, and `cp --sparse` would skip
    // it. ENOSYS makes the kernel answer them itself from its own size
    // (all data, no holes) for the rest of the session.
    if (opts_.writeback) return -ENOSYS;
    IoFd f;
    if (int r = io_fd(node, fh, false, f); r < 0) return r;
    off_t r = ::lseek(f.fd, off, whence);
    return r < 0 ? -errno : r;
}

ssize_t Passthrough::copy_file_range(const Context&, uint64_t node_in, uint64_t fh_in,
                                     off_t off_in, uint64_t node_out, uint64_t fh_out,
                                     off_t off_out, size_t len, unsigned flags) {
    if (opts_.readonly) return -EROFS;
    IoFd in, out;
    if (int r = io_fd(node_in, fh_in, false, in); r < 0) return r;
    if (int r = io_fd(node_out, fh_out, true, out); r < 0) return r;
    loff_t oi = off_in, oo = off_out;
    ssize_t r = ::copy_file_range(in.fd, &oi, out.fd, &oo, len, flags);
    return r < 0 ? -errno : r;
}

int Passthrough::syncfs(const Context&) {
    UniqueFd fd(::openat(proc_fd_.get(), fd_name(root_fd_.get()),
                         O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd) return -errno;
    return ::syncfs(fd.get()) < 0 ? -errno : 0;
}

void Passthrough::destroy() {
    handles_.clear();
    inodes_.clear();
}

}  // namespace ocivm::fs
