// Replays files through a target's fuzz_one without libFuzzer: the ctest
// (label unit) that keeps the seed corpus and every crash the fuzzer found
// (tests/fuzz/regressions/TARGET/) passing in the normal g++ build.
//
//   fuzz_replay_TARGET PATH... [--optional=PATH]...
//
// PATH: files, or directories searched recursively; an --optional one may
// be missing (a target's regressions/ directory exists once it has one).
// Each file runs in a child process of its own, so one crash or hang names
// its file and the others still run; a child that runs longer than
// OCIVM_FUZZ_REPLAY_TIMEOUT seconds (default 20) is a hang. Fails when no
// file is found: an empty corpus would make the test pass vacuously.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "harness.h"

namespace stdfs = std::filesystem;

int main(int argc, char** argv) {
    std::vector<std::string> files;
    for (int i = 1; i < argc; ++i) {
        std::string p = argv[i];
        bool optional = p.rfind("--optional=", 0) == 0;
        if (optional) p = p.substr(11);
        std::error_code ec;
        if (stdfs::is_directory(p, ec)) {
            for (auto& e : stdfs::recursive_directory_iterator(p))
                if (e.is_regular_file()) files.push_back(e.path().string());
        } else if (stdfs::is_regular_file(p, ec)) {
            files.push_back(p);
        } else if (!optional) {
            std::fprintf(stderr, "fuzz replay: %s does not exist\n", p.c_str());
            return 2;
        }
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) {
        std::fprintf(stderr, "fuzz replay: no input files in the paths given; the corpus is missing\n");
        return 2;
    }
    unsigned timeout = 20;
    if (const char* t = std::getenv("OCIVM_FUZZ_REPLAY_TIMEOUT")) timeout = static_cast<unsigned>(std::atoi(t));

    unsigned failed = 0;
    for (auto& f : files) {
        std::ifstream in(f, std::ios::binary);
        std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        std::fflush(stdout);
        pid_t pid = ::fork();
        if (pid < 0) {
            std::perror("fork");
            return 2;
        }
        if (pid == 0) {
            ::alarm(timeout);  // SIGALRM ends a hang
            ocivm::fuzz::init_process(nullptr, nullptr);
            fuzz_one(data.data(), data.size());
            std::fflush(nullptr);
            ::_exit(0);
        }
        int st = 0;
        while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0) continue;
        ++failed;
        if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM)
            std::fprintf(stderr, "fuzz replay: HANG (over %u s): %s\n", timeout, f.c_str());
        else if (WIFSIGNALED(st))
            std::fprintf(stderr, "fuzz replay: CRASH (signal %d, %s): %s\n", WTERMSIG(st), strsignal(WTERMSIG(st)),
                         f.c_str());
        else
            std::fprintf(stderr, "fuzz replay: FAILED (exit %d): %s\n", WEXITSTATUS(st), f.c_str());
    }
    std::printf("fuzz replay: %zu inputs, %u failed\n", files.size(), failed);
    return failed ? 1 : 0;
}
