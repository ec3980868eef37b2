#pragma once
// Where ocivm keeps its files.
#include <string>

namespace ocivm {

// $OCIVM_HOME, else /var/lib/ocivm as root, else $XDG_DATA_HOME/ocivm
// (~/.local/share/ocivm).
std::string ocivm_home();
// Derived data that can be rebuilt at any time (kernels, initramfs).
std::string cache_dir();
// Per-VM state (console log, lock): $XDG_RUNTIME_DIR/ocivm or /run/ocivm.
std::string runtime_dir();
// mkdir -p; throws Error naming the directory when it cannot.
void make_dirs(const std::string& path, unsigned mode = 0755);
// Writes data to path atomically (temp file in the same directory + rename).
void write_file_atomic(const std::string& path, const std::string& data, unsigned mode = 0644);
std::string read_file(const std::string& path);  // throws Error

}  // namespace ocivm
