// ocivm stop: an orderly end for a running VM.
#include <poll.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "cli/args.h"
#include "cli/commands.h"
#include "util/log.h"
#include "util/error.h"
#include "util/io.h"
#include "vm/vm_state.h"

namespace ocivm::cli {

namespace {

const char kHelp[] = R"(Usage: ocivm stop [OPTIONS] NAME [NAME...]

Stops running VMs: the main command gets SIGTERM (through ocivm-init, in
the guest); a VM still running after the timeout is killed, and its exit
status is then 137. ocivm stop returns once each VM has exited, and prints
its name. Stopping a VM that has already exited is not an error.

Options:
  -t, --time SECONDS          how long the command may take to exit
                              (default: 10; 0 kills at once)
      --log-level LEVEL       trace | debug | info | warn | error
  -h, --help                  show this help

Exit status: 0; 125 when a NAME is not a VM or could not be stopped.
)";

}  // namespace

int cmd_stop(int argc, char** argv) {
    bool help = false;
    double secs = 10;
    std::string log_level = "warn";
    std::vector<Option> opts = {
        {"log-level", 0, true, [&](const std::string& v) { log_level = v; }},
        {"time", 't', true, [&](const std::string& v) { secs = parse_duration("--time", v, true); }},
    };
    auto pos = parse_args("stop", argc, argv, 2, opts, &help);
    if (help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    setup_logging(log_level);
    if (pos.empty()) throw UsageError{"'ocivm stop' needs a VM NAME; see 'ocivm ps'"};
    return for_each_name(pos, [&](const std::string& name) {
        vm::VmEntry e = vm::find_vm(name);
        if (e.supervisor_alive) {
            UniqueFd s = vm::request_supervisor(e, "stop " + std::to_string(secs));
            if (!vm::wait_supervisor_exit(e.dir, secs + 30))
                throw Error("VM '" + name + "' did not stop within " + std::to_string(static_cast<int>(secs + 30)) +
                            " s; 'ocivm kill " + name + "' ends it");
        }
        std::printf("%s\n", name.c_str());
    });
}

}  // namespace ocivm::cli
