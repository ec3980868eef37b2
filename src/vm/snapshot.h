#pragma once
// VM snapshots (`ocivm snapshot`, `ocivm run --from-snapshot`): a running
// VM saved once and started again many times without a boot.
//
// A snapshot is a directory in the store, $OCIVM_HOME/snapshots/NAME:
//   snapshot.json  what a clone needs (SnapshotInfo)
//   vmstate        QEMU's device state (migration stream, x-ignore-shared:
//                  guest RAM is not in it)
//   ram            guest RAM, a sparse copy of the VM's memory file
//   kernel, initrd the boot files the VM was started with
//   root.erofs     the EROFS root disk (a hard link to the cache's where
//                  the file system allows)
// Clones map `ram` privately (copy-on-write): every page a clone has not
// written is shared with the others through the page cache, and the file
// never changes. Only VMs whose whole state lives in QEMU can be saved: an
// EROFS root (--root erofs), no bridge network (its addresses are per VM).
// Their -v shares use the stream transport (QEMU 7.2 cannot migrate
// vhost-user-fs): a clone serves the same host directories with servers of
// its own, and the guest's relay rebuilds its view of them (docs/vm.md).
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "util/unique_fd.h"

namespace ocivm::vm {

// The QEMU binary a snapshot was taken with: a device state only loads
// into the QEMU (and machine type) that wrote it.
struct QemuIdentity {
    std::string path, version;
    int64_t size = 0, mtime_ns = 0;
    bool same_binary(const QemuIdentity& o) const { return size == o.size && mtime_ns == o.mtime_ns; }
};

// A -v share of the snapshotted VM: its clones serve the same directory.
struct SnapshotShare {
    std::string host, guest;
    bool readonly = false, nodev = true, nosuid = true, noexec = false, writeback = false;
    // The source's server options, which every clone's server keeps.
    std::string cache;  // its cache mode ("" in older records: the default, auto)
    bool trusted_xattrs = false;
    // The share root when the snapshot was taken (0: not recorded). A clone
    // opens host with no symbolic link in any component and serves it only
    // if it is still this directory: the path alone could lead anywhere by
    // then (a parent its owner replaced with a link).
    uint64_t root_dev = 0, root_ino = 0;
};

// Bumped when a clone's device set changes: 2 = virtio-serial with 32 ports
// (stream shares). An older snapshot cannot load into today's devices.
// 3: the guest's relay knows the pause handshake (stream_protocol.h) and
// shares record their root's identity; an older snapshot's relay would
// take a pause frame for a broken stream.
inline constexpr int kSnapshotLayout = 3;

struct SnapshotInfo {
    std::string name;
    std::string dir;  // not stored: where it was found
    std::string created;
    std::string source;  // the VM it was taken of
    std::string image, rootfs;
    std::vector<std::string> command, env;
    std::string cwd = "/";
    uint32_t uid = 0, gid = 0;
    bool systemd = false;
    QemuIdentity qemu;
    std::string machine, accel;  // "microvm" / "q35"; "tcg" / "kvm"
    std::string memory;          // QEMU's -m, "512M"
    unsigned cpus = 1;
    std::string append;          // the kernel command line it booted with
    std::string network = "none";  // none or user (passt or slirp: the same guest side)
    std::vector<std::string> ports;  // the source VM's forwards (clones give their own)
    std::vector<SnapshotShare> shares;  // -v, served to every clone again
    int layout = kSnapshotLayout;     // as read from snapshot.json: 0 when it has none (older builds)
    uint64_t ram_bytes = 0;      // allocated in `ram`
    uint64_t state_bytes = 0;    // of `vmstate`
    double pause_ms = 0, save_ms = 0, copy_ms = 0;  // how long the source VM was paused, and its parts

    std::string to_json() const;
    static SnapshotInfo from_json(const std::string& text, const std::string& dir);  // throws Error
};

// $OCIVM_HOME/snapshots
std::string snapshots_dir();

// flock(2) on DIR/.lock (made 0700 and 0600 as needed): shared while a
// snapshot is written into DIR or a VM starts from one there (until QEMU
// has its files open), exclusive to remove (snapshot rm, prune), so
// neither ever pulls files from under the other. Blocks.
class SnapshotLock {
public:
    SnapshotLock(const std::string& dir, bool exclusive);
    SnapshotLock(SnapshotLock&&) = default;
    SnapshotLock& operator=(SnapshotLock&&) = default;

private:
    UniqueFd fd_;
};
// Letters, digits, '.', '_', '-', not starting with '.' or '-', at most 128:
// UsageError-worthy text when not, else "".
std::string snapshot_name_problem(const std::string& name);
// The snapshot called name; Error saying how to list them when there is none.
SnapshotInfo load_snapshot(const std::string& name);
std::vector<SnapshotInfo> list_snapshots();
// Error when there is no such snapshot.
void remove_snapshot(const std::string& name);
// Boot snapshots: $OCIVM_HOME/cache/boot-snapshots/KEY, one per set of VM
// options (vm/machine.cpp). prune removes them all (and what killed runs
// left half written); returns how many, and the bytes they held.
std::string boot_snapshots_dir();
std::pair<size_t, uint64_t> prune_boot_snapshots();
// Records share.host's (st_dev, st_ino), opened with no symbolic link in
// any component; Error when it cannot be.
void record_share_root(SnapshotShare& share);
// The directory a clone of snapshot may serve for share: opened with no
// symbolic link in any component, and the very directory the snapshot
// recorded. Error (naming the share and what to do) when not.
UniqueFd open_share_root(const SnapshotShare& share, const std::string& snapshot);
// Removes one boot snapshot directory (renamed away first); never throws.
void remove_boot_snapshot(const std::string& dir);
// At most this many boot snapshots are kept; saving one more removes the
// least recently used (each is about the RAM the guest had touched).
inline constexpr size_t kMaxBootSnapshots = 8;
void evict_boot_snapshots(size_t keep);
// Temporary and half-removed directories that killed ocivm processes left
// in the snapshots directory; call with the exclusive lock held.
size_t remove_stale_snapshot_dirs(const std::string& dir);

// The identity of the QEMU found as `qemu-system-x86_64` in PATH (what a
// clone would run); version left empty (only a running QEMU says it).
QemuIdentity local_qemu();
QemuIdentity qemu_identity_of(const std::string& path);
// Why a clone of s cannot run here with this machine type and accelerator
// ("" when it can): a different QEMU binary, machine or accelerator.
std::string restore_refusal(const SnapshotInfo& s, const std::string& machine, bool kvm_usable);

// Copies the data regions of `from` (SEEK_DATA/SEEK_HOLE) into a new file
// `to` of size `size`, leaving holes (and all-zero pages) as holes; not
// synced (the caller does, once the VM runs again). Returns the bytes copied.
uint64_t sparse_copy(int from, const std::string& to, uint64_t size);
// The RAM of a VM whose memory is mem_path mapped privately by QEMU (a
// clone): read through /proc/PID/mem where /proc/PID/maps has it, the
// pages the clone wrote included; written sparse to `to` like sparse_copy.
uint64_t copy_mapped_ram(pid_t pid, const std::string& mem_path, const std::string& to, uint64_t size);
// A hard link of from at to, or a copy where the file system refuses.
void link_or_copy(const std::string& from, const std::string& to);

}  // namespace ocivm::vm
