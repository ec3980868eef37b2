#pragma once
#include <spdlog/spdlog.h>

#include <string>

namespace ocivm {

// Logs go to stderr so stdout stays the command's output. Throws Error on an
// unknown level name.
void setup_logging(const std::string& level);

}  // namespace ocivm
