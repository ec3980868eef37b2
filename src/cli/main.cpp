// ocivm: runs OCI container images as ephemeral VMs; see README.md.
#include <clocale>
#include <cstdio>
#include <cstring>
#include <string>

#include "cli/args.h"
#include "cli/commands.h"
#include "util/error.h"

#ifndef OCIVM_VERSION
#define OCIVM_VERSION "0.0.0"
#endif

namespace {

const char kUsage[] = R"(Usage: ocivm COMMAND [OPTIONS] [ARGS]

ocivm runs OCI container images as fast, ephemeral VMs, with the image's
root file system served by its own FUSE / virtio-fs server.

Commands:
  run [OPTIONS] IMAGE [COMMAND...]
                            boot IMAGE as an ephemeral VM, run COMMAND, exit
                            with its status (-d: keep it running)
  exec [OPTIONS] NAME COMMAND...
                            run COMMAND in the running VM NAME
  ps [-a] [--format json]   list VMs
  stop [-t SECONDS] NAME... stop VMs (SIGTERM, then kill)
  kill [-s SIGNAL] NAME...  signal a VM's main command
  wait NAME...              wait for VMs to exit, print their status
  rm [-f] NAME...           remove VMs that have exited (-f: running too)
  logs [-f] NAME            what a detached VM's command wrote
  inspect NAME...           everything about VMs, as JSON
  snapshot create|ls|inspect|rm
                            save a running VM once; 'run --from-snapshot'
                            starts clones of it without a boot
  pull [OPTIONS] REFERENCE  fetch an image from a registry into the store
  image import|ls|inspect|rm|prune
                            the image store: import from OCI layouts, OCI and
                            docker archives, podman
  disk create IMAGE OUTPUT  write an image to a bootable GPT disk, no mounting
  holders PATH              name everything that keeps a mount busy
  umount PATH               sync and unmount; if busy, name the holders
  mount SOURCE MOUNTPOINT   serve a host directory through FUSE at MOUNTPOINT
  fsd --shared-dir DIR ...  serve a directory to a VM over virtio-fs
                            (vhost-user; a drop-in for virtiofsd)
  trace summary FILE        summarise a request trace written by --trace
  help [COMMAND]            show this help, or a command's help
  version                   print the version

Global options:
  -h, --help                show help (also after any command)
      --version             print the version

Exit status: the command's own, or 125 when ocivm itself fails.
Run 'ocivm COMMAND --help' for a command's options.
)";

}  // namespace

int main(int argc, char** argv) {
    using namespace ocivm::cli;
    // Layer paths are UTF-8 (pax); libarchive converts them to the locale's
    // charset, which must be able to hold them.
    if (!std::setlocale(LC_CTYPE, "C.UTF-8")) std::setlocale(LC_CTYPE, "");
    if (argc < 2) {
        std::fputs(kUsage, stderr);
        return kExitOcivmFailure;
    }
    std::string cmd = argv[1];
    try {
        if (cmd == "--version" || cmd == "version") {
            std::printf("ocivm version %s\n", OCIVM_VERSION);
            return 0;
        }
        if (cmd == "-h" || cmd == "--help") {
            std::fputs(kUsage, stdout);
            return 0;
        }
        if (cmd == "help") {
            if (argc < 3) {
                std::fputs(kUsage, stdout);
                return 0;
            }
            std::string sub = argv[2];
            char help_flag[] = "--help";
            char* sub_argv[] = {argv[0], argv[2], help_flag, nullptr};
            if (sub == "run") return cmd_run(3, sub_argv);
            if (sub == "exec") return cmd_exec(3, sub_argv);
            if (sub == "ps") return cmd_ps(3, sub_argv);
            if (sub == "stop") return cmd_stop(3, sub_argv);
            if (sub == "kill") return cmd_kill(3, sub_argv);
            if (sub == "rm") return cmd_rm(3, sub_argv);
            if (sub == "logs") return cmd_logs(3, sub_argv);
            if (sub == "wait") return cmd_wait(3, sub_argv);
            if (sub == "inspect") return cmd_inspect(3, sub_argv);
            if (sub == "snapshot") return cmd_snapshot(3, sub_argv);
            if (sub == "image") return cmd_image(3, sub_argv);
            if (sub == "pull") return cmd_pull(3, sub_argv);
            if (sub == "disk") return cmd_disk(3, sub_argv);
            if (sub == "holders") return cmd_holders(3, sub_argv);
            if (sub == "umount") return cmd_umount(3, sub_argv);
            if (sub == "mount") return cmd_mount(3, sub_argv);
            if (sub == "fsd") return cmd_fsd(3, sub_argv);
            if (sub == "trace") return cmd_trace(3, sub_argv);
            throw UsageError{"unknown command '" + sub + "'; see 'ocivm help'"};
        }
        if (cmd == "run") return cmd_run(argc, argv);
        if (cmd == "exec") return cmd_exec(argc, argv);
        if (cmd == "ps") return cmd_ps(argc, argv);
        if (cmd == "stop") return cmd_stop(argc, argv);
        if (cmd == "kill") return cmd_kill(argc, argv);
        if (cmd == "rm") return cmd_rm(argc, argv);
        if (cmd == "logs") return cmd_logs(argc, argv);
        if (cmd == "wait") return cmd_wait(argc, argv);
        if (cmd == "inspect") return cmd_inspect(argc, argv);
        if (cmd == "snapshot") return cmd_snapshot(argc, argv);
        if (cmd == "image") return cmd_image(argc, argv);
        if (cmd == "pull") return cmd_pull(argc, argv);
        if (cmd == "disk") return cmd_disk(argc, argv);
        if (cmd == "holders") return cmd_holders(argc, argv);
        if (cmd == "umount") return cmd_umount(argc, argv);
        if (cmd == "mount") return cmd_mount(argc, argv);
        if (cmd == "fsd") return cmd_fsd(argc, argv);
        if (cmd == "trace") return cmd_trace(argc, argv);
        throw UsageError{"unknown command '" + cmd + "'; see 'ocivm help'"};
    } catch (const UsageError& e) {
        std::fprintf(stderr, "ocivm: error: %s\n", e.msg.c_str());
    } catch (const ocivm::Error& e) {
        std::fprintf(stderr, "ocivm: error: %s\n", e.what());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "ocivm: error: %s\n", e.what());
    }
    return kExitOcivmFailure;
}
