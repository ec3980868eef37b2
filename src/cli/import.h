#pragma once
// The one way ocivm imports an image: `ocivm image import`, the implicit
// import of `ocivm run LAYOUT` and of `ocivm disk create LAYOUT` all parse
// the image in a process of its own that has confined itself (no network,
// only the capabilities unpacking needs, no_new_privs) and report back to a
// caller that stays as it was for its own work (QEMU, mounts, disks).
#include <string>

namespace ocivm::cli {

struct ImportedImage {
    std::string name;    // NAME:TAG in the store
    std::string digest;  // its manifest digest, "sha256:..."
};

// Imports SOURCE (as for `ocivm image import`) in a confined child: the
// running binary again (/proc/self/exe), as `image import --result-fd 3`.
// For containers-storage:NAME, podman first exports NAME here, unconfined
// (it needs its own privileges), and the child parses the export. Progress
// and log lines (at log_level) reach our stderr; a failed import throws
// Error with the child's own message, so the user sees the one line
// `ocivm image import` would print.
ImportedImage import_confined(const std::string& source, const std::string& name, const std::string& log_level);

// The child's side (`ocivm image import ... --result-fd FD`): confines this
// process, imports, and writes the outcome to result_fd: "ok\tNAME\tDIGEST\n",
// or "error\t" and the message. archive_fd: podman's export, for
// containers-storage: (-1 otherwise). Returns the exit status.
int run_confined_import(const std::string& source, const std::string& name, int result_fd, int archive_fd);

}  // namespace ocivm::cli
