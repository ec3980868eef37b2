#include "fuse_fixture.h"

#include <linux/fuse.h>
#include <sys/stat.h>

#include <vector>

#include "fuse/serve_config.h"
#include "harness.h"

namespace ocivm::fuzz {

namespace {

constexpr const char kSentinel[] = "sentinel: a share must never reach this file\n";

// One recorder for the process: building one per input (8 MiB of slots, a
// thread that notices a stop only every 20 ms) would cost more than the
// input. flush() after each input keeps its work inside that input.
trace::Recorder& shared_recorder() {
    static trace::Recorder rec("/dev/null");
    return rec;
}

class InitWriter final : public fuse::BufferReplyWriter {
public:
    InitWriter(std::byte* b, size_t cap) : BufferReplyWriter(b, cap) {}
    int commit(size_t len) override {
        len_ = len;
        return 0;
    }
    size_t len_ = 0;
};

}  // namespace

FuseFixture::FuseFixture(uint8_t cfg) {
    run_ = fresh_dir("fuse");
    share_ = run_ + "/share";
    outside_ = run_ + "/outside";
    if (::mkdir(share_.c_str(), 0755) < 0 || ::mkdir(outside_.c_str(), 0755) < 0)
        fail("mkdir in %s: %s", run_.c_str(), std::strerror(errno));
    write_file(outside_ + "/sentinel", kSentinel, sizeof kSentinel - 1);
    auto mode = static_cast<fs::CacheMode>(cfg & 3);
    auto c = fuse::serve_config(share_, mode, cfg & 4, !(cfg & 8), cfg & 32);
    c.fs.override_stat = cfg & 16;
    fs_ = std::make_unique<fs::Passthrough>(c.fs);
    if (cfg & 64) recorder_ = &shared_recorder();
    server_ = std::make_unique<fuse::Server>(*fs_, c.protocol, recorder_);
}

FuseFixture::~FuseFixture() { finish("the input"); }

void FuseFixture::init() {
    struct {
        fuse_in_header h;
        uint32_t major, minor, max_readahead, flags, flags2, unused[11];
    } req{};
    req.h.len = sizeof req;
    req.h.opcode = FUSE_INIT;
    req.h.unique = 1;
    req.major = FUSE_KERNEL_VERSION;
    req.minor = FUSE_KERNEL_MINOR_VERSION;
    req.max_readahead = 128 * 1024;
    req.flags = 0xffffffffu;
    req.flags2 = 0xffffffffu;
    std::vector<std::byte> out(4096);
    InitWriter w(out.data(), out.size());
    auto r = server_->handle({reinterpret_cast<const std::byte*>(&req), sizeof req}, w);
    fuse_out_header oh{};
    std::memcpy(&oh, out.data(), sizeof oh);
    if (r != fuse::Server::Result::Replied || w.len_ < sizeof oh || oh.error != 0)
        finding("fuse-init", "the server refused a kernel's INIT (error %d)", oh.error);
}

void FuseFixture::finish(const char* what) {
    if (finished_) return;
    finished_ = true;
    check_no_special_fds(what);
    server_.reset();
    fs_.reset();
    if (recorder_) recorder_->flush();
    expect_entries(run_, {"outside", "share"}, "fuse-escape", "a FUSE request reached outside the share");
    expect_entries(outside_, {"sentinel"}, "fuse-escape", "a FUSE request reached outside the share");
    if (read_file_or_empty(outside_ + "/sentinel") != kSentinel)
        finding("fuse-escape", "a FUSE request changed a file outside the share");
    remove_tree(run_);
    expect_entries(workspace(), {}, "leftover", "the session left files behind");
}

}  // namespace ocivm::fuzz
