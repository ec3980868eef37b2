#pragma once
// What the host offers a VM: whether KVM really runs a guest (a /dev/kvm that
// opens is not enough: nested set-ups are known to abort at the first vCPU
// MSR write), and whether ocivm itself runs under a hypervisor.
#include <string>

namespace ocivm::vm {

struct HostVirt {
    bool kvm = false;
    std::string kvm_reason;  // why not, when !kvm
    bool nested = false;     // ocivm runs inside a VM
    std::string hypervisor;  // what systemd-detect-virt / CPUID call it
    // The host's TSC rate. A TCG guest reads the host's TSC; a microvm has
    // no HPET or ACPI PM timer, and when the PIT calibration misses under
    // TCG the kernel marks the TSC unstable and the boot stalls, so ocivm
    // tells the guest the rate (tsc_early_khz=).
    unsigned long tsc_khz = 0;
};

// Probes once per host boot (the verdict is cached under cache_dir, keyed by
// /proc/sys/kernel/random/boot_id); probe_kernel is booted under KVM to see
// whether a vCPU really runs.
HostVirt probe_host(const std::string& cache_dir, const std::string& probe_kernel);

}  // namespace ocivm::vm
