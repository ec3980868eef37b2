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

// writeback: FUSE_WRITEBACK_CACHE, where writeback_refusal() allows it.
ServeConfig serve_config(const std::string& source, fs::CacheMode mode, bool readonly,
                         bool xattr, bool announce_submounts, bool writeback = false);

// Why --writeback cannot serve this share ("" when it can): the writeback
// cache is the page cache's, which never and metadata bypass for file data
// (FOPEN_DIRECT_IO: nothing would be cached, yet the guest would stop
// taking file sizes and mtimes from the host), and a read-only share has no
// writes to cache.
std::string writeback_refusal(fs::CacheMode mode, bool readonly);

}  // namespace ocivm::fuse
