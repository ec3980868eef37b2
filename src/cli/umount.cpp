// ocivm umount: a safe unmount that names what holds a busy mount.
#include <cstdio>
#include <cstdlib>

#include "cli/args.h"
#include "cli/commands.h"
#include "disk/umount.h"
#include "util/log.h"

namespace ocivm::cli {

namespace {
const char kHelp[] = R"(Usage: ocivm umount PATH [--timeout DURATION] [--lazy-after-sync]

Syncs, then unmounts PATH (its submounts first, deepest first). While the
mount is busy it retries until the timeout (default 10s); then it prints
every holder (as 'ocivm holders' does) and exits 1 with nothing detached and
nothing lost.

Options:
      --timeout DURATION   how long to retry a busy mount, e.g. 500ms, 10s, 1m
      --lazy-after-sync    when still busy: remount read-only (flushing it),
                           freeze and thaw the file system, then detach it
                           (MNT_DETACH), saying each step
      --log-level LEVEL    trace | debug | info | warn | error (default: warn)
  -h, --help               show this help
)";

}  // namespace

int cmd_umount(int argc, char** argv) {
    bool help = false, lazy = false;
    double timeout = 10;
    std::string log_level = "warn";
    std::vector<Option> opts = {
        {"timeout", 0, true, [&](const std::string& v) { timeout = parse_duration("--timeout", v, true); }},
        {"lazy-after-sync", 0, false, [&](const std::string&) { lazy = true; }},
        {"log-level", 0, true, [&](const std::string& v) { log_level = v; }},
    };
    auto pos = parse_args("umount", argc, argv, 2, opts, &help);
    if (help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    setup_logging(log_level);
    if (pos.size() != 1) throw UsageError{"'ocivm umount' needs exactly one PATH; see 'ocivm umount --help'"};
    auto r = disk::safe_umount(pos[0], timeout, lazy);
    for (auto& s : r.steps)
        if (lazy || r.detached || !r.ok) std::fprintf(stderr, "ocivm: %s\n", s.c_str());
    if (r.ok) return 0;
    std::fprintf(stderr, "ocivm: error: %s is busy after %.1f s; it was not detached and nothing was lost. Holders:\n",
                 pos[0].c_str(), timeout);
    std::fputs(disk::holders_table(r.holders).c_str(), stderr);
    return 1;
}

}  // namespace ocivm::cli
