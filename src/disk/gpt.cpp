#include "disk/gpt.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "guest/protocol.h"
#include "util/error.h"
#include "util/paths.h"
#include "util/subprocess.h"
#include "util/unique_fd.h"

namespace ocivm::disk {

namespace {

constexpr size_t kHead = 1 << 20;  // the primary GPT lives in the first MiB

std::string first_mib(const std::string& disk) {
    UniqueFd fd(::open(disk.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) throw_errno("disk " + disk, errno, "give an existing disk image");
    std::string buf(kHead, '\0');
    ssize_t n = ::pread(fd.get(), buf.data(), buf.size(), 0);
    if (n < 0) throw_errno("reading " + disk, errno);
    buf.resize(static_cast<size_t>(n));
    if (buf.compare(0, 4, "QFI\xfb") != 0) return buf;
    // qcow2: let qemu-img read the guest view of the first MiB.
    std::string tmp = "/tmp/ocivm-gpt-" + std::to_string(::getpid());
    auto r = run_command({"qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=1M", "count=1", "if=" + disk, "of=" + tmp});
    if (!r.ok()) {
        ::unlink(tmp.c_str());
        throw Error("cannot read the qcow2 disk " + disk + " (" + r.why("qemu-img") + "; apt-get install qemu-utils)");
    }
    std::string data = read_file(tmp);
    ::unlink(tmp.c_str());
    return data;
}

}  // namespace

std::string root_partuuid(const std::string& disk) {
    std::string d = first_mib(disk);
    if (d.size() < 1024 || d.compare(512, 8, "EFI PART") != 0)
        throw Error("disk " + disk + " has no GPT; make it with 'ocivm disk create'");
    uint64_t lba;
    uint32_t n, size;
    std::memcpy(&lba, d.data() + 512 + 72, 8);
    std::memcpy(&n, d.data() + 512 + 80, 4);
    std::memcpy(&size, d.data() + 512 + 84, 4);
    if (size < 128 || lba * 512 + static_cast<uint64_t>(n) * size > d.size())
        throw Error("disk " + disk + " has a GPT ocivm cannot read (entries beyond the first MiB)");
    std::string first, linux_fs, root;
    for (uint32_t i = 0; i < n; ++i) {
        auto* e = reinterpret_cast<const unsigned char*>(d.data() + lba * 512 + static_cast<uint64_t>(i) * size);
        std::string type = guest::gpt_guid_text(e);
        if (type == "00000000-0000-0000-0000-000000000000") continue;
        std::string id = guest::gpt_guid_text(e + 16);
        if (first.empty()) first = id;
        if (linux_fs.empty() && type == "0fc63daf-8483-4772-8e79-3d69d8477de4") linux_fs = id;
        if (root.empty() && type == "4f68bce3-e8cd-4db1-96e7-fbcaf984b709") root = id;
    }
    if (!root.empty()) return root;
    if (!linux_fs.empty()) return linux_fs;
    if (!first.empty()) return first;
    throw Error("disk " + disk + " has no partitions");
}

}  // namespace ocivm::disk
