#include "transport/polling.h"

#include <fcntl.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace ocivm::transport {

bool HostLoad::parse_psi_some_total(const char* text, uint64_t& total_us) {
    // "some avg10=0.00 avg60=0.00 avg300=0.00 total=12345\nfull ..."
    const char* some = std::strstr(text, "some ");
    if (!some) return false;
    const char* eol = std::strchr(some, '\n');
    const char* t = std::strstr(some, "total=");
    if (!t || (eol && t > eol)) return false;
    t += 6;
    if (*t < '0' || *t > '9') return false;
    char* end = nullptr;
    total_us = std::strtoull(t, &end, 10);
    return end != t;
}

bool HostLoad::parse_loadavg_running(const char* text, unsigned& running) {
    // "0.52 0.58 0.59 3/456 12345": the fourth field's first number.
    const char* p = text;
    for (int field = 0; field < 3; ++field) {
        p = std::strchr(p, ' ');
        if (!p) return false;
        ++p;
    }
    if (*p < '0' || *p > '9') return false;
    char* end = nullptr;
    unsigned long v = std::strtoul(p, &end, 10);
    if (end == p || *end != '/') return false;
    running = static_cast<unsigned>(std::min<unsigned long>(v, 1u << 30));
    return true;
}

HostLoad::HostLoad() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof set, &set) == 0) cpus_ = std::max(1, CPU_COUNT(&set));
    fd_.reset(::open("/proc/pressure/cpu", O_RDONLY | O_CLOEXEC));
    char buf[256];
    if (fd_) {
        ssize_t n = ::pread(fd_.get(), buf, sizeof buf - 1, 0);
        if (n > 0) buf[n] = 0;
        uint64_t total;
        if (n > 0 && parse_psi_some_total(buf, total)) {
            source_ = Source::Psi;
            last_total_us_ = total;
            last_ns_ = mono_ns();
            return;
        }
        fd_.reset();  // PSI compiled in but off (psi=0): reading fails with EOPNOTSUPP
    }
    fd_.reset(::open("/proc/loadavg", O_RDONLY | O_CLOEXEC));
    if (fd_) source_ = Source::Loadavg;
    else spdlog::debug("polling: neither /proc/pressure/cpu nor /proc/loadavg is readable; "
                       "spinning does not watch the host's load");
}

const char* HostLoad::source() const {
    switch (source_) {
    case Source::Psi: return "psi";
    case Source::Loadavg: return "loadavg";
    case Source::None: break;
    }
    return "none";
}

bool HostLoad::sample(uint64_t now_ns) {
    char buf[256];
    ssize_t n = ::pread(fd_.get(), buf, sizeof buf - 1, 0);
    if (n <= 0) return false;
    buf[n] = 0;
    if (source_ == Source::Psi) {
        uint64_t total;
        if (!parse_psi_some_total(buf, total)) return false;
        if (now_ns <= last_ns_) return false;  // a thread that read its clock before the last sample
        uint64_t dt = now_ns - last_ns_;
        uint64_t stalled_us = total >= last_total_us_ ? total - last_total_us_ : 0;
        last_total_us_ = total;
        last_ns_ = now_ns;
        return static_cast<double>(stalled_us) * 1000.0 > kStallFraction * static_cast<double>(dt);
    }
    unsigned running;
    // The count includes the sampling thread itself.
    return parse_loadavg_running(buf, running) && running > cpus_;
}

bool HostLoad::busy(uint64_t now_ns) {
    if (source_ == Source::None) return false;
    if (now_ns < busy_until_ns_.load(std::memory_order_relaxed)) return true;
    if (now_ns < next_sample_ns_.load(std::memory_order_relaxed)) return false;
    if (sampling_.test_and_set(std::memory_order_acquire)) return false;  // another thread samples
    if (now_ns < next_sample_ns_.load(std::memory_order_relaxed)) {  // sampled meanwhile
        sampling_.clear(std::memory_order_release);
        return false;
    }
    next_sample_ns_.store(now_ns + kSampleNs, std::memory_order_relaxed);
    bool contended = sample(now_ns);
    if (contended) busy_until_ns_.store(now_ns + kHoldNs, std::memory_order_relaxed);
    sampling_.clear(std::memory_order_release);
    return contended;
}

std::string PollStats::line() const {
    uint64_t s = spins.load(std::memory_order_relaxed), h = hits.load(std::memory_order_relaxed);
    char buf[200];
    std::snprintf(buf, sizeof buf, "spins %llu hits %llu (%.0f%%) spun_ms %llu busy_skips %llu sleeps %llu window_us %llu",
                  static_cast<unsigned long long>(s), static_cast<unsigned long long>(h),
                  s ? 100.0 * static_cast<double>(h) / static_cast<double>(s) : 0.0,
                  static_cast<unsigned long long>(spin_ns.load(std::memory_order_relaxed) / 1'000'000),
                  static_cast<unsigned long long>(busy_skips.load(std::memory_order_relaxed)),
                  static_cast<unsigned long long>(sleeps.load(std::memory_order_relaxed)),
                  static_cast<unsigned long long>(window_ns.load(std::memory_order_relaxed) / 1000));
    return buf;
}

std::string PollStats::json(const std::string& who) const {
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "{\"polling\":\"%s\",\"spins\":%llu,\"hits\":%llu,\"spin_us\":%llu,\"busy_skips\":%llu,"
                  "\"sleeps\":%llu,\"window_us\":%llu}",
                  who.c_str(), static_cast<unsigned long long>(spins.load(std::memory_order_relaxed)),
                  static_cast<unsigned long long>(hits.load(std::memory_order_relaxed)),
                  static_cast<unsigned long long>(spin_ns.load(std::memory_order_relaxed) / 1000),
                  static_cast<unsigned long long>(busy_skips.load(std::memory_order_relaxed)),
                  static_cast<unsigned long long>(sleeps.load(std::memory_order_relaxed)),
                  static_cast<unsigned long long>(window_ns.load(std::memory_order_relaxed) / 1000));
    return buf;
}

SpinWindow::SpinWindow(unsigned max_us, HostLoad* load, PollStats* stats)
    : max_(static_cast<int64_t>(max_us) * 1000), window_(max_), load_(load), stats_(stats) {
    stats_->window_ns.store(static_cast<uint64_t>(window_), std::memory_order_relaxed);
}

int64_t SpinWindow::budget(uint64_t now_ns) {
    if (window_ == 0) return 0;
    if (load_ && load_->busy(now_ns)) {
        stats_->busy_skips.fetch_add(1, std::memory_order_relaxed);
        return 0;
    }
    return window_;
}

void SpinWindow::slept_while_served(int64_t spun_ns) {
    if (spun_ns > 0) {
        stats_->spins.fetch_add(1, std::memory_order_relaxed);
        stats_->spin_ns.fetch_add(static_cast<uint64_t>(spun_ns), std::memory_order_relaxed);
    }
    stats_->sleeps.fetch_add(1, std::memory_order_relaxed);
}

void SpinWindow::waited(int64_t wait_ns, int64_t spun_ns, bool caught) {
    if (spun_ns > 0) {
        stats_->spins.fetch_add(1, std::memory_order_relaxed);
        stats_->spin_ns.fetch_add(static_cast<uint64_t>(spun_ns), std::memory_order_relaxed);
        if (caught) stats_->hits.fetch_add(1, std::memory_order_relaxed);
    }
    if (!caught) stats_->sleeps.fetch_add(1, std::memory_order_relaxed);
    if (max_ == 0) return;
    if (wait_ns <= window_) {
        long_waits_ = 0;
        return;
    }
    if (wait_ns <= max_) {
        long_waits_ = 0;
        window_ = window_ ? std::min(max_, window_ * 2) : std::min(max_, kGrowStartNs);
    } else if (window_ > 0 && ++long_waits_ >= kShrinkAfter) {
        // Only a run of wasted watches shrinks the window: a gap between
        // two bursts of requests is not a sign they stopped coming.
        window_ /= 2;
        if (window_ < kMinNs) window_ = 0;
    } else {
        return;
    }
    stats_->window_ns.store(static_cast<uint64_t>(window_), std::memory_order_relaxed);
}

}  // namespace ocivm::transport
