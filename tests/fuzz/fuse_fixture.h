#pragma once
// One FUSE session for one input: a fuse::Server over a fs::Passthrough on a
// fresh directory, configured the way `ocivm mount`/`fsd` configure it
// (fuse::serve_config), next to a sentinel directory the share must never
// reach. finish() runs the oracles and removes everything.
#include <memory>
#include <string>

#include "fs/passthrough.h"
#include "fuse/server.h"
#include "trace/recorder.h"

namespace ocivm::fuzz {

class FuseFixture {
public:
    // cfg bits: 0-1 cache mode (never, metadata, auto, always), 2 read-only,
    // 3 no xattrs, 4 override_stat (rootless ownership), 5 announce
    // submounts, 6 a trace recorder (writing JSON to /dev/null).
    explicit FuseFixture(uint8_t cfg);
    ~FuseFixture();
    FuseFixture(const FuseFixture&) = delete;
    FuseFixture& operator=(const FuseFixture&) = delete;

    // The INIT a current kernel sends (every flag offered); fails unless
    // the server accepts it.
    void init();
    // Oracles (no FIFO or device left open, nothing outside the share
    // touched), then tears the session down. Called by the destructor if
    // not before.
    void finish(const char* what);

    fs::Passthrough& fs() { return *fs_; }
    fuse::Server& server() { return *server_; }
    const std::string& share() const { return share_; }

private:
    std::string run_, share_, outside_;
    std::unique_ptr<fs::Passthrough> fs_;
    std::unique_ptr<fuse::Server> server_;
    trace::Recorder* recorder_ = nullptr;
    bool finished_ = false;
};

}  // namespace ocivm::fuzz
