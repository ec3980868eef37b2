#pragma once
// What a cache mode means for the file system and for the protocol, in one
// place for every subcommand that serves a directory (mount, fsd).
#include <string>

#include "fs/passthrough.h"
#include "fuse/server.h"

namespace ocivm::fuse {

struct ServeConfig {
    fs::PassthroughOptions fs;
    ServerOptions protocol;
};

ServeConfig serve_config(const std::string& source, fs::CacheMode mode, bool readonly,
                         bool xattr, bool announce_submounts);

}  // namespace ocivm::fuse
