// ocivm logs: what a detached VM's main command wrote.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>

#include "cli/args.h"
#include "cli/commands.h"
#include "util/log.h"
#include "util/error.h"
#include "util/io.h"
#include "util/unique_fd.h"
#include "vm/vm_state.h"

namespace ocivm::cli {

namespace {

const char kHelp[] = R"(Usage: ocivm logs [OPTIONS] NAME

Prints what the main command of a detached VM ('ocivm run -d') wrote: its
stdout on stdout, its stderr on stderr (each stream in order; the order
between the two is not kept). The guest's console is in console.log of the
VM's state directory ('ocivm inspect NAME').

Options:
  -f, --follow                keep printing what the command writes until
                              the VM exits
      --log-level LEVEL       trace | debug | info | warn | error
  -h, --help                  show this help

Exit status: 0; 125 when NAME is not a VM or was not started with -d.
)";

// Copies what fd has from its current offset to out; false on a write error.
bool copy_new(int fd, int out) {
    char buf[65536];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0)
        if (!write_all(out, buf, static_cast<size_t>(n))) return false;
    return true;
}

}  // namespace

int cmd_logs(int argc, char** argv) {
    bool help = false, follow = false;
    std::string log_level = "warn";
    std::vector<Option> opts = {
        {"log-level", 0, true, [&](const std::string& v) { log_level = v; }},
        {"follow", 'f', false, [&](const std::string&) { follow = true; }},
    };
    auto pos = parse_args("logs", argc, argv, 2, opts, &help);
    if (help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    setup_logging(log_level);
    if (pos.size() != 1) throw UsageError{"'ocivm logs' needs one VM NAME; see 'ocivm logs --help'"};
    vm::VmEntry e = vm::find_vm(pos[0]);
    if (!e.record.detached)
        throw Error("VM '" + pos[0] + "' runs in the foreground: its output goes to the terminal of its 'ocivm run'");
    UniqueFd out(::open((e.dir + "/stdout.log").c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    UniqueFd err(::open((e.dir + "/stderr.log").c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!out || !err) throw_errno("cannot open the logs of VM '" + pos[0] + "' in " + e.dir, errno);
    while (true) {
        // Whether it ran before the copy: what it wrote before exiting is
        // then all in the files.
        bool alive = follow && vm::supervisor_alive(e.dir);
        if (!copy_new(out.get(), 1) || !copy_new(err.get(), 2)) return 0;  // our reader left
        if (!alive) return 0;
        ::usleep(100000);
    }
}

}  // namespace ocivm::cli
