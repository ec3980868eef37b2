#pragma once
// What every fuzz target shares: the process set-up (confinement, limits,
// quiet logging), per-input scratch directories, a reader over the input,
// and oracles that abort with a message (libFuzzer and the replay tests
// both treat an abort as a finding).
//
// Each target defines fuzz_one(); libfuzzer_main.cpp (clang, libFuzzer)
// and replay_main.cpp (any compiler, the ctest replay of the corpus and the
// regressions) call it, so the fuzzer and the test suite run the same code.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

// One input, start to finish. Returns 0 (libFuzzer's convention).
int fuzz_one(const uint8_t* data, size_t size);

namespace ocivm::fuzz {

// Once per process, before the first input and before any thread exists.
// As root, the process moves to a mount namespace of its own in which every
// mount is read-only and nodev except its workspace (a fresh tmpfs) and the
// directories libFuzzer writes to (its corpus and artifact arguments, the
// working directory and $OCIVM_FUZZ_WRITABLE, colon-separated): a layer or a
// FUSE request that escapes its directory can then hurt nothing on the host,
// and the escape is still seen by the oracles. Without root the process is
// not confined. Also: file sizes are capped (RLIMIT_FSIZE 64 MiB, so a
// WRITE at offset 2^40 or a huge sparse tar entry fails with EFBIG instead
// of filling the disk), spdlog logs to a null sink (the formatting still
// runs), and a reaper process removes the workspace when this one ends,
// however it ends. argv may be null (the replay tests).
void init_process(int* argc, char*** argv);

// OCIVM_FUZZ_VERBOSE=1: targets say what each step did (on stderr), to
// check a seed or follow a finding.
bool verbose();

// The per-process scratch directory.
const std::string& workspace();
// A new empty directory below workspace(), unique in this process.
std::string fresh_dir(const char* tag);
// Removes path and everything below it, whatever the modes (a FUSE SETATTR
// or a layer may leave a directory with mode 000).
void remove_tree(const std::string& path);
// Sorted names in a directory (no "." or ".."); fails when it cannot be read.
std::vector<std::string> list_dir(const std::string& path);
// A finding (id, why) unless the directory holds exactly these names.
void expect_entries(const std::string& dir, std::vector<std::string> names, const char* id, const char* why);
void write_file(const std::string& path, const void* data, size_t len);
std::string read_file_or_empty(const std::string& path);

// The harness itself cannot go on (a mkdir failed): prints
// "ocivm-fuzz: FINDING: ..." and aborts.
[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// An oracle fired: aborts like fail() with "[ID] ..." unless ID is listed in
// $OCIVM_FUZZ_TOLERATE (comma-separated), for long exploratory runs past
// findings already reported; then it says so once per ID and returns, and
// the caller carries on as if the check had passed.
void finding(const char* id, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
// Whether ID is listed in $OCIVM_FUZZ_TOLERATE. For a finding that is a
// crash rather than an oracle, the target then keeps away from the input
// that causes it (and says so once).
bool tolerating(const char* id);
// Says once per ID that an input was steered around a tolerated finding.
void steered(const char* id, const char* what);

// Fails when the process holds a readable/writable fd on a FIFO or a
// device node in the workspace: the code under test must open such nodes
// only as O_PATH (opening a FIFO blocks, a device reaches the
// host's hardware).
void check_no_special_fds(const char* after);

// Sequential little-endian reader over the input; past the end it returns
// zeros and empty spans, so every input is a valid program.
class Input {
public:
    Input(const uint8_t* d, size_t n) : d_(d), n_(n) {}
    bool empty() const { return pos_ >= n_; }
    size_t left() const { return n_ - pos_; }
    uint8_t u8() { return static_cast<uint8_t>(le(1)); }
    uint16_t u16() { return static_cast<uint16_t>(le(2)); }
    uint32_t u32() { return static_cast<uint32_t>(le(4)); }
    uint64_t u64() { return le(8); }
    std::span<const uint8_t> take(size_t n) {
        n = std::min(n, left());
        std::span<const uint8_t> s(d_ + pos_, n);
        pos_ += n;
        return s;
    }
    std::span<const uint8_t> rest() { return take(left()); }

private:
    uint64_t le(size_t n) {
        uint64_t v = 0;
        for (size_t i = 0; i < n && pos_ < n_; ++i) v |= static_cast<uint64_t>(d_[pos_++]) << (8 * i);
        return v;
    }
    const uint8_t* d_;
    size_t n_;
    size_t pos_ = 0;
};

std::string sha256_hex(const void* data, size_t len);

}  // namespace ocivm::fuzz
