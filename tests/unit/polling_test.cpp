// Issue 10's polling: the host-load probe and the adaptive spin window.
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/prctl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#include <vector>

#include "transport/polling.h"

using namespace ocivm;
using namespace ocivm::transport;

TEST(Polling, ParsesPressureStallTotals) {
    uint64_t t = 0;
    EXPECT_TRUE(HostLoad::parse_psi_some_total(
        "some avg10=4.21 avg60=3.07 avg300=11.38 total=9542655364\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n", t));
    EXPECT_EQ(t, 9542655364u);
    // "full" alone, a missing total, or a total that belongs to the next line: no.
    EXPECT_FALSE(HostLoad::parse_psi_some_total("full avg10=0.00 total=5\n", t));
    EXPECT_FALSE(HostLoad::parse_psi_some_total("some avg10=0.00\nfull total=5\n", t));
    EXPECT_FALSE(HostLoad::parse_psi_some_total("some total=x\n", t));
    EXPECT_FALSE(HostLoad::parse_psi_some_total("", t));
}

TEST(Polling, ParsesTheRunnableCountOfLoadavg) {
    unsigned r = 0;
    EXPECT_TRUE(HostLoad::parse_loadavg_running("1.05 1.63 1.84 3/93 6987\n", r));
    EXPECT_EQ(r, 3u);
    EXPECT_FALSE(HostLoad::parse_loadavg_running("1.05 1.63 1.84\n", r));
    EXPECT_FALSE(HostLoad::parse_loadavg_running("1.05 1.63 1.84 x/93 6987\n", r));
    EXPECT_FALSE(HostLoad::parse_loadavg_running("1.05 1.63 1.84 3 6987\n", r));
}

// KVM's halt-polling rule: a wait the window missed but the maximum would
// have caught grows the window; a wait beyond the maximum shrinks it, down
// to no spinning at all, and short waits bring it back.
TEST(Polling, TheWindowGrowsOnNearMissesAndShrinksOnLongWaits) {
    PollStats st;
    SpinWindow w(50, nullptr, &st);
    EXPECT_EQ(w.window_ns(), 50'000);
    w.waited(10'000, 10'000, true);  // caught: nothing changes
    EXPECT_EQ(w.window_ns(), 50'000);
    // One long gap (between two bursts) leaves the window alone; a run of
    // them (the requests stopped) halves it, then halves it again each time.
    for (int i = 1; i < SpinWindow::kShrinkAfter; ++i) w.waited(1'000'000, 50'000, false);
    EXPECT_EQ(w.window_ns(), 50'000);
    w.waited(1'000'000, 50'000, false);
    EXPECT_EQ(w.window_ns(), 25'000);
    for (int i = 0; i < 10; ++i) w.waited(1'000'000, w.window_ns(), false);
    EXPECT_EQ(w.window_ns(), 0) << "a thread whose requests never come soon should stop spinning";
    EXPECT_EQ(w.budget(mono_ns()), 0);
    w.waited(30'000, 0, false);  // would have been caught with a window: grow again
    EXPECT_EQ(w.window_ns(), SpinWindow::kGrowStartNs);
    for (int i = 0; i < 10; ++i) w.waited(40'000, 0, false);
    EXPECT_EQ(w.window_ns(), 50'000) << "the window never exceeds the maximum";
    // waits with a watch: kShrinkAfter at 50 us, then 25, 12.5, 6.25, 3.1 us, then none
    EXPECT_EQ(st.spins.load(), 1u + SpinWindow::kShrinkAfter + 4u);
    EXPECT_EQ(st.hits.load(), 1u);
    EXPECT_EQ(st.window_ns.load(), 50'000u);
}

TEST(Polling, ZeroMeansNeverSpin) {
    PollStats st;
    SpinWindow w(0, nullptr, &st);
    w.waited(1'000, 0, false);
    EXPECT_EQ(w.budget(mono_ns()), 0);
    EXPECT_EQ(w.window_ns(), 0);
}

// Busy-loop children, killed and reaped however the test ends (and killed
// by the kernel should the test binary die: PR_SET_PDEATHSIG).
struct Hogs {
    std::vector<pid_t> pids;
    void start(int n) {
        pid_t parent = ::getpid();
        for (int i = 0; i < n; ++i) {
            pid_t p = ::fork();
            if (p < 0) return;
            if (p == 0) {
                ::prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (::getppid() != parent) ::_exit(0);
                volatile unsigned long x = 0;
                for (;;) x = x + 1;
            }
            pids.push_back(p);
        }
    }
    ~Hogs() {
        for (pid_t p : pids) ::kill(p, SIGKILL);
        for (pid_t p : pids) ::waitpid(p, nullptr, 0);
    }
};

// With more busy processes than CPUs, the probe says so (and a spin window
// then offers nothing), and the "busy" verdict holds for a while after.
// (On a host that is busy already this passes at the first sample; what it
// guards is that a busy host is ever seen, through PSI or loadavg.)
TEST(Polling, ABusyHostStopsTheSpinning) {
    HostLoad load;
    ASSERT_STRNE(load.source(), "none") << "neither /proc/pressure/cpu nor /proc/loadavg is readable";
    cpu_set_t set;
    CPU_ZERO(&set);
    ASSERT_EQ(::sched_getaffinity(0, sizeof set, &set), 0);
    int hogs = CPU_COUNT(&set) + 2;
    Hogs kids;
    kids.start(hogs);
    ASSERT_EQ(static_cast<int>(kids.pids.size()), hogs) << "fork failed";
    bool busy = false;
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!busy && std::chrono::steady_clock::now() < end) {
        std::this_thread::sleep_for(std::chrono::milliseconds(3));
        busy = load.busy(mono_ns());
    }
    PollStats st;
    SpinWindow w(50, &load, &st);
    int64_t budget = w.budget(mono_ns());
    EXPECT_TRUE(busy) << hogs << " busy loops on " << CPU_COUNT(&set) << " CPUs, and " << load.source()
                      << " did not show contention within 5 s";
    EXPECT_EQ(budget, 0) << "a contended host should get no spinning";
    EXPECT_GE(st.busy_skips.load(), 1u);
}
