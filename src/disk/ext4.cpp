#include "disk/ext4.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <cerrno>
#include <cstring>
#include <map>
#include <vector>

extern "C" {
#include <et/com_err.h>
#include <ext2fs/ext2_err.h>
#include <ext2fs/ext2_fs.h>
#include <ext2fs/ext2fs.h>
}

#include "util/error.h"
#include "util/unique_fd.h"

namespace ocivm::disk {

namespace {

// ext4 keeps seconds in 32 bits and, in the "extra" word, two epoch bits
// (times beyond 2038 and before 1970) and the nanoseconds shifted by two.
void set_time(uint32_t& lo, uint32_t& extra, const timespec& t) {
    int64_t s = t.tv_sec;
    lo = static_cast<uint32_t>(s);
    uint32_t epoch = static_cast<uint32_t>(((s - static_cast<int32_t>(lo)) >> 32) & EXT4_EPOCH_MASK);
    extra = epoch | (static_cast<uint32_t>(t.tv_nsec) << EXT4_EPOCH_BITS);
}

int file_type(mode_t m) {
    if (S_ISREG(m)) return EXT2_FT_REG_FILE;
    if (S_ISDIR(m)) return EXT2_FT_DIR;
    if (S_ISLNK(m)) return EXT2_FT_SYMLINK;
    if (S_ISCHR(m)) return EXT2_FT_CHRDEV;
    if (S_ISBLK(m)) return EXT2_FT_BLKDEV;
    if (S_ISFIFO(m)) return EXT2_FT_FIFO;
    return EXT2_FT_SOCK;
}

// Copies file data to its blocks in the image on two threads, in queue
// order, while the metadata of later files is written: with two reads in
// flight the source disk is busier than with one (diskbench: see
// docs/benchmarks.md). copy_file_range keeps the bytes in the kernel.
class Copier {
public:
    struct Piece {
        uint64_t from, to, len;  // source offset, image offset, bytes
    };
    struct Job {
        UniqueFd src;
        std::string path;  // for errors
        std::vector<Piece> pieces;
    };

    ~Copier() { stop(); }

    void start(int img, const std::string& image, const std::function<void(uint64_t)>& progress) {
        img_ = img;
        image_ = image;
        progress_ = progress;
        for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { work(); });
    }

    // Queues a file; waits while many are queued (each holds an open fd).
    void add(Job job) {
        std::unique_lock lk(m_);
        room_.wait(lk, [&] { return q_.size() < 64 || !error_.empty(); });
        if (!error_.empty()) throw Error(error_);
        q_.push_back(std::move(job));
        work_.notify_one();
    }

    // Waits for every queued copy; the bytes copied, or the first error.
    uint64_t finish() {
        stop();
        if (!error_.empty()) throw Error(error_);
        return bytes_;
    }

private:
    void stop() {
        {
            std::lock_guard lk(m_);
            closing_ = true;
        }
        work_.notify_all();
        for (auto& t : threads_) t.join();
        threads_.clear();
    }

    void work() {
        std::vector<char> buf;
        bool cfr = true;
        for (;;) {
            Job job;
            {
                std::unique_lock lk(m_);
                work_.wait(lk, [&] { return !q_.empty() || closing_; });
                if (q_.empty() || !error_.empty()) return;
                job = std::move(q_.front());
                q_.pop_front();
                room_.notify_one();
            }
            try {
                for (const auto& p : job.pieces) copy(job, p, buf, cfr);
            } catch (const Error& e) {
                std::lock_guard lk(m_);
                if (error_.empty()) error_ = e.what();
                room_.notify_all();
                return;
            }
        }
    }

    void copy(const Job& job, const Piece& p, std::vector<char>& buf, bool& cfr) {
        loff_t in = static_cast<loff_t>(p.from), out = static_cast<loff_t>(p.to);
        uint64_t len = p.len;
        while (len > 0) {
            ssize_t n = cfr ? ::copy_file_range(job.src.get(), &in, img_, &out, len, 0) : -1;
            if (n < 0 && cfr && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) cfr = false;
            if (!cfr) {  // across file systems on old kernels, or special files
                if (buf.empty()) buf.resize(1 << 20);
                n = ::pread(job.src.get(), buf.data(), std::min<uint64_t>(len, buf.size()), in);
                if (n > 0) {
                    ssize_t w = ::pwrite(img_, buf.data(), static_cast<size_t>(n), out);
                    if (w < 0) throw_errno("cannot write " + image_, errno);
                    n = w;
                    in += n;
                    out += n;
                }
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) throw_errno("cannot copy " + job.path, errno);
            if (n == 0) throw Error("cannot copy " + job.path + ": it shrank while being copied");
            len -= static_cast<uint64_t>(n);
            uint64_t total = bytes_.fetch_add(static_cast<uint64_t>(n)) + static_cast<uint64_t>(n);
            if (progress_ && total >> 24 != (total - static_cast<uint64_t>(n)) >> 24) {
                std::lock_guard lk(m_);
                progress_(total);  // every 16 MiB
            }
        }
    }

    int img_ = -1;
    std::string image_;
    std::function<void(uint64_t)> progress_;
    std::mutex m_;
    std::condition_variable work_, room_;
    std::deque<Job> q_;
    bool closing_ = false;
    std::string error_;
    std::vector<std::thread> threads_;
    std::atomic<uint64_t> bytes_{0};
};

class Writer {
public:
    Writer(const std::string& image, uint64_t offset, const std::string& rootfs, const std::function<void(uint64_t)>& progress)
        : image_(image), offset_(offset), root_(rootfs) {
        static const bool messages = [] {
            initialize_ext2_error_table();  // error_message() text for EXT2_ET_*
            return true;
        }();
        (void)messages;
        while (root_.size() > 1 && root_.back() == '/') root_.pop_back();
        std::string opts = "offset=" + std::to_string(offset);
        check(ext2fs_open2(image.c_str(), opts.c_str(), EXT2_FLAG_RW | EXT2_FLAG_64BITS, 0, 0, unix_io_manager, &fs_),
              "cannot open the new file system in " + image);
        check(ext2fs_read_bitmaps(fs_), "cannot read the new file system's bitmaps");
        bs_ = fs_->blocksize;
        img_ = UniqueFd(::open(image.c_str(), O_WRONLY | O_CLOEXEC));
        if (!img_) throw_errno("cannot open " + image, errno);
        copier_.start(img_.get(), image, progress);
    }
    ~Writer() {
        if (fs_) ext2fs_free(fs_);  // an error: nothing flushed, the caller deletes the image
    }

    Ext4Stats run() {
        UniqueFd top(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!top) throw_errno("cannot open " + root_, errno);
        struct stat st;
        if (::fstat(top.get(), &st) < 0) throw_errno("cannot stat " + root_, errno);
        directory(top.get(), EXT2_ROOT_INO, "");
        set_attrs(EXT2_ROOT_INO, st);
        set_xattrs(EXT2_ROOT_INO, root_);
        ++stats_.entries;
        stats_.data_bytes = copier_.finish();
        ext2fs_mark_super_dirty(fs_);
        errcode_t e = ext2fs_close_free(&fs_);
        fs_ = nullptr;
        check(e, "cannot write the file system's metadata to " + image_);
        if (::fdatasync(img_.get()) < 0) throw_errno("cannot write " + image_, errno);
        return stats_;
    }

private:
    void check(errcode_t e, const std::string& what) {
        if (!e) return;
        if (e == EXT2_ET_BLOCK_ALLOC_FAIL || e == EXT2_ET_INODE_ALLOC_FAIL || e == EXT2_ET_DIR_NO_SPACE_FOR_CSUM)
            throw Error(what + ": the file system is full; give a larger --size (the default fits the tree)");
        throw Error(what + ": " + error_message(e));
    }

    std::string path(const std::string& rel) const { return root_ + rel; }

    // Adds NAME -> INO to DIR, growing the directory when it is full.
    void link(ext2_ino_t dir, const char* name, ext2_ino_t ino, int type, const std::string& rel) {
        errcode_t e = ext2fs_link(fs_, dir, name, ino, type);
        if (e == EXT2_ET_DIR_NO_SPACE) {
            check(ext2fs_expand_dir(fs_, dir), "cannot grow the directory holding " + rel);
            e = ext2fs_link(fs_, dir, name, ino, type);
        }
        check(e, "cannot add " + rel);
    }

    ext2_ino_t new_inode(ext2_ino_t dir, mode_t mode, const std::string& rel) {
        ext2_ino_t ino;
        check(ext2fs_new_inode(fs_, dir, static_cast<int>(mode), nullptr, &ino), "no inode for " + rel);
        return ino;
    }

    void read(ext2_ino_t ino, ext2_inode_large& in) {
        std::memset(&in, 0, sizeof in);
        check(ext2fs_read_inode_full(fs_, ino, reinterpret_cast<ext2_inode*>(&in), sizeof in), "cannot read inode");
    }
    void write(ext2_ino_t ino, ext2_inode_large& in) {
        check(ext2fs_write_inode_full(fs_, ino, reinterpret_cast<ext2_inode*>(&in), sizeof in), "cannot write inode");
    }

    void fill(ext2_inode_large& in, const struct stat& st) {
        in.i_mode = static_cast<uint16_t>(st.st_mode);
        in.i_uid = static_cast<uint16_t>(st.st_uid);
        ext2fs_set_i_uid_high(in, st.st_uid >> 16);
        in.i_gid = static_cast<uint16_t>(st.st_gid);
        ext2fs_set_i_gid_high(in, st.st_gid >> 16);
        if (in.i_extra_isize < sizeof(ext2_inode_large) - EXT2_GOOD_OLD_INODE_SIZE)
            in.i_extra_isize = sizeof(ext2_inode_large) - EXT2_GOOD_OLD_INODE_SIZE;
        set_time(in.i_atime, in.i_atime_extra, st.st_atim);
        set_time(in.i_mtime, in.i_mtime_extra, st.st_mtim);
        set_time(in.i_ctime, in.i_ctime_extra, st.st_ctim);
        set_time(in.i_crtime, in.i_crtime_extra, st.st_mtim);
    }

    void set_attrs(ext2_ino_t ino, const struct stat& st) {
        ext2_inode_large in;
        read(ino, in);
        fill(in, st);
        write(ino, in);
    }

    void set_xattrs(ext2_ino_t ino, const std::string& p) {
        ssize_t n = ::llistxattr(p.c_str(), nullptr, 0);
        if (n < 0 && (errno == ENOTSUP || errno == ENODATA)) return;
        if (n < 0) throw_errno("cannot list the xattrs of " + p, errno);
        if (n == 0) return;
        std::vector<char> names(static_cast<size_t>(n));
        n = ::llistxattr(p.c_str(), names.data(), names.size());
        if (n < 0) throw_errno("cannot list the xattrs of " + p, errno);
        ext2_xattr_handle* h = nullptr;
        check(ext2fs_xattrs_open(fs_, ino, &h), "cannot set the xattrs of " + p);
        struct Close {
            ext2_xattr_handle*& h;
            ~Close() {
                if (h) ext2fs_xattrs_close(&h);
            }
        } close{h};
        check(ext2fs_xattrs_read(h), "cannot set the xattrs of " + p);
        for (const char* name = names.data(); name < names.data() + n; name += std::strlen(name) + 1) {
            ssize_t len = ::lgetxattr(p.c_str(), name, value_.data(), value_.size());
            if (len < 0 && errno == ERANGE) {
                len = ::lgetxattr(p.c_str(), name, nullptr, 0);
                if (len >= 0) {
                    value_.resize(static_cast<size_t>(len));
                    len = ::lgetxattr(p.c_str(), name, value_.data(), value_.size());
                }
            }
            if (len < 0) throw_errno("cannot read xattr " + std::string(name) + " of " + p, errno);
            check(ext2fs_xattr_set(h, name, value_.data(), static_cast<size_t>(len)),
                  "cannot set xattr " + std::string(name) + " of " + p);
        }
        errcode_t e = ext2fs_xattrs_close(&h);
        h = nullptr;
        check(e, "cannot set the xattrs of " + p);
    }

    void directory(int dfd, ext2_ino_t dino, const std::string& rel) {
        std::vector<std::string> names;
        {
            int copy = ::dup(dfd);
            if (copy < 0) throw_errno("cannot read " + path(rel), errno);
            DIR* d = ::fdopendir(copy);
            if (!d) {
                ::close(copy);
                throw_errno("cannot read " + path(rel), errno);
            }
            errno = 0;
            while (dirent* de = ::readdir(d)) {
                if (std::strcmp(de->d_name, ".") != 0 && std::strcmp(de->d_name, "..") != 0) names.emplace_back(de->d_name);
                errno = 0;
            }
            int e = errno;
            ::closedir(d);
            if (e) throw_errno("cannot read " + path(rel), e);
        }
        std::sort(names.begin(), names.end());  // the same tree gives the same layout
        for (const auto& name : names) entry(dfd, dino, name, rel + "/" + name);
    }

    void entry(int dfd, ext2_ino_t dino, const std::string& name, const std::string& rel) {
        struct stat st;
        if (::fstatat(dfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) throw_errno("cannot stat " + path(rel), errno);
        int type = file_type(st.st_mode);
        if (!S_ISDIR(st.st_mode) && st.st_nlink > 1) {
            auto it = links_.find({st.st_dev, st.st_ino});
            if (it != links_.end()) {
                link(dino, name.c_str(), it->second, type, rel);
                ext2_inode_large in;
                read(it->second, in);
                ++in.i_links_count;
                write(it->second, in);
                return;
            }
        }
        ++stats_.entries;
        if (S_ISDIR(st.st_mode)) {
            ext2_ino_t ino = 0;
            // mkfs made lost+found; a tree that has one too gets it merged.
            if (dino == EXT2_ROOT_INO && name == "lost+found" &&
                ext2fs_lookup(fs_, dino, name.c_str(), static_cast<int>(name.size()), nullptr, &ino) == 0) {
            } else {
                ino = new_inode(dino, st.st_mode, rel);
                // Linked first (the name may need a bigger directory), then made.
                link(dino, name.c_str(), ino, type, rel);
                check(ext2fs_mkdir(fs_, dino, ino, nullptr), "cannot make directory " + rel);
            }
            UniqueFd sub(::openat(dfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
            if (!sub) throw_errno("cannot open " + path(rel), errno);
            directory(sub.get(), ino, rel);
            set_attrs(ino, st);
            set_xattrs(ino, path(rel));
            return;
        }
        ext2_ino_t ino = new_inode(dino, st.st_mode, rel);
        link(dino, name.c_str(), ino, type, rel);
        if (st.st_nlink > 1) links_[{st.st_dev, st.st_ino}] = ino;
        if (S_ISLNK(st.st_mode)) {
            std::string target(static_cast<size_t>(st.st_size) + 1, '\0');
            ssize_t n = ::readlinkat(dfd, name.c_str(), target.data(), target.size());
            if (n < 0) throw_errno("cannot read the symlink " + path(rel), errno);
            target.resize(static_cast<size_t>(n));
            check(ext2fs_symlink(fs_, dino, ino, nullptr, target.c_str()), "cannot make symlink " + rel);
            set_attrs(ino, st);
        } else {
            ext2_inode_large in;
            std::memset(&in, 0, sizeof in);
            fill(in, st);
            in.i_links_count = 1;
            if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
                // The kernel's old (8:8) and new (12:20) device encodings.
                unsigned ma = major(st.st_rdev), mi = minor(st.st_rdev);
                if (ma < 256 && mi < 256) {
                    in.i_block[0] = ma * 256 + mi;
                } else {
                    in.i_block[1] = (mi & 0xff) | (ma << 8) | ((mi & ~0xffu) << 12);
                }
            } else if (S_ISREG(st.st_mode) && ext2fs_has_feature_extents(fs_->super)) {
                in.i_flags |= EXT4_EXTENTS_FL;
                ext2_extent_handle_t eh;  // writes an empty extent tree header into i_block
                check(ext2fs_extent_open2(fs_, ino, reinterpret_cast<ext2_inode*>(&in), &eh), "cannot start extents of " + rel);
                ext2fs_extent_free(eh);
            }
            write(ino, in);
            ext2fs_inode_alloc_stats2(fs_, ino, +1, 0);
            if (S_ISREG(st.st_mode) && st.st_size > 0) data(dfd, name, ino, st, rel);
        }
        set_xattrs(ino, path(rel));
    }

    // Allocates the file's data ranges (holes stay holes) as initialised
    // extents, then copies each extent's bytes to where it lies in the image.
    void data(int dfd, const std::string& name, ext2_ino_t ino, const struct stat& st, const std::string& rel) {
        UniqueFd src(::openat(dfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
        if (!src) throw_errno("cannot read " + path(rel), errno);
        uint64_t size = static_cast<uint64_t>(st.st_size);
        std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [start, end) in bytes
        if (static_cast<uint64_t>(st.st_blocks) * 512 >= size) {
            ranges.push_back({0, size});  // not sparse: skip the seeking
        } else {
            off_t pos = 0;
            while (static_cast<uint64_t>(pos) < size) {
                off_t d = ::lseek(src.get(), pos, SEEK_DATA);
                if (d < 0 && errno == ENXIO) break;
                if (d < 0) {
                    ranges = {{0, size}};
                    break;
                }
                off_t h = ::lseek(src.get(), d, SEEK_HOLE);
                if (h < 0) h = static_cast<off_t>(size);
                ranges.push_back({static_cast<uint64_t>(d), std::min<uint64_t>(size, static_cast<uint64_t>(h))});
                pos = h;
            }
        }
        for (auto [a, b] : ranges) {
            blk64_t first = a / bs_, last = (b + bs_ - 1) / bs_;
            if (last > first)
                check(ext2fs_fallocate(fs_, EXT2_FALLOCATE_FORCE_INIT, ino, nullptr, ~0ULL, first, last - first),
                      "cannot allocate blocks for " + rel);
        }
        ext2_inode_large in;
        read(ino, in);
        check(ext2fs_inode_size_set(fs_, reinterpret_cast<ext2_inode*>(&in), size), "cannot size " + rel);
        write(ino, in);

        ext2_extent_handle_t eh;
        check(ext2fs_extent_open2(fs_, ino, reinterpret_cast<ext2_inode*>(&in), &eh), "cannot read extents of " + rel);
        struct Free {
            ext2_extent_handle_t h;
            ~Free() { ext2fs_extent_free(h); }
        } free_handle{eh};
        Copier::Job job{std::move(src), path(rel), {}};
        ext2fs_extent ex;
        errcode_t e = ext2fs_extent_get(eh, EXT2_EXTENT_ROOT, &ex);
        while (e == 0) {
            if ((ex.e_flags & EXT2_EXTENT_FLAGS_LEAF) && !(ex.e_flags & EXT2_EXTENT_FLAGS_SECOND_VISIT)) {
                uint64_t from = ex.e_lblk * bs_;
                uint64_t to = std::min<uint64_t>(size, (ex.e_lblk + ex.e_len) * bs_);
                if (to > from) job.pieces.push_back({from, offset_ + ex.e_pblk * bs_, to - from});
            }
            e = ext2fs_extent_get(eh, EXT2_EXTENT_NEXT, &ex);
        }
        if (e != EXT2_ET_EXTENT_NO_NEXT) check(e, "cannot read extents of " + rel);
        copier_.add(std::move(job));
    }

    std::string image_;
    uint64_t offset_;
    std::string root_;
    ext2_filsys fs_ = nullptr;
    uint64_t bs_ = 4096;
    UniqueFd img_;
    std::map<std::pair<dev_t, ino_t>, ext2_ino_t> links_;
    std::vector<char> value_ = std::vector<char>(4096);
    Ext4Stats stats_;
    Copier copier_;
};

}  // namespace

Ext4Stats populate_ext4(const std::string& image, uint64_t offset, const std::string& rootfs,
                        const std::function<void(uint64_t)>& progress) {
    Writer w(image, offset, rootfs, progress);
    return w.run();
}

}  // namespace ocivm::disk
