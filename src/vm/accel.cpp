#include "vm/accel.h"

#include <cpuid.h>
#include <x86intrin.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "util/error.h"
#include "util/log.h"
#include "util/paths.h"
#include "util/process.h"
#include "util/subprocess.h"
#include "util/unique_fd.h"

namespace ocivm::vm {

namespace {

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
}

// Boots the kernel under KVM until it panics for want of an init (-no-reboot
// turns that into a clean exit); an abort or a hang means KVM is not usable.
std::string qemu_kvm_probe(const std::string& kernel) {
    SpawnOptions so;
    so.argv = {"qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-machine",
               "microvm,pit=on,pic=on,rtc=on", "-m", "128", "-display", "none", "-monitor", "none",
               "-serial", "none", "-no-reboot", "-kernel", kernel, "-append",
               "panic=-1 rdinit=/nonexistent init=/nonexistent"};
    so.stdout_fd = so.stderr_fd = SpawnOptions::kDevNull;
    ChildProcess probe;
    try {
        probe = ChildProcess::spawn(so);
    } catch (const Error& e) {
        return e.what();
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    int st = 0;
    while (!probe.reap(&st)) {
        if (std::chrono::steady_clock::now() > deadline)
            return "a test guest did not finish under KVM within 20 s";  // ~ChildProcess kills it
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return "";
    if (WIFSIGNALED(st)) return std::string("QEMU died with ") + strsignal(WTERMSIG(st)) + " running a KVM guest";
    return "QEMU exited with status " + std::to_string(WEXITSTATUS(st)) + " running a KVM guest";
}

// A fact about the host that holds until it reboots: computed once, kept in
// the cache under the boot's id.
template <typename F>
std::string per_boot(const std::string& cache, const std::string& boot_id, const std::string& name, F compute) {
    std::string file = cache + "/" + name + "-" + boot_id;
    if (!boot_id.empty() && ::access(file.c_str(), R_OK) == 0) {
        try {
            return read_file(file);
        } catch (const Error&) {
        }
    }
    std::string v = compute();
    if (!boot_id.empty()) {
        try {
            make_dirs(cache);
            write_file_atomic(file, v);
        } catch (const Error&) {
        }
    }
    return v;
}

// The TSC's rate against CLOCK_MONOTONIC over 20 ms.
unsigned long measure_tsc_khz() {
    timespec a, b;
    ::clock_gettime(CLOCK_MONOTONIC, &a);
    uint64_t t0 = __rdtsc();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ::clock_gettime(CLOCK_MONOTONIC, &b);
    uint64_t t1 = __rdtsc();
    double ns = static_cast<double>(b.tv_sec - a.tv_sec) * 1e9 + static_cast<double>(b.tv_nsec - a.tv_nsec);
    return static_cast<unsigned long>(static_cast<double>(t1 - t0) / ns * 1e6);
}

}  // namespace

HostVirt probe_host(const std::string& cache, const std::string& probe_kernel) {
    HostVirt h;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 31))) {
        h.nested = true;
        unsigned sig[3];
        __cpuid(0x40000000, a, sig[0], sig[1], sig[2]);
        char name[13] = {};
        std::memcpy(name, sig, 12);
        h.hypervisor = name;
    }
    std::string boot_id;
    try {
        boot_id = trim(read_file("/proc/sys/kernel/random/boot_id"));
    } catch (const Error&) {
    }
    std::string dv = per_boot(cache, boot_id, "detect-virt", [] {
        return have_program("systemd-detect-virt") ? trim(run_command({"systemd-detect-virt", "--vm"}).out) : "";
    });
    if (!dv.empty() && dv != "none") {
        h.nested = true;
        h.hypervisor = dv;
    }
    h.tsc_khz = std::strtoul(per_boot(cache, boot_id, "tsc-khz", [] { return std::to_string(measure_tsc_khz()); }).c_str(),
                             nullptr, 10);
    UniqueFd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
    if (!kvm) {
        h.kvm_reason = errno == ENOENT ? "no /dev/kvm" : errno_message("cannot open /dev/kvm", errno,
                                                                       "add your user to group kvm");
        return h;
    }
    if (::ioctl(kvm.get(), KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
        h.kvm_reason = "/dev/kvm has an unexpected API version";
        return h;
    }
    std::string verdict = per_boot(cache, boot_id, "kvm", [&] {
        spdlog::info("probing whether KVM runs a guest here (once per host boot)");
        std::string why = qemu_kvm_probe(probe_kernel);
        return why.empty() ? std::string("ok") : why;
    });
    h.kvm = verdict == "ok";
    if (!h.kvm) h.kvm_reason = verdict;
    return h;
}

}  // namespace ocivm::vm
