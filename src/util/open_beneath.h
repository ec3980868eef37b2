#pragma once
// Opening files under a directory whose contents someone else chose (an
// image's root, a layer being unpacked, an extracted archive, a kernel
// module tree): always by fd, with openat2's RESOLVE_* rules, so that no
// symlink, "..", /proc magic link or mount point leads out of it, and
// never opening a device node or fifo that only claims to be a file.
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <string>

#include "util/error.h"
#include "util/unique_fd.h"

namespace ocivm {

// Nothing above dirfd, no symlink anywhere on the way (a last component
// that is a symlink is returned as itself only with O_PATH | O_NOFOLLOW),
// no other mount.
inline constexpr uint64_t kResolveNoSymlinks =
    RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
// dirfd is "/" for this lookup (a chroot without chroot): an image's own
// symlinks, absolute or relative, resolve inside it.
inline constexpr uint64_t kResolveInRoot = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;

// openat2(2): the fd, or -1 with errno. An empty path is dirfd itself.
inline int openat2_fd(int dirfd, const std::string& path, uint64_t flags, uint64_t resolve, mode_t mode = 0) {
    open_how how{};
    how.flags = flags | O_CLOEXEC;
    how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
    how.resolve = resolve;
    long r;
    // EAGAIN: a rename elsewhere raced the lookup (RESOLVE_IN_ROOT/BENEATH).
    do r = ::syscall(SYS_openat2, dirfd, path.empty() ? "." : path.c_str(), &how, sizeof how);
    while (r < 0 && errno == EAGAIN);
    return static_cast<int>(r);
}

// A regular file beneath dirfd opened for reading. It is looked up with
// O_PATH first and reopened only once fstat says it is a regular file, so
// a device node or fifo planted under that name is never opened (opening
// one can block, rewind a tape or read a disk). st, when given, gets its
// stat. Throws Error "WHAT: ..." when it is missing, not a regular file or
// not reachable under `resolve`.
inline UniqueFd open_regular_beneath(int dirfd, const std::string& path, uint64_t resolve, const std::string& what,
                                     struct stat* st = nullptr) {
    // No O_NOFOLLOW: a last symlink is followed as `resolve` allows (inside
    // the root with kResolveInRoot, not at all with kResolveNoSymlinks).
    UniqueFd p(openat2_fd(dirfd, path, O_PATH, resolve));
    if (!p) {
        int e = errno;
        if (e == ELOOP || e == EXDEV)
            throw Error(what + ": the path leads through a symlink or out of its directory; not followed");
        throw_errno(what, e);
    }
    struct stat s;
    if (::fstat(p.get(), &s) < 0) throw_errno(what, errno);
    if (!S_ISREG(s.st_mode))
        throw Error(what + " is not a regular file (" +
                    (S_ISLNK(s.st_mode) ? "a symlink" : S_ISDIR(s.st_mode) ? "a directory" : S_ISFIFO(s.st_mode) ? "a fifo"
                     : S_ISCHR(s.st_mode) || S_ISBLK(s.st_mode) ? "a device node" : "a special file") +
                    "); it is not read");
    // The O_PATH fd's /proc link reopens exactly that inode, whatever the
    // name points at by now.
    UniqueFd f(::open(("/proc/self/fd/" + std::to_string(p.get())).c_str(), O_RDONLY | O_NOCTTY | O_CLOEXEC));
    if (!f) throw_errno(what, errno, errno == ENOENT ? "mount /proc" : "");
    if (st) *st = s;
    return f;
}

// The whole content of a regular file beneath dirfd (see
// open_regular_beneath), refused when it is larger than max bytes.
inline std::string read_regular_beneath(int dirfd, const std::string& path, uint64_t resolve, size_t max,
                                        const std::string& what) {
    struct stat st;
    UniqueFd f = open_regular_beneath(dirfd, path, resolve, what, &st);
    if (static_cast<uint64_t>(st.st_size) > max)
        throw Error(what + " is " + std::to_string(st.st_size) + " bytes, more than the " + std::to_string(max) +
                    " ocivm reads");
    std::string out;
    out.resize(static_cast<size_t>(st.st_size));
    size_t got = 0;
    // Read to the end, not to the size stat gave: up to max + 1 bytes.
    while (true) {
        if (got == out.size()) {
            if (out.size() > max) throw Error(what + " is larger than the " + std::to_string(max) + " bytes ocivm reads");
            out.resize(std::min(max + 1, out.size() + 65536));
        }
        ssize_t n = ::read(f.get(), out.data() + got, out.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw_errno(what, errno);
        if (n == 0) break;
        got += static_cast<size_t>(n);
    }
    out.resize(got);
    return out;
}

}  // namespace ocivm
