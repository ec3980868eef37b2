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

// Bounds of the node -> path map (docs/filesystem.md, "Limits"). A guest
// decides how many nodes it looks up and how deep it goes; these decide
// what that costs here.
struct PathLimits {
    size_t max_nodes = 1u << 17;   // nodes with a known path; more stay unnamed
    size_t max_bytes = 16u << 20;  // path bytes over all nodes
    size_t max_path = 1024;        // one path; a longer one keeps its tail after "(...)"
};

class Recorder {
public:
    // trace_path empty: no file, counters and detection only. Throws
    // std::runtime_error when the file cannot be opened.
    explicit Recorder(const std::string& trace_path, LivelockDetector::Options lopts = {},
                      PathLimits limits = {});
    ~Recorder();
    Recorder(const Recorder&) = delete;
    Recorder& operator=(const Recorder&) = delete;

    // Called on the request path: never blocks, never allocates.
    void push(const Record& r);

    uint64_t recorded() const { return recorded_.load(std::memory_order_relaxed); }
    uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
    // Waits until everything pushed so far is processed (tests, shutdown).
    void flush();
    // Appends one line that is not a request (a flat JSON object, such as
    // the servers' polling statistics at exit), after the records pushed so
    // far. Not for the request path.
    void note(const std::string& json_object);
    const LivelockDetector& detector() const { return detector_; }
    // The path a node was first looked up by ("" if unknown); consumer-side
    // state, current after flush().
    std::string path_of(uint64_t nodeid);
    // Nodes in the path map (the root included) and their path bytes.
    size_t path_count();
    size_t path_bytes();

private:
    struct Slot {
        std::atomic<uint64_t> seq;
        Record rec;
    };
    bool pop(Record& out);
    void run();
    void write_json(const Record& r, const std::string& path);
    // What a request is about: its node's path, and for requests naming an
    // entry that entry's path ("." and ".." resolved, length bounded).
    std::string path_for(const Record& r);
    // Keeps the map in step with the kernel's lookup counts: an entry reply
    // counts one lookup on its node, FORGET drops them, DESTROY all.
    void count_lookup(const Record& r, const std::string& path);
    void drop_lookups(uint64_t nodeid, uint64_t n);
    void drop_all_paths();

    static constexpr size_t kCapacity = 1 << 16;
    std::unique_ptr<Slot[]> slots_;
    std::atomic<uint64_t> head_{0};  // next slot to fill
    uint64_t tail_ = 0;              // next slot to drain (consumer only)
    std::atomic<uint64_t> recorded_{0}, dropped_{0}, processed_{0};

    FILE* out_ = nullptr;
    LivelockDetector detector_;
    PathLimits limits_;
    struct KnownPath {
        std::string path;
        uint64_t nlookup = 0;
    };
    std::mutex paths_mu_;
    std::unordered_map<uint64_t, KnownPath> paths_;
    size_t path_bytes_ = 0;
    // Hashes of the paths seen so far (progress for the livelock detector);
    // forgotten wholesale when full, which errs towards "no livelock".
    static constexpr size_t kMaxSeenPaths = 1 << 18;
    std::unordered_set<uint64_t> seen_paths_;  // consumer thread only
    std::atomic<bool> stop_{false};
    std::mutex wake_mu_;
    std::condition_variable wake_;
    std::thread thread_;
};

}  // namespace ocivm::trace
