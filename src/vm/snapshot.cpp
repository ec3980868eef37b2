#include "vm/snapshot.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

#include "util/error.h"
#include "util/io.h"
#include "util/log.h"
#include "util/open_beneath.h"
#include "util/paths.h"
#include "util/unique_fd.h"

namespace ocivm::vm {

using json = nlohmann::ordered_json;

std::string SnapshotInfo::to_json() const {
    json shares_json = json::array();
    for (auto& s : shares)
        shares_json.push_back({{"host", s.host}, {"guest", s.guest}, {"readonly", s.readonly}, {"nodev", s.nodev},
                               {"nosuid", s.nosuid}, {"noexec", s.noexec}, {"writeback", s.writeback},
                               {"cache", s.cache}, {"trusted_xattrs", s.trusted_xattrs},
                               {"root_dev", s.root_dev}, {"root_ino", s.root_ino}});
    json j = {{"layout", layout},{"name", name},
              {"created", created},
              {"source", source},
              {"image", image},
              {"rootfs", rootfs},
              {"command", command},
              {"env", env},
              {"cwd", cwd},
              {"uid", uid},
              {"gid", gid},
              {"systemd", systemd},
              {"qemu", {{"path", qemu.path}, {"version", qemu.version}, {"size", qemu.size}, {"mtime_ns", qemu.mtime_ns}}},
              {"machine", machine},
              {"accel", accel},
              {"memory", memory},
              {"cpus", cpus},
              {"append", append},
              {"network", network},
              {"ports", ports},
              {"shares", shares_json},
              {"ram_bytes", ram_bytes},
              {"state_bytes", state_bytes},
              {"timings_ms", {{"paused", pause_ms}, {"save_state", save_ms}, {"copy_ram", copy_ms}}}};
    return j.dump(2) + "\n";
}

SnapshotInfo SnapshotInfo::from_json(const std::string& text, const std::string& dir) {
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) throw Error(dir + "/snapshot.json is not a snapshot record");
    SnapshotInfo s;
    s.dir = dir;
    try {
        s.name = j.value("name", "");
        s.created = j.value("created", "");
        s.source = j.value("source", "");
        s.image = j.value("image", "");
        s.rootfs = j.value("rootfs", "");
        s.command = j.value("command", std::vector<std::string>{});
        s.env = j.value("env", std::vector<std::string>{});
        s.cwd = j.value("cwd", "/");
        s.uid = j.value("uid", 0u);
        s.gid = j.value("gid", 0u);
        s.systemd = j.value("systemd", false);
        const json& q = j.at("qemu");
        s.qemu.path = q.value("path", "");
        s.qemu.version = q.value("version", "");
        s.qemu.size = q.value("size", int64_t{0});
        s.qemu.mtime_ns = q.value("mtime_ns", int64_t{0});
        s.machine = j.at("machine").get<std::string>();
        s.accel = j.at("accel").get<std::string>();
        s.memory = j.at("memory").get<std::string>();
        s.cpus = j.value("cpus", 1u);
        s.append = j.at("append").get<std::string>();
        s.network = j.value("network", "none");
        s.ports = j.value("ports", std::vector<std::string>{});
        s.layout = j.value("layout", 0);
        if (j.contains("shares")) {
            for (const json& sh : j.at("shares")) {
                SnapshotShare x;
                x.host = sh.at("host").get<std::string>();
                x.guest = sh.at("guest").get<std::string>();
                x.readonly = sh.value("readonly", false);
                x.nodev = sh.value("nodev", true);
                x.nosuid = sh.value("nosuid", true);
                x.noexec = sh.value("noexec", false);
                x.writeback = sh.value("writeback", false);
                x.cache = sh.value("cache", "");
                x.trusted_xattrs = sh.value("trusted_xattrs", false);
                x.root_dev = sh.value("root_dev", uint64_t{0});
                x.root_ino = sh.value("root_ino", uint64_t{0});
                if (x.host.empty() || x.host[0] != '/' || x.guest.empty() || x.guest[0] != '/')
                    throw Error(dir + "/snapshot.json: a share without absolute host and guest paths");
                s.shares.push_back(x);
            }
        }
        s.ram_bytes = j.value("ram_bytes", uint64_t{0});
        s.state_bytes = j.value("state_bytes", uint64_t{0});
        if (j.contains("timings_ms") && j["timings_ms"].is_object()) {
            s.pause_ms = j["timings_ms"].value("paused", 0.0);
            s.save_ms = j["timings_ms"].value("save_state", 0.0);
            s.copy_ms = j["timings_ms"].value("copy_ram", 0.0);
        }
    } catch (const json::exception& e) {
        throw Error(dir + "/snapshot.json is incomplete (" + e.what() + "); remove it with 'ocivm snapshot rm'");
    }
    // What reaches QEMU's command line has the form ocivm writes, and what
    // `ls` prints has no control characters (a crafted file is no escape).
    auto bad = [&](const std::string& what) {
        return Error(dir + "/snapshot.json: " + what + "; remove it with 'ocivm snapshot rm' (or 'snapshot prune')");
    };
    if (!snapshot_name_problem(s.name).empty()) throw bad("a bad name");
    if (s.memory.size() < 2 || s.memory.size() > 8 || s.memory.back() != 'M' ||
        s.memory.find_first_not_of("0123456789") != s.memory.size() - 1)
        throw bad("a bad memory size '" + s.memory.substr(0, 16) + "'");
    if (s.cpus < 1 || s.cpus > 64) throw bad("a bad CPU count");
    for (char ch : s.append)
        if (static_cast<unsigned char>(ch) < 0x20 || static_cast<unsigned char>(ch) >= 0x7f) throw bad("a bad kernel command line");
    for (std::string* f : {&s.source, &s.image, &s.created, &s.qemu.version})
        for (char& ch : *f)
            if (static_cast<unsigned char>(ch) < 0x20 || static_cast<unsigned char>(ch) == 0x7f) ch = '?';
    if (s.machine != "microvm" && s.machine != "q35") throw Error(dir + "/snapshot.json: unknown machine " + s.machine);
    if (s.accel != "tcg" && s.accel != "kvm") throw Error(dir + "/snapshot.json: unknown accelerator " + s.accel);
    if (s.network != "none" && s.network != "user") throw Error(dir + "/snapshot.json: unknown network " + s.network);
    return s;
}

std::string snapshots_dir() { return ocivm_home() + "/snapshots"; }

SnapshotLock::SnapshotLock(const std::string& dir, bool exclusive) {
    make_dirs(dir, 0700);
    fd_ = UniqueFd(::open((dir + "/.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!fd_) throw_errno("cannot open " + dir + "/.lock", errno);
    int r;
    do r = ::flock(fd_.get(), exclusive ? LOCK_EX : LOCK_SH);
    while (r < 0 && errno == EINTR);
    if (r < 0) throw_errno("cannot lock " + dir + "/.lock", errno);
}

size_t remove_stale_snapshot_dirs(const std::string& dir) {
    size_t n = 0;
    DIR* d = ::opendir(dir.c_str());
    if (!d) return 0;
    std::vector<std::string> stale;
    while (dirent* e = ::readdir(d)) {
        std::string name = e->d_name;
        for (const char* prefix : {".tmp-", ".rm-", ".prune-", ".broken-"})
            if (name.rfind(prefix, 0) == 0) stale.push_back(name);
    }
    ::closedir(d);
    for (auto& name : stale) {
        std::error_code ec;
        std::filesystem::remove_all(dir + "/" + name, ec);
        n += !ec;
    }
    return n;
}

std::string snapshot_name_problem(const std::string& name) {
    if (name.empty() || name.size() > 128 || name[0] == '.' || name[0] == '-')
        return "invalid snapshot name '" + name + "': 1 to 128 letters, digits, '.', '_' or '-', not starting with '.' or '-'";
    for (char ch : name)
        if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '_' && ch != '-')
            return "invalid snapshot name '" + name + "': only letters, digits, '.', '_' and '-'";
    return "";
}

SnapshotInfo load_snapshot(const std::string& name) {
    if (std::string why = snapshot_name_problem(name); !why.empty()) throw Error(why);
    std::string dir = snapshots_dir() + "/" + name;
    std::string text;
    try {
        text = read_file(dir + "/snapshot.json");
    } catch (const Error&) {
        throw Error("no snapshot named '" + name + "'; 'ocivm snapshot ls' lists them");
    }
    SnapshotInfo s = SnapshotInfo::from_json(text, dir);
    if (s.name != name) throw Error(dir + "/snapshot.json names another snapshot ('" + s.name + "')");
    return s;
}

std::vector<SnapshotInfo> list_snapshots() {
    std::vector<SnapshotInfo> out;
    DIR* d = ::opendir(snapshots_dir().c_str());
    if (!d) return out;
    while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (!snapshot_name_problem(n).empty()) continue;  // ".", "..", and ".NAME.tmp" being written
        if (n == "lost+found") continue;
        try {
            out.push_back(load_snapshot(n));
        } catch (const Error& e) {
            spdlog::warn("skipping snapshot '{}': {}", n, e.what());
        }
    }
    ::closedir(d);
    std::sort(out.begin(), out.end(), [](const SnapshotInfo& a, const SnapshotInfo& b) { return a.name < b.name; });
    return out;
}

void remove_snapshot(const std::string& name) {
    if (std::string why = snapshot_name_problem(name); !why.empty()) throw Error(why);
    std::string dir = snapshots_dir() + "/" + name;
    SnapshotLock lock(snapshots_dir(), true);  // no clone is starting from it, none is being written
    remove_stale_snapshot_dirs(snapshots_dir());
    struct stat st;
    if (::lstat(dir.c_str(), &st) < 0 || !S_ISDIR(st.st_mode))
        throw Error("no snapshot named '" + name + "'; 'ocivm snapshot ls' lists them");
    // Renamed away first: a clone starting now finds it whole or not at all.
    std::string gone = snapshots_dir() + "/.rm-" + name + "-" + std::to_string(::getpid());
    if (::rename(dir.c_str(), gone.c_str()) < 0) throw_errno("cannot remove snapshot " + name, errno);
    std::error_code ec;
    std::filesystem::remove_all(gone, ec);
    if (ec) throw Error("cannot remove " + gone + ": " + ec.message());
}

namespace {

// host as a directory, with no symbolic link (nor /proc magic link) in any
// component; -errno on failure.
int open_no_symlinks(const std::string& host) {
    int fd = openat2_fd(AT_FDCWD, host, O_PATH | O_DIRECTORY | O_CLOEXEC, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
    return fd < 0 ? -errno : fd;
}

}  // namespace

void record_share_root(SnapshotShare& share) {
    int fd = open_no_symlinks(share.host);
    if (fd < 0)
        throw_errno("cannot record shared directory " + share.host, -fd,
                    -fd == ELOOP ? "a component of it is a symbolic link now; check who can change its parents"
                                 : "check that it still exists");
    UniqueFd f(fd);
    struct stat st;
    if (::fstat(f.get(), &st) < 0) throw_errno("fstat of shared directory " + share.host, errno);
    share.root_dev = static_cast<uint64_t>(st.st_dev);
    share.root_ino = static_cast<uint64_t>(st.st_ino);
}

UniqueFd open_share_root(const SnapshotShare& share, const std::string& snapshot) {
    std::string what = "snapshot '" + snapshot + "' shares " + share.host + " as " + share.guest;
    int fd = open_no_symlinks(share.host);
    if (fd == -ELOOP)
        throw Error(what + ", and a component of that path is a symbolic link now: it could lead to any directory, "
                           "so the clone is refused; put the directory back, or take another snapshot");
    if (fd < 0)
        throw Error(what + ", which is no longer a directory (" + std::strerror(-fd) +
                    "); create it again or take another snapshot");
    UniqueFd f(fd);
    struct stat st;
    if (::fstat(f.get(), &st) < 0) throw_errno("fstat of shared directory " + share.host, errno);
    if (share.root_dev == 0 && share.root_ino == 0)
        throw Error(what + ", but does not record which directory that was (a snapshot of an older build); "
                           "take it again");
    if (static_cast<uint64_t>(st.st_dev) != share.root_dev || static_cast<uint64_t>(st.st_ino) != share.root_ino)
        throw Error(what + ", but that path is another directory now (device:inode " + std::to_string(st.st_dev) +
                    ":" + std::to_string(st.st_ino) + ", not " + std::to_string(share.root_dev) + ":" +
                    std::to_string(share.root_ino) + "): it was replaced since the snapshot, so the clone is "
                    "refused; take another snapshot to share the new one");
    return f;
}

std::string boot_snapshots_dir() { return cache_dir() + "/boot-snapshots"; }

void remove_boot_snapshot(const std::string& dir) {
    std::string gone = boot_snapshots_dir() + "/.broken-" + std::to_string(::getpid()) + "-" +
                       dir.substr(dir.rfind('/') + 1);
    std::error_code ec;
    if (::rename(dir.c_str(), gone.c_str()) == 0) std::filesystem::remove_all(gone, ec);
}

namespace {

uint64_t bytes_of(const std::string& dir) {
    uint64_t bytes = 0;
    std::error_code ec;
    for (auto& f : std::filesystem::recursive_directory_iterator(dir, ec)) {
        struct stat st;
        if (::lstat(f.path().c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 1)
            bytes += static_cast<uint64_t>(st.st_blocks) * 512;
    }
    return bytes;
}

// The boot snapshots (not .lock, not the dot-directories of runs).
std::vector<std::string> boot_snapshot_names() {
    std::vector<std::string> names;
    DIR* d = ::opendir(boot_snapshots_dir().c_str());
    if (!d) return names;
    while (dirent* e = ::readdir(d))
        if (e->d_name[0] != '.') names.push_back(e->d_name);
    ::closedir(d);
    return names;
}

}  // namespace

std::pair<size_t, uint64_t> prune_boot_snapshots() {
    std::string top = boot_snapshots_dir();
    if (::access(top.c_str(), F_OK) != 0) return {0, 0};
    SnapshotLock lock(top, true);  // no run is restoring or saving one now
    remove_stale_snapshot_dirs(top);
    size_t count = 0;
    uint64_t bytes = 0;
    for (auto& n : boot_snapshot_names()) {
        bytes += bytes_of(top + "/" + n);
        std::error_code ec;
        std::filesystem::remove_all(top + "/" + n, ec);
        count += !ec;
    }
    return {count, bytes};
}

void evict_boot_snapshots(size_t keep) {
    std::string top = boot_snapshots_dir();
    // snapshot.json's mtime: when it was saved, or last restored (the
    // restoring run touches it).
    std::vector<std::pair<int64_t, std::string>> by_use;
    for (auto& n : boot_snapshot_names()) {
        struct stat st{};
        if (::stat((top + "/" + n + "/snapshot.json").c_str(), &st) < 0) continue;
        by_use.push_back({static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec, n});
    }
    if (by_use.size() <= keep) return;
    std::sort(by_use.begin(), by_use.end());
    for (size_t i = 0; i + keep < by_use.size(); ++i) remove_boot_snapshot(top + "/" + by_use[i].second);
}

QemuIdentity qemu_identity_of(const std::string& path) {
    QemuIdentity q;
    char real[4096];
    q.path = ::realpath(path.c_str(), real) ? real : path;
    struct stat st;
    if (::stat(q.path.c_str(), &st) == 0) {
        q.size = st.st_size;
        q.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    }
    return q;
}

QemuIdentity local_qemu() {
    const char* path = std::getenv("PATH");
    std::string p = path ? path : "/usr/bin:/bin";
    for (size_t a = 0; a <= p.size();) {
        size_t e = p.find(':', a);
        if (e == std::string::npos) e = p.size();
        std::string cand = (e > a ? p.substr(a, e - a) : ".") + "/qemu-system-x86_64";
        if (::access(cand.c_str(), X_OK) == 0) return qemu_identity_of(cand);
        a = e + 1;
    }
    return {};
}

std::string restore_refusal(const SnapshotInfo& s, const std::string& machine, bool kvm_usable) {
    if (s.layout != kSnapshotLayout)
        return "snapshot '" + s.name + "' was taken by " + (s.layout < kSnapshotLayout ? "an older" : "a newer") +
               " ocivm whose VMs have another device set; take it again";
    QemuIdentity here = local_qemu();
    if (here.path.empty()) return "QEMU is not installed (apt-get install qemu-system-x86)";
    if (!here.same_binary(s.qemu))
        return "snapshot '" + s.name + "' was taken with another QEMU binary (" + s.qemu.path + ", QEMU " +
               (s.qemu.version.empty() ? "?" : s.qemu.version) + ", " + std::to_string(s.qemu.size) +
               " bytes); this host runs " + here.path + " (" + std::to_string(here.size) +
               " bytes, another build or version): a device state loads only into the QEMU that wrote it; "
               "take the snapshot again";
    if (!machine.empty() && machine != s.machine)
        return "snapshot '" + s.name + "' is of a " + s.machine + " machine, not " + machine +
               "; drop --machine or take a snapshot of a " + machine + " VM";
    if (s.accel == "kvm" && !kvm_usable)
        return "snapshot '" + s.name + "' was taken under KVM, which is not usable here; take it again under TCG";
    return "";
}

namespace {

// Writes the pages of buf[0, n) that are not all zero to out at offset at
// (the zero ones stay holes); returns the bytes written.
uint64_t write_nonzero_pages(int out, const std::string& to, const char* buf, size_t n, off_t at) {
    constexpr size_t kPage = 4096;
    auto zero_page = [&](size_t off) {
        size_t end = std::min(off + kPage, n);
        for (size_t i = off; i < end; ++i)
            if (buf[i]) return false;
        return true;
    };
    uint64_t written = 0;
    for (size_t off = 0; off < n;) {
        if (zero_page(off)) {
            off += kPage;
            continue;
        }
        size_t run = off;
        while (run < n && !zero_page(run)) run += kPage;
        run = std::min(run, n);
        if (::pwrite(out, buf + off, run - off, at + static_cast<off_t>(off)) != static_cast<ssize_t>(run - off))
            throw_errno("writing " + to, errno);
        written += run - off;
        off = run;
    }
    return written;
}

UniqueFd new_sized_file(const std::string& to, uint64_t size) {
    UniqueFd out(::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!out) throw_errno("cannot create " + to, errno);
    if (::ftruncate(out.get(), static_cast<off_t>(size)) < 0) throw_errno("cannot size " + to, errno);
    return out;
}

// Copies [from, to) of fd (read at fd_offset + i) to out at out_offset + i.
uint64_t copy_range(int fd, off_t from, off_t to, int out, const std::string& out_path, off_t out_offset,
                    std::vector<char>& buf) {
    uint64_t copied = 0;
    for (off_t at = from; at < to;) {
        size_t want = static_cast<size_t>(std::min<off_t>(to - at, static_cast<off_t>(buf.size())));
        ssize_t r = ::pread(fd, buf.data(), want, at);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) throw_errno("reading the VM's memory", r < 0 ? errno : EIO);
        copied += write_nonzero_pages(out, out_path, buf.data(), static_cast<size_t>(r), out_offset + (at - from));
        at += r;
    }
    return copied;
}

}  // namespace

uint64_t sparse_copy(int from, const std::string& to, uint64_t size) {
    UniqueFd out = new_sized_file(to, size);
    std::vector<char> buf(1 << 20);
    uint64_t copied = 0;
    off_t pos = 0;
    while (static_cast<uint64_t>(pos) < size) {
        off_t data = ::lseek(from, pos, SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) break;  // only a hole is left
            throw_errno("SEEK_DATA on the VM's memory", errno);
        }
        off_t hole = ::lseek(from, data, SEEK_HOLE);
        if (hole < 0) throw_errno("SEEK_HOLE on the VM's memory", errno);
        hole = std::min<off_t>(hole, static_cast<off_t>(size));
        copied += copy_range(from, data, hole, out.get(), to, data, buf);
        pos = hole;
    }
    return copied;
}

uint64_t copy_mapped_ram(pid_t pid, const std::string& mem_path, const std::string& to, uint64_t size) {
    char real[4096];
    std::string want = ::realpath(mem_path.c_str(), real) ? real : mem_path;
    std::string maps = read_file("/proc/" + std::to_string(pid) + "/maps");
    UniqueFd mem(::open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY | O_CLOEXEC));
    if (!mem) throw_errno("cannot read QEMU's memory (/proc/" + std::to_string(pid) + "/mem)", errno);
    UniqueFd out = new_sized_file(to, size);
    std::vector<char> buf(1 << 20);
    uint64_t copied = 0, covered = 0;
    for (size_t a = 0; a < maps.size();) {
        size_t e = maps.find('\n', a);
        if (e == std::string::npos) e = maps.size();
        std::string line = maps.substr(a, e - a);
        a = e + 1;
        unsigned long long lo = 0, hi = 0, off = 0;
        int path_at = 0;
        if (std::sscanf(line.c_str(), "%llx-%llx %*s %llx %*s %*s %n", &lo, &hi, &off, &path_at) < 3 || !path_at) continue;
        if (line.compare(static_cast<size_t>(path_at), std::string::npos, want) != 0 || hi <= lo || off + (hi - lo) > size)
            continue;
        copied += copy_range(mem.get(), static_cast<off_t>(lo), static_cast<off_t>(hi), out.get(), to,
                             static_cast<off_t>(off), buf);
        covered += hi - lo;
    }
    if (covered < size)
        throw Error("QEMU maps " + std::to_string(covered >> 20) + " MiB of the VM's " + std::to_string(size >> 20) +
                    " MiB from " + want + "; cannot save its memory");
    return copied;
}

void link_or_copy(const std::string& from, const std::string& to) {
    if (::link(from.c_str(), to.c_str()) == 0) return;
    std::error_code ec;
    std::filesystem::copy_file(from, to, ec);
    if (ec) throw Error("cannot copy " + from + " to " + to + ": " + ec.message());
}

}  // namespace ocivm::vm
