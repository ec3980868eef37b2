// ocivm wait: block until VMs exit, print their exit status.
#include <cstdio>
#include <string>

#include "cli/args.h"
#include "cli/commands.h"
#include "util/log.h"
#include "util/error.h"
#include "vm/vm_state.h"

namespace ocivm::cli {

namespace {

const char kHelp[] = R"(Usage: ocivm wait NAME [NAME...]

Waits until each VM has exited and prints the exit status of its main
command (as 'ocivm run' would have returned it), one line per NAME.

Options:
      --log-level LEVEL       trace | debug | info | warn | error
  -h, --help                  show this help

Exit status: 0; 125 when a NAME is not a VM, or its supervisor died before
the VM ended (the status is unknown: the VM shows as dead in 'ocivm ps -a').
)";

}  // namespace

int cmd_wait(int argc, char** argv) {
    bool help = false;
    std::string log_level = "warn";
    std::vector<Option> opts = {
        {"log-level", 0, true, [&](const std::string& v) { log_level = v; }},
    };
    auto pos = parse_args("wait", argc, argv, 2, opts, &help);
    if (help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    setup_logging(log_level);
    if (pos.empty()) throw UsageError{"'ocivm wait' needs a VM NAME; see 'ocivm ps'"};
    return for_each_name(pos, [&](const std::string& name) {
        vm::VmEntry e = vm::find_vm(name);
        vm::wait_supervisor_exit(e.dir, -1);
        e = vm::find_vm(name);
        if (e.status() != "exited") throw Error("VM '" + name + "' ended without an exit status (" + e.status() + ")");
        std::printf("%d\n", e.record.exit_code);
        std::fflush(stdout);
    });
}

}  // namespace ocivm::cli
