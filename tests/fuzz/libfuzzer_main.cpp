// libFuzzer's entry points around a target's fuzz_one (clang -fsanitize=fuzzer).
#include <signal.h>

#include "harness.h"

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
    ocivm::fuzz::init_process(argc, argv);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    // libFuzzer installs its own SIGXFSZ handler (a finding) after
    // LLVMFuzzerInitialize; a file past RLIMIT_FSIZE must be EFBIG instead,
    // as it is for the server (unless -handle_xfsz=0 was given).
    static bool once = [] { return ::signal(SIGXFSZ, SIG_IGN) != SIG_ERR; }();
    (void)once;
    return fuzz_one(data, size);
}
