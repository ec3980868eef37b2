// ocivm snapshot: save a running VM once (create), and list, inspect and
// remove what was saved; `ocivm run --from-snapshot` starts clones of it.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "cli/args.h"
#include "cli/commands.h"
#include "util/error.h"
#include "util/log.h"
#include "vm/snapshot.h"
#include "vm/vm_state.h"

namespace ocivm::cli {

namespace {

const char kHelp[] = R"(Usage: ocivm snapshot COMMAND [OPTIONS] [ARGS]

Snapshots of running VMs: a VM saved once, then started again as many
clones as wanted with 'ocivm run --from-snapshot SNAPSHOT', each in a
fraction of a boot and sharing the snapshot's memory with the others.

Commands:
  create [--stop] NAME SNAPSHOT
                       save the running VM NAME as SNAPSHOT: the VM is
                       paused while its device state and memory are saved
                       (milliseconds to a second), then resumes, or is
                       stopped with --stop. NAME must have been started with
                       'ocivm run -d --root erofs' with --network user or
                       none; no 'ocivm exec' may be running in it. What the
                       guest wrote to its root (in RAM) and every process it
                       runs are in the snapshot. Its -v shares (served over
                       virtio-serial in such VMs) are recorded: every clone
                       serves the same host directories, and files the VM
                       held open stay open in the clones (docs/vm.md)
  ls [--format json] [-q]
                       list snapshots (-q: names only)
  inspect SNAPSHOT...  everything a snapshot records, as JSON
  rm SNAPSHOT...       remove snapshots (clones running from one keep
                       running)
  prune                empty the boot snapshot cache: the booted VMs that
                       'ocivm run --root erofs' saves once per set of
                       options and restores on later runs (at most 8 are
                       kept; the least recently used goes first); also
                       removes what an interrupted create left

Options:
      --format FORMAT  table (default) or json, for ls
  -q, --quiet          ls: names only
      --stop           create: stop the VM after saving it
      --log-level LEVEL
                       trace | debug | info | warn | error
  -h, --help           show this help

Snapshots live in the store ($OCIVM_HOME/snapshots, /var/lib/ocivm as root).
A snapshot restores only on the QEMU binary and machine type it was taken
with: after a QEMU upgrade, take it again.

Exit status: 0; 125 when ocivm fails (no such VM or snapshot, a VM that
cannot be snapshotted, a snapshot name in use).
)";

std::string human_size(uint64_t b) {
    char buf[32];
    if (b >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(b) / (1ull << 30));
    else if (b >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(b) / (1ull << 20));
    else std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(b) / 1024);
    return buf;
}

int create(const std::string& vm_name, const std::string& snap, bool stop) {
    if (std::string why = vm::snapshot_name_problem(snap); !why.empty()) throw UsageError{why};
    vm::VmEntry e = vm::find_vm(vm_name);
    if (!e.supervisor_alive) throw Error("VM '" + vm_name + "' is not running (" + e.status() + ")");
    UniqueFd s = vm::request_supervisor(e, "snapshot " + snap + (stop ? " stop" : ""));
    std::string answer;
    char buf[512];
    ssize_t r;
    while (answer.find('\n') == std::string::npos && (r = ::read(s.get(), buf, sizeof buf)) > 0)
        answer.append(buf, static_cast<size_t>(r));
    if (answer.empty()) throw Error("VM '" + vm_name + "' stopped before the snapshot was taken");
    answer.resize(answer.find('\n') == std::string::npos ? answer.size() : answer.find('\n'));
    if (answer.rfind("ok ", 0) != 0)
        throw Error(answer.rfind("error ", 0) == 0 ? answer.substr(6) : "unexpected answer: " + answer.substr(0, 200));
    if (stop) vm::wait_supervisor_exit(e.dir, 30);
    std::printf("%s\n", snap.c_str());
    return 0;
}

int list(const std::string& format, bool quiet) {
    auto all = vm::list_snapshots();
    if (quiet) {
        for (auto& s : all) std::printf("%s\n", s.name.c_str());
        return 0;
    }
    if (format == "json") {
        std::string out = "[";
        for (size_t i = 0; i < all.size(); ++i) {
            std::string j = all[i].to_json();
            while (!j.empty() && j.back() == '\n') j.pop_back();
            out += (i ? ",\n" : "\n") + j;
        }
        std::printf("%s\n]\n", out.c_str());
        return 0;
    }
    std::printf("%-24s %-20s %-24s %-8s %-10s %-8s %s\n", "NAME", "FROM VM", "IMAGE", "MEMORY", "RAM SAVED", "NETWORK",
                "CREATED");
    for (auto& s : all)
        std::printf("%-24s %-20s %-24s %-8s %-10s %-8s %s\n", s.name.c_str(), s.source.c_str(), s.image.c_str(),
                    s.memory.c_str(), human_size(s.ram_bytes).c_str(), s.network.c_str(), s.created.c_str());
    return 0;
}

}  // namespace

int cmd_snapshot(int argc, char** argv) {
    bool help = false, stop = false, quiet = false;
    std::string format = "table", log_level = "warn";
    std::vector<Option> opts = {
        {"format", 0, true, [&](const std::string& v) { format = v; }},
        {"quiet", 'q', false, [&](const std::string&) { quiet = true; }},
        {"stop", 0, false, [&](const std::string&) { stop = true; }},
        {"log-level", 0, true, [&](const std::string& v) { log_level = v; }},
    };
    auto pos = parse_args("snapshot", argc, argv, 2, opts, &help);
    if (help || pos.empty()) {
        std::fputs(kHelp, help ? stdout : stderr);
        if (!help) throw UsageError{"'ocivm snapshot' needs a command: create, ls, inspect, rm or prune"};
        return 0;
    }
    setup_logging(log_level);
    if (format != "table" && format != "json") throw UsageError{"invalid --format '" + format + "': use table or json"};
    const std::string& sub = pos[0];
    if (stop && sub != "create") throw UsageError{"--stop goes with 'snapshot create' only"};
    if (sub == "create") {
        if (pos.size() != 3) throw UsageError{"usage: ocivm snapshot create [--stop] NAME SNAPSHOT"};
        return create(pos[1], pos[2], stop);
    }
    if (sub == "ls" || sub == "list") {
        if (pos.size() != 1) throw UsageError{"usage: ocivm snapshot ls [--format json] [-q]"};
        return list(format, quiet);
    }
    std::vector<std::string> names(pos.begin() + 1, pos.end());
    if (sub == "inspect") {
        if (names.empty()) throw UsageError{"usage: ocivm snapshot inspect SNAPSHOT..."};
        std::string out = "[";
        int rc = for_each_name(names, [&](const std::string& n) {
            std::string j = vm::load_snapshot(n).to_json();
            while (!j.empty() && j.back() == '\n') j.pop_back();
            out += (out.size() > 1 ? ",\n" : "\n") + j;
        });
        std::printf("%s\n]\n", out.c_str());
        return rc;
    }
    if (sub == "rm") {
        if (names.empty()) throw UsageError{"usage: ocivm snapshot rm SNAPSHOT..."};
        return for_each_name(names, [](const std::string& n) {
            vm::remove_snapshot(n);
            std::printf("%s\n", n.c_str());
        });
    }
    if (sub == "prune") {
        if (!names.empty()) throw UsageError{"usage: ocivm snapshot prune"};
        auto [count, bytes] = vm::prune_boot_snapshots();
        if (::access(vm::snapshots_dir().c_str(), F_OK) == 0) {
            vm::SnapshotLock lock(vm::snapshots_dir(), true);
            vm::remove_stale_snapshot_dirs(vm::snapshots_dir());  // what killed creates left
        }
        std::printf("removed %zu boot snapshot%s (%s)\n", count, count == 1 ? "" : "s", human_size(bytes).c_str());
        return 0;
    }
    throw UsageError{"unknown snapshot command '" + sub + "': use create, ls, inspect, rm or prune"};
}

}  // namespace ocivm::cli
