// ocivm holders: everything keeping a mount busy.
#include <cstdio>

#include "cli/args.h"
#include "cli/commands.h"
#include "disk/holders.h"
#include "util/log.h"

namespace ocivm::cli {

namespace {
const char kHelp[] = R"(Usage: ocivm holders PATH [--format table|json]

Lists everything that keeps the mount at PATH busy, each with its pid and
command where there is one: open file descriptors (with their paths), current
directories, root directories, executables, memory mappings, processes in
another mount namespace that still has the mount, loop devices backed by a
file on it, swap files on it, submounts below it and bind mounts of it
elsewhere. Exit status 0 (also when nothing holds it), 125 on errors.

Options:
      --format FORMAT     table (default) or json
      --log-level LEVEL   trace | debug | info | warn | error (default: warn)
  -h, --help              show this help
)";
}  // namespace

int cmd_holders(int argc, char** argv) {
    bool help = false;
    std::string format = "table", log_level = "warn";
    std::vector<Option> opts = {
        {"format", 0, true, [&](const std::string& v) { format = v; }},
        {"log-level", 0, true, [&](const std::string& v) { log_level = v; }},
    };
    auto pos = parse_args("holders", argc, argv, 2, opts, &help);
    if (help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    setup_logging(log_level);
    if (format != "table" && format != "json") throw UsageError{"invalid --format '" + format + "': use table or json"};
    if (pos.size() != 1) throw UsageError{"'ocivm holders' needs exactly one PATH; see 'ocivm holders --help'"};
    auto hs = disk::find_holders(pos[0]);
    std::fputs((format == "json" ? disk::holders_json(hs) : disk::holders_table(hs)).c_str(), stdout);
    return 0;
}

}  // namespace ocivm::cli
