#pragma once
// The operations the FUSE protocol needs, independent of any transport and of
// the wire format. Every operation returns 0 (or a byte count) on success and
// -errno on failure; none of them throws.
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace ocivm::fs {

constexpr uint64_t kRootNode = 1;

// Who is asking: the calling process as the kernel reports it.
struct Context {
    uint32_t uid = 0;
    uint32_t gid = 0;
    uint32_t pid = 0;
};

// A positive lookup result (nodeid 0 means a negative, cacheable entry).
struct Entry {
    uint64_t nodeid = 0;
    uint64_t generation = 0;
    struct stat attr {};
    double entry_timeout = 0;
    double attr_timeout = 0;
    // A mount point inside the share, announced so the guest makes it a
    // submount of its own (st_dev of its own, no inode collisions).
    bool submount = false;
};

struct Attr {
    struct stat st {};
    double timeout = 0;
};

// Cache behaviour of an opened file or directory, mapped to FOPEN_* flags by
// the protocol layer.
struct OpenResult {
    uint64_t fh = 0;
    bool direct_io = false;
    bool keep_cache = false;
    bool cache_dir = false;
    // Nothing to do at close(): the kernel may skip FLUSH for this file.
    bool noflush = false;
    // Direct writes to this file may run in parallel.
    bool parallel_direct_writes = false;
};

struct SetAttr {
    // Which fields to change.
    bool mode = false, uid = false, gid = false, size = false;
    bool atime = false, atime_now = false, mtime = false, mtime_now = false;
    bool ctime = false;
    bool kill_suidgid = false;
    mode_t mode_value = 0;
    uid_t uid_value = 0;
    gid_t gid_value = 0;
    off_t size_value = 0;
    struct timespec atime_value {}, mtime_value {};
};

// Receives directory entries; the file system stops when add() returns false
// and the entry is not consumed.
class DirSink {
public:
    virtual ~DirSink() = default;
    // Whether an entry with this name length still fits.
    virtual bool fits(size_t name_len) const = 0;
    // off is the cookie that resumes the listing after this entry.
    // entry is non-null for READDIRPLUS (nodeid 0 = no lookup counted).
    virtual void add(std::string_view name, uint64_t ino, uint32_t type, uint64_t off,
                     const Entry* entry) = 0;
};

class FileSystem {
public:
    virtual ~FileSystem() = default;

    virtual int lookup(const Context&, uint64_t parent, std::string_view name, Entry&) = 0;
    virtual void forget(uint64_t node, uint64_t nlookup) = 0;
    virtual int getattr(const Context&, uint64_t node, const uint64_t* fh, Attr&) = 0;
    virtual int setattr(const Context&, uint64_t node, const SetAttr&, const uint64_t* fh,
                        Attr&) = 0;
    virtual int readlink(const Context&, uint64_t node, char* buf, size_t size) = 0;
    virtual int symlink(const Context&, uint64_t parent, std::string_view name,
                        std::string_view target, Entry&) = 0;
    virtual int mknod(const Context&, uint64_t parent, std::string_view name, mode_t mode,
                      dev_t rdev, Entry&) = 0;
    virtual int mkdir(const Context&, uint64_t parent, std::string_view name, mode_t mode,
                      Entry&) = 0;
    virtual int unlink(const Context&, uint64_t parent, std::string_view name) = 0;
    virtual int rmdir(const Context&, uint64_t parent, std::string_view name) = 0;
    virtual int rename(const Context&, uint64_t parent, std::string_view name,
                       uint64_t newparent, std::string_view newname, unsigned flags) = 0;
    virtual int link(const Context&, uint64_t node, uint64_t newparent,
                     std::string_view newname, Entry&) = 0;
    virtual int open(const Context&, uint64_t node, int flags, bool kill_suidgid,
                     OpenResult&) = 0;
    // Creates and opens a new file. When the name exists and flags lack
    // O_EXCL, opens it as open() would (regular files only); kill_suidgid as
    // for open() with O_TRUNC.
    virtual int create(const Context&, uint64_t parent, std::string_view name, mode_t mode,
                       int flags, bool kill_suidgid, Entry&, OpenResult&) = 0;
    // Reads into dst; returns the byte count.
    virtual ssize_t read(const Context&, uint64_t node, uint64_t fh, off_t off,
                         const struct iovec* dst, int cnt) = 0;
    virtual ssize_t write(const Context&, uint64_t node, uint64_t fh, off_t off,
                          const struct iovec* src, int cnt, bool kill_suidgid) = 0;
    virtual int flush(const Context&, uint64_t node, uint64_t fh) = 0;
    virtual int release(const Context&, uint64_t node, uint64_t fh) = 0;
    virtual int fsync(const Context&, uint64_t node, uint64_t fh, bool datasync) = 0;
    virtual int opendir(const Context&, uint64_t node, int flags, OpenResult&) = 0;
    virtual int readdir(const Context&, uint64_t node, uint64_t fh, uint64_t off, bool plus,
                        DirSink&) = 0;
    virtual int releasedir(const Context&, uint64_t node, uint64_t fh) = 0;
    virtual int fsyncdir(const Context&, uint64_t node, uint64_t fh, bool datasync) = 0;
    virtual int statfs(const Context&, uint64_t node, struct statvfs&) = 0;
    virtual int access(const Context&, uint64_t node, int mask) = 0;
    virtual int setxattr(const Context&, uint64_t node, std::string_view name,
                         const void* value, size_t size, int flags) = 0;
    // size 0 asks for the needed size; returns the length.
    virtual ssize_t getxattr(const Context&, uint64_t node, std::string_view name, void* buf,
                             size_t size) = 0;
    virtual ssize_t listxattr(const Context&, uint64_t node, char* buf, size_t size) = 0;
    virtual int removexattr(const Context&, uint64_t node, std::string_view name) = 0;
    virtual int fallocate(const Context&, uint64_t node, uint64_t fh, int mode, off_t off,
                          off_t len) = 0;
    virtual off_t lseek(const Context&, uint64_t node, uint64_t fh, off_t off, int whence) = 0;
    virtual ssize_t copy_file_range(const Context&, uint64_t node_in, uint64_t fh_in,
                                    off_t off_in, uint64_t node_out, uint64_t fh_out,
                                    off_t off_out, size_t len, unsigned flags) = 0;
    virtual int syncfs(const Context&) = 0;
    // The session ended: drop every node and handle.
    virtual void destroy() = 0;
};

}  // namespace ocivm::fs
