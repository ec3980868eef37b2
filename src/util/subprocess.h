#pragma once
// Running a helper program (sfdisk, mkfs.ext4, podman, qemu-img, ...) to its
// end: one place for fork/exec, pipes and the exit status.
#include <string>
#include <vector>

namespace ocivm {

struct CommandResult {
    int status = 0;   // exit code; 128+N when killed by signal N; 127 when not found
    std::string out;  // its stdout
    std::string err;  // its stderr, trailing newlines removed
    bool ok() const { return status == 0; }
    // The command's own words when it failed, else "<argv0> failed".
    std::string why(const std::string& argv0) const { return err.empty() ? argv0 + " failed" : err; }
};

// Runs argv (argv[0] searched in PATH) with `input` on its stdin and both
// outputs captured. Throws Error only when it cannot be started at all.
CommandResult run_command(const std::vector<std::string>& argv, const std::string& input = "");

// The first executable `name` on PATH (name itself when it has a slash), or "".
std::string find_program(const std::string& name);
// Whether `name` is an executable in PATH.
bool have_program(const std::string& name);

}  // namespace ocivm
