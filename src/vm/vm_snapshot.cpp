#include "vm/vm_snapshot.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"
#include "util/paths.h"
#include "util/unique_fd.h"

namespace ocivm::vm {

namespace {

constexpr uint64_t kMigrationTimeoutNs = 120'000'000'000ull;

// Both ends of a snapshot's migration stream need it: the guest's RAM (a
// shared memory backend, or the snapshot's file) is not in the stream.
void enable_ignore_shared(QmpChannel& qmp) {
    qmp.call("migrate-set-capabilities",
             {{"capabilities", QmpChannel::Json::array({{{"capability", "x-ignore-shared"}, {"state", true}}})}});
}

// Polls query-migrate until QEMU says completed; Error on failed,
// cancelled, or after kMigrationTimeoutNs.
void wait_for_migration(QmpChannel& qmp, const std::string& what) {
    for (uint64_t deadline = mono_ns() + kMigrationTimeoutNs;;) {
        auto r = qmp.call("query-migrate");
        std::string st = r.is_object() ? r.value("status", "") : "";
        if (st == "completed") return;
        if (st == "failed" || st == "cancelled")
            throw Error("QEMU could not " + what + ": " + (r.is_object() ? r.value("error-desc", st) : st));
        if (mono_ns() > deadline) throw Error("QEMU did not " + what + " within 120 s");
        ::usleep(1000);
    }
}

// The RAM of a booted VM: QEMU's memfd (memory-backend-memfd), read
// through /proc.
uint64_t save_memfd_ram(pid_t pid, const std::string& to) {
    std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
    UniqueFd ram;
    if (DIR* d = ::opendir(fd_dir.c_str())) {
        while (dirent* e = ::readdir(d)) {
            char target[256] = {};
            std::string link = fd_dir + "/" + e->d_name;
            ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
            if (n > 0 && std::strncmp(target, "/memfd:memory-backend-memfd", 27) == 0) {
                ram = UniqueFd(::open(link.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
                // What was opened is that memfd (not what the fd became since).
                char again[256] = {};
                std::string self = "/proc/self/fd/" + std::to_string(ram.get());
                if (ram && (::readlink(self.c_str(), again, sizeof again - 1) != n || std::strcmp(again, target) != 0))
                    ram.reset();
                break;
            }
        }
        ::closedir(d);
    }
    if (!ram) throw Error("cannot find the VM's memory in QEMU's open files (" + fd_dir + ")");
    struct stat st;
    if (::fstat(ram.get(), &st) < 0) throw_errno("fstat of the VM's memory", errno);
    return sparse_copy(ram.get(), to, static_cast<uint64_t>(st.st_size));
}

std::string qemu_version(QmpChannel& qmp) {
    auto ver = qmp.call("query-version");
    if (!ver.is_object() || !ver.contains("qemu") || !ver["qemu"].is_object()) return "";
    auto& q = ver["qemu"];
    std::string v = std::to_string(q.value("major", 0)) + "." + std::to_string(q.value("minor", 0)) + "." +
                    std::to_string(q.value("micro", 0));
    std::string package = ver.value("package", "");
    return package.empty() ? v : v + " (" + package + ")";
}

// Pauses the VM and writes dir/vmstate and dir/ram; it stays paused.
void save_paused(const RunningQemu& q, const std::string& dir, SnapshotInfo& info) {
    uint64_t t0 = mono_ns();
    q.qmp.call("stop");
    enable_ignore_shared(q.qmp);
    UniqueFd out(::open((dir + "/vmstate").c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!out) throw_errno("cannot create " + dir + "/vmstate", errno);
    q.qmp.call("getfd", {{"fdname", "ocivm-snapshot"}}, 30, out.get());
    out.reset();  // QEMU holds it now
    q.qmp.call("migrate", {{"uri", "fd:ocivm-snapshot"}});
    wait_for_migration(q.qmp, "save the VM's state");
    uint64_t t1 = mono_ns();
    struct stat st;
    if (!q.config.memory_file.empty()) {
        // A clone: its RAM is the snapshot's file mapped privately, with
        // the pages it wrote in QEMU's own memory.
        if (::stat(q.config.memory_file.c_str(), &st) < 0) throw_errno("cannot stat " + q.config.memory_file, errno);
        info.ram_bytes = copy_mapped_ram(q.pid, q.config.memory_file, dir + "/ram", static_cast<uint64_t>(st.st_size));
    } else {
        info.ram_bytes = save_memfd_ram(q.pid, dir + "/ram");
    }
    uint64_t t2 = mono_ns();
    if (::stat((dir + "/vmstate").c_str(), &st) == 0) info.state_bytes = static_cast<uint64_t>(st.st_size);
    info.save_ms = static_cast<double>(t1 - t0) / 1e6;
    info.copy_ms = static_cast<double>(t2 - t1) / 1e6;
    info.pause_ms = static_cast<double>(t2 - t0) / 1e6;
}

}  // namespace

void sync_file(const std::string& path) {
    UniqueFd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!f || ::fsync(f.get()) < 0) throw_errno("cannot write " + path + " to disk", errno);
}

void save_vm(const RunningQemu& q, const std::string& dest, SnapshotInfo& info, bool keep_paused) {
    std::string top = dest.substr(0, dest.rfind('/'));
    std::string tmp = top + "/.tmp-" + dest.substr(dest.rfind('/') + 1) + "-" + std::to_string(::getpid());
    bool paused = false;
    try {
        make_dirs(top, 0700);
        std::error_code ec;
        std::filesystem::remove_all(tmp, ec);
        if (::mkdir(tmp.c_str(), 0700) < 0) throw_errno("cannot create " + tmp, errno);
        // Which directories the shares are: a clone serves them only if its
        // paths still lead there, with no symbolic link on the way.
        for (auto& sh : info.shares) record_share_root(sh);
        paused = true;
        save_paused(q, tmp, info);
        if (!keep_paused) {
            q.qmp.call("cont");
            paused = false;
        }
        spdlog::info("snapshot {}: paused {:.1f} ms (state {:.1f} ms, {} bytes; RAM {:.1f} ms, {} MiB)", info.name,
                     info.pause_ms, info.save_ms, info.state_bytes, info.copy_ms, info.ram_bytes >> 20);
        info.qemu = qemu_identity_of("/proc/" + std::to_string(q.pid) + "/exe");
        info.qemu.version = qemu_version(q.qmp);
        // The boot files, and the copies to disk, while the VM runs again.
        link_or_copy(q.config.kernel, tmp + "/kernel");
        link_or_copy(q.config.initrd, tmp + "/initrd");
        link_or_copy(q.root_image, tmp + "/root.erofs");
        write_file_atomic(tmp + "/snapshot.json", info.to_json(), 0600);
        for (const char* f : {"/ram", "/vmstate", "/snapshot.json", ""}) sync_file(tmp + f);  // "": the directory
        if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dest.c_str(), RENAME_NOREPLACE) < 0)
            throw_errno("cannot move the snapshot to " + dest, errno);
        sync_file(top);
    } catch (const std::exception&) {
        std::error_code ec;
        std::filesystem::remove_all(tmp, ec);
        if (paused && !keep_paused) {
            try {
                q.qmp.call("cont");
            } catch (const std::exception& e2) {
                spdlog::warn("cannot resume the VM after a failed snapshot: {}", e2.what());
            }
        }
        throw;
    }
}

LoadTimings load_vm(QmpChannel& qmp, const std::string& what) {
    LoadTimings t;
    uint64_t t0 = mono_ns();
    enable_ignore_shared(qmp);
    qmp.call("migrate-incoming", {{"uri", "fd:" + std::to_string(kIncomingFd)}});
    wait_for_migration(qmp, "load " + what);
    uint64_t t1 = mono_ns();
    // The source was paused when saved: the clone comes up paused too.
    qmp.call("cont");
    t.load_ms = static_cast<double>(t1 - t0) / 1e6;
    t.resume_ms = static_cast<double>(mono_ns() - t1) / 1e6;
    return t;
}

agent::RestoreInfo new_identity(const std::string& hostname, const std::string& mac) {
    agent::RestoreInfo r;
    unsigned char rnd[8 + 32 + 16];
    if (::getrandom(rnd, sizeof rnd, 0) != static_cast<ssize_t>(sizeof rnd)) throw_errno("getrandom", errno);
    auto hex = [](const unsigned char* p, size_t n) {
        static const char* d = "0123456789abcdef";
        std::string out;
        for (size_t i = 0; i < n; ++i) out += {d[p[i] >> 4], d[p[i] & 15]};
        return out;
    };
    std::memcpy(&r.epoch, rnd, 8);
    r.epoch |= 1;  // never 0 (none)
    r.hostname = hostname;
    r.mac = mac;
    r.seed = hex(rnd + 8, 32);
    r.machine_id = hex(rnd + 40, 16);
    timespec now;
    ::clock_gettime(CLOCK_REALTIME, &now);
    r.time_sec = now.tv_sec;
    r.time_nsec = now.tv_nsec;
    std::memset(rnd, 0, sizeof rnd);
    return r;
}

}  // namespace ocivm::vm
