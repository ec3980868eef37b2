#pragma once
#include <spdlog/spdlog.h>

#include <cstdint>
#include <mutex>
#include <string>

namespace ocivm {

// Warnings a guest (or any peer) can cause at will: at most per_second of
// them a second go out; the others are counted, and the next that goes out
// is told how many were left out (a flood of malformed requests must not
// become a flood of log lines).
class LogLimit {
public:
    explicit LogLimit(unsigned per_second) : per_second_(per_second) {}
    // True when this one may be logged; *skipped: how many were not since
    // the last that was.
    bool allow(uint64_t* skipped, uint64_t now_ns);
    bool allow(uint64_t* skipped);

private:
    std::mutex mu_;
    unsigned per_second_;
    uint64_t window_ = 0;  // the second (now_ns / 1e9) being counted
    unsigned in_window_ = 0;
    uint64_t skipped_ = 0;
};

// When stderr is a regular file (a detached VM's servers.log, shared by its
// share servers), stops logging once that file has reached max_bytes, with
// one last line saying so: a guest that makes its server warn cannot fill
// the host's disk. Does nothing for a terminal or a pipe.
void cap_log_file(uint64_t max_bytes);
inline constexpr uint64_t kServerLogCap = 16ull << 20;

// Logs go to stderr so stdout stays the command's output. Throws Error on an
// unknown level name.
void setup_logging(const std::string& level);

}  // namespace ocivm
