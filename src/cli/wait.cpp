// ocivm wait: block until VMs exit, print their exit status.
#include <cstdio>
#include <string>

#include "cli/args.h"
#include "cli/commands.h"
#include "util/error.h"
#include "vm/vm_state.h"

namespace ocivm::cli {

namespace {

const char kHelp[] = R"(Usage: ocivm wait NAME [NAME...]

Waits until each VM has exited and prints the exit status of its main
command (as 'ocivm run' would have returned it), one line per NAME.

Exit status: 0; 125 when a NAME is not a VM, or its supervisor died before
the VM ended (the status is unknown: the VM shows as dead in 'ocivm ps -a').
)";

}  // namespace

int cmd_wait(int argc, char** argv) {
    bool help = false;
    auto pos = parse_args("wait", argc, argv, 2, {}, &help);
    if (help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    if (pos.empty()) throw UsageError{"'ocivm wait' needs a VM NAME; see 'ocivm ps'"};
    int rc = 0;
    for (auto& name : pos) {
        try {
            vm::VmEntry e = vm::find_vm(name);
            vm::wait_supervisor_exit(e.dir, -1);
            e = vm::find_vm(name);
            if (e.status() != "exited")
                throw Error("VM '" + name + "' ended without an exit status (" + e.status() + ")");
            std::printf("%d\n", e.record.exit_code);
            std::fflush(stdout);
        } catch (const Error& e) {
            std::fprintf(stderr, "ocivm: error: %s\n", e.what());
            rc = kExitOcivmFailure;
        }
    }
    return rc;
}

}  // namespace ocivm::cli
