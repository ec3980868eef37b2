#pragma once
// Polling that knows when to stop (issue 10). A server thread that has just
// answered a request watches for the next one for a while before it sleeps:
// a synchronous client's next request usually comes within microseconds,
// and catching it awake spares a sleep and a cross-CPU wakeup. That pays
// only while the watching thread has a CPU nobody else wants and requests
// do come within the window, so:
//  - HostLoad tells whether the host's CPUs are contended (some task waited
//    for a CPU during the last interval: the kernel's pressure stall
//    information, or the runnable count where PSI is off). While they are,
//    no thread spins: the CPU goes to the client, the guest's vCPUs or
//    whoever else wants it.
//  - SpinWindow adapts each thread's window as KVM's halt polling does: a
//    wait longer than the window but within the maximum grows it (spinning
//    longer would have caught the request), a wait beyond the maximum
//    shrinks it (the spin was wasted).
// docs/filesystem.md ("Polling") has the policy and the statistics.
#include <atomic>
#include <cstdint>
#include <string>

#include "util/clock.h"
#include "util/unique_fd.h"

namespace ocivm::transport {

class HostLoad {
public:
    // Opens /proc/pressure/cpu (or /proc/loadavg) now: construct before a
    // sandbox's pivot_root, whose /proc (subset=pid) has neither. Without
    // either the host always counts as idle.
    HostLoad();
    HostLoad(const HostLoad&) = delete;
    HostLoad& operator=(const HostLoad&) = delete;

    // Whether the CPUs were contended lately. Any thread, any time: cheap
    // (a sample at most every kSampleNs, by one thread at a time).
    bool busy(uint64_t now_ns);
    const char* source() const;

    // A sample is taken at most this often, and its verdict holds until the
    // next one. Long enough to average out the stall that wakeups alone
    // cause: a client and a server handing requests back and forth on an
    // idle host show 20-25 % "some" (each wakeup waits a moment for its
    // CPU), one busy loop beside them about 40 %, two busy loops on two
    // CPUs 75-85 % (measured here, docs/benchmarks.md, session 7). Shorter
    // samples flicker, and a busy verdict without spinning makes more
    // wakeups, which kept the verdict busy.
    static constexpr uint64_t kSampleNs = 10'000'000;
    static constexpr uint64_t kHoldNs = kSampleNs;
    // PSI: busy when some task waited for a CPU this fraction of the interval.
    static constexpr double kStallFraction = 0.50;

    // Parses PSI's "some ... total=N" (microseconds); false if absent.
    static bool parse_psi_some_total(const char* text, uint64_t& total_us);
    // Parses /proc/loadavg's runnable count ("0.5 0.4 0.3 R/T ..."); false if absent.
    static bool parse_loadavg_running(const char* text, unsigned& running);

private:
    enum class Source { Psi, Loadavg, None };
    bool sample(uint64_t now_ns);

    UniqueFd fd_;
    Source source_ = Source::None;
    unsigned cpus_ = 1;
    std::atomic<uint64_t> next_sample_ns_{0};
    std::atomic<uint64_t> busy_until_ns_{0};
    std::atomic_flag sampling_ = ATOMIC_FLAG_INIT;
    // The sampler's own (under sampling_).
    uint64_t last_total_us_ = 0;
    uint64_t last_ns_ = 0;
};

// One serving thread's polling, written by that thread only; anyone may read.
struct PollStats {
    std::atomic<uint64_t> spins{0};       // times the thread watched for a request
    std::atomic<uint64_t> hits{0};        // ... and caught one
    std::atomic<uint64_t> spin_ns{0};     // time spent watching
    std::atomic<uint64_t> busy_skips{0};  // no watch: the host was contended
    std::atomic<uint64_t> sleeps{0};      // waits that ended in a sleep
    std::atomic<uint64_t> window_ns{0};   // the current window
    // "spins N hits N (P%) spun_ms N busy_skips N sleeps N window_us N"
    std::string line() const;
    // {"polling":"WHO","spins":N,"hits":N,"spin_us":N,"busy_skips":N,"sleeps":N,"window_us":N}
    // for the trace file (`ocivm trace summary` reads it back). WHO is ours: no escaping.
    std::string json(const std::string& who) const;
};

class SpinWindow {
public:
    // max_us 0: never spin. load may be null (no contention check).
    SpinWindow(unsigned max_us, HostLoad* load, PollStats* stats);

    // How long to watch for the next request now; 0: sleep at once.
    int64_t budget(uint64_t now_ns);
    // The wait for a request ended: wait_ns from its start to the request,
    // spun_ns of it spent watching, caught whether the watch found it.
    void waited(int64_t wait_ns, int64_t spun_ns, bool caught);
    // The thread slept while others served the requests that came: counted,
    // the window left as it is.
    void slept_while_served(int64_t spun_ns);
    int64_t window_ns() const { return window_; }

    static constexpr int64_t kGrowStartNs = 4'000;  // a window grows from 0 to this
    static constexpr int64_t kMinNs = 2'000;        // a window shrinks below this to 0
    // Waits past the maximum in a row before the window halves (then each
    // further one halves it again). Contention is HostLoad's to catch; what
    // the window guards against is spinning after requests have stopped.
    static constexpr int kShrinkAfter = 8;
    // The largest maximum a user may set (`--spin-us`): a tenth of a second.
    static constexpr unsigned kMaxSettableUs = 100'000;

private:
    int64_t max_;
    int64_t window_;
    int long_waits_ = 0;  // waits past the maximum in a row
    HostLoad* load_;
    PollStats* stats_;
};

}  // namespace ocivm::transport
