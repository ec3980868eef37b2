#include "fuse/serve_config.h"

namespace ocivm::fuse {

ServeConfig serve_config(const std::string& source, fs::CacheMode mode, bool readonly,
                         bool xattr, bool announce_submounts) {
    ServeConfig c;
    c.fs.source = source;
    c.fs.cache = mode;
    c.fs.readonly = readonly;
    c.fs.xattr = xattr;
    c.fs.announce_submounts = announce_submounts;
    // With the page cache kept (auto, always) files need no OPEN/RELEASE.
    c.fs.no_open = mode == fs::CacheMode::Auto || mode == fs::CacheMode::Always;
    c.protocol.cache_symlinks = mode != fs::CacheMode::Never;
    c.protocol.auto_inval_data = mode == fs::CacheMode::Auto;
    c.protocol.readdirplus = mode != fs::CacheMode::Never;
    c.protocol.atomic_o_trunc = !c.fs.no_open;
    c.protocol.submounts = announce_submounts;
    return c;
}

}  // namespace ocivm::fuse
