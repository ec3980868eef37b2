// ocivm kill: send a signal to a VM's main command.
#include <signal.h>
#include <string.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "cli/args.h"
#include "cli/commands.h"
#include "util/log.h"
#include "util/error.h"
#include "util/io.h"
#include "vm/vm_state.h"

namespace ocivm::cli {

namespace {

const char kHelp[] = R"(Usage: ocivm kill [OPTIONS] NAME [NAME...]

Sends a signal to the main command of running VMs (its process group, in
the guest). When the main command ends, so does its VM. Prints each name.

Options:
  -s, --signal SIGNAL         the signal: a name (KILL, SIGTERM, hup) or a
                              number (default: KILL)
      --log-level LEVEL       trace | debug | info | warn | error
  -h, --help                  show this help

Exit status: 0; 125 when a NAME is not a running VM or SIGNAL is unknown.
)";

int parse_signal(const std::string& v) {
    char* end = nullptr;
    long n = std::strtol(v.c_str(), &end, 10);
    if (!v.empty() && end && *end == 0) {
        if (n > 0 && n < 65) return static_cast<int>(n);
    } else {
        std::string name;
        for (char c : v) name += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        if (name.rfind("SIG", 0) == 0) name = name.substr(3);
        for (int s = 1; s < 65; ++s)
            if (const char* abbrev = sigabbrev_np(s); abbrev && name == abbrev) return s;
    }
    throw UsageError{"invalid --signal '" + v + "': give a name such as TERM or KILL, or a number from 1 to 64"};
}

}  // namespace

int cmd_kill(int argc, char** argv) {
    bool help = false;
    int sig = SIGKILL;
    std::string log_level = "warn";
    std::vector<Option> opts = {
        {"log-level", 0, true, [&](const std::string& v) { log_level = v; }},
        {"signal", 's', true, [&](const std::string& v) { sig = parse_signal(v); }},
    };
    auto pos = parse_args("kill", argc, argv, 2, opts, &help);
    if (help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    setup_logging(log_level);
    if (pos.empty()) throw UsageError{"'ocivm kill' needs a VM NAME; see 'ocivm ps'"};
    return for_each_name(pos, [&](const std::string& name) {
        vm::request_supervisor(vm::find_vm(name), "kill " + std::to_string(sig));
        std::printf("%s\n", name.c_str());
    });
}

}  // namespace ocivm::cli
