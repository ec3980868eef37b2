#include "image/unpack.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "image/gunzip.h"
#include "util/error.h"
#include "util/hash.h"
#include "util/log.h"
#include "util/open_beneath.h"
#include "util/printable.h"
#include "util/unique_fd.h"

namespace ocivm::image {

namespace {

// libarchive's message for its last error; it has none for some (a
// truncated pax header), and a std::string from NULL throws logic_error.
std::string archive_message(archive* a) {
    const char* m = archive_error_string(a);
    return m ? m : "damaged archive data (libarchive gives no reason)";
}

constexpr const char* kOpaque = ".wh..wh..opq";
constexpr const char* kWhiteoutPrefix = ".wh.";

std::string join(const std::vector<std::string>& c, size_t n) {
    std::string out;
    for (size_t i = 0; i < n && i < c.size(); ++i) out += (i ? "/" : "") + c[i];
    return out;
}

std::vector<std::string> split(const std::string& path) {
    std::vector<std::string> c;
    std::string why;
    if (!safe_relative_path(path, c, &why)) throw Error("bad path in the layer records: " + printable(path));
    return c;
}

// A directory beneath root, no symlink followed on the way.
int open_dir_beneath(int root, const std::string& rel) {
    return openat2_fd(root, rel, O_PATH | O_DIRECTORY | O_NOFOLLOW, kResolveNoSymlinks);
}

std::vector<std::string> list_names(int dirfd, const std::string& what) {
    int fd = ::openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw_errno("reading directory " + what, errno);
    DIR* d = ::fdopendir(fd);
    if (!d) {
        int e = errno;
        ::close(fd);
        throw_errno("reading directory " + what, e);
    }
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d))
        if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, "..")) names.push_back(e->d_name);
    ::closedir(d);
    return names;
}

// Removes name (a whole tree if a directory) from dirfd, never following.
void remove_tree_at(int dirfd, const std::string& name) {
    struct stat st;
    if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT) return;
        throw_errno("removing " + printable(name), errno);
    }
    if (S_ISDIR(st.st_mode)) {
        UniqueFd d(::openat(dirfd, name.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!d) throw_errno("removing directory " + printable(name), errno);
        for (auto& n : list_names(d.get(), name)) remove_tree_at(d.get(), n);
        if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) < 0) throw_errno("removing directory " + printable(name), errno);
    } else if (::unlinkat(dirfd, name.c_str(), 0) < 0) {
        throw_errno("removing " + printable(name), errno);
    }
}

void clear_dir(int dirfd, const std::string& what) {
    for (auto& n : list_names(dirfd, what)) remove_tree_at(dirfd, n);
}

// Owner, mode (not for symlinks), xattrs and times of name in dirfd.
struct Meta {
    uid_t uid = 0;
    gid_t gid = 0;
    mode_t mode = 0;  // type bits included
    dev_t rdev = 0;
    timespec mtime{}, atime{};
    std::vector<std::pair<std::string, std::string>> xattrs;
};

constexpr const char* kOverrideXattr = "user.containers.override_stat";

// containers/storage's "uid:gid:0mode:type" for what a rootless import
// cannot apply itself.
std::string override_value(const Meta& m) {
    std::string type = S_ISDIR(m.mode) ? "dir" : S_ISLNK(m.mode) ? "symlink" : S_ISFIFO(m.mode) ? "pipe"
                     : S_ISSOCK(m.mode) ? "socket" : "file";
    if (S_ISCHR(m.mode) || S_ISBLK(m.mode))
        type = std::string(S_ISCHR(m.mode) ? "char-" : "block-") + std::to_string(major(m.rdev)) + "-" +
               std::to_string(minor(m.rdev));
    char buf[96];
    std::snprintf(buf, sizeof buf, "%u:%u:%04o:%s", m.uid, m.gid, m.mode & 07777, type.c_str());
    return buf;
}

// Applies m to name in dirfd, or to dirfd itself when name is empty. Never
// follows name, never opens it (it may be a device node or a fifo): the
// xattr calls go through our own fd's /proc link plus name with the l-
// variants. placeholder: name is an empty regular file standing in for a
// device a rootless import could not create.
void apply_meta(int dirfd, const std::string& name, const Meta& m, const std::string& what, bool placeholder = false) {
    const char* n = name.c_str();
    int flags = name.empty() ? AT_EMPTY_PATH : AT_SYMLINK_NOFOLLOW;
    bool link = S_ISLNK(m.mode);
    std::string self = "/proc/self/fd/" + std::to_string(dirfd);
    std::string p = name.empty() ? self : self + "/" + name;
    // Without root, what cannot be applied (a foreign owner, a device that
    // had to become a regular file) goes into the override xattr.
    // A user's importer runs in a user namespace that maps its own ids
    // only: there an id it may not chown to is not even mapped (EINVAL).
    bool chowned = ::fchownat(dirfd, n, m.uid, m.gid, flags) == 0;
    if (!chowned && errno != EPERM && !(errno == EINVAL && ::geteuid() != 0)) throw_errno("chown of " + what, errno);
    bool has_override = false;
    for (auto& [k, v] : m.xattrs) has_override |= k == kOverrideXattr;
    // With no name, p is our fd's /proc magic link: follow it (the l-calls
    // would act on the link itself).
    auto set_x = [&](const char* k, const std::string& v) {
        return name.empty() ? ::setxattr(p.c_str(), k, v.data(), v.size(), 0)
                            : ::lsetxattr(p.c_str(), k, v.data(), v.size(), 0);
    };
    if ((!chowned || placeholder) && !has_override && !link) {
        std::string v = override_value(m);
        // The kernel takes user.* xattrs on files and directories only: a
        // fifo or socket of a foreign owner keeps the importing user's
        // (a guest opens it the same; only ls -l tells).
        bool special = S_ISFIFO(m.mode) || S_ISSOCK(m.mode);
        if (set_x(kOverrideXattr, v) < 0) {
            if (!(special && errno == EPERM))
                throw_errno("xattr " + std::string(kOverrideXattr) + " of " + what, errno);
            spdlog::debug("{}: owner {}:{} not recorded (no user.* xattrs on a {})", what, m.uid, m.gid,
                          S_ISFIFO(m.mode) ? "fifo" : "socket");
        }
    }
    if (!link) {
        mode_t mode = (placeholder ? 0600 : m.mode) & 07777;
        int r = name.empty() ? ::chmod(self.c_str(), mode) : ::fchmodat(dirfd, n, mode, AT_SYMLINK_NOFOLLOW);
        if (r < 0) throw_errno("chmod of " + what, errno);
    }
    // xattrs after chown: chown clears security.capability. Without root,
    // trusted.* and security.* cannot be set: they are left out, said once.
    // With root neither can they: the importer runs without CAP_SYS_ADMIN
    // (sandbox::confine_tool), so an image's trusted.overlay.* or
    // security.selinux never become the host's; security.capability
    // (CAP_SETFCAP, kept) is applied.
    for (auto& [k, v] : m.xattrs) {
        if (set_x(k.c_str(), v) == 0) continue;
        bool privileged = k.rfind("trusted.", 0) == 0 || (k.rfind("security.", 0) == 0 && k != "security.capability");
        if ((link && errno == EPERM) || ((!chowned || privileged) && (errno == EPERM || errno == EACCES))) continue;
        throw_errno("xattr " + printable(k) + " of " + what, errno);
    }
    timespec ts[2] = {m.atime, m.mtime};
    if (name.empty()) ::utimensat(AT_FDCWD, self.c_str(), ts, 0);
    else ::utimensat(dirfd, n, ts, AT_SYMLINK_NOFOLLOW);
}

Meta meta_of(archive_entry* e) {
    Meta m;
    m.uid = static_cast<uid_t>(archive_entry_uid(e));
    m.gid = static_cast<gid_t>(archive_entry_gid(e));
    m.mode = archive_entry_mode(e);
    m.rdev = archive_entry_rdev(e);
    m.mtime = {archive_entry_mtime(e), archive_entry_mtime_nsec(e)};
    m.atime = archive_entry_atime_is_set(e) ? timespec{archive_entry_atime(e), archive_entry_atime_nsec(e)} : m.mtime;
    const char* name;
    const void* value;
    size_t size;
    archive_entry_xattr_reset(e);
    while (archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK)
        m.xattrs.emplace_back(name, std::string(static_cast<const char*>(value), size));
    return m;
}

// Feeds the tar reader with the raw reader's decompressed bytes, hashing
// them on the way: the diff_id is checked without a second pass. A thread
// of its own decompresses and hashes while the caller writes files, through
// a few 1 MiB chunks (decompression is the longest step of an import).
class HashingSource {
public:
    // READ fills a buffer with decompressed bytes: its count, 0 at the end,
    // -1 with *error set on failure.
    using Reader = std::function<la_ssize_t(char*, size_t, std::string* error)>;
    explicit HashingSource(Reader read) : read_(std::move(read)) {
        for (int i = 0; i < 6; ++i) free_.push_back(std::make_unique<Chunk>());
        thread_ = std::thread([this] { produce(); });
    }
    ~HashingSource() {
        {
            std::lock_guard lk(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }
    HashingSource(const HashingSource&) = delete;
    HashingSource& operator=(const HashingSource&) = delete;

    static la_ssize_t read(archive*, void* ctx, const void** out) { return static_cast<HashingSource*>(ctx)->next(out); }
    la_ssize_t next(const void** out) {
        std::unique_lock lk(mu_);
        if (current_) free_.push_back(std::move(current_));  // the reader is done with it
        cv_.notify_all();
        cv_.wait(lk, [this] { return !full_.empty() || done_; });
        if (full_.empty()) return error_.empty() ? 0 : -1;
        current_ = std::move(full_.front());
        full_.pop_front();
        cv_.notify_all();
        *out = current_->data.data();
        return static_cast<la_ssize_t>(current_->size);
    }
    // After the reader is done: the remaining bytes (tar padding) count too.
    void drain() {
        const void* out;
        while (next(&out) > 0) {
        }
    }
    std::string digest() {
        std::lock_guard lk(mu_);
        return "sha256:" + sha_.hex();
    }
    uint64_t bytes() const { return bytes_.load(); }
    std::string error() {
        std::lock_guard lk(mu_);
        return error_;
    }

private:
    struct Chunk {
        std::vector<char> data = std::vector<char>(1 << 20);
        size_t size = 0;
    };
    void produce() {
        while (true) {
            std::unique_ptr<Chunk> c;
            {
                std::unique_lock lk(mu_);
                cv_.wait(lk, [this] { return !free_.empty() || stop_; });
                if (stop_) break;
                c = std::move(free_.back());
                free_.pop_back();
            }
            std::string err;
            la_ssize_t n = read_(c->data.data(), c->data.size(), &err);
            std::lock_guard lk(mu_);
            if (n < 0) error_ = err.empty() ? "decompression failed" : err;
            if (n <= 0) {
                done_ = true;
                cv_.notify_all();
                break;
            }
            sha_.update(c->data.data(), static_cast<size_t>(n));
            bytes_ += static_cast<uint64_t>(n);
            c->size = static_cast<size_t>(n);
            full_.push_back(std::move(c));
            cv_.notify_all();
        }
    }
    Reader read_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::unique_ptr<Chunk>> full_;
    std::vector<std::unique_ptr<Chunk>> free_;
    std::unique_ptr<Chunk> current_;
    Sha256 sha_;
    std::atomic<uint64_t> bytes_{0};
    std::string error_;
    bool done_ = false, stop_ = false;
    std::thread thread_;
};

struct ArchiveFree {
    void operator()(archive* a) const { archive_read_free(a); }
};

void write_data(archive* a, int fd, const std::string& what) {
    const void* buf;
    size_t size;
    la_int64_t off;
    int r;
    while ((r = archive_read_data_block(a, &buf, &size, &off)) == ARCHIVE_OK) {
        const char* p = static_cast<const char*>(buf);
        while (size > 0) {
            ssize_t w = ::pwrite(fd, p, size, off);
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) throw_errno("writing " + what, errno);
            p += w;
            size -= static_cast<size_t>(w);
            off += w;
        }
    }
    if (r != ARCHIVE_EOF) throw Error("layer entry " + what + ": " + archive_message(a));
}

// A layer blob's decompressed bytes: gzip (most layers) through ISA-L;
// zstd, xz, bzip2 and plain tar through libarchive's built-in filters
// (never its external-program ones).
class LayerStream {
public:
    explicit LayerStream(const std::string& blob) {
        if (is_gzip_file(blob)) {
            gz_ = std::make_unique<Gunzip>(blob);
            return;
        }
        raw_.reset(archive_read_new());
        archive_read_support_filter_zstd(raw_.get());
        archive_read_support_filter_xz(raw_.get());
        archive_read_support_filter_bzip2(raw_.get());
        archive_read_support_format_raw(raw_.get());
        if (archive_read_open_filename(raw_.get(), blob.c_str(), 1 << 20) != ARCHIVE_OK)
            throw Error("cannot read layer " + blob + ": " + archive_message(raw_.get()));
        archive_entry* re;
        if (archive_read_next_header(raw_.get(), &re) != ARCHIVE_OK)
            throw Error("layer " + blob + " is not a tar, gzip, zstd, xz or bzip2 stream: " + archive_message(raw_.get()));
    }
    // Fills buf: the byte count, 0 at the end, -1 with *error set.
    HashingSource::Reader reader() {
        if (gz_)
            return [g = gz_.get()](char* buf, size_t size, std::string* error) -> la_ssize_t {
                try {
                    return static_cast<la_ssize_t>(g->read(buf, size));
                } catch (const Error& e) {
                    *error = e.what();
                    return -1;
                }
            };
        return [a = raw_.get()](char* buf, size_t size, std::string* error) -> la_ssize_t {
            la_ssize_t n = archive_read_data(a, buf, size);
            if (n < 0 && archive_error_string(a)) *error = archive_error_string(a);
            return n;
        };
    }

private:
    std::unique_ptr<archive, ArchiveFree> raw_;
    std::unique_ptr<Gunzip> gz_;
};

bool is_whiteout(const std::string& name) { return name.rfind(kWhiteoutPrefix, 0) == 0; }

const std::string& key_of(const std::string& k) { return k; }
template <class V>
const std::string& key_of(const std::pair<const std::string, V>& kv) {
    return kv.first;
}

// Erases key and every key below it ("key/...") from a sorted map or set.
template <class C>
void erase_tree(C& c, const std::string& key) {
    c.erase(key);
    std::string prefix = key + "/";
    for (auto it = c.lower_bound(prefix); it != c.end() && key_of(*it).compare(0, prefix.size(), prefix) == 0;)
        it = c.erase(it);
}

// One layer being unpacked into the directory `root`.
class Unpacker {
public:
    Unpacker(int root, std::string blob, const UnpackLimits& limits) : root_(root), blob_(std::move(blob)), limits_(limits) {}

    void entry(archive* tar, archive_entry* e);
    // Directory metadata, now that nothing is added below them any more.
    void finish();
    LayerRecords records() const;

private:
    [[noreturn]] void unsafe(const std::string& why) const { throw Error("layer " + blob_ + " is unsafe: " + why); }
    void charge(uint64_t bytes);
    UniqueFd parent_of(const std::vector<std::string>& comps, const std::string& path, bool create);
    void remove_existing(int parent, const std::string& name, const std::string& rel, const struct stat& st);
    void hard_link(archive_entry* e, const std::vector<std::string>& comps, int parent, bool exists,
                   const struct stat& existing);

    int root_;
    std::string blob_;
    UnpackLimits limits_;
    uint64_t entries_ = 0, record_bytes_ = 0;
    std::map<std::string, Meta> dirs_;  // applied deepest first (reverse order) at the end
    bool have_root_meta_ = false;
    Meta root_meta_;
    std::set<std::string> implicit_;
    std::map<std::string, std::string> links_;
    std::vector<std::string> whiteouts_;
    std::set<std::string> opaque_;
};

void Unpacker::charge(uint64_t bytes) {
    record_bytes_ += bytes;
    if (record_bytes_ > limits_.max_record_bytes)
        throw Error("layer " + blob_ + " needs more than " +
                    (limits_.max_record_bytes >= (1u << 20) ? std::to_string(limits_.max_record_bytes >> 20) + " MiB"
                                                            : std::to_string(limits_.max_record_bytes) + " bytes") +
                    " of bookkeeping (directories, whiteouts, hard links), ocivm's limit for one layer");
}

// The directory that holds comps' last element, opened beneath the layer
// root without following any symlink. Missing directories are created
// (0755, root-owned until an entry of their own comes) when `create`, and
// remembered as implied; -1 with errno ENOENT when one is missing and not
// `create`. A symlink or a non-directory on the way fails the import: a
// layer's own symlinks are never followed.
UniqueFd Unpacker::parent_of(const std::vector<std::string>& comps, const std::string& path, bool create) {
    size_t n = comps.size() - 1;
    UniqueFd fd(open_dir_beneath(root_, join(comps, n)));
    if (fd) return fd;
    if (errno == ENOENT) {
        UniqueFd cur(open_dir_beneath(root_, ""));
        if (!cur) throw_errno("layer directory", errno);
        for (size_t i = 0; i < n; ++i) {
            UniqueFd next(::openat(cur.get(), comps[i].c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
            if (!next && errno == ENOENT) {
                if (!create) return UniqueFd();
                std::string rel = join(comps, i + 1);
                if (::mkdirat(cur.get(), comps[i].c_str(), 0755) < 0)
                    throw_errno("layer entry " + printable(path) + ": creating its directory " + printable(rel), errno);
                ::fchmodat(cur.get(), comps[i].c_str(), 0755, AT_SYMLINK_NOFOLLOW);  // whatever the umask
                charge(rel.size());
                implicit_.insert(rel);
                links_.erase(rel);  // a hard link recorded there is replaced by this directory
                next = UniqueFd(::openat(cur.get(), comps[i].c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
            }
            if (!next) {
                if (errno == ELOOP || errno == ENOTDIR)
                    unsafe("entry '" + printable(path) + "' lies below '" + printable(join(comps, i + 1)) +
                           "', which is not a directory in the layer (a symlink is never followed)");
                throw_errno("layer entry " + printable(path) + ": its directory " + printable(join(comps, i + 1)), errno);
            }
            cur = std::move(next);
        }
        return cur;
    }
    if (errno == ELOOP || errno == ENOTDIR || errno == EXDEV)
        unsafe("entry '" + printable(path) + "' lies below a symlink or a file in the layer (a symlink is never followed)");
    throw_errno("layer entry " + printable(path) + ": its directory", errno);
}

// Removes what a later entry replaces, with everything recorded about it.
void Unpacker::remove_existing(int parent, const std::string& name, const std::string& rel, const struct stat& st) {
    remove_tree_at(parent, name);
    links_.erase(rel);
    if (S_ISDIR(st.st_mode)) {
        erase_tree(dirs_, rel);
        erase_tree(implicit_, rel);
        erase_tree(links_, rel);
    }
}

void Unpacker::hard_link(archive_entry* e, const std::vector<std::string>& comps, int parent, bool exists,
                         const struct stat& existing) {
    std::string path = join(comps, comps.size());
    const std::string& name = comps.back();
    const char* hl = archive_entry_hardlink(e);
    std::vector<std::string> tcomps;
    std::string why;
    if (!safe_relative_path(hl, tcomps, &why) || tcomps.empty())
        unsafe("hard link '" + printable(path) + "' to '" + printable(hl) + "' has " + (why.empty() ? "no target" : why));
    if (tcomps.size() > limits_.max_depth)
        unsafe("hard link '" + printable(path) + "' has a target deeper than " + std::to_string(limits_.max_depth) +
               " directories");
    std::string target = join(tcomps, tcomps.size());
    if (target == path) {
        if (exists) return;  // a link to itself: already there
        unsafe("hard link '" + printable(path) + "' names itself");
    }
    UniqueFd tparent = parent_of(tcomps, target, false);
    struct stat tst;
    bool here = tparent && ::fstatat(tparent.get(), tcomps.back().c_str(), &tst, AT_SYMLINK_NOFOLLOW) == 0;
    if (!here && tparent && errno != ENOENT) throw_errno("layer entry " + printable(path) + ": hard link target", errno);
    if (here && S_ISDIR(tst.st_mode)) unsafe("hard link '" + printable(path) + "' names a directory");
    if (exists) remove_existing(parent, name, path, existing);
    if (!here) {  // its target is in a lower layer: linked at assembly
        charge(path.size() + target.size());
        links_[path] = target;
        return;
    }
    // Single components on both sides, the target itself not followed.
    if (::linkat(tparent.get(), tcomps.back().c_str(), parent, name.c_str(), 0) < 0)
        throw_errno("layer entry " + printable(path) + ": hard link to " + printable(target), errno);
}

void Unpacker::entry(archive* tar, archive_entry* e) {
    if (++entries_ > limits_.max_entries)
        throw Error("layer " + blob_ + " has more than " + std::to_string(limits_.max_entries) +
                    " entries, ocivm's limit for one layer");
    const char* pn = archive_entry_pathname(e);
    std::string raw = pn ? pn : "";
    std::vector<std::string> comps;
    std::string why;
    if (raw.size() >= PATH_MAX) unsafe("an entry's path is " + std::to_string(raw.size()) + " bytes long (PATH_MAX is " +
                                       std::to_string(PATH_MAX) + ")");
    if (!safe_relative_path(raw, comps, &why)) unsafe("entry '" + printable(raw) + "' has " + why);
    if (comps.size() > limits_.max_depth)
        unsafe("entry '" + printable(raw) + "' is deeper than " + std::to_string(limits_.max_depth) +
               " directories, ocivm's limit");
    Meta m = meta_of(e);
    if (comps.empty()) {  // the layer's root directory itself
        if (S_ISDIR(m.mode) && !archive_entry_hardlink(e)) {
            root_meta_ = m;
            have_root_meta_ = true;
        }
        return;
    }
    const std::string& name = comps.back();
    std::string path = join(comps, comps.size());
    if (is_whiteout(name)) {
        // A marker whatever its type: recorded, nothing written.
        std::string dir = join(comps, comps.size() - 1);
        if (name == kOpaque) {
            // The directory exists in this layer (with only what this layer puts there).
            if (!dir.empty()) {
                std::vector<std::string> dcomps(comps.begin(), comps.end() - 1);
                UniqueFd parent = parent_of(dcomps, dir, true);
                struct stat st;
                if (::fstatat(parent.get(), dcomps.back().c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) {
                    if (::mkdirat(parent.get(), dcomps.back().c_str(), 0755) < 0) throw_errno("layer entry " + printable(raw), errno);
                    ::fchmodat(parent.get(), dcomps.back().c_str(), 0755, AT_SYMLINK_NOFOLLOW);
                    charge(dir.size());
                    implicit_.insert(dir);
                } else if (!S_ISDIR(st.st_mode)) {
                    unsafe("opaque marker '" + printable(raw) + "' lies below something that is not a directory");
                }
            }
            if (opaque_.insert(dir).second) charge(dir.size());
            return;
        }
        std::string target = name.substr(4);
        if (target.empty() || target == "." || target == ".." || is_whiteout(target))
            unsafe("whiteout '" + printable(raw) + "' names no file");
        // Its directory exists in this layer (as in overlayfs, where a
        // whiteout lives in a directory of the upper layer).
        parent_of(comps, raw, true);
        std::string gone = dir.empty() ? target : dir + "/" + target;
        charge(gone.size());
        whiteouts_.push_back(gone);
        return;
    }
    UniqueFd parent = parent_of(comps, raw, true);
    struct stat existing;
    bool exists = ::fstatat(parent.get(), name.c_str(), &existing, AT_SYMLINK_NOFOLLOW) == 0;
    if (!exists && errno != ENOENT) throw_errno("layer entry " + printable(raw), errno);
    if (archive_entry_hardlink(e)) {
        hard_link(e, comps, parent.get(), exists, existing);
        return;
    }
    unsigned type = archive_entry_filetype(e);
    if (type != AE_IFDIR && type != AE_IFREG && type != AE_IFLNK && type != AE_IFCHR && type != AE_IFBLK &&
        type != AE_IFIFO) {
        // Tar has no other types (sockets cannot be archived); libarchive
        // reads unknown type flags as files, so this is not reached in practice.
        spdlog::debug("layer {}: skipping {} (type {:o})", blob_, printable(raw), type);
        return;
    }
    if (exists && !(type == AE_IFDIR && S_ISDIR(existing.st_mode))) remove_existing(parent.get(), name, path, existing);
    links_.erase(path);
    bool placeholder = false;
    switch (type) {
        case AE_IFDIR:
            if (!exists || !S_ISDIR(existing.st_mode))
                if (::mkdirat(parent.get(), name.c_str(), 0700) < 0) throw_errno("layer entry " + printable(raw), errno);
            {
                uint64_t cost = path.size();
                for (auto& [k, v] : m.xattrs) cost += k.size() + v.size();
                charge(cost);
            }
            dirs_[path] = std::move(m);
            implicit_.erase(path);
            return;
        case AE_IFREG: {
            UniqueFd fd(::openat(parent.get(), name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
            if (!fd) throw_errno("layer entry " + printable(raw), errno);
            write_data(tar, fd.get(), printable(raw));
            if (::ftruncate(fd.get(), archive_entry_size(e)) < 0) throw_errno("layer entry " + printable(raw), errno);
            break;
        }
        case AE_IFLNK: {
            const char* t = archive_entry_symlink(e);
            if (::symlinkat(t ? t : "", parent.get(), name.c_str()) < 0) throw_errno("layer entry " + printable(raw), errno);
            break;
        }
        default:  // devices and fifos: created, never opened
            if (::mknodat(parent.get(), name.c_str(), type | (m.mode & 07777), archive_entry_rdev(e)) < 0) {
                if (errno != EPERM || type == AE_IFIFO) throw_errno("layer entry " + printable(raw) + ": mknod", errno);
                // Rootless: an empty file stands in; the xattr says what it is.
                UniqueFd f(::openat(parent.get(), name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
                if (!f) throw_errno("layer entry " + printable(raw), errno);
                placeholder = true;
            }
            break;
    }
    apply_meta(parent.get(), name, m, printable(raw), placeholder);
}

void Unpacker::finish() {
    // Reverse order puts every directory's descendants before it.
    for (auto it = dirs_.rbegin(); it != dirs_.rend(); ++it) {
        UniqueFd d(open_dir_beneath(root_, it->first));
        if (!d) throw_errno("layer directory " + printable(it->first), errno);
        apply_meta(d.get(), "", it->second, printable(it->first));
    }
    if (have_root_meta_) apply_meta(root_, "", root_meta_, "/");
}

LayerRecords Unpacker::records() const {
    LayerRecords r;
    r.whiteouts = whiteouts_;
    r.opaque.assign(opaque_.begin(), opaque_.end());
    r.implicit.assign(implicit_.begin(), implicit_.end());
    r.links.assign(links_.begin(), links_.end());
    return r;
}

}  // namespace

bool safe_relative_path(const std::string& in, std::vector<std::string>& comps, std::string* why) {
    comps.clear();
    size_t pos = 0;
    while (pos <= in.size()) {
        size_t slash = in.find('/', pos);
        if (slash == std::string::npos) slash = in.size();
        std::string c = in.substr(pos, slash - pos);
        pos = slash + 1;
        if (c.empty() || c == ".") continue;
        if (c == "..") {
            *why = "a \"..\" component";
            return false;
        }
        if (c.size() > NAME_MAX) {
            *why = "a name longer than " + std::to_string(NAME_MAX) + " bytes";
            return false;
        }
        comps.push_back(c);
    }
    return true;
}

void remove_tree(const std::string& path) {
    size_t slash = path.find_last_of('/');
    std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
    UniqueFd d(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!d) {
        if (errno == ENOENT) return;
        throw_errno("removing " + path, errno);
    }
    remove_tree_at(d.get(), name);
}

std::string layer_diff_id(const std::string& blob) {
    LayerStream stream(blob);
    auto read = stream.reader();
    Sha256 h;
    std::vector<char> buf(1 << 20);
    std::string error;
    la_ssize_t n;
    while ((n = read(buf.data(), buf.size(), &error)) > 0) h.update(buf.data(), static_cast<size_t>(n));
    if (n < 0) throw Error("layer " + blob + " is corrupt: " + (error.empty() ? "decompression failed" : error));
    return "sha256:" + h.hex();
}

UnpackStats unpack_layer(const std::string& blob, const std::string& dest, const std::string& diff_id,
                         const std::function<void(uint64_t)>& progress, const UnpackLimits& limits) {
    UnpackStats stats;
    LayerStream stream(blob);
    auto src_ptr = std::make_unique<HashingSource>(stream.reader());
    HashingSource& src = *src_ptr;

    if (::mkdir(dest.c_str(), 0755) < 0) throw_errno("cannot create " + dest, errno);
    try {
        UniqueFd root(::open(dest.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!root) throw_errno("cannot open " + dest, errno);
        std::unique_ptr<archive, ArchiveFree> tar(archive_read_new());
        archive_read_support_format_tar(tar.get());
        archive_read_support_format_gnutar(tar.get());
        if (archive_read_open(tar.get(), &src, nullptr, &HashingSource::read, nullptr) != ARCHIVE_OK)
            throw Error("layer " + blob + (src.error().empty() ? std::string(": ") + archive_message(tar.get())
                                                               : " is corrupt: " + src.error()));
        Unpacker u(root.get(), blob, limits);
        archive_entry* e;
        int r;
        uint64_t last_progress = 0;
        while ((r = archive_read_next_header(tar.get(), &e)) == ARCHIVE_OK) {
            ++stats.entries;
            u.entry(tar.get(), e);
            if (progress && src.bytes() - last_progress > (8u << 20)) {
                last_progress = src.bytes();
                progress(src.bytes());
            }
        }
        if (r != ARCHIVE_EOF)
            throw Error("layer " + blob + " is corrupt: " + (src.error().empty() ? archive_message(tar.get()) : src.error()));
        // The rest of the stream (tar padding) still counts for the digest.
        src.drain();
        if (!src.error().empty()) throw Error("layer " + blob + " is corrupt: " + src.error());
        u.finish();
        stats.records = u.records();
        stats.bytes = src.bytes();
        stats.clean = stats.records.links.empty();
        std::string got = src.digest();
        if (!diff_id.empty() && got != diff_id)
            throw Error("layer " + blob + " does not match its diff_id: expected " + diff_id + ", got " + got);
    } catch (...) {
        try {
            remove_tree(dest);
        } catch (const Error& e) {
            spdlog::warn("cannot remove {} after a failed unpack: {}", dest, e.what());
        }
        throw;
    }
    return stats;
}

namespace {

struct Assembler {
    // (dev, ino) of a layer file with several links -> its first copy's path in root
    std::map<std::pair<dev_t, ino_t>, std::string> copied;
    std::set<std::string> implicit;
    int root = -1;

    Meta meta_at(int dirfd, const std::string& name, const struct stat& st) {
        Meta m;
        m.uid = st.st_uid;
        m.gid = st.st_gid;
        m.mode = st.st_mode;
        m.rdev = st.st_rdev;
        m.mtime = st.st_mtim;
        m.atime = st.st_atim;
        std::string self = "/proc/self/fd/" + std::to_string(dirfd);
        std::string p = name.empty() ? self : self + "/" + name;
        char list[65536];
        bool follow = name.empty();  // p is our fd's magic link: follow it; else never
        ssize_t n = follow ? ::listxattr(p.c_str(), list, sizeof list) : ::llistxattr(p.c_str(), list, sizeof list);
        for (ssize_t i = 0; i < n;) {
            std::string k = list + i;
            i += static_cast<ssize_t>(k.size()) + 1;
            char v[65536];
            ssize_t vn = follow ? ::getxattr(p.c_str(), k.c_str(), v, sizeof v) : ::lgetxattr(p.c_str(), k.c_str(), v, sizeof v);
            if (vn >= 0) m.xattrs.emplace_back(k, std::string(v, static_cast<size_t>(vn)));
        }
        return m;
    }

    void copy_file(int lfd, int rfd, const std::string& name, const std::string& what) {
        UniqueFd in(::openat(lfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC));
        if (!in) throw_errno("reading " + what, errno);
        struct stat st;
        if (::fstat(in.get(), &st) < 0) throw_errno("reading " + what, errno);
        if (!S_ISREG(st.st_mode)) throw Error("layer file " + what + " is no longer a regular file");
        UniqueFd out(::openat(rfd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
        if (!out) throw_errno("creating " + what, errno);
        if (::ioctl(out.get(), FICLONE, in.get()) == 0) return;
        off_t off = 0;
        while (off < st.st_size) {
            off_t data = ::lseek(in.get(), off, SEEK_DATA);
            if (data < 0) break;  // the rest is a hole
            off_t hole = ::lseek(in.get(), data, SEEK_HOLE);
            if (hole < 0) hole = st.st_size;
            loff_t src = data, dst = data;
            while (src < hole) {
                ssize_t c = ::copy_file_range(in.get(), &src, out.get(), &dst, static_cast<size_t>(hole - src), 0);
                if (c < 0 && errno == EINTR) continue;
                if (c <= 0) throw_errno("copying " + what, c < 0 ? errno : EIO);
            }
            off = hole;
        }
        if (::ftruncate(out.get(), st.st_size) < 0) throw_errno("copying " + what, errno);
    }

    // Every name in the layer directory lfd onto the root directory rfd:
    // single components, nothing followed, nothing but regular files opened.
    void apply_dir(int lfd, int rfd, const std::string& rel) {
        for (auto& n : list_names(lfd, rel.empty() ? "/" : rel)) {
            std::string what = rel.empty() ? n : rel + "/" + n;
            struct stat st, ex;
            if (::fstatat(lfd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) throw_errno("layer entry " + printable(what), errno);
            bool exists = ::fstatat(rfd, n.c_str(), &ex, AT_SYMLINK_NOFOLLOW) == 0;
            if (exists && !(S_ISDIR(st.st_mode) && S_ISDIR(ex.st_mode))) remove_tree_at(rfd, n);
            Meta m = meta_at(lfd, n, st);
            if (S_ISDIR(st.st_mode)) {
                if (!exists || !S_ISDIR(ex.st_mode))
                    if (::mkdirat(rfd, n.c_str(), 0700) < 0) throw_errno("creating " + printable(what), errno);
                UniqueFd l(::openat(lfd, n.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
                UniqueFd r(::openat(rfd, n.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
                if (!l || !r) throw_errno("opening " + printable(what), errno);
                apply_dir(l.get(), r.get(), what);
                if (!(exists && S_ISDIR(ex.st_mode) && implicit.count(what))) apply_meta(rfd, n, m, printable(what));
                continue;
            }
            if (S_ISREG(st.st_mode)) {
                auto key = std::make_pair(st.st_dev, st.st_ino);
                auto it = st.st_nlink > 1 ? copied.find(key) : copied.end();
                if (it != copied.end()) {
                    auto tc = split(it->second);
                    UniqueFd tp(open_dir_beneath(root, join(tc, tc.size() - 1)));
                    if (!tp || ::linkat(tp.get(), tc.back().c_str(), rfd, n.c_str(), 0) < 0)
                        throw_errno("hard link " + printable(what) + " to " + printable(it->second), errno);
                    continue;
                }
                copy_file(lfd, rfd, n, printable(what));
                if (st.st_nlink > 1) copied[key] = what;
            } else if (S_ISLNK(st.st_mode)) {
                char t[PATH_MAX + 1];
                ssize_t len = ::readlinkat(lfd, n.c_str(), t, PATH_MAX);
                if (len < 0) throw_errno("reading symlink " + printable(what), errno);
                t[len] = 0;
                if (::symlinkat(t, rfd, n.c_str()) < 0) throw_errno("creating symlink " + printable(what), errno);
            } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) || S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)) {
                if (::mknodat(rfd, n.c_str(), st.st_mode, st.st_rdev) < 0) throw_errno("mknod " + printable(what), errno);
            } else {
                continue;
            }
            apply_meta(rfd, n, m, printable(what));
        }
    }
};

}  // namespace

void apply_layer(const std::string& layer, const LayerRecords& rec, const std::string& root) {
    UniqueFd l(::open(layer.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    UniqueFd r(::open(root.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!l || !r) throw_errno("applying layer " + layer + " to " + root, errno);
    // Whiteouts and opaque directories act on the layers below only, so
    // before this layer's own files. A path that is not there (or lies
    // below a lower layer's symlink, which is never followed) has nothing
    // to remove.
    for (auto& w : rec.whiteouts) {
        auto c = split(w);
        if (c.empty()) throw Error("layer " + layer + ": a whiteout of the root");
        UniqueFd p(open_dir_beneath(r.get(), join(c, c.size() - 1)));
        if (p) remove_tree_at(p.get(), c.back());
    }
    for (auto& o : rec.opaque) {
        split(o);
        UniqueFd d(open_dir_beneath(r.get(), o));
        if (d) clear_dir(d.get(), printable(o));
    }
    Assembler a;
    a.root = r.get();
    a.implicit.insert(rec.implicit.begin(), rec.implicit.end());
    a.apply_dir(l.get(), r.get(), "");
    struct stat st;
    if (::fstat(l.get(), &st) == 0) apply_meta(r.get(), "", a.meta_at(l.get(), "", st), "/");
    // Hard links whose targets came from lower layers, now that both exist.
    for (auto& [path, target] : rec.links) {
        auto pc = split(path), tc = split(target);
        if (pc.empty() || tc.empty()) throw Error("layer " + layer + ": bad hard link record");
        std::string what = "hard link " + printable(path) + " -> " + printable(target);
        UniqueFd tp(open_dir_beneath(r.get(), join(tc, tc.size() - 1)));
        struct stat tst;
        if (!tp || ::fstatat(tp.get(), tc.back().c_str(), &tst, AT_SYMLINK_NOFOLLOW) < 0)
            throw Error(what + ": no such target in the layers below (a symlink on its way is not followed)");
        if (S_ISDIR(tst.st_mode)) throw Error(what + ": the target is a directory");
        UniqueFd pp(open_dir_beneath(r.get(), join(pc, pc.size() - 1)));
        if (!pp) throw_errno(what + ": its directory", errno);
        remove_tree_at(pp.get(), pc.back());
        if (::linkat(tp.get(), tc.back().c_str(), pp.get(), pc.back().c_str(), 0) < 0) throw_errno(what, errno);
    }
}

}  // namespace ocivm::image
