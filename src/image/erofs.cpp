#include "image/erofs.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "util/error.h"
#include "util/hash.h"
#include "util/log.h"
#include "util/paths.h"
#include "util/process.h"
#include "util/unique_fd.h"

namespace ocivm::image {

namespace {

// Adds dir's entries (sorted, so the key does not depend on readdir's
// order) and recurses into directories, all by fd below the root.
void hash_dir(int dirfd, const std::string& rel, Sha256& h, int depth) {
    if (depth > 4096) throw Error("the tree under " + rel + " is nested too deep");
    UniqueFd self(::openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    DIR* d = self ? ::fdopendir(self.get()) : nullptr;
    if (!d) throw_errno("cannot read " + rel, errno);
    self.release();
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d))
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.emplace_back(e->d_name);
    ::closedir(d);
    std::sort(names.begin(), names.end());
    for (auto& n : names) {
        struct stat st;
        if (::fstatat(dirfd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) throw_errno("cannot stat " + rel + "/" + n, errno);
        char rec[256];
        int len = std::snprintf(rec, sizeof rec, "\n%o %u %u %lld %lld.%09ld %llx ", st.st_mode, st.st_uid, st.st_gid,
                                static_cast<long long>(st.st_size), static_cast<long long>(st.st_mtim.tv_sec),
                                st.st_mtim.tv_nsec, static_cast<unsigned long long>(st.st_rdev));
        h.update(rec, static_cast<size_t>(len));
        h.update(rel + "/" + n);
        if (S_ISLNK(st.st_mode)) {
            char target[4096];
            ssize_t t = ::readlinkat(dirfd, n.c_str(), target, sizeof target);
            if (t > 0) h.update(target, static_cast<size_t>(t));
        } else if (S_ISDIR(st.st_mode)) {
            UniqueFd sub(::openat(dirfd, n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
            if (!sub) throw_errno("cannot open " + rel + "/" + n, errno);
            hash_dir(sub.get(), rel + "/" + n, h, depth + 1);
        }
    }
}

}  // namespace

std::string tree_key(const std::string& rootfs) {
    UniqueFd root(::open(rootfs.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root) throw_errno("cannot open the image root " + rootfs, errno);
    Sha256 h;
    h.update("ocivm-erofs-1 lz4");  // the format and options: a change makes new images
    struct stat st;
    if (::fstat(root.get(), &st) == 0) {
        char rec[64];
        int len = std::snprintf(rec, sizeof rec, "%o %u %u", st.st_mode, st.st_uid, st.st_gid);
        h.update(rec, static_cast<size_t>(len));
    }
    hash_dir(root.get(), "", h, 0);
    return h.hex();
}

ErofsImage erofs_image(const std::string& rootfs, const std::string& cache_dir) {
    std::string dir = cache_dir + "/erofs";
    make_dirs(dir, 0700);
    std::string key = tree_key(rootfs);
    ErofsImage img{dir + "/" + key + ".erofs", false};
    struct stat st;
    if (::stat(img.path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
        spdlog::info("EROFS root {} (cached)", img.path);
        return img;
    }
    std::string tmp = img.path + ".tmp." + std::to_string(::getpid());
    SpawnOptions so;
    // Owners, modes, times and xattrs (file capabilities) as on disk.
    so.argv = {"mkfs.erofs", "-zlz4", "--quiet", tmp, rootfs};
    so.stdout_fd = SpawnOptions::kDevNull;
    ChildProcess p = ChildProcess::spawn(so, "install erofs-utils (apt-get install erofs-utils)");
    int status = p.wait();
    if (exit_code(status) != 0) {
        ::unlink(tmp.c_str());
        throw Error("mkfs.erofs failed (status " + std::to_string(exit_code(status)) + ") building the root of " + rootfs);
    }
    if (::rename(tmp.c_str(), img.path.c_str()) < 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        throw_errno("cannot store " + img.path, e);
    }
    img.built = true;
    spdlog::info("EROFS root {} built from {}", img.path, rootfs);
    return img;
}

}  // namespace ocivm::image
