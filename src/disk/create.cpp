#include "disk/create.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>

#include "disk/ext4.h"
#include "util/error.h"
#include "util/paths.h"
#include "util/subprocess.h"
#include "util/unique_fd.h"

namespace ocivm::disk {

namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kStart = kMiB;  // partition start (2048 sectors)
constexpr uint64_t kTail = kMiB;   // room for the backup GPT

// Runs argv; returns "" or why it failed (the command's stderr).
std::string run(const std::vector<std::string>& argv, const std::string& input = "") {
    auto r = run_command(argv, input);
    return r.ok() ? "" : r.why(argv[0]);
}

// A new, empty file beside `output` that no other writer picked (its name
// and its fd): the confined writer is PID 1 of its own PID namespace, so a
// pid cannot tell two writers of the same OUTPUT apart.
struct Sibling {
    std::string path;
    UniqueFd fd;
};
Sibling new_sibling(const std::string& output, const char* tag) {
    std::random_device rd;
    for (int i = 0; i < 64; ++i) {
        char suffix[40];
        std::snprintf(suffix, sizeof suffix, ".%s.%08x", tag, static_cast<unsigned>(rd()));
        std::string p = output + suffix;
        UniqueFd fd(::open(p.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
        if (fd) return {p, std::move(fd)};
        if (errno != EEXIST) throw_errno("cannot create " + p, errno);
    }
    throw Error("cannot create a temporary file beside " + output + ": every name tried exists");
}

// Removes a file on every way out unless disarmed.
struct Cleanup {
    std::string path;
    ~Cleanup() {
        if (!path.empty()) ::unlink(path.c_str());
    }
};

std::string uuid4() {
    std::random_device rd;
    unsigned char b[16];
    for (auto& x : b) x = static_cast<unsigned char>(rd());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    char s[40];
    std::snprintf(s, sizeof s, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                  b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
    return s;
}

// An empty ext4 by mkfs.ext4 in the partition's bytes, filled by our writer.
void write_ext4(const std::string& mkfs, const std::string& raw, uint64_t part, const std::string& rootfs,
                const std::string& label, const std::function<void(const std::string&)>& say) {
    say("making the ext4 file system");
    // 256-byte inodes: nanosecond times and in-inode xattrs (small file
    // systems would otherwise get 128-byte ones); 4 KiB blocks like any root.
    if (auto e = run({mkfs, "-q", "-F", "-L", label, "-I", "256", "-b", "4096", "-E",
                      "offset=" + std::to_string(kStart), raw, std::to_string(part / 1024) + "k"});
        !e.empty())
        throw Error("mkfs.ext4: " + e);
    say("writing " + rootfs + " into it");
    auto stats = populate_ext4(raw, kStart, rootfs, [&](uint64_t bytes) {
        say("writing " + rootfs + " into it: " + std::to_string(bytes >> 20) + " MiB of file data");
    });
    say("wrote " + std::to_string(stats.entries) + " entries, " + std::to_string(stats.data_bytes >> 20) +
        " MiB of file data");
}

}  // namespace

uint64_t tree_size(const std::string& root) {
    uint64_t total = 0;
    std::set<std::pair<dev_t, ino_t>> seen;
    for (auto it = std::filesystem::recursive_directory_iterator(root); it != std::filesystem::recursive_directory_iterator(); ++it) {
        struct stat st;
        if (::lstat(it->path().c_str(), &st) < 0) continue;
        if (st.st_nlink > 1 && !S_ISDIR(st.st_mode) && !seen.insert({st.st_dev, st.st_ino}).second) continue;
        total += static_cast<uint64_t>(st.st_blocks) * 512 + 256;
    }
    return total;
}

DiskResult create_disk(const std::string& rootfs, const std::string& output, const DiskOptions& o,
                       const std::function<void(const std::string&)>& progress) {
    auto say = [&](const std::string& s) {
        if (progress) progress(s);
    };
    if (o.format != "raw" && o.format != "qcow2") throw Error("invalid --format '" + o.format + "': use raw or qcow2");
    if (o.fs != "ext4" && o.fs != "xfs") throw Error("invalid --fs '" + o.fs + "': use ext4 or xfs");
    bool xfs = o.fs == "xfs";
    for (auto* tool : {&o.sfdisk, &o.mkfs_ext4})
        if (!have_program(*tool)) throw Error(*tool + " is missing: apt-get install fdisk e2fsprogs");
    // mkfs.xfs refuses file systems under 300 MB.
    const uint64_t min_part = xfs ? 300 * kMiB : 16 * kMiB;
    if (o.format == "qcow2" && !have_program(o.qemu_img)) throw Error(o.qemu_img + " is missing: apt-get install qemu-utils");
    struct stat st;
    if (::stat(rootfs.c_str(), &st) < 0 || !S_ISDIR(st.st_mode)) throw Error("image root " + rootfs + " is not a directory");

    DiskResult r;
    uint64_t part;
    if (o.size) {
        if (o.size < min_part + kStart + kTail)
            throw Error("--size is too small: at least " + std::to_string((min_part + kStart + kTail) / kMiB) + "M for " + o.fs);
        part = (o.size - kStart - kTail) / kMiB * kMiB;
    } else {
        say("measuring the image");
        uint64_t content = tree_size(rootfs);
        // ext4's own metadata (inode tables, journal) plus room to write.
        part = ((content + content / 4 + 64 * kMiB) + kMiB - 1) / kMiB * kMiB;
        part = std::max(part, min_part);
    }
    r.size = kStart + part + kTail;
    r.partuuid = uuid4();
    Sibling made = new_sibling(output, o.format == "raw" ? "tmp" : "raw");
    const std::string raw = made.path;
    Cleanup cleanup{raw};
    if (::ftruncate(made.fd.get(), static_cast<off_t>(r.size)) < 0) throw_errno("cannot size " + raw, errno);
    made.fd.reset();
    say("partitioning (GPT, one root partition)");
    std::string table = "label: gpt\nstart=2048, size=" + std::to_string(part / 512) +
                        ", type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=" + r.partuuid + ", name=root\n";
    if (auto e = run({o.sfdisk, "--quiet", "--no-reread", "--no-tell-kernel", raw}, table); !e.empty())
        throw Error("sfdisk: " + e);
    if (xfs) {
        say("writing " + rootfs + " as xfs in a VM (mkfs.xfs, cp -a; nothing mounted on the host)");
        if (!o.write_xfs) throw Error("--fs xfs needs a VM to write it, and none was given");
        o.write_xfs(raw, rootfs, o.label);
    } else {
        write_ext4(o.mkfs_ext4, raw, part, rootfs, o.label, say);
    }
    if (o.format == "qcow2") {
        say("converting to qcow2");
        const std::string tmp = new_sibling(output, "tmp").path;
        Cleanup converted{tmp};
        if (auto e = run({o.qemu_img, "convert", "-f", "raw", "-O", "qcow2", raw, tmp}); !e.empty())
            throw Error("qemu-img: " + e);
        if (::rename(tmp.c_str(), output.c_str()) < 0) throw_errno("cannot write " + output, errno);
        converted.path.clear();
    } else {
        if (::rename(raw.c_str(), output.c_str()) < 0) throw_errno("cannot write " + output, errno);
        cleanup.path.clear();
    }
    return r;
}

}  // namespace ocivm::disk
