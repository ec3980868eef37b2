#include "fuse/serve_config.h"

namespace ocivm::fuse {

ServeConfig serve_config(const std::string& source, fs::CacheMode mode, bool readonly,
                         bool xattr, bool announce_submounts, bool writeback) {
    ServeConfig c;
    c.fs.source = source;
    c.fs.cache = mode;
    c.fs.readonly = readonly;
    c.fs.xattr = xattr;
    c.fs.announce_submounts = announce_submounts;
    // With the page cache kept (auto, always) files need no OPEN/RELEASE.
    c.fs.no_open = mode == fs::CacheMode::Auto || mode == fs::CacheMode::Always;
    c.fs.writeback = writeback;
    c.protocol.cache_symlinks = mode != fs::CacheMode::Never;
    c.protocol.auto_inval_data = mode == fs::CacheMode::Auto;
    c.protocol.readdirplus = mode != fs::CacheMode::Never;
    c.protocol.atomic_o_trunc = !c.fs.no_open;
    c.protocol.submounts = announce_submounts;
    c.protocol.writeback_cache = writeback;
    return c;
}

std::string writeback_refusal(fs::CacheMode mode, bool readonly) {
    if (mode == fs::CacheMode::Never || mode == fs::CacheMode::Metadata)
        return std::string("writes are cached in the page cache, which --cache ") + fs::cache_mode_name(mode) +
               " bypasses for file data; use --cache auto or always";
    if (readonly) return "a read-only share has no writes to cache";
    return "";
}

}  // namespace ocivm::fuse
