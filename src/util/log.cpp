#include "util/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "util/error.h"

namespace ocivm {

void setup_logging(const std::string& level) {
    auto lvl = spdlog::level::from_str(level);
    // from_str maps unknown names to "off"; only accept the real spelling.
    if (lvl == spdlog::level::off && level != "off") {
        throw Error("unknown log level '" + level +
                    "'; use one of trace, debug, info, warn, error, critical, off");
    }
    static auto logger = spdlog::stderr_color_mt("ocivm");
    logger->set_pattern("%^ocivm: %l:%$ %v");
    logger->set_level(lvl);
    spdlog::set_default_logger(logger);
}

}  // namespace ocivm
