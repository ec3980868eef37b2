#pragma once
// Passthrough: serves a host directory through the FileSystem interface.
// The contract (inode identity, confinement, readdir cookies, cache modes)
// is written down in DESIGN.md and docs/filesystem.md.
#include <memory>
#include <string>

#include "fs/file_system.h"
#include "fs/inode_table.h"
#include "util/unique_fd.h"

namespace ocivm::fs {

enum class CacheMode { Never, Metadata, Auto, Always };

// Parses "never|metadata|auto|always"; false on anything else.
bool parse_cache_mode(std::string_view s, CacheMode& out);
const char* cache_mode_name(CacheMode m);

// What a guest's security.* and trusted.* extended attributes become on the
// host (docs/filesystem.md, "Share options").
enum class XattrPolicy {
    // As named: the guest sets the host file's real security.* (file
    // capabilities, SELinux labels) and trusted.* attributes.
    Passthrough,
    // Stored as user.ocivm.security.* / user.ocivm.trusted.* and shown to
    // the guest under their own names; the host's real security.* and
    // trusted.* are hidden, and so is everything else in user.ocivm.*, which
    // the guest can neither read nor set by that name.
    Remap,
    // Not available: setting or removing one is EPERM, reading one ENODATA,
    // and listings leave them out.
    Refuse,
};
// Parses "passthrough|remap|refuse"; false on anything else.
bool parse_xattr_policy(std::string_view s, XattrPolicy& out);
const char* xattr_policy_name(XattrPolicy p);

// Prepares the calling process to serve shares: umask 0 (modes arrive
// already masked by the client kernel, the host must not mask them again)
// and, as root, SECBIT_NO_SETUID_FIXUP (so switching a thread's fsuid to a
// caller's keeps the server's capabilities). Both are process state a
// library must not change behind its caller's back: call this once from
// the main thread of a process that does nothing but serve, before it
// starts threads or children (securebits are inherited from the calling
// thread). Returns whether per-thread credential switching is available,
// the value for PassthroughOptions::switch_credentials.
bool prepare_server_process();

struct PassthroughOptions {
    std::string source;
    CacheMode cache = CacheMode::Metadata;
    bool readonly = false;
    bool xattr = true;
    bool announce_submounts = false;
    // Files need no OPEN/RELEASE: OPEN answers ENOSYS once and the kernel
    // stops sending it; I/O comes with handle 0 and reopens the node.
    // Only with page-cache modes (the kernel then keeps the cache).
    bool no_open = false;
    // The kernel caches writes and sends them later (FUSE_WRITEBACK_CACHE):
    // it fills its page cache through whichever handle it holds, a
    // write-only one included, and puts O_APPEND data at its own end of
    // file. Handles are then opened readable where the host allows it and
    // never O_APPEND (docs/filesystem.md, "Writeback cache"). The commands
    // allow --writeback only with no_open (auto, always), where I/O opens
    // by node; the handle rules serve a library user with per-open handles
    // (tests/unit/writeback_test.cpp covers both).
    bool writeback = false;
    // Rootless stores: owner, mode and device numbers a non-root import
    // could not apply are kept in the user.containers.override_stat xattr
    // ("uid:gid:0mode:type", containers/storage's convention) and served
    // from it.
    bool override_stat = false;
    // The server process's working directory is /proc/self/fd (set by its
    // owner before serving): path-only calls then name fds relative to it.
    // A server pivoted into its share has no /proc path to use otherwise.
    bool proc_fd_cwd = false;

    // Requests that create files run with the caller's fsuid/fsgid (new
    // files belong to the caller). Only in a process prepared by
    // prepare_server_process(), which says whether it is available.
    bool switch_credentials = false;

    // Share options (`-v HOST:GUEST:...,nodev,nosuid`).
    // MKNOD of a character or block device is EPERM.
    bool nodev = false;
    // Set-user-ID and set-group-ID bits asked for by MKNOD, CREATE or
    // SETATTR (chmod) are stripped from anything but directories.
    bool nosuid = false;
    XattrPolicy xattr_policy = XattrPolicy::Passthrough;

    // Hard caps on what one guest can make the server hold
    // (docs/filesystem.md, "Limits").
    // Open file and directory handles; OPEN/OPENDIR/CREATE beyond are ENFILE.
    size_t max_handles = 65536;
    // getdents64 buffers of directory handles, in bytes (32 KiB each).
    size_t max_dir_buffer_bytes = 16u << 20;
};

// Parses a user.containers.override_stat value into st (owner, mode, type,
// device); false when it is malformed (st is then unchanged).
bool parse_override_stat(const std::string& value, struct stat& st);

class Passthrough final : public FileSystem {
public:
    // Throws Error when the source cannot be opened as a directory.
    explicit Passthrough(PassthroughOptions opts);
    ~Passthrough() override;

    const PassthroughOptions& options() const { return opts_; }
    // Number of nodes the kernel currently holds lookups on (root included).
    size_t node_count() const { return inodes_.size(); }
    size_t handle_count() const { return handles_.size(); }
    // Bytes of directory buffers allocated (held by handles or idle).
    size_t dir_buffer_bytes() const { return dir_buffers_.bytes(); }

    int lookup(const Context&, uint64_t parent, std::string_view name, Entry&) override;
    void forget(uint64_t node, uint64_t nlookup) override;
    int getattr(const Context&, uint64_t node, const uint64_t* fh, Attr&) override;
    int setattr(const Context&, uint64_t node, const SetAttr&, const uint64_t* fh,
                Attr&) override;
    int readlink(const Context&, uint64_t node, char* buf, size_t size) override;
    int symlink(const Context&, uint64_t parent, std::string_view name,
                std::string_view target, Entry&) override;
    int mknod(const Context&, uint64_t parent, std::string_view name, mode_t mode, dev_t rdev,
              Entry&) override;
    int mkdir(const Context&, uint64_t parent, std::string_view name, mode_t mode,
              Entry&) override;
    int unlink(const Context&, uint64_t parent, std::string_view name) override;
    int rmdir(const Context&, uint64_t parent, std::string_view name) override;
    int rename(const Context&, uint64_t parent, std::string_view name, uint64_t newparent,
               std::string_view newname, unsigned flags) override;
    int link(const Context&, uint64_t node, uint64_t newparent, std::string_view newname,
             Entry&) override;
    int open(const Context&, uint64_t node, int flags, bool kill_suidgid,
             OpenResult&) override;
    int create(const Context&, uint64_t parent, std::string_view name, mode_t mode, int flags,
               bool kill_suidgid, Entry&, OpenResult&) override;
    ssize_t read(const Context&, uint64_t node, uint64_t fh, off_t off,
                 const struct iovec* dst, int cnt) override;
    ssize_t write(const Context&, uint64_t node, uint64_t fh, off_t off,
                  const struct iovec* src, int cnt, bool kill_suidgid) override;
    int flush(const Context&, uint64_t node, uint64_t fh) override;
    int release(const Context&, uint64_t node, uint64_t fh) override;
    int fsync(const Context&, uint64_t node, uint64_t fh, bool datasync) override;
    int opendir(const Context&, uint64_t node, int flags, OpenResult&) override;
    int readdir(const Context&, uint64_t node, uint64_t fh, uint64_t off, bool plus,
                DirSink&) override;
    int releasedir(const Context&, uint64_t node, uint64_t fh) override;
    int fsyncdir(const Context&, uint64_t node, uint64_t fh, bool datasync) override;
    int statfs(const Context&, uint64_t node, struct statvfs&) override;
    int access(const Context&, uint64_t node, int mask) override;
    int setxattr(const Context&, uint64_t node, std::string_view name, const void* value,
                 size_t size, int flags) override;
    ssize_t getxattr(const Context&, uint64_t node, std::string_view name, void* buf,
                     size_t size) override;
    ssize_t listxattr(const Context&, uint64_t node, char* buf, size_t size) override;
    int removexattr(const Context&, uint64_t node, std::string_view name) override;
    int fallocate(const Context&, uint64_t node, uint64_t fh, int mode, off_t off,
                  off_t len) override;
    off_t lseek(const Context&, uint64_t node, uint64_t fh, off_t off, int whence) override;
    ssize_t copy_file_range(const Context&, uint64_t node_in, uint64_t fh_in, off_t off_in,
                            uint64_t node_out, uint64_t fh_out, off_t off_out, size_t len,
                            unsigned flags) override;
    int syncfs(const Context&) override;
    void destroy() override;

private:
    // Looks a name up below parent, counting one lookup on the result.
    int do_lookup(const Inode& parent, std::string_view name, Entry& e);
    int lookup_dotdot(const Inode& parent, Entry& e);
    void fill_entry(const Inode& node, const struct stat& st, Entry& e) const;
    void apply_override(int fd, struct stat& st) const;
    void set_open_flags(bool dir, OpenResult& r) const;
    // The fd for I/O on (node, fh): an open handle's, or with handle 0 in
    // no-open mode the node's own. `hold` keeps its owner alive.
    struct IoFd {
        int fd = -1;
        std::shared_ptr<Handle> handle;  // fh != 0
        UniqueFd own;                    // handle 0: opened for this request
    };
    int io_fd(uint64_t node, uint64_t fh, bool write, IoFd& out);
    int make_node_entry(const Inode& parent, std::string_view name, Entry& e);
    // Opens a node for I/O as OPEN does (regular files only); from_create:
    // CREATE found the name existing, and no-open mode answers handle 0.
    int open_node(const Inode& n, int flags, bool kill_suidgid, bool from_create,
                  OpenResult& r);
    // The host name of a guest's xattr name under the xattr policy, in buf
    // when it differs; -errno when the guest may not use it.
    int host_xattr_name(std::string_view guest, bool write, char* buf, size_t cap,
                        const char*& out) const;
    ssize_t list_mapped_xattrs(const char* path, char* buf, size_t size) const;
    // Hands out records from ds (refilled from fd into buf) until the sink is full.
    int fill_dir(DirStream& ds, int fd, char* buf, const Inode* dir, bool plus, DirSink& sink);

    PassthroughOptions opts_;
    UniqueFd root_fd_;    // O_PATH of the share root
    UniqueFd proc_fd_;    // /proc/self/fd, to reopen O_PATH fds
    double timeout_ = 0;  // entry and attribute timeout of the cache mode
    bool switch_creds_ = false;
    InodeTable inodes_;
    DirBufferPool dir_buffers_;  // outlives the handles that hold its buffers
    HandleTable handles_;
};

}  // namespace ocivm::fs
