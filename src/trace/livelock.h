#pragma once
// Detects a guest looping on the same few requests (bcvk #90: systemd and
// journald looping on lookups under cache=never, 185k requests, a boot that
// never ends): over a sliding window, a high request rate, a small repeating
// set of (opcode, path) pairs, and no new nodes. Warns once per episode,
// naming the pids, paths and opcodes, and suggests a caching mode.
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "trace/record.h"

namespace ocivm::trace {

class LivelockDetector {
public:
    struct Options {
        double window_s = 10;          // sliding window
        double min_rate = 2000;        // requests per second in the window
        size_t max_pairs = 32;         // distinct (opcode, path) pairs at most
        double top_share = 0.9;        // the top pairs' share of all requests
        double max_new_nodes = 0.002;  // new nodes per request at most
        std::string cache_hint = "metadata";
    };
    struct Verdict {
        bool livelock = false;
        std::string message;  // the warning, or why this is not a livelock
    };

    LivelockDetector() : LivelockDetector(Options{}) {}
    explicit LivelockDetector(Options o) : o_(std::move(o)) {}

    // path: what the request is about ("" when unknown); new_node: the
    // request made the server learn a node it did not know.
    void add(const Record& r, const std::string& path, bool new_node);
    // The current window's verdict (also what a timeout diagnosis prints).
    Verdict verdict() const;
    // The requests of the last `seconds` before now_ns (CLOCK_MONOTONIC), as
    // lines for a diagnosis: total and rate, top opcodes, top paths, top pids.
    std::vector<std::string> window_summary(uint64_t now_ns, double seconds = 10) const;
    // Number of warnings logged so far (one per episode).
    unsigned warnings() const;
    // Where warnings go (spdlog by default).
    void set_sink(std::function<void(const std::string&)> sink) { sink_ = std::move(sink); }

private:
    struct Second {
        uint64_t sec = 0;
        uint64_t requests = 0;
        uint64_t new_nodes = 0;
        // (opcode, path) pairs by hash: no string work per request
        std::unordered_map<uint64_t, uint64_t> pairs;
        std::unordered_map<uint32_t, uint64_t> pids;
    };
    Verdict evaluate_locked() const;
    void check_locked();

    // Bounds on what a guest's request stream can make the detector hold
    // (docs/filesystem.md, "Limits").
    static constexpr size_t kMaxPairsPerSecond = 65536;
    static constexpr size_t kMaxPidsPerSecond = 4096;
    static constexpr size_t kMaxNames = 1u << 16;
    static constexpr size_t kMaxNameBytes = 8u << 20;

    Options o_;
    mutable std::mutex mu_;
    std::deque<Second> window_;
    // hash -> (opcode, path) for the pairs seen, to name them in a warning
    std::unordered_map<uint64_t, std::pair<uint32_t, std::string>> names_;
    size_t names_bytes_ = 0;
    bool in_episode_ = false;
    unsigned warnings_ = 0;
    std::function<void(const std::string&)> sink_;
};

}  // namespace ocivm::trace
