// ocivm rm: remove what is left of VMs.
#include <signal.h>

#include <cstdio>
#include <string>

#include "cli/args.h"
#include "cli/commands.h"
#include "util/log.h"
#include "util/error.h"
#include "util/io.h"
#include "vm/state_dir.h"
#include "vm/vm_state.h"

namespace ocivm::cli {

namespace {

const char kHelp[] = R"(Usage: ocivm rm [OPTIONS] NAME [NAME...]

Removes VMs that are not running: their state directory (logs, exit
status) and anything their supervisor could not clean up because it was
killed (its network's nftables table). The name can then be used again.
Prints each name removed.

Options:
  -f, --force                 kill a running VM first (its main command and
                              QEMU), then remove it
      --log-level LEVEL       trace | debug | info | warn | error
  -h, --help                  show this help

Exit status: 0; 125 when a NAME is not a VM, is running (without -f), or
cannot be removed.
)";

}  // namespace

int cmd_rm(int argc, char** argv) {
    bool help = false, force = false;
    std::string log_level = "warn";
    std::vector<Option> opts = {
        {"log-level", 0, true, [&](const std::string& v) { log_level = v; }},
        {"force", 'f', false, [&](const std::string&) { force = true; }},
    };
    auto pos = parse_args("rm", argc, argv, 2, opts, &help);
    if (help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    setup_logging(log_level);
    if (pos.empty()) throw UsageError{"'ocivm rm' needs a VM NAME; see 'ocivm ps -a'"};
    return for_each_name(pos, [&](const std::string& name) {
        vm::VmEntry e = vm::find_vm(name);
        if (e.supervisor_alive) {
            if (!force)
                throw Error("VM '" + name + "' is running; stop it first ('ocivm stop " + name + "') or use 'ocivm rm -f'");
            // stop with no grace: the supervisor kills QEMU and exits.
            UniqueFd s = vm::request_supervisor(e, "stop 0");
            if (!vm::wait_supervisor_exit(e.dir, 30)) throw Error("VM '" + name + "' did not stop within 30 s");
        }
        vm::StateDir::remove(name);
        std::printf("%s\n", name.c_str());
    });
}

}  // namespace ocivm::cli
