#pragma once
// Collects request records from the serving threads without blocking them:
// a bounded lock-free queue (when full, records are counted as dropped); one
// background thread drains it into the livelock detector and, with a trace
// file, into JSON lines.
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "trace/livelock.h"
#include "trace/record.h"

namespace ocivm::trace {

class Recorder {
public:
    // trace_path empty: no file, counters and detection only. Throws
    // std::runtime_error when the file cannot be opened.
    explicit Recorder(const std::string& trace_path, LivelockDetector::Options lopts = {});
    ~Recorder();
    Recorder(const Recorder&) = delete;
    Recorder& operator=(const Recorder&) = delete;

    // Called on the request path: never blocks, never allocates.
    void push(const Record& r);

    uint64_t recorded() const { return recorded_.load(std::memory_order_relaxed); }
    uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
    // Waits until everything pushed so far is processed (tests, shutdown).
    void flush();
    const LivelockDetector& detector() const { return detector_; }
    // The path last seen for a node ("" if unknown); consumer-side state.
    std::string path_of(uint64_t nodeid);

private:
    struct Slot {
        std::atomic<uint64_t> seq;
        Record rec;
    };
    bool pop(Record& out);
    void run();
    void write_json(const Record& r, const std::string& path);
    void learn_path(const Record& r);

    static constexpr size_t kCapacity = 1 << 16;
    std::unique_ptr<Slot[]> slots_;
    std::atomic<uint64_t> head_{0};  // next slot to fill
    uint64_t tail_ = 0;              // next slot to drain (consumer only)
    std::atomic<uint64_t> recorded_{0}, dropped_{0}, processed_{0};

    FILE* out_ = nullptr;
    LivelockDetector detector_;
    std::mutex paths_mu_;
    std::unordered_map<uint64_t, std::string> paths_;
    static constexpr size_t kMaxSeenPaths = 1 << 20;
    std::unordered_set<std::string> seen_paths_;  // consumer thread only
    std::atomic<bool> stop_{false};
    std::mutex wake_mu_;
    std::condition_variable wake_;
    std::thread thread_;
};

}  // namespace ocivm::trace
