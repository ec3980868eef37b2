// The livelock detector on synthetic request streams, and the trace file
// round trip through `ocivm trace summary`.
#include <gtest/gtest.h>
#include <linux/fuse.h>
#include <unistd.h>

#include <fstream>
#include <random>
#include <sstream>

#include "trace/livelock.h"
#include "trace/recorder.h"
#include "trace/summary.h"
#include "transport/polling.h"
#include "unit/test_util.h"

using namespace ocivm;
using namespace ocivm::trace;

namespace {

// A trace file's path in a directory of the test's own, removed with it
// even when an assertion ends the test early.
struct TraceFile {
    const std::string dir = test::make_temp_dir();
    const std::string path = dir + "/trace.jsonl";
    ~TraceFile() { test::remove_tree(dir); }
};

struct Stream {
    LivelockDetector det;
    std::vector<std::string> warnings;
    uint64_t t = 1000ull * 1000000000ull;
    uint64_t next_node = 100;
    Stream() {
        det.set_sink([this](const std::string& m) { warnings.push_back(m); });
    }
    void req(uint32_t op, const std::string& path, uint32_t pid, bool new_node = false) {
        Record r;
        r.time_ns = t;
        r.opcode = op;
        r.pid = pid;
        r.nodeid = 1;
        if (new_node) r.result_node = next_node++;
        det.add(r, path, new_node);
    }
    // n requests spread evenly over one second
    template <typename F>
    void second(int n, F f) {
        uint64_t start = t;
        for (int i = 0; i < n; ++i) {
            t = start + static_cast<uint64_t>(i) * (1000000000ull / static_cast<uint64_t>(n));
            f(i);
        }
        t = start + 1000000000ull;
    }
};

}  // namespace

TEST(Livelock, LookupLoopWarnsOnceNamingPathAndPid) {
    Stream s;
    for (int sec = 0; sec < 30; ++sec)
        s.second(4000, [&](int i) {
            s.req(i % 2 ? FUSE_LOOKUP : FUSE_GETATTR, "/var/log/journal/x", 417);
        });
    ASSERT_EQ(s.warnings.size(), 1u);
    EXPECT_NE(s.warnings[0].find("/var/log/journal/x"), std::string::npos) << s.warnings[0];
    EXPECT_NE(s.warnings[0].find("417"), std::string::npos) << s.warnings[0];
    EXPECT_NE(s.warnings[0].find("LOOKUP"), std::string::npos) << s.warnings[0];
    EXPECT_NE(s.warnings[0].find("--cache"), std::string::npos) << s.warnings[0];
    EXPECT_TRUE(s.det.verdict().livelock);
}

TEST(Livelock, NormalBootDoesNotWarn) {
    Stream s;
    std::mt19937 rng(7);
    int file = 0;
    // A boot: bursts of lookups and reads over thousands of distinct files,
    // new nodes all along, idle stretches, a few hot paths (ld.so.cache).
    for (int sec = 0; sec < 40; ++sec) {
        int n = sec % 5 == 4 ? 50 : 2500 + static_cast<int>(rng() % 3000);
        s.second(n, [&](int i) {
            uint32_t pid = 1 + rng() % 60;
            if (i % 7 == 0) {
                s.req(FUSE_OPEN, "/etc/ld.so.cache", pid);
            } else if (i % 3 == 0) {
                s.req(FUSE_LOOKUP, "/usr/lib/file" + std::to_string(file++), pid, true);
            } else {
                s.req(FUSE_READ, "/usr/lib/file" + std::to_string(rng() % (file + 1)), pid);
            }
        });
    }
    EXPECT_TRUE(s.warnings.empty()) << s.warnings[0];
}

TEST(Livelock, LargeBuildDoesNotWarn) {
    Stream s;
    std::mt19937 rng(11);
    int obj = 0;
    // A build: each compile reads ~150 of 600 headers and writes a new
    // object file; high rate, heavy repetition of headers, new nodes.
    for (int sec = 0; sec < 40; ++sec) {
        s.second(9000, [&](int i) {
            uint32_t pid = 1000 + static_cast<uint32_t>(sec * 10 + i / 900);
            if (i % 150 == 0) {
                s.req(FUSE_CREATE, "/src/obj/o" + std::to_string(obj++) + ".o", pid, true);
            } else {
                uint32_t h = rng() % 600;
                s.req(i % 2 ? FUSE_LOOKUP : FUSE_READ, "/usr/include/h" + std::to_string(h) + ".h", pid);
            }
        });
    }
    EXPECT_TRUE(s.warnings.empty()) << s.warnings[0];
}

TEST(Livelock, SlowRepetitionIsNotALivelock) {
    Stream s;
    for (int sec = 0; sec < 30; ++sec)
        s.second(100, [&](int) { s.req(FUSE_GETATTR, "/run/health", 9); });
    EXPECT_TRUE(s.warnings.empty());
    EXPECT_FALSE(s.det.verdict().livelock);
}

TEST(Livelock, EachEpisodeWarnsOnce) {
    Stream s;
    auto loop = [&](int secs) {
        for (int sec = 0; sec < secs; ++sec)
            s.second(5000, [&](int) { s.req(FUSE_LOOKUP, "/var/log/journal/x", 3); });
    };
    loop(20);
    for (int sec = 0; sec < 15; ++sec) s.second(10, [&](int i) { s.req(FUSE_READ, "/f" + std::to_string(i), 3, true); });
    loop(20);
    EXPECT_EQ(s.warnings.size(), 2u);
}

TEST(Trace, RecordsBecomeJsonLinesAndASummary) {
    const TraceFile trace;
    const std::string& file = trace.path;
    {
        Recorder rec(file);
        test::Harness h;
        h.server = std::make_unique<fuse::Server>(*h.fs, fuse::ServerOptions{}, &rec);
        h.init();
        uint64_t d = h.mkdir(1, "dir");
        auto [f, fh] = h.create(d, "file");
        (void)fh;
        for (int i = 0; i < 10; ++i) h.lookup(d, "file");
        int err = 0;
        h.lookup(d, "missing", &err);
        rec.flush();
        EXPECT_EQ(rec.dropped(), 0u);
        EXPECT_EQ(rec.path_of(f), "/dir/file");
        // What fsd appends at exit: its queues' polling (not a request).
        transport::PollStats ps;
        ps.spins = 40;
        ps.hits = 30;
        ps.sleeps = 12;
        rec.note(ps.json("queue 1"));
    }
    std::ifstream in(file);
    std::string line;
    int lines = 0, lookups = 0, with_path = 0;
    while (std::getline(in, line)) {
        ++lines;
        if (line.find("\"op\":\"LOOKUP\"") != std::string::npos) ++lookups;
        if (line.find("\"path\":\"/dir/file\"") != std::string::npos) ++with_path;
    }
    EXPECT_EQ(lines, 15);  // INIT, MKDIR, CREATE, 10 + 1 LOOKUP, polling
    EXPECT_EQ(lookups, 11);
    EXPECT_GE(with_path, 11);
    std::ostringstream out;
    EXPECT_EQ(summarize(file, out), 14u);
    EXPECT_NE(out.str().find("queue 1: spins 40 hits 30 spin_us 0 busy_skips 0 sleeps 12"), std::string::npos)
        << out.str();
    EXPECT_EQ(out.str().find("unreadable"), std::string::npos) << out.str();
    EXPECT_NE(out.str().find("LOOKUP"), std::string::npos) << out.str();
    EXPECT_NE(out.str().find("/dir/file"), std::string::npos) << out.str();
    EXPECT_NE(out.str().find("requests per second"), std::string::npos);
}

TEST(Trace, FullBufferDropsInsteadOfBlocking) {
    Recorder rec("");
    Record r;
    // Far more than the queue holds, faster than the consumer drains.
    for (int i = 0; i < 2000000; ++i) rec.push(r);
    rec.flush();
    EXPECT_EQ(rec.recorded() + rec.dropped(), 2000000u);
}

TEST(Trace, SummaryAddsUpTheServersTime) {
    // Four requests over two seconds: 1,500 + 500 + 2,000 + 0 us of serving.
    const TraceFile trace;
    const std::string& file = trace.path;
    std::ofstream(file) << "{\"t\":10.0,\"op\":\"LOOKUP\",\"error\":0,\"us\":1500}\n"
                        << "{\"t\":11.0,\"op\":\"LOOKUP\",\"error\":-2,\"us\":500}\n"
                        << "{\"t\":11.5,\"op\":\"READ\",\"error\":0,\"us\":2000}\n"
                        << "{\"t\":12.0,\"op\":\"IOCTL\",\"error\":-38,\"us\":0}\n";
    std::ostringstream out;
    EXPECT_EQ(summarize(file, out), 4u);
    const std::string s = out.str();
    EXPECT_NE(s.find("serving: 0.004 s in all, each request from the server taking it to its reply (0.2% of the span)"),
              std::string::npos) << s;
    // opcode, count, share, avg us, total ms, errors
    EXPECT_NE(s.find("LOOKUP                   2   50.0%      1000       2.0       1"), std::string::npos) << s;
    EXPECT_NE(s.find("READ                     1   25.0%      2000       2.0       0"), std::string::npos) << s;
    EXPECT_NE(s.find("IOCTL                    1   25.0%         0       0.0       1"), std::string::npos) << s;
}

TEST(Trace, SummaryOfAForgedFileStaysSane) {
    // Latencies the recorder cannot write (negative, past 32 bits), times
    // that are not seconds, and a path with a terminal escape: the bad lines
    // are counted, the sums do not wrap, the escape is not printed.
    const TraceFile trace;
    const std::string& file = trace.path;
    std::ofstream(file) << "{\"t\":1.0,\"op\":\"LOOKUP\",\"us\":7,\"path\":\"/a\\u001b]0;pwned\\u0007\"}\n"
                        << "{\"t\":2.0,\"op\":\"LOOKUP\",\"us\":-1}\n"
                        << "{\"t\":2.0,\"op\":\"LOOKUP\",\"us\":18446744073709551615}\n"
                        << "{\"t\":nan,\"op\":\"READ\",\"us\":1}\n"
                        << "{\"t\":-4,\"op\":\"READ\",\"us\":1}\n"
                        << "{\"t\":1e300,\"op\":\"READ\",\"us\":1}\n"
                        << "{\"t\":0.5,\"op\":\"READ\",\"us\":3}\n";
    std::ostringstream out;
    EXPECT_EQ(summarize(file, out), 2u);
    const std::string s = out.str();
    EXPECT_NE(s.find(", 5 unreadable lines"), std::string::npos) << s;
    EXPECT_NE(s.find("serving: 0.000 s in all"), std::string::npos) << s;
    EXPECT_NE(s.find("LOOKUP                   1   50.0%         7       0.0"), std::string::npos) << s;
    EXPECT_EQ(s.find('\x1b'), std::string::npos) << s;
    EXPECT_EQ(s.find('\x07'), std::string::npos) << s;
    EXPECT_NE(s.find("/a\\x1b]0;pwned\\x07"), std::string::npos) << s;
}

TEST(Trace, SummaryOfAMissingOrEmptyFileIsAnError) {
    std::ostringstream out;
    EXPECT_THROW(summarize("/nonexistent/trace", out), std::runtime_error);
    const TraceFile trace;
    const std::string& empty = trace.path;
    std::ofstream(empty) << "not a trace\n";
    EXPECT_THROW(summarize(empty, out), std::runtime_error);
}

// Issue 14.4/14.5: the path map is bounded per path and overall, pruned by
// FORGET and emptied by DESTROY.
TEST(Trace, PathMapIsBoundedAndPruned) {
    PathLimits lim;
    lim.max_nodes = 50;
    lim.max_path = 100;
    Recorder rec("", {}, lim);
    test::Harness h(fs::CacheMode::Never);
    h.server = std::make_unique<fuse::Server>(*h.fs, fuse::ServerOptions{}, &rec);
    h.init();
    // deeper than max_path: the path keeps its tail
    uint64_t d = 1;
    for (int i = 0; i < 30; ++i) d = h.mkdir(d, "level-" + std::to_string(i));
    rec.flush();
    std::string deep = rec.path_of(d);
    EXPECT_LE(deep.size(), lim.max_path);
    EXPECT_EQ(deep.rfind("(...)", 0), 0u) << deep;
    EXPECT_EQ(deep.substr(deep.size() - 9), "/level-29") << deep;
    // wider than max_nodes: the rest stays unnamed
    std::vector<uint64_t> nodes;
    for (int i = 0; i < 100; ++i) nodes.push_back(h.mkdir(1, "wide-" + std::to_string(i)));
    rec.flush();
    EXPECT_EQ(rec.path_count(), lim.max_nodes);
    EXPECT_LE(rec.path_bytes(), lim.max_nodes * lim.max_path);
    // FORGET prunes, counted like the file system: two lookups need two
    for (int i = 0; i < 100; ++i) h.lookup(1, "wide-" + std::to_string(i));
    fuse_batch_forget_in bf{static_cast<uint32_t>(nodes.size()), 0};
    std::vector<fuse_forget_one> ones;
    for (uint64_t n : nodes) ones.push_back({n, 1});
    auto forget_all = test::Request(FUSE_BATCH_FORGET, 0).arg(bf).raw(ones.data(), ones.size() * sizeof ones[0]);
    h.send(forget_all);
    rec.flush();
    EXPECT_EQ(rec.path_count(), lim.max_nodes) << "one lookup of two dropped: still known";
    h.send(forget_all);
    rec.flush();
    EXPECT_EQ(rec.path_count(), 31u) << "the root and the 30 levels";
    // DESTROY drops all but the root
    h.send(test::Request(FUSE_DESTROY, 0));
    rec.flush();
    EXPECT_EQ(rec.path_count(), 1u);
    EXPECT_EQ(rec.path_of(1), "/");
}
