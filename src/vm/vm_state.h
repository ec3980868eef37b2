#pragma once
// What `ps`, `inspect`, `wait`, `logs`, `exec`, `stop`, `kill` and `rm`
// know of a VM: the record its supervisor keeps in state.json of its state
// directory (StateDir), and whether that supervisor still lives (it holds
// the directory's lock for as long as it runs). A record that says
// "running" without a live supervisor is a VM whose supervisor was killed:
// it shows as "dead", and `rm` cleans up after it.
#include <cstdint>
#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "util/unique_fd.h"

namespace ocivm::vm {

struct VmRecord {
    std::string name;
    std::string state = "created";  // created, starting, running, stopping, exited
    bool detached = false;
    int64_t supervisor_pid = 0, qemu_pid = 0;
    std::string image, rootfs;
    std::vector<std::string> command;
    std::vector<std::string> env;  // the main command's, the default of exec
    std::string cwd = "/";
    uint32_t uid = 0, gid = 0;
    std::string hostname;
    std::string created, started, finished;  // RFC 3339, UTC
    int exit_code = -1;
    std::string exit_reason;
    std::vector<std::string> shares;  // "HOST:GUEST:ro"
    std::vector<std::string> ports;   // "127.0.0.1:8080->80/tcp"
    std::string network_json = "{}";  // the network back-end's own description
    std::string boot_id;
    std::string control;  // the supervisor's control socket: @ocivm-ctl-CONTROL
    bool rm = false;
    // run --from-snapshot: the snapshot it is a clone of ("boot cache": a
    // restored boot snapshot), and how long each phase of the restore took
    std::string snapshot;
    struct RestoreTimings {
        double spawn_ms = 0, state_load_ms = 0, resume_ms = 0, hello_ms = 0, total_ms = 0;
    };
    std::optional<RestoreTimings> restore;

    std::string to_json() const;
    static std::optional<VmRecord> from_json(const std::string& text);
};

// Now, as RFC 3339 in UTC with seconds ("2026-12-01T05:33:08Z").
std::string utc_now();

struct VmEntry {
    std::string dir;  // the state directory
    VmRecord record;
    bool supervisor_alive = false;
    // What ps shows: the record's state, or "dead" when it says the VM runs
    // but nothing holds its lock.
    std::string status() const;
    // The record with the live status, for inspect and ps --format json.
    std::string to_json() const;
};

// Writes dir/state.json atomically.
void write_record(const std::string& dir, const VmRecord& r);
// Every VM with a state.json under the vms directory, by name.
std::vector<VmEntry> list_vms();
// The VM called name; Error "no such VM" (saying how to list them) if none.
VmEntry find_vm(const std::string& name);
// A connection to the VM's supervisor (its control socket); Error when it does
// not answer (it is not running).
UniqueFd connect_supervisor(const VmEntry& e);
// The supervisor's control socket: abstract (nothing to clean up after a
// kill -9), named by a random token recorded in state.json (nobody can
// squat it in advance); connect_supervisor checks the listener is the
// recorded supervisor, the supervisor checks each client with
// trusted_peer (its own uid, or root).
std::string new_control_token();
UniqueFd listen_supervisor(const std::string& token);
bool trusted_peer(int fd, pid_t expect_pid = 0);
// Connects and sends one request line ("stop 10", "kill 15"); the
// connection is returned open (the supervisor closes it as it exits).
UniqueFd request_supervisor(const VmEntry& e, const std::string& line);
// Whether a supervisor holds the state directory's lock now.
bool supervisor_alive(const std::string& dir);
// Blocks until the VM's supervisor has exited (its lock is free), or
// timeout_s has passed (false). timeout_s < 0: no limit.
bool wait_supervisor_exit(const std::string& dir, double timeout_s);

}  // namespace ocivm::vm
