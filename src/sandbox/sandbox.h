#pragma once
// Confinement of a process that serves or parses something a guest or an
// image controls: namespaces, a pivot_root into a root of only what it needs,
// capabilities cut to what the job needs, no_new_privs, rlimits and a
// seccomp allow-list. The layers and what each one stops are in
// docs/security.md.
//
// Order of use in a server (each step needs the one before):
//   enter_namespaces()      fork into new user/mount/PID/network/IPC namespaces
//   open_share(dir)         the share as an fd, opened once
//   bind_root(fd)           a nodev,nosuid(,ro) copy of it, a mount of its own
//   ... open what the server needs through /proc or by path (the file system,
//       /proc/self/fd, /dev/fuse clones) ...
//   pivot_into(root)        the copy is now "/", nothing else of the host is visible
//   drop_privileges(caps)   capabilities, no_new_privs, rlimits
//   install_seccomp(...)    the allow-list, last
#include <string>
#include <vector>

#include "util/unique_fd.h"

namespace ocivm::sandbox {

enum class SeccompMode { Kill, Log, None };
// Parses kill|log|none; false on anything else.
bool parse_seccomp_mode(const std::string& s, SeccompMode& out);

// Forks the caller into new mount, PID, network, IPC and UTS namespaces (and,
// when not root, a user namespace that maps only the caller's uid and gid
// to themselves). Must be called while the process has one thread.
//
// The parent stays outside the new PID namespace as the child's keeper: it
// ignores nothing but waits for the child, turns SIGINT/SIGTERM/SIGHUP into
// SIGKILL for it, and exits with the child's exit code (128+N for a
// signal). It never returns. It shares the child's other namespaces, with
// its working directory at "/", which the child's pivot_into makes the
// share: nothing of the host's mount tree stays alive through it.
// The child returns: PID 1 of the new PID namespace, its mount tree a
// private copy (slave of the host's), a fresh /proc of the new PID
// namespace mounted on /proc, the loopback of an empty network namespace,
// killed if the keeper dies (PR_SET_PDEATHSIG, race-free).
// `who` names the process in error messages ("ocivm fsd").
void enter_namespaces(const std::string& who);

// The shared directory as an O_PATH fd, opened once from its resolved path
// (realpath) with no symbolic link allowed in any component: every later
// step works from this fd, so nobody who can change a parent directory can
// swap in another directory between the checks and the serving.
UniqueFd open_share(const std::string& real);

// A copy of the share's mount tree (with its submounts), nodev and nosuid
// (and read-only for a read-only share) for the kernel, attached on top of
// the share; returns an fd of its root, which pivot_into makes "/". Called
// in the new mount namespace: `real` (the path open_share was given) is
// opened again there and must still be the directory share_fd holds.
UniqueFd bind_root(int share_fd, const std::string& real, bool readonly);

// pivot_root into the copy bind_root made and detaches the old root:
// afterwards "/" is the share and no other host path can be named. Fds
// opened before stay valid. With cwd_proc_fd the working directory becomes
// /proc/self/fd (opened before the pivot), so path-only system calls
// (getxattr, chmod, ...) can name the server's fds as "N".
void pivot_into(int root_fd, bool cwd_proc_fd = false);

// Capabilities a file server keeps (numbers from <linux/capability.h>):
// chown, dac_override, dac_read_search, fowner, fsetid, setgid, setuid,
// mknod, setfcap; read-only shares keep dac_override and dac_read_search
// only; nodev drops mknod, nosuid drops fsetid and setfcap. As a user (in
// the sandbox's user namespace, which maps only the user's ids) the rest do
// nothing and go too: dac_override, dac_read_search and fsetid are kept.
std::vector<int> file_server_caps(bool readonly, bool nodev, bool nosuid);

// Keeps only `keep` in the effective, permitted and bounding sets (no
// inheritable, no ambient), sets no_new_privs, forbids core dumps (they
// would hold guest data) and locks the securebits so no exec could bring
// privileges back. Throws Error when the kernel refuses.
void drop_privileges(const std::vector<int>& keep);

// What a process may call once it serves or works.
enum class SeccompProfile {
    FileServer,  // fuse::Server + fs::Passthrough over vhost-user or /dev/fuse: an allow-list
    Importer,    // `ocivm image import`'s child: a deny-list (no mount, ptrace, bpf, keyctl, exec, socket, ...)
    DiskWriter,  // `ocivm disk create` and the mkfs/sfdisk/qemu-img it runs: the importer's list but exec
};

// Installs the profile's filter for every thread of the process (threads
// already running included). A call it refuses kills the process (Kill)
// after one line on stderr naming the system call and `who` (which must
// outlive the process: a literal), or is logged by the kernel (Log). The
// list of each profile and why is in docs/security.md.
void install_seccomp(SeccompMode mode, SeccompProfile profile, const char* who = "ocivm");

// What a confined tool sees of the host's files (as root, or as a user in a
// user namespace of its own): a root of its own, an empty read-only tmpfs,
// with nothing in it but these, each at its own absolute path:
struct ToolView {
    // Absolute paths without symbolic links (realpath): read-write, nodev,
    // nosuid, noexec. The importer's store; the disk writer's OUTPUT directory.
    std::vector<std::string> writable;
    // The same, read-only: the import's source; the tree the disk writer copies.
    std::vector<std::string> readable;
    // Programs the tool runs (absolute paths): /usr (and the merged-usr links
    // /bin, /sbin, /lib*), /etc/ld.so.cache and /etc/mke2fs.conf, read-only,
    // and each program outside /usr, the file alone, read-only, exec
    // allowed (its libraries must be in /usr). Empty: nothing can be run.
    std::vector<std::string> programs;
    // The fds it keeps above 2; every other is closed before anything else,
    // since a directory fd from outside would lead out of its root.
    std::vector<int> keep_fds;
    // What it reads holds files of users other than the caller (a root file
    // system directory the user names): as a user it then takes no user
    // namespace, in which those owners would read as nobody.
    bool others_files = false;
};

// Confines a tool that parses what it did not write, in its own process,
// before it reads a byte of it: `profile` is Importer (the child of
// cli::import_confined) or DiskWriter (`ocivm disk create`, which then runs
// sfdisk, mkfs.ext4 and qemu-img under the same confinement).
//
// As root: new PID, network, IPC, UTS and mount namespaces. The caller
// stays outside as the tool's keeper (enter_namespaces' keeper: it waits,
// passes SIGINT/SIGTERM/SIGHUP on as SIGKILL and leaves with the tool's
// exit status, never returning); the tool, PID 1 of its namespace, returns
// in a private mount namespace whose root is `view` (above), with /dev/null,
// zero, full, random and urandom and a /proc of its own PID namespace; then
// drop_privileges(keep) and the profile's seccomp filter. Paths in `view`
// are where they were, so the caller goes on with the same names; its
// working directory is "/".
// As a user, the tool first enters a user namespace that maps only its
// own uid and gid to themselves (the importer decides what it can chown by
// what the kernel lets it, so it behaves as before, except that owners
// among the user's supplementary groups now go to the override xattr: they
// are not mapped), gets the same view and keeps no capability in it. Where
// a user namespace cannot be had (disabled by a sysctl or an LSM) it logs a
// warning naming what is not confined and goes on with no_new_privs and
// the seccomp filter. With view.others_files (the disk writer of a root
// file system directory) a user's tool gets no namespaces (the owners of
// other users' files, which it copies, would read as nobody): no_new_privs
// and the filter.
// Must be called while the process has one thread. Logs what it did at
// info level; throws Error when the kernel refuses a step it relies on.
void confine_tool(const char* who, SeccompProfile profile, const std::vector<int>& keep, const ToolView& view);

// The capability numbers still effective in this process (for tests and
// `--log-level debug`).
unsigned long long effective_caps();

}  // namespace ocivm::sandbox
