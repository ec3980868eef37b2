#include "image/unpack.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/openat2.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <set>

#include "image/gunzip.h"
#include "util/error.h"
#include "util/hash.h"
#include "util/log.h"
#include "util/unique_fd.h"

namespace ocivm::image {

namespace {

constexpr const char* kOpaque = ".wh..wh..opq";
constexpr const char* kWhiteoutPrefix = ".wh.";
constexpr const char* kLinksFile = ".ocivm-links";  // cross-layer hard links, applied at assembly
// Directories a layer only implies (an entry below them, no entry of their
// own): they must not override a lower layer's owner and mode at assembly.
constexpr const char* kImplicitFile = ".ocivm-implicit";

int openat2_in_root(int root, const std::string& path, uint64_t flags) {
    open_how how{};
    how.flags = flags | O_CLOEXEC;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
    long r;
    do r = ::syscall(SYS_openat2, root, path.empty() ? "." : path.c_str(), &how, sizeof how);
    while (r < 0 && errno == EAGAIN);
    return static_cast<int>(r);
}

std::string join(const std::vector<std::string>& c, size_t n) {
    std::string out;
    for (size_t i = 0; i < n && i < c.size(); ++i) out += (i ? "/" : "") + c[i];
    return out;
}

// The directory that will hold components[0..n-1]'s last element, resolved
// inside root and created (0755, root-owned until its own entry comes) when
// missing.
UniqueFd open_parent(int root, const std::vector<std::string>& comps, const std::string& entry,
                     std::set<std::string>* created = nullptr) {
    size_t n = comps.size() - 1;
    int fd = openat2_in_root(root, join(comps, n), O_PATH | O_DIRECTORY);
    if (fd >= 0) return UniqueFd(fd);
    if (errno != ENOENT) throw_errno("layer entry " + entry + ": its directory", errno);
    UniqueFd cur(openat2_in_root(root, "", O_PATH | O_DIRECTORY));
    for (size_t i = 0; i < n; ++i) {
        int next = openat2_in_root(root, join(comps, i + 1), O_PATH | O_DIRECTORY);
        if (next < 0 && errno == ENOENT) {
            if (::mkdirat(cur.get(), comps[i].c_str(), 0755) < 0 && errno != EEXIST)
                throw_errno("layer entry " + entry + ": creating its directory " + join(comps, i + 1), errno);
            if (created) created->insert(join(comps, i + 1));
            next = openat2_in_root(root, join(comps, i + 1), O_PATH | O_DIRECTORY);
        }
        if (next < 0) throw_errno("layer entry " + entry + ": its directory " + join(comps, i + 1), errno);
        cur = UniqueFd(next);
    }
    return cur;
}

std::string fd_path(int dirfd, const std::string& name) {
    return "/proc/self/fd/" + std::to_string(dirfd) + "/" + name;
}

// Removes name (a whole tree if a directory) from dirfd, never following.
void remove_tree_at(int dirfd, const std::string& name) {
    struct stat st;
    if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) return;
    if (S_ISDIR(st.st_mode)) {
        int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) {
            DIR* d = ::fdopendir(fd);
            std::vector<std::string> names;
            while (dirent* e = ::readdir(d))
                if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, "..")) names.push_back(e->d_name);
            for (auto& n : names) remove_tree_at(::dirfd(d), n);
            ::closedir(d);
        }
        if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) < 0) throw_errno("removing directory " + name, errno);
    } else if (::unlinkat(dirfd, name.c_str(), 0) < 0) {
        throw_errno("removing " + name, errno);
    }
}

void clear_dir(int dirfd) {
    int fd = ::openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    DIR* d = ::fdopendir(fd);
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d))
        if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, "..")) names.push_back(e->d_name);
    ::closedir(d);
    for (auto& n : names) remove_tree_at(dirfd, n);
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

// placeholder: name is an empty regular file standing in for a device a
// rootless import could not create.
void apply_meta(int dirfd, const std::string& name, const Meta& m, const std::string& what, bool placeholder = false) {
    const char* n = name.empty() ? "" : name.c_str();
    int flags = name.empty() ? AT_EMPTY_PATH : AT_SYMLINK_NOFOLLOW;
    bool link = S_ISLNK(m.mode);
    std::string p = name.empty() ? "/proc/self/fd/" + std::to_string(dirfd) : fd_path(dirfd, name);
    // Without root, what cannot be applied (a foreign owner, a device that
    // had to become a regular file) goes into the override xattr.
    bool chowned = ::fchownat(dirfd, n, m.uid, m.gid, flags) == 0;
    if (!chowned && errno != EPERM) throw_errno("chown of " + what, errno);
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
        if (set_x(kOverrideXattr, v) < 0)
            throw_errno("xattr " + std::string(kOverrideXattr) + " of " + what, errno);
    }
    if (!link && ::chmod(p.c_str(), (placeholder ? 0600 : m.mode) & 07777) < 0) throw_errno("chmod of " + what, errno);
    // xattrs after chown: chown clears security.capability. Without root,
    // trusted.* and security.* cannot be set: they are left out, said once.
    for (auto& [k, v] : m.xattrs) {
        if (set_x(k.c_str(), v) == 0) continue;
        if ((link && errno == EPERM) || (!chowned && (errno == EPERM || errno == EACCES))) continue;
        throw_errno("xattr " + k + " of " + what, errno);
    }
    timespec ts[2] = {m.atime, m.mtime};
    if (name.empty()) ::utimensat(AT_FDCWD, p.c_str(), ts, 0);
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
    if (r != ARCHIVE_EOF) throw Error("layer entry " + what + ": " + archive_error_string(a));
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

UnpackStats unpack_layer(const std::string& blob, const std::string& dest, const std::string& diff_id,
                         const std::function<void(uint64_t)>& progress) {
    UnpackStats stats;
    // gzip (most layers) through ISA-L; zstd, plain tar and the rest through
    // libarchive's filters.
    std::unique_ptr<archive, ArchiveFree> raw;
    std::unique_ptr<Gunzip> gz;
    HashingSource::Reader reader;
    if (is_gzip_file(blob)) {
        gz = std::make_unique<Gunzip>(blob);
        reader = [g = gz.get()](char* buf, size_t size, std::string* error) -> la_ssize_t {
            try {
                return static_cast<la_ssize_t>(g->read(buf, size));
            } catch (const Error& e) {
                *error = e.what();
                return -1;
            }
        };
    } else {
        raw.reset(archive_read_new());
        archive_read_support_filter_all(raw.get());
        archive_read_support_format_raw(raw.get());
        if (archive_read_open_filename(raw.get(), blob.c_str(), 1 << 20) != ARCHIVE_OK)
            throw Error("cannot read layer " + blob + ": " + archive_error_string(raw.get()));
        archive_entry* re;
        if (archive_read_next_header(raw.get(), &re) != ARCHIVE_OK)
            throw Error("layer " + blob + " is not a tar, gzip or zstd stream: " + archive_error_string(raw.get()));
        reader = [a = raw.get()](char* buf, size_t size, std::string* error) -> la_ssize_t {
            la_ssize_t n = archive_read_data(a, buf, size);
            if (n < 0 && archive_error_string(a)) *error = archive_error_string(a);
            return n;
        };
    }
    auto src_ptr = std::make_unique<HashingSource>(std::move(reader));
    HashingSource& src = *src_ptr;

    if (::mkdir(dest.c_str(), 0755) < 0) throw_errno("cannot create " + dest, errno);
    auto cleanup = [&dest]() {
        std::error_code ec;
        std::filesystem::remove_all(dest, ec);
    };
    try {
        UniqueFd root(::open(dest.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
        if (!root) throw_errno("cannot open " + dest, errno);
        std::unique_ptr<archive, ArchiveFree> tar(archive_read_new());
        archive_read_support_format_tar(tar.get());
        archive_read_support_format_gnutar(tar.get());
        if (archive_read_open(tar.get(), &src, nullptr, &HashingSource::read, nullptr) != ARCHIVE_OK)
            throw Error("layer " + blob + (src.error().empty() ? std::string(": ") + archive_error_string(tar.get())
                                                               : " is corrupt: " + src.error()));
        std::vector<std::pair<std::string, Meta>> dirs;  // metadata once their contents are in
        std::string links;                               // hard links to lower layers
        std::set<std::string> implicit;
        uint64_t whiteouts = 0;
        archive_entry* e;
        int r;
        uint64_t last_progress = 0;
        while ((r = archive_read_next_header(tar.get(), &e)) == ARCHIVE_OK) {
            ++stats.entries;
            const char* pn = archive_entry_pathname(e);
            std::string path = pn ? pn : "";
            std::vector<std::string> comps;
            std::string why;
            if (!safe_relative_path(path, comps, &why))
                throw Error("layer " + blob + " is unsafe: entry '" + path + "' has " + why);
            Meta m = meta_of(e);
            if (comps.empty()) {  // the layer's root directory itself
                if (S_ISDIR(m.mode)) dirs.emplace_back("", m);
                continue;
            }
            const std::string& name = comps.back();
            if (name.rfind(kWhiteoutPrefix, 0) == 0) ++whiteouts;
            if (name.rfind(kWhiteoutPrefix, 0) == 0 && name != kOpaque) {
                std::string target = name.substr(4);
                if (target.empty() || target == "." || target == ".." || target.rfind(kWhiteoutPrefix, 0) == 0)
                    throw Error("layer " + blob + " is unsafe: whiteout '" + path + "' names no file");
            }
            UniqueFd parent = open_parent(root.get(), comps, path, &implicit);
            struct stat existing;
            bool exists = ::fstatat(parent.get(), name.c_str(), &existing, AT_SYMLINK_NOFOLLOW) == 0;
            const char* hl = archive_entry_hardlink(e);
            if (hl) {
                std::vector<std::string> tcomps;
                if (!safe_relative_path(hl, tcomps, &why) || tcomps.empty())
                    throw Error("layer " + blob + " is unsafe: hard link '" + path + "' to '" + hl + "' has " +
                                (why.empty() ? "no target" : why));
                int t = openat2_in_root(root.get(), join(tcomps, tcomps.size()), O_PATH | O_NOFOLLOW);
                if (t < 0 && errno == ENOENT) {  // its target is in a lower layer
                    links += join(comps, comps.size()) + "\t" + join(tcomps, tcomps.size()) + "\n";
                    continue;
                }
                if (t < 0) throw_errno("layer entry " + path + ": hard link target " + hl, errno);
                UniqueFd target(t);
                if (exists && !S_ISDIR(existing.st_mode)) ::unlinkat(parent.get(), name.c_str(), 0);
                if (::linkat(target.get(), "", parent.get(), name.c_str(), AT_EMPTY_PATH) < 0)
                    throw_errno("layer entry " + path + ": hard link to " + hl, errno);
                continue;
            }
            unsigned type = archive_entry_filetype(e);
            bool placeholder = false;
            if (exists && !(type == AE_IFDIR && S_ISDIR(existing.st_mode))) remove_tree_at(parent.get(), name);
            switch (type) {
                case AE_IFDIR:
                    if (!exists || !S_ISDIR(existing.st_mode))
                        if (::mkdirat(parent.get(), name.c_str(), 0700) < 0)
                            throw_errno("layer entry " + path, errno);
                    dirs.emplace_back(join(comps, comps.size()), m);
                    implicit.erase(join(comps, comps.size()));
                    continue;
                case AE_IFREG: {
                    UniqueFd fd(::openat(parent.get(), name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
                    if (!fd) throw_errno("layer entry " + path, errno);
                    write_data(tar.get(), fd.get(), path);
                    if (::ftruncate(fd.get(), archive_entry_size(e)) < 0) throw_errno("layer entry " + path, errno);
                    break;
                }
                case AE_IFLNK: {
                    const char* t = archive_entry_symlink(e);
                    if (::symlinkat(t ? t : "", parent.get(), name.c_str()) < 0) throw_errno("layer entry " + path, errno);
                    break;
                }
                case AE_IFCHR:
                case AE_IFBLK:
                case AE_IFIFO:
                    placeholder = false;
                    if (::mknodat(parent.get(), name.c_str(), type | (m.mode & 07777), archive_entry_rdev(e)) < 0) {
                        if (errno != EPERM || type == AE_IFIFO) throw_errno("layer entry " + path + ": mknod", errno);
                        // Rootless: an empty file stands in; the xattr says what it is.
                        UniqueFd f(::openat(parent.get(), name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
                        if (!f) throw_errno("layer entry " + path, errno);
                        placeholder = true;
                    }
                    break;
                default:
                    spdlog::debug("layer {}: skipping {} (type {:o})", blob, path, type);
                    continue;
            }
            apply_meta(parent.get(), name, m, path, placeholder);
            if (progress && src.bytes() - last_progress > (8u << 20)) {
                last_progress = src.bytes();
                progress(src.bytes());
            }
        }
        if (r != ARCHIVE_EOF)
            throw Error("layer " + blob + " is corrupt: " + (src.error().empty() ? archive_error_string(tar.get()) : src.error()));
        // The rest of the stream (tar padding) still counts for the digest.
        src.drain();
        if (!src.error().empty()) throw Error("layer " + blob + " is corrupt: " + src.error());
        for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
            int fd = openat2_in_root(root.get(), it->first, O_PATH | O_DIRECTORY);
            if (fd < 0) throw_errno("layer directory " + it->first, errno);
            UniqueFd d(fd);
            apply_meta(d.get(), "", it->second, it->first.empty() ? "/" : it->first);
        }
        if (!links.empty()) std::ofstream(dest + "/" + kLinksFile) << links;
        if (!implicit.empty()) {
            std::ofstream out(dest + "/" + kImplicitFile);
            for (auto& d : implicit) out << d << "\n";
        }
        stats.bytes = src.bytes();
        stats.clean = whiteouts == 0 && links.empty() && implicit.empty();
        std::string got = src.digest();
        if (!diff_id.empty() && got != diff_id)
            throw Error("layer " + blob + " does not match its diff_id: expected " + diff_id + ", got " + got);
    } catch (...) {
        cleanup();
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
        std::string p = name.empty() ? "/proc/self/fd/" + std::to_string(dirfd) : fd_path(dirfd, name);
        char list[65536];
        bool self = name.empty();  // p is our fd's magic link: follow it
        ssize_t n = self ? ::listxattr(p.c_str(), list, sizeof list) : ::llistxattr(p.c_str(), list, sizeof list);
        for (ssize_t i = 0; i < n;) {
            std::string k = list + i;
            i += static_cast<ssize_t>(k.size()) + 1;
            char v[65536];
            ssize_t vn = self ? ::getxattr(p.c_str(), k.c_str(), v, sizeof v) : ::lgetxattr(p.c_str(), k.c_str(), v, sizeof v);
            if (vn >= 0) m.xattrs.emplace_back(k, std::string(v, static_cast<size_t>(vn)));
        }
        return m;
    }

    void copy_file(int lfd, int rfd, const std::string& name, const std::string& what) {
        UniqueFd in(::openat(lfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
        if (!in) throw_errno("reading " + what, errno);
        UniqueFd out(::openat(rfd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
        if (!out) throw_errno("creating " + what, errno);
        if (::ioctl(out.get(), FICLONE, in.get()) == 0) return;
        struct stat st;
        ::fstat(in.get(), &st);
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

    void apply_dir(int lfd, int rfd, const std::string& rel) {
        if (::faccessat(lfd, kOpaque, F_OK, AT_SYMLINK_NOFOLLOW) == 0) clear_dir(rfd);
        std::vector<std::string> names;
        {
            int fd = ::openat(lfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (fd < 0) throw_errno("reading layer directory " + rel, errno);
            DIR* d = ::fdopendir(fd);
            while (dirent* e = ::readdir(d))
                if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, "..")) names.push_back(e->d_name);
            ::closedir(d);
        }
        for (auto& n : names)
            if (n.rfind(kWhiteoutPrefix, 0) == 0 && n != kOpaque) remove_tree_at(rfd, n.substr(4));
        for (auto& n : names) {
            if (n.rfind(kWhiteoutPrefix, 0) == 0 || (rel.empty() && (n == kLinksFile || n == kImplicitFile))) continue;
            std::string what = rel.empty() ? n : rel + "/" + n;
            struct stat st, ex;
            if (::fstatat(lfd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) throw_errno("layer entry " + what, errno);
            bool exists = ::fstatat(rfd, n.c_str(), &ex, AT_SYMLINK_NOFOLLOW) == 0;
            if (exists && !(S_ISDIR(st.st_mode) && S_ISDIR(ex.st_mode))) remove_tree_at(rfd, n);
            Meta m = meta_at(lfd, n, st);
            if (S_ISDIR(st.st_mode)) {
                if (!exists || !S_ISDIR(ex.st_mode))
                    if (::mkdirat(rfd, n.c_str(), 0700) < 0) throw_errno("creating " + what, errno);
                UniqueFd l(::openat(lfd, n.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
                UniqueFd r(::openat(rfd, n.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
                if (!l || !r) throw_errno("opening " + what, errno);
                apply_dir(l.get(), r.get(), what);
                if (!(exists && S_ISDIR(ex.st_mode) && implicit.count(what))) apply_meta(rfd, n, m, what);
                continue;
            }
            if (S_ISREG(st.st_mode)) {
                auto key = std::make_pair(st.st_dev, st.st_ino);
                auto it = st.st_nlink > 1 ? copied.find(key) : copied.end();
                if (it != copied.end()) {
                    if (::linkat(root, it->second.c_str(), rfd, n.c_str(), 0) < 0)
                        throw_errno("hard link " + what + " to " + it->second, errno);
                    continue;
                }
                copy_file(lfd, rfd, n, what);
                if (st.st_nlink > 1) copied[key] = what;
            } else if (S_ISLNK(st.st_mode)) {
                char t[PATH_MAX + 1];
                ssize_t len = ::readlinkat(lfd, n.c_str(), t, PATH_MAX);
                if (len < 0) throw_errno("reading symlink " + what, errno);
                t[len] = 0;
                if (::symlinkat(t, rfd, n.c_str()) < 0) throw_errno("creating symlink " + what, errno);
            } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) || S_ISFIFO(st.st_mode)) {
                if (::mknodat(rfd, n.c_str(), st.st_mode, st.st_rdev) < 0) throw_errno("mknod " + what, errno);
            } else {
                continue;
            }
            apply_meta(rfd, n, m, what);
        }
    }
};

}  // namespace

void apply_layer(const std::string& layer, const std::string& root) {
    UniqueFd l(::open(layer.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    UniqueFd r(::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!l || !r) throw_errno("applying layer " + layer + " to " + root, errno);
    Assembler a;
    a.root = r.get();
    {
        std::ifstream in(layer + "/" + kImplicitFile);
        for (std::string line; std::getline(in, line);) a.implicit.insert(line);
    }
    a.apply_dir(l.get(), r.get(), "");
    struct stat st;
    if (::fstat(l.get(), &st) == 0) apply_meta(r.get(), "", a.meta_at(l.get(), "", st), "/");
    // Hard links whose targets came from lower layers, now that both exist.
    std::ifstream links(layer + "/" + kLinksFile);
    std::string line;
    while (std::getline(links, line)) {
        size_t tab = line.find('\t');
        if (tab == std::string::npos) continue;
        std::vector<std::string> pc, tc;
        std::string why;
        if (!safe_relative_path(line.substr(0, tab), pc, &why) || !safe_relative_path(line.substr(tab + 1), tc, &why) ||
            pc.empty() || tc.empty())
            throw Error("layer " + layer + ": bad hard link record");
        int t = openat2_in_root(r.get(), join(tc, tc.size()), O_PATH | O_NOFOLLOW);
        if (t < 0) throw_errno("hard link " + line.substr(0, tab) + " -> " + line.substr(tab + 1) + ": no target in the lower layers", errno);
        UniqueFd target(t);
        UniqueFd parent = open_parent(r.get(), pc, line.substr(0, tab));
        ::unlinkat(parent.get(), pc.back().c_str(), 0);
        if (::linkat(target.get(), "", parent.get(), pc.back().c_str(), AT_EMPTY_PATH) < 0)
            throw_errno("hard link " + line.substr(0, tab), errno);
    }
}

}  // namespace ocivm::image
