// ocivm exec: run a command in a running VM, through its guest agent.
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "cli/args.h"
#include "cli/commands.h"
#include "image/resolve.h"
#include "util/error.h"
#include "util/log.h"
#include "vm/exec_client.h"
#include "vm/vm_state.h"

namespace ocivm::cli {

namespace {

const char kHelp[] = R"(Usage: ocivm exec [OPTIONS] NAME [--] COMMAND [ARG...]

Runs COMMAND in the running VM NAME (started with 'ocivm run -d', or a
foreground 'ocivm run --name NAME'), through the guest agent of ocivm-init:
no new VM, no ssh. The command gets the VM's environment and working
directory unless told otherwise, its own session, and separate stdout and
stderr. Many execs may run at once.

Options:
  -i, --interactive           forward stdin to the command (flow-controlled:
                              ocivm reads only as fast as the command takes)
  -t, --tty                   give the command a terminal (a pty in the
                              guest, with this terminal's size and its
                              changes); with -i, keys such as Ctrl-C go to it
  -e, --env KEY=VALUE         set an environment variable (KEY alone: take
                              its value from ocivm's environment); repeatable
  -w, --workdir DIR           working directory (created if missing)
  -u, --user UID[:GID]        run as this user (numbers, or names from the
                              image's /etc/passwd and /etc/group)
      --log-level LEVEL       trace | debug | info | warn | error
  -h, --help                  show this help

Signals sent to ocivm exec (Ctrl-C without -t, SIGTERM, ...) are forwarded
to the command's process group.

Exit status: the command's; 128+N when it was killed by signal N; 126 when
it cannot be executed; 127 when it is not found; 125 when ocivm fails (no
such VM, VM not running, the VM or its supervisor went away meanwhile).
)";

}  // namespace

int cmd_exec(int argc, char** argv) {
    bool help = false, interactive = false, tty = false;
    std::string log_level = "warn", workdir, user;
    std::vector<std::string> envs;
    std::vector<Option> opts = {
        {"interactive", 'i', false, [&](const std::string&) { interactive = true; }},
        {"tty", 't', false, [&](const std::string&) { tty = true; }},
        {"env", 'e', true, [&](const std::string& v) { envs.push_back(v); }},
        {"workdir", 'w', true, [&](const std::string& v) { workdir = v; }},
        {"user", 'u', true, [&](const std::string& v) { user = v; }},
        {"log-level", 0, true, [&](const std::string& v) { log_level = v; }},
    };
    auto pos = parse_args("exec", argc, argv, 2, opts, &help, true);
    if (help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    setup_logging(log_level);
    if (pos.empty()) throw UsageError{"'ocivm exec' needs a VM NAME and a COMMAND; see 'ocivm exec --help'"};
    if (pos.size() < 2) throw UsageError{"'ocivm exec " + pos[0] + "' needs a COMMAND to run"};
    vm::VmEntry vm = vm::find_vm(pos[0]);
    guest::GuestConfig c;
    c.argv.assign(pos.begin() + 1, pos.end());
    c.env = vm.record.env;
    c.cwd = workdir.empty() ? vm.record.cwd : workdir;
    if (c.cwd.empty() || c.cwd[0] != '/') throw UsageError{"invalid --workdir '" + c.cwd + "': give an absolute path"};
    c.uid = vm.record.uid;
    c.gid = vm.record.gid;
    if (!user.empty()) {
        // Names are looked up in the image (a disk-booted VM: numbers only).
        image::User u = image::resolve_user(vm.record.rootfs.empty() ? "/nonexistent/ocivm-disk-root" : vm.record.rootfs, user);
        c.uid = u.uid;
        c.gid = u.gid;
        c.groups = u.groups;
        set_env(c.env, "HOME=" + u.home);
    }
    c.tty = tty;
    c.stdin_open = interactive;
    if (tty) {
        set_env(c.env, "TERM=" + std::string(std::getenv("TERM") ? std::getenv("TERM") : "xterm"));
        winsize ws{};
        if (::ioctl(0, TIOCGWINSZ, &ws) == 0 || ::ioctl(1, TIOCGWINSZ, &ws) == 0) {
            c.rows = ws.ws_row;
            c.cols = ws.ws_col;
        }
    }
    for (auto& e : envs)
        if (std::string entry = env_entry(e); !entry.empty()) set_env(c.env, entry);
    return vm::exec_session(vm, c);
}

}  // namespace ocivm::cli
