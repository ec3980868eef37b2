// ocivm ps: the VMs and their state.
#include <cstdio>

#include "cli/args.h"
#include "cli/commands.h"
#include "util/log.h"
#include "vm/vm_state.h"

namespace ocivm::cli {

namespace {

const char kHelp[] = R"(Usage: ocivm ps [OPTIONS]

Lists the VMs that are running (with -a, also those that have exited or
whose supervisor died), newest first: detached VMs ('ocivm run -d') and
foreground runs alike.

STATUS is one of: starting (booting; not ready for exec yet), running,
stopping, exited (CODE) (the main command's exit status), dead (the VM's
supervisor was killed: 'ocivm rm NAME' cleans up after it).

Options:
  -a, --all                   show every VM, not only the running ones
      --format FORMAT         table (default) or json (an array of the
                              objects 'ocivm inspect' prints)
  -q, --quiet                 names only
      --log-level LEVEL       trace | debug | info | warn | error
  -h, --help                  show this help
)";

std::string shorten(std::string s, size_t n) {
    if (s.size() > n) s = s.substr(0, n - 3) + "...";
    return s;
}

}  // namespace

int cmd_ps(int argc, char** argv) {
    bool help = false, all = false, quiet = false;
    std::string format = "table";
    std::string log_level = "warn";
    std::vector<Option> opts = {
        {"log-level", 0, true, [&](const std::string& v) { log_level = v; }},
        {"all", 'a', false, [&](const std::string&) { all = true; }},
        {"quiet", 'q', false, [&](const std::string&) { quiet = true; }},
        {"format", 0, true, [&](const std::string& v) { format = v; }},
    };
    auto pos = parse_args("ps", argc, argv, 2, opts, &help);
    if (help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    setup_logging(log_level);
    if (!pos.empty()) throw UsageError{"'ocivm ps' takes no arguments; see 'ocivm ps --help'"};
    if (format != "table" && format != "json") throw UsageError{"invalid --format '" + format + "': use table or json"};
    std::vector<vm::VmEntry> shown;
    for (auto& e : vm::list_vms()) {
        std::string st = e.status();
        if (all || st == "running" || st == "starting" || st == "stopping") shown.push_back(std::move(e));
    }
    if (quiet) {
        for (auto& e : shown) std::printf("%s\n", e.record.name.c_str());
        return 0;
    }
    if (format == "json") {
        std::string out = "[";
        for (size_t i = 0; i < shown.size(); ++i) out += (i ? ",\n" : "\n") + shown[i].to_json();
        out += shown.empty() ? "]\n" : "\n]\n";
        std::fputs(out.c_str(), stdout);
        return 0;
    }
    std::printf("%-20s %-12s %-24s %-24s %-20s %s\n", "NAME", "STATUS", "IMAGE", "COMMAND", "CREATED", "PORTS");
    for (auto& e : shown) {
        std::string st = e.status();
        if (st == "exited") st += " (" + std::to_string(e.record.exit_code) + ")";
        std::string cmd;
        for (auto& a : e.record.command) cmd += (cmd.empty() ? "" : " ") + a;
        std::string ports;
        for (auto& p : e.record.ports) ports += (ports.empty() ? "" : ", ") + p;
        std::printf("%-20s %-12s %-24s %-24s %-20s %s\n", shorten(e.record.name, 20).c_str(), st.c_str(),
                    shorten(e.record.image, 24).c_str(), shorten(cmd, 24).c_str(), e.record.created.c_str(), ports.c_str());
    }
    return 0;
}

}  // namespace ocivm::cli
