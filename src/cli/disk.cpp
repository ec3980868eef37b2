// ocivm disk create: an image's root file system written to a GPT disk
// image, without mounting anything.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include <linux/capability.h>

#include "cli/args.h"
#include "sandbox/sandbox.h"
#include "cli/commands.h"
#include "cli/import.h"
#include "cli/pull.h"
#include "disk/create.h"
#include "image/resolve.h"
#include "util/error.h"
#include "util/log.h"
#include "util/subprocess.h"
#include "vm/xfs_writer.h"

namespace ocivm::cli {

namespace {
const char kHelp[] = R"(Usage: ocivm disk create IMAGE OUTPUT [OPTIONS]

Writes IMAGE's root file system to OUTPUT, a disk image with a GPT and one
root partition (type "Linux root x86-64", a fresh PARTUUID), without
mounting anything on the host: the partition table by sfdisk, an empty
ext4 by mkfs.ext4, filled by ocivm through libext2fs (modes, owners,
nanosecond times, xattrs and ACLs, hard links, symlinks, device nodes,
fifos, sockets and sparse files kept; file data copied in whole extents).
IMAGE is as for 'ocivm run': a stored image name, an OCI layout, a root
file system directory, or a registry reference (pulled first, --pull).
'ocivm run --disk OUTPUT -- CMD' boots it.

Options:
      --format raw|qcow2   disk format (default raw; qcow2 via qemu-img)
      --size SIZE          whole disk size, e.g. 2G
                           (default: content + 25% + 64M)
      --fs ext4|xfs        file system (default ext4). xfs is written inside a
                           VM (mkfs.xfs, mount, cp -a there: nothing is mounted
                           on the host; needs xfsprogs and QEMU; slow without
                           KVM) since mkfs.xfs -p cannot keep hard links,
                           xattrs or times; at least 302M
      --label LABEL        file-system label (default ocivm-root)
      --pull POLICY        missing | always | never (default: missing): when to
                           pull IMAGE from its registry, as 'ocivm run --pull'
      --platform OS/ARCH   the platform pulled from an index
                           (default: linux/amd64)
      --tls-verify=false   no certificate check for the pull (default: true)
      --creds USER:PASS    registry credentials for the pull
      --authfile FILE      registry credentials from this auth.json
      --log-level LEVEL    trace | debug | info | warn | error (default: warn)
  -h, --help               show this help
The PARTUUID of the root partition is printed on stdout.
)";

// The programs the ext4 writer runs, as found on PATH now, by absolute path:
// its confined root shows /usr and each one found elsewhere (the file
// alone), not the rest of PATH. The directory part is resolved (no
// symbolic link), the name kept: mkfs.ext4 is mke2fs by another name, and
// tells the file system from it. A program that is missing stays a name:
// create_disk says what to install.
void resolve_disk_programs(disk::DiskOptions& o, std::vector<std::string>& programs) {
    for (std::string* tool : {&o.sfdisk, &o.mkfs_ext4, &o.qemu_img}) {
        if (tool == &o.qemu_img && o.format != "qcow2") continue;
        std::string found = find_program(*tool);
        if (found.empty()) continue;
        std::filesystem::path p(found);
        std::error_code ec;
        auto dir = std::filesystem::canonical(p.parent_path(), ec);
        if (ec) continue;
        *tool = (dir / p.filename()).string();
        programs.push_back(*tool);
    }
}

}  // namespace

int cmd_disk(int argc, char** argv) {
    bool help = false;
    disk::DiskOptions o;
    std::string log_level = "warn";
    PullFlags pull;
    std::vector<Option> opts = {
        {"format", 0, true, [&](const std::string& v) { o.format = v; }},
        {"size", 0, true, [&](const std::string& v) { o.size = parse_size("--size", v); }},
        {"fs", 0, true, [&](const std::string& v) { o.fs = v; }},
        {"label", 0, true, [&](const std::string& v) { o.label = v; }},
        {"log-level", 0, true, [&](const std::string& v) { log_level = v; }},
    };
    for (auto& o : pull.options(true)) opts.push_back(std::move(o));
    auto pos = parse_args("disk", argc, argv, 2, opts, &help);
    if (help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    setup_logging(log_level);
    if (pos.empty() || pos[0] != "create" || pos.size() != 3)
        throw UsageError{"usage: ocivm disk create IMAGE OUTPUT [--format raw|qcow2] [--size SIZE] [--fs ext4|xfs] [--label L]"};
    if (o.format != "raw" && o.format != "qcow2") throw UsageError{"invalid --format '" + o.format + "': use raw or qcow2"};
    if (o.fs != "ext4" && o.fs != "xfs") throw UsageError{"invalid --fs '" + o.fs + "': use ext4 or xfs"};
    // An OCI layout is imported by a confined child, like any import.
    pull.finish(log_level);
    auto img = image::resolve_image(pull_for_run(pos[1], pull.policy, pull.req), [&](const std::string& source) {
        return import_confined(source, "", log_level).digest;
    });
    // The ext4 writer reads a tree and writes one file (and its temporary
    // siblings) in OUTPUT's directory, the one place it may write: it
    // needs to read anything (dac_*). sys_admin only because listing and
    // reading trusted.* xattrs takes it, and only for a root file system
    // directory the user names, whose trusted.* the copy keeps; a stored
    // image has none (its importer cannot set them: it has no sys_admin),
    // so its writer goes without. With sys_admin the writer stays in its
    // own mount namespace and its seccomp filter refuses mount, unshare,
    // setns, swapon, quotactl, sethostname, bpf and the rest that
    // sys_admin would allow (docs/security.md). The xfs writer boots a VM
    // whose share server needs namespaces: it keeps what it has.
    // It sees only the tree it copies, OUTPUT's directory and the programs
    // it runs, each at its real path: OUTPUT and the tree are named by
    // those from here on.
    std::string output = pos[2];
    std::string rootfs = img.rootfs;
    if (o.fs == "ext4") {
        std::vector<int> keep = {CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER};
        if (img.kind == "rootfs directory") keep.push_back(CAP_SYS_ADMIN);
        std::filesystem::path out(pos[2]);
        std::string out_dir = out.parent_path().string();
        if (out_dir.empty()) out_dir = ".";
        std::error_code ec;
        auto real_dir = std::filesystem::canonical(out_dir, ec);
        if (ec) throw Error("cannot write " + pos[2] + ": " + out_dir + ": " + ec.message() + "; create the directory first");
        if (out.filename().empty() || out.filename() == "." || out.filename() == "..")
            throw UsageError{"OUTPUT " + pos[2] + " names a directory; give a file name, e.g. disk.raw"};
        // The writer may write OUTPUT's directory and read the tree: "/"
        // would be the whole host.
        if (real_dir == "/")
            throw UsageError{"OUTPUT " + pos[2] + " is in /, which the disk writer would then see whole and may write; "
                             "write it into a directory, e.g. /var/tmp/disk.raw"};
        output = (real_dir / out.filename()).string();
        rootfs = std::filesystem::canonical(img.rootfs, ec).string();
        if (ec) throw Error("image root " + img.rootfs + ": " + ec.message());
        if (rootfs == "/")
            throw UsageError{"IMAGE is /, the host's own root: the disk writer copies a root file system directory "
                             "of its own; copy what the disk should hold into one first"};
        // OUTPUT inside the tree would be copied into itself, and the tree
        // be writable to the writer.
        if ((real_dir.string() + "/").rfind(rootfs + "/", 0) == 0)
            throw UsageError{"OUTPUT " + pos[2] + " is inside IMAGE's tree " + rootfs +
                             ", which would be copied into the disk with it; write it elsewhere"};
        sandbox::ToolView view;
        view.writable.push_back(real_dir.string());
        view.readable.push_back(rootfs);
        resolve_disk_programs(o, view.programs);
        // A stored image's files are the store owner's (a user's import
        // keeps other owners in an xattr); a directory the user names may
        // hold anyone's.
        view.others_files = img.kind == "rootfs directory";
        sandbox::confine_tool("disk create", sandbox::SeccompProfile::DiskWriter, keep, view);
    }
    bool tty = ::isatty(2);
    o.write_xfs = vm::write_xfs_in_vm;
    auto r = disk::create_disk(rootfs, output, o, [tty](const std::string& s) {
        if (tty) std::fprintf(stderr, "\r\033[Kocivm: %s", s.c_str());
        else spdlog::info("{}", s);
    });
    if (tty) std::fputs("\r\033[K", stderr);
    std::printf("%s\n", r.partuuid.c_str());
    spdlog::info("wrote {} ({} bytes, root partition PARTUUID={})", output, r.size, r.partuuid);
    return 0;
}

}  // namespace ocivm::cli
