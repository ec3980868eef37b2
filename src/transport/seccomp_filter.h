#pragma once
// A seccomp allow-list of the system calls a file-system server needs once
// it is serving (vhost-user messages, virtqueues, passthrough operations).
#include <string>

namespace ocivm::transport {

enum class SeccompAction { None, Log, Kill };

// Parses kill|log|none; false on anything else.
bool parse_seccomp_action(const std::string& s, SeccompAction& out);

// Installs the filter for the whole process (all threads, including ones
// already running); anything else is logged (Log) or kills the process
// (Kill). Throws Error when the filter cannot be loaded.
void install_seccomp_filter(SeccompAction action);

}  // namespace ocivm::transport
