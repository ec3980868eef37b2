#include "vm/kernel.h"

#include <dirent.h>
#include <elf.h>
#include <fcntl.h>
#include <lzma.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "util/error.h"
#include "util/hash.h"
#include "util/log.h"
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

std::string unxz(const char* p, size_t n) {
    lzma_stream s = LZMA_STREAM_INIT;
    if (lzma_stream_decoder(&s, UINT64_MAX, 0) != LZMA_OK) throw Error("xz: cannot initialise the decoder");
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
    } while (r == Z_OK);
    inflateEnd(&s);
    if (r != Z_STREAM_END) throw Error("gzip: the kernel's payload is corrupt");
    return out;
}

// Does this ELF carry Xen's PHYS32_ENTRY note (the PVH entry QEMU uses)?
bool has_pvh_note(const std::string& elf) {
    if (elf.size() < sizeof(Elf64_Ehdr) || elf.compare(0, 4, ELFMAG) != 0 || elf[EI_CLASS] != ELFCLASS64) return false;
    Elf64_Ehdr eh;
    std::memcpy(&eh, elf.data(), sizeof eh);
    for (unsigned i = 0; i < eh.e_phnum; ++i) {
        size_t off = eh.e_phoff + static_cast<size_t>(i) * eh.e_phentsize;
        if (off + sizeof(Elf64_Phdr) > elf.size()) return false;
        Elf64_Phdr ph;
        std::memcpy(&ph, elf.data() + off, sizeof ph);
        if (ph.p_type != PT_NOTE || ph.p_offset + ph.p_filesz > elf.size()) continue;
        size_t p = ph.p_offset, end = ph.p_offset + ph.p_filesz;
        while (p + sizeof(Elf64_Nhdr) <= end) {
            Elf64_Nhdr nh;
            std::memcpy(&nh, elf.data() + p, sizeof nh);
            size_t name_off = p + sizeof nh;
            size_t desc_off = name_off + ((nh.n_namesz + 3) & ~3u);
            if (nh.n_namesz == 4 && elf.compare(name_off, 3, "Xen") == 0 && nh.n_type == 18) return true;
            p = desc_off + ((nh.n_descsz + 3) & ~3u);
        }
    }
    return false;
}

// Decompresses a bzImage's payload into the cache, keyed by the file's
// identity; returns "" when the format is not one ocivm decompresses.
std::string cached_vmlinux(const std::string& bz, const std::string& cache) {
    struct stat st;
    if (::stat(bz.c_str(), &st) < 0) return {};
    Sha256 key;
    key.update(bz + "\n" + std::to_string(st.st_size) + "\n" + std::to_string(st.st_mtim.tv_sec) + "." +
               std::to_string(st.st_mtim.tv_nsec) + "\n" + std::to_string(st.st_ino));
    std::string dir = cache + "/kernels";
    std::string out = dir + "/" + key.hex().substr(0, 32) + ".vmlinux";
    if (::access(out.c_str(), R_OK) == 0) return out;
    if (::access((out + ".none").c_str(), F_OK) == 0) return {};  // known: nothing to gain
    std::string data = read_file(bz);
    make_dirs(dir);
    auto none = [&out]() {
        write_file_atomic(out + ".none", "");
        return std::string();
    };
    if (!is_bzimage(data)) return none();
    size_t setup_sects = static_cast<uint8_t>(data[0x1f1]);
    if (setup_sects == 0) setup_sects = 4;
    size_t payload = (setup_sects + 1) * 512 + le32(data, 0x248);
    size_t len = le32(data, 0x24c);
    if (payload + len > data.size() || len < 8) return none();
    const char* p = data.data() + payload;
    std::string elf;
    if (std::memcmp(p, "\xfd" "7zXZ", 5) == 0) elf = unxz(p, len);
    else if (static_cast<uint8_t>(p[0]) == 0x1f && static_cast<uint8_t>(p[1]) == 0x8b) elf = ungzip(p, len);
    else return none();
    if (!has_pvh_note(elf)) {
        spdlog::info("kernel {} has no PVH entry point; booting the compressed image", bz);
        return none();
    }
    write_file_atomic(out, elf);
    spdlog::info("cached the uncompressed kernel of {} at {}", bz, out);
    return out;
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
        for (auto* base : {"/usr/lib/modules", "/lib/modules"}) {
            std::string dir = image_root + base;
            for (auto& r : releases_newest_first(list_dir(dir))) {
                if (::access((dir + "/" + r + "/vmlinuz").c_str(), R_OK) == 0) {
                    k.source = dir + "/" + r + "/vmlinuz";
                    k.release = r;
                    k.modules_dir = dir + "/" + r;
                    break;
                }
            }
            if (!k.source.empty()) break;
        }
        if (k.source.empty())
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
    k.boot_path = k.source;
    std::string vmlinux = cached_vmlinux(k.source, cache);
    if (!vmlinux.empty()) {
        k.boot_path = vmlinux;
        k.pvh = true;
    }
    return k;
}

}  // namespace ocivm::vm
