#pragma once
// Starting child processes: the one place ocivm forks and execs, so every
// child gets the same hygiene (no inherited fds but the ones named, a clean
// signal mask and dispositions, death with its parent when asked, exec
// failures reported to the caller instead of a silent exit 127).
#include <sys/types.h>

#include <string>
#include <vector>

#include "util/unique_fd.h"

namespace ocivm {

struct SpawnOptions {
    // argv[0] is searched in PATH unless it contains a '/'.
    std::vector<std::string> argv;
    // Extra environment entries "K=V" (added to, or replacing in, ours).
    std::vector<std::string> env;
    // The child's stdin, stdout and stderr: an fd of ours, kInherit (the
    // same as ours) or kDevNull.
    static constexpr int kInherit = -2;
    static constexpr int kDevNull = -1;
    int stdin_fd = kDevNull, stdout_fd = kInherit, stderr_fd = kInherit;
    // Fds of ours that become 3, 4, 5, ... in the child, in this order.
    // Every other fd is closed at exec.
    std::vector<int> fds;
    // SIGKILL the child when the thread that spawned it exits
    // (PR_SET_PDEATHSIG), so nothing outlives ocivm, not even after kill -9.
    bool die_with_parent = true;
    // Its own process group: a Ctrl-C on the terminal stays ours to handle.
    bool new_process_group = false;
};

// A running child; the destructor kills (SIGKILL) and reaps it if it is
// still there, so no path out of the caller leaves it behind.
class ChildProcess {
public:
    ChildProcess() = default;
    ~ChildProcess();
    ChildProcess(ChildProcess&& o) noexcept;
    ChildProcess& operator=(ChildProcess&& o) noexcept;
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;

    // Throws Error when the program cannot be started (not found, not
    // executable), with `hint` saying what to install.
    static ChildProcess spawn(const SpawnOptions& o, const std::string& hint = {});

    pid_t pid() const { return pid_; }
    bool running() const { return pid_ > 0; }
    // Non-blocking; true once the child has exited (its wait status in *st).
    bool reap(int* st);
    // Blocks until the child exits; returns its wait status.
    int wait();
    void kill(int sig) const;

private:
    pid_t pid_ = -1;
};

// Closes every fd from 3 up but those in `keep` (negative entries are
// ignored): what a server inherited by accident must not reach it.
void close_fds_except(std::vector<int> keep);

// A wait status as an exit code: the code, or 128+N for signal N.
int exit_code(int wait_status);

}  // namespace ocivm
