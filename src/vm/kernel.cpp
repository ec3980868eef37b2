#include "vm/kernel.h"

#include <dirent.h>
#include <elf.h>
#include <fcntl.h>
#include <lzma.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <vector>

#include "util/error.h"
#include "util/hash.h"
#include "util/log.h"
#include "util/open_beneath.h"
#include "util/paths.h"
#include "util/unique_fd.h"

namespace ocivm::vm {

namespace {

uint32_t le32(const std::string& d, size_t off) {
    uint32_t v = 0;
    std::memcpy(&v, d.data() + off, 4);
    return v;
}
uint16_t le16(const std::string& d, size_t off) {
    uint16_t v = 0;
    std::memcpy(&v, d.data() + off, 2);
    return v;
}

bool is_bzimage(const std::string& d) {
    return d.size() > 0x260 && d.compare(0x202, 4, "HdrS") == 0;
}

std::string release_of(const std::string& d) {
    if (!is_bzimage(d)) return {};
    size_t off = static_cast<size_t>(le16(d, 0x20e)) + 0x200;
    if (off >= d.size()) return {};
    size_t end = d.find_first_of(" \0", off, 2);
    return end == std::string::npos ? std::string() : d.substr(off, end - off);
}

// What a kernel may cost to read and decompress: a vmlinuz is ~10 MiB and
// its vmlinux ~60 MiB; an image's kernel is the image's bytes, so past
// these it is refused rather than allowed to fill memory.
constexpr size_t kMaxKernel = 128u << 20;
constexpr size_t kMaxVmlinux = 256u << 20;
constexpr uint64_t kMaxXzMemory = 256u << 20;

std::string unxz(const char* p, size_t n) {
    lzma_stream s = LZMA_STREAM_INIT;
    if (lzma_stream_decoder(&s, kMaxXzMemory, 0) != LZMA_OK) throw Error("xz: cannot initialise the decoder");
    std::string out;
    std::vector<uint8_t> buf(1 << 20);
    s.next_in = reinterpret_cast<const uint8_t*>(p);
    s.avail_in = n;
    lzma_ret r;
    do {
        s.next_out = buf.data();
        s.avail_out = buf.size();
        r = lzma_code(&s, LZMA_FINISH);
        out.append(reinterpret_cast<char*>(buf.data()), buf.size() - s.avail_out);
        if (out.size() > kMaxVmlinux) {
            lzma_end(&s);
            throw Error("xz: the kernel's payload decompresses to more than " + std::to_string(kMaxVmlinux >> 20) + " MiB");
        }
    } while (r == LZMA_OK);
    lzma_end(&s);
    if (r != LZMA_STREAM_END) throw Error("xz: the kernel's payload is corrupt (lzma error " + std::to_string(r) + ")");
    return out;
}

std::string ungzip(const char* p, size_t n) {
    z_stream s{};
    if (inflateInit2(&s, 16 + MAX_WBITS) != Z_OK) throw Error("gzip: cannot initialise zlib");
    std::string out;
    std::vector<char> buf(1 << 20);
    s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(p));
    s.avail_in = static_cast<uInt>(n);
    int r;
    do {
        s.next_out = reinterpret_cast<Bytef*>(buf.data());
        s.avail_out = static_cast<uInt>(buf.size());
        r = inflate(&s, Z_NO_FLUSH);
        out.append(buf.data(), buf.size() - s.avail_out);
        if (out.size() > kMaxVmlinux) {
            inflateEnd(&s);
            throw Error("gzip: the kernel's payload decompresses to more than " + std::to_string(kMaxVmlinux >> 20) + " MiB");
        }
    } while (r == Z_OK);
    inflateEnd(&s);
    if (r != Z_STREAM_END) throw Error("gzip: the kernel's payload is corrupt");
    return out;
}

// Does this ELF carry Xen's PHYS32_ENTRY note (the PVH entry QEMU uses)?
// Every offset is checked by subtraction: the ELF may come from an image.
bool has_pvh_note(const std::string& elf) {
    if (elf.size() < sizeof(Elf64_Ehdr) || elf.compare(0, 4, ELFMAG) != 0 || elf[EI_CLASS] != ELFCLASS64) return false;
    Elf64_Ehdr eh;
    std::memcpy(&eh, elf.data(), sizeof eh);
    if (eh.e_phentsize < sizeof(Elf64_Phdr) || eh.e_phoff > elf.size()) return false;
    for (unsigned i = 0; i < eh.e_phnum; ++i) {
        uint64_t off = eh.e_phoff + static_cast<uint64_t>(i) * eh.e_phentsize;
        if (off > elf.size() || elf.size() - off < sizeof(Elf64_Phdr)) return false;
        Elf64_Phdr ph;
        std::memcpy(&ph, elf.data() + off, sizeof ph);
        if (ph.p_type != PT_NOTE || ph.p_offset > elf.size() || ph.p_filesz > elf.size() - ph.p_offset) continue;
        uint64_t p = ph.p_offset, end = ph.p_offset + ph.p_filesz;
        while (end - p >= sizeof(Elf64_Nhdr)) {
            Elf64_Nhdr nh;
            std::memcpy(&nh, elf.data() + p, sizeof nh);
            uint64_t name_off = p + sizeof nh;
            uint64_t name_len = (static_cast<uint64_t>(nh.n_namesz) + 3) & ~uint64_t{3};
            uint64_t desc_len = (static_cast<uint64_t>(nh.n_descsz) + 3) & ~uint64_t{3};
            if (nh.n_namesz == 4 && end - name_off >= 4 && elf.compare(name_off, 3, "Xen") == 0 && nh.n_type == 18) return true;
            if (name_len + desc_len > end - name_off) break;
            p = name_off + name_len + desc_len;
        }
    }
    return false;
}

std::string read_all(int fd, const std::string& what) {
    struct stat st;
    if (::fstat(fd, &st) < 0) throw_errno("reading " + what, errno);
    if (static_cast<uint64_t>(st.st_size) > kMaxKernel)
        throw Error("kernel " + what + " is " + std::to_string(st.st_size >> 20) + " MiB, more than the " +
                    std::to_string(kMaxKernel >> 20) + " MiB ocivm reads");
    std::string out(static_cast<size_t>(st.st_size), '\0');
    size_t got = 0;
    while (got < out.size()) {
        ssize_t n = ::pread(fd, out.data() + got, out.size() - got, static_cast<off_t>(got));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw_errno("reading " + what, errno);
        if (n == 0) break;
        got += static_cast<size_t>(n);
    }
    out.resize(got);
    return out;
}

struct Boot {
    std::string path;
    bool pvh = false;
};

// What QEMU boots for the kernel `source`, read only through fd: its
// payload decompressed into the cache when it has a PVH entry (keyed by
// the file's identity), else the file itself, or, with copy, a copy of it
// in the cache, so that QEMU never opens a path inside an image.
Boot boot_image(int fd, const std::string& source, const std::string& cache, bool copy) {
    struct stat st;
    if (::fstat(fd, &st) < 0) throw_errno("kernel " + source, errno);
    Sha256 key;
    key.update(source + "\n" + std::to_string(st.st_size) + "\n" + std::to_string(st.st_mtim.tv_sec) + "." +
               std::to_string(st.st_mtim.tv_nsec) + "\n" + std::to_string(st.st_ino) + "\n" + std::to_string(st.st_dev));
    std::string dir = cache + "/kernels";
    std::string out = dir + "/" + key.hex().substr(0, 32) + ".vmlinux";
    std::string copied = dir + "/" + key.hex().substr(0, 32) + ".vmlinuz";
    if (::access(out.c_str(), R_OK) == 0) return {out, true};
    bool known = ::access((out + ".none").c_str(), F_OK) == 0;  // known: nothing to gain
    if (known && !copy) return {source, false};
    if (known && ::access(copied.c_str(), R_OK) == 0) return {copied, false};
    std::string data = read_all(fd, source);
    make_dirs(dir);
    auto none = [&]() -> Boot {
        write_file_atomic(out + ".none", "");
        if (!copy) return {source, false};
        write_file_atomic(copied, data);
        return {copied, false};
    };
    if (!is_bzimage(data)) return none();
    size_t setup_sects = static_cast<uint8_t>(data[0x1f1]);
    if (setup_sects == 0) setup_sects = 4;
    size_t payload = (setup_sects + 1) * 512 + le32(data, 0x248);
    size_t len = le32(data, 0x24c);
    if (payload > data.size() || len > data.size() - payload || len < 8) return none();
    const char* p = data.data() + payload;
    std::string elf;
    if (std::memcmp(p, "\xfd" "7zXZ", 5) == 0) elf = unxz(p, len);
    else if (static_cast<uint8_t>(p[0]) == 0x1f && static_cast<uint8_t>(p[1]) == 0x8b) elf = ungzip(p, len);
    else return none();
    if (!has_pvh_note(elf)) {
        spdlog::info("kernel {} has no PVH entry point; booting the compressed image", source);
        return none();
    }
    write_file_atomic(out, elf);
    spdlog::info("cached the uncompressed kernel of {} at {}", source, out);
    return {out, true};
}

// Newest first by version-aware comparison of the release strings.
std::vector<std::string> releases_newest_first(std::vector<std::string> v) {
    std::sort(v.begin(), v.end(), [](const std::string& a, const std::string& b) {
        return ::strverscmp(a.c_str(), b.c_str()) > 0;
    });
    return v;
}

std::vector<std::string> list_dir(const std::string& dir) {
    std::vector<std::string> out;
    if (DIR* d = ::opendir(dir.c_str())) {
        while (dirent* e = ::readdir(d))
            if (e->d_name[0] != '.') out.push_back(e->d_name);
        ::closedir(d);
    }
    return out;
}

// The names in the directory rel beneath root (symlinks resolved inside it).
std::vector<std::string> list_dir_beneath(int root, const std::string& rel) {
    std::vector<std::string> out;
    int fd = openat2_fd(root, rel, O_RDONLY | O_DIRECTORY, kResolveInRoot);
    if (fd < 0) return out;
    DIR* d = ::fdopendir(fd);
    if (!d) {
        ::close(fd);
        return out;
    }
    while (dirent* e = ::readdir(d))
        if (e->d_name[0] != '.') out.push_back(e->d_name);
    ::closedir(d);
    return out;
}

// The path of the directory fd refers to, checked to name that directory.
std::string real_dir(int fd, const std::string& what) {
    char buf[PATH_MAX + 1];
    ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), buf, PATH_MAX);
    if (n <= 0) throw_errno(what + ": its path", n < 0 ? errno : ENOENT, "mount /proc");
    std::string path(buf, static_cast<size_t>(n));
    struct stat a, b;
    UniqueFd again(::open(path.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!again || ::fstat(fd, &a) < 0 || ::fstat(again.get(), &b) < 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino)
        throw Error(what + " moved while it was opened");
    return path;
}

}  // namespace

std::string bzimage_release(const std::string& path) {
    // The setup header and its version string sit in the first sectors.
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return {};
    std::string head(64 * 1024, '\0');
    ssize_t n = ::pread(fd.get(), head.data(), head.size(), 0);
    head.resize(n > 0 ? static_cast<size_t>(n) : 0);
    return release_of(head);
}

Kernel resolve_kernel(const std::string& spec, const std::string& image_root, const std::string& cache) {
    Kernel k;
    if (spec.empty()) {
        std::vector<std::string> rels;
        for (auto& f : list_dir("/boot"))
            if (f.rfind("vmlinuz-", 0) == 0) rels.push_back(f.substr(8));
        for (auto& r : releases_newest_first(rels)) {
            if (::access(("/lib/modules/" + r + "/modules.dep").c_str(), R_OK) == 0) {
                k.source = "/boot/vmlinuz-" + r;
                k.release = r;
                k.modules_dir = "/lib/modules/" + r;
                break;
            }
        }
        if (k.source.empty())
            throw Error("no guest kernel: /boot has no vmlinuz-* with modules in /lib/modules; "
                        "install one (apt-get install linux-image-amd64) or pass --kernel PATH");
    } else if (spec == "image") {
        // Everything of the image's kernel is read beneath the image root,
        // its symlinks resolved inside the image (RESOLVE_IN_ROOT): a
        // "vmlinuz -> /boot/vmlinuz-HOST" or a modules directory pointing
        // at the host's names the image's own files, never the host's.
        UniqueFd root(::open(image_root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
        if (!root) throw_errno("--kernel image: the image root " + image_root, errno);
        for (auto* base : {"usr/lib/modules", "lib/modules"}) {
            for (auto& r : releases_newest_first(list_dir_beneath(root.get(), base))) {
                std::string rel = std::string(base) + "/" + r;
                UniqueFd kp(openat2_fd(root.get(), rel + "/vmlinuz", O_PATH, kResolveInRoot));
                if (!kp) continue;
                UniqueFd kernel = open_regular_beneath(root.get(), rel + "/vmlinuz", kResolveInRoot,
                                                       "--kernel image: the image's /" + rel + "/vmlinuz");
                UniqueFd mods(openat2_fd(root.get(), rel, O_PATH | O_DIRECTORY, kResolveInRoot));
                if (!mods) throw_errno("--kernel image: the image's /" + rel, errno);
                k.source = image_root + "/" + rel + "/vmlinuz";
                k.release = r;
                // The initramfs builder reads the modules beneath this
                // directory (no symlinks): its real place in the image.
                k.modules_dir = real_dir(mods.get(), "--kernel image: the image's /" + rel);
                Boot b = boot_image(kernel.get(), k.source, cache, true);
                k.boot_path = b.path;
                k.pvh = b.pvh;
                return k;
            }
        }
        throw Error("--kernel image: the image has no /usr/lib/modules/*/vmlinuz; "
                    "use the host's kernel (omit --kernel) or pass --kernel PATH");
    } else {
        if (::access(spec.c_str(), R_OK) != 0)
            throw_errno("kernel " + spec, errno, "pass an existing kernel image to --kernel");
        k.source = spec;
        k.release = bzimage_release(spec);
        if (k.release.empty())
            throw Error("kernel " + spec + " is not a bzImage with a version string; pass a kernel "
                        "from /boot (its modules are taken from /lib/modules/RELEASE)");
        k.modules_dir = "/lib/modules/" + k.release;
        if (::access((k.modules_dir + "/modules.dep").c_str(), R_OK) != 0)
            throw Error("kernel " + spec + " is release " + k.release + " but " + k.modules_dir +
                        "/modules.dep is missing; install that kernel's modules");
    }
    UniqueFd fd(::open(k.source.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) throw_errno("kernel " + k.source, errno);
    Boot b = boot_image(fd.get(), k.source, cache, false);
    k.boot_path = b.path;
    k.pvh = b.pvh;
    return k;
}

}  // namespace ocivm::vm
