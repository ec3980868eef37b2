#include "vm/xfs_writer.h"

#include <unistd.h>

#include "util/error.h"
#include "util/subprocess.h"
#include "vm/machine.h"

namespace ocivm::vm {

void write_xfs_in_vm(const std::string& image, const std::string& rootfs, const std::string& label) {
    if (label.size() > 12) throw Error("--label '" + label + "' is too long for xfs: at most 12 bytes");
    for (auto* tool : {"mkfs.xfs", "qemu-system-x86_64"})
        if (!have_program(tool))
            throw Error(std::string(tool) + " is missing: apt-get install xfsprogs qemu-system-x86 (--fs xfs is written in a VM)");
    MachineOptions m;
    m.rootfs = "/";  // the host's tools, read-only
    m.name = "ocivm-disk-" + std::to_string(::getpid());
    m.rm = true;
    m.memory = "1G";
    vm::ShareSpec src{rootfs, "/ocivm-src", true};
    src.trusted_xattrs = true;  // the copy keeps trusted.* xattrs too
    m.shares.push_back(src);
    m.attach.push_back(image);
    auto& g = m.guest;
    g.hostname = m.name;
    g.env = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LC_ALL=C"};
    // stdout is ocivm's (it prints the PARTUUID): everything goes to stderr.
    // cp keeps modes, owners, nanosecond times, hard links, xattrs (ACLs
    // with them) and holes; an xattr it cannot keep is an error, not a loss.
    g.argv = {"/bin/sh", "-ec",
              "exec 1>&2\n"
              "mkfs.xfs -q -f -L \"$1\" /dev/vda1\n"
              "mkdir -p /ocivm-dst\n"
              "mount -t xfs /dev/vda1 /ocivm-dst\n"
              "cp -dR --sparse=auto --preserve=mode,ownership,timestamps,links,xattr /ocivm-src/. /ocivm-dst/\n"
              "umount /ocivm-dst\n",
              "ocivm-xfs", label};
    int rc = run_machine(std::move(m));
    if (rc != 0)
        throw Error("writing the xfs file system failed in the VM (exit " + std::to_string(rc) +
                    "; its messages are above); --fs ext4 needs no VM");
}

}  // namespace ocivm::vm
