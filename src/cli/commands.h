#pragma once
// One function per subcommand, each in its own file. They return the
// process exit status; usage errors are thrown as UsageError, set-up
// failures as ocivm::Error (both end in "ocivm: error: ..." and 125).

namespace ocivm::cli {

constexpr int kExitOcivmFailure = 125;

int cmd_mount(int argc, char** argv);
int cmd_fsd(int argc, char** argv);
int cmd_trace(int argc, char** argv);
int cmd_run(int argc, char** argv);
int cmd_image(int argc, char** argv);
int cmd_holders(int argc, char** argv);
int cmd_umount(int argc, char** argv);
int cmd_disk(int argc, char** argv);
int cmd_pull(int argc, char** argv);
int cmd_exec(int argc, char** argv);
int cmd_ps(int argc, char** argv);
int cmd_stop(int argc, char** argv);
int cmd_kill(int argc, char** argv);
int cmd_rm(int argc, char** argv);
int cmd_logs(int argc, char** argv);
int cmd_wait(int argc, char** argv);
int cmd_inspect(int argc, char** argv);
int cmd_snapshot(int argc, char** argv);


}  // namespace ocivm::cli
