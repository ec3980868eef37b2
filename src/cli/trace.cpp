// ocivm trace summary FILE: read a trace written by --trace.
#include <cstdio>
#include <iostream>

#include "cli/args.h"
#include "cli/commands.h"
#include "trace/summary.h"
#include "util/error.h"

namespace ocivm::cli {

namespace {
const char kHelp[] = R"(Usage: ocivm trace summary [--top N] FILE

Summarises a request trace written by 'ocivm fsd --trace FILE' (one JSON
object per request: time, unique, opcode, nodeid, path, pid, uid, gid,
error, latency in microseconds): the time the server spent serving in all
(the sum of the latencies, from the moment the server has a request to its
reply: about what faster handling could save the guest; waking up for a
request is not in it), totals by opcode with average and total latency and
error counts, the most requested paths, the busiest guest pids, requests
per second over time, and each queue's polling at exit.

Options:
      --top N      paths and pids to show (default: 10)
  -h, --help       show this help
)";
}  // namespace

int cmd_trace(int argc, char** argv) {
    unsigned top = 10;
    bool help = false;
    std::vector<Option> opts = {
        {"top", 0, true, [&](const std::string& v) { top = parse_count("--top", v, 100000); }},
    };
    auto pos = parse_args("trace", argc, argv, 2, opts, &help);
    if (help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    if (pos.size() != 2 || pos[0] != "summary")
        throw UsageError{"usage: ocivm trace summary FILE; see 'ocivm trace --help'"};
    try {
        trace::summarize(pos[1], std::cout, top);
    } catch (const std::runtime_error& e) {
        throw Error(e.what());
    }
    return 0;
}

}  // namespace ocivm::cli
