// ocivm inspect: everything ocivm knows of a VM, as JSON.
#include <cstdio>

#include "cli/args.h"
#include "cli/commands.h"
#include "util/log.h"
#include "util/error.h"
#include "vm/vm_state.h"

namespace ocivm::cli {

namespace {

const char kHelp[] = R"(Usage: ocivm inspect NAME [NAME...]

Prints a JSON array with one object per VM: name, state (starting, running,
stopping, exited, dead), pids (supervisor, QEMU), image, command, env, cwd,
uid, gid, hostname, created/started/finished (RFC 3339, UTC), exit_code and
exit_reason, shares, ports, network, the guest's boot_id and the state
directory (console.log, qemu.log, stdout.log, stderr.log live there).

Options:
      --log-level LEVEL       trace | debug | info | warn | error
  -h, --help                  show this help

Exit status: 0; 125 when a NAME is not a VM (the others are still printed).
)";

}  // namespace

int cmd_inspect(int argc, char** argv) {
    bool help = false;
    std::string log_level = "warn";
    std::vector<Option> opts = {
        {"log-level", 0, true, [&](const std::string& v) { log_level = v; }},
    };
    auto pos = parse_args("inspect", argc, argv, 2, opts, &help);
    if (help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    setup_logging(log_level);
    if (pos.empty()) throw UsageError{"'ocivm inspect' needs a VM NAME; see 'ocivm ps -a'"};
    std::string out = "[";
    bool first = true;
    int rc = for_each_name(pos, [&](const std::string& name) {
        out += (first ? "\n" : ",\n") + vm::find_vm(name).to_json();
        first = false;
    });
    out += first ? "]\n" : "\n]\n";
    std::fputs(out.c_str(), stdout);
    return rc;
}

}  // namespace ocivm::cli
