#pragma once
// One ephemeral VM: boots the kernel and ocivm's initramfs under QEMU with
// the image root (and each -v share) served by in-process virtio-fs
// servers, relays the command's stdio, and returns its exit status. Never
// hangs silently: a start that does not happen within the timeout ends in a
// diagnosis (stage, console, file-system requests, livelock verdict).
#include <string>
#include <vector>

#include "guest/protocol.h"
#include "net/network.h"

namespace ocivm::vm {

struct ShareSpec {
    std::string host, guest;
    bool readonly = false;
    // Writable shares default to nodev,nosuid: a guest cannot plant device
    // nodes or set-id files on the host. noexec is the guest mount's.
    bool nodev = true, nosuid = true, noexec = false;
    // The guest caches writes (`ocivm fsd --writeback`): for a directory
    // only this guest writes to while it runs.
    bool writeback = false;
    // The server keeps CAP_SYS_ADMIN to read trusted.* xattrs: only for
    // ocivm's own tools sharing a user's tree (the xfs writer's copy).
    bool trusted_xattrs = false;
    // A clone's share: the directory its snapshot recorded (st_dev, st_ino),
    // which the server checks again as it opens host (no symbolic links).
    uint64_t root_dev = 0, root_ino = 0;
};

struct MachineOptions {
    std::string rootfs;
    guest::GuestConfig guest;  // command, env, identity, mode; volumes filled in here
    std::vector<ShareSpec> shares;
    std::string memory = "512M";
    unsigned cpus = 1;
    std::string cache;  // "" = always for the read-only root, auto for shares
    double timeout_s = 120;
    bool timeout_given = false;
    std::string kernel;  // "", PATH or "image"
    std::vector<std::string> kargs;
    bool console = false;
    bool debug = false;  // --log-level debug: the kernel is not told to be quiet
    std::string trace;
    std::string name;
    bool rm = false;
    std::string machine = "microvm";
    bool root_erofs = false;  // --root erofs: the image as an EROFS disk, not a virtio-fs share
    // run --from-snapshot NAME: a clone of that snapshot (vm/snapshot.h)
    // instead of a boot; guest holds its command and identity, from the
    // snapshot, with this VM's name.
    std::string from_snapshot;
    // --no-snapshot-cache: boot even where a boot snapshot could be
    // restored (and save none).
    bool no_snapshot_cache = false;
    std::string disk;           // boot this disk (ocivm disk create) instead of rootfs
    std::string disk_partuuid;  // its root partition
    std::vector<std::string> attach;  // writable raw disks for the command (/dev/vda, ... after --disk)
    // What `ps` and `inspect` show as the image (the user's IMAGE).
    std::string image;
    // Detached (run -d): the command's output goes to stdout.log and
    // stderr.log in the state directory, and "ready NAME" is written to
    // ready_fd once the guest agent has greeted (then stdin, stdout and
    // stderr leave the caller's terminal).
    bool detach = false;
    int ready_fd = -1;
    // network: mode, -p forwards, --subnet; name, state dir and machine are set by run_machine
    net::NetworkOptions net;
};

// Runs the VM to its end; returns the exit status for ocivm (the command's,
// 128+N for a signal, 125 for ocivm's own failures, 126/127 as podman).
int run_machine(MachineOptions o);

// "ocivm-PID-XXXX": the name of a VM started without --name.
std::string random_name();

}  // namespace ocivm::vm
