#include "unit/test_util.h"

#include <fstream>
#include <iterator>

#include <gtest/gtest.h>
#include <fcntl.h>
#include <stdlib.h>

#include <filesystem>

namespace ocivm::test {

std::string temp_base() {
    // The suite's wrapper (tests/lib/leakcheck.sh) gives each test a TMPDIR
    // of its own and checks it for leftovers afterwards.
    const char* t = std::getenv("TMPDIR");
    return t && *t ? t : "/tmp";
}

std::string make_temp_dir() {
    std::string t = temp_base() + "/ocivm-unit-XXXXXX";
    if (!::mkdtemp(t.data())) throw std::runtime_error("mkdtemp failed");
    return t;
}

void remove_tree(const std::string& path) {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
}

Request::Request(uint32_t opcode, uint64_t nodeid) {
    static uint64_t unique = 100;
    fuse_in_header h{};
    h.opcode = opcode;
    h.nodeid = nodeid;
    h.unique = unique += 2;
    h.pid = 1;
    buf_.resize(sizeof h);
    std::memcpy(buf_.data(), &h, sizeof h);
}

Request& Request::str(const std::string& s) {
    return raw(s.c_str(), s.size() + 1);
}

Request& Request::raw(const void* p, size_t n) {
    size_t old = buf_.size();
    buf_.resize(old + n);
    if (n) std::memcpy(buf_.data() + old, p, n);
    return *this;
}

Request& Request::uid(uint32_t u, uint32_t g) {
    auto* h = reinterpret_cast<fuse_in_header*>(buf_.data());
    h->uid = u;
    h->gid = g;
    return *this;
}

std::vector<std::byte> Request::bytes() const {
    auto b = buf_;
    auto* h = reinterpret_cast<fuse_in_header*>(b.data());
    h->len = static_cast<uint32_t>(b.size());
    return b;
}

namespace {
class CaptureWriter final : public fuse::BufferReplyWriter {
public:
    CaptureWriter(std::byte* b, size_t cap, Reply& r) : BufferReplyWriter(b, cap), r_(r) {}
    int commit(size_t len) override {
        fuse_out_header h;
        std::memcpy(&h, buf_, sizeof h);
        EXPECT_EQ(h.len, len) << "reply header length disagrees with the bytes sent";
        r_.replied = true;
        r_.error = h.error;
        r_.unique = h.unique;
        r_.payload.assign(buf_ + sizeof h, buf_ + len);
        return 0;
    }

private:
    Reply& r_;
};
}  // namespace

namespace {
fs::PassthroughOptions options_of(fs::CacheMode mode, bool readonly, bool no_open) {
    fs::PassthroughOptions o;
    o.cache = mode;
    o.readonly = readonly;
    o.no_open = no_open;
    return o;
}
}  // namespace

Harness::Harness(fs::CacheMode mode, bool readonly, bool no_open)
    : Harness(options_of(mode, readonly, no_open)) {}

Harness::Harness(fs::PassthroughOptions o, fuse::ServerOptions so) : dir(make_temp_dir()) {
    o.source = dir;
    // The test process serves, as `ocivm mount` does.
    o.switch_credentials = fs::prepare_server_process();
    fs = std::make_unique<fs::Passthrough>(o);
    server = std::make_unique<fuse::Server>(*fs, so);
    out_.resize((1u << 20) + 4096);
}

Harness::~Harness() {
    server.reset();
    fs.reset();
    remove_tree(dir);
}

Reply Harness::send(const std::vector<std::byte>& req) {
    Reply r;
    CaptureWriter w(out_.data(), out_.size(), r);
    last_ = server->handle({req.data(), req.size()}, w);
    return r;
}

Reply Harness::init() {
    struct {
        uint32_t major, minor, max_readahead, flags, flags2, unused[11];
    } in{7, 45, 131072, 0xffffffffu, 0xffffffffu, {}};
    return send(Request(FUSE_INIT, 0).arg(in));
}

uint64_t Harness::lookup(uint64_t parent, const std::string& name, int* err) {
    auto r = send(Request(FUSE_LOOKUP, parent).str(name));
    if (err) *err = r.error;
    else EXPECT_EQ(r.error, 0) << "LOOKUP " << name;
    return r.error ? 0 : r.as<fuse_entry_out>().nodeid;
}

uint64_t Harness::mkdir(uint64_t parent, const std::string& name) {
    fuse_mkdir_in in{0755, 022};
    auto r = send(Request(FUSE_MKDIR, parent).arg(in).str(name));
    EXPECT_EQ(r.error, 0) << "MKDIR " << name;
    return r.as<fuse_entry_out>().nodeid;
}

std::pair<uint64_t, uint64_t> Harness::create(uint64_t parent, const std::string& name) {
    fuse_create_in in{static_cast<uint32_t>(O_RDWR | O_CREAT), 0644, 022, 0};
    auto r = send(Request(FUSE_CREATE, parent).arg(in).str(name));
    EXPECT_EQ(r.error, 0) << "CREATE " << name;
    EXPECT_EQ(r.payload.size(), sizeof(fuse_entry_out) + sizeof(fuse_open_out));
    fuse_entry_out e = r.as<fuse_entry_out>();
    fuse_open_out o{};
    if (r.payload.size() >= sizeof e + sizeof o) std::memcpy(&o, r.payload.data() + sizeof e, sizeof o);
    return {e.nodeid, o.fh};
}

uint64_t Harness::opendir(uint64_t node) {
    fuse_open_in in{static_cast<uint32_t>(O_RDONLY), 0};
    auto r = send(Request(FUSE_OPENDIR, node).arg(in));
    EXPECT_EQ(r.error, 0);
    return r.as<fuse_open_out>().fh;
}

std::vector<std::pair<std::string, uint64_t>> Harness::readdir(uint64_t node, uint64_t fh,
                                                               bool plus, uint64_t offset,
                                                               uint64_t* last_off, uint32_t size) {
    fuse_read_in in{};
    in.fh = fh;
    in.offset = offset;
    in.size = size;
    auto r = send(Request(plus ? FUSE_READDIRPLUS : FUSE_READDIR, node).arg(in));
    EXPECT_EQ(r.error, 0);
    std::vector<std::pair<std::string, uint64_t>> out;
    size_t pos = 0;
    while (pos < r.payload.size()) {
        const fuse_dirent* d;
        uint64_t nodeid = 0;
        size_t sz;
        if (plus) {
            auto* dp = reinterpret_cast<const fuse_direntplus*>(r.payload.data() + pos);
            d = &dp->dirent;
            nodeid = dp->entry_out.nodeid;
            sz = FUSE_DIRENTPLUS_SIZE(dp);
        } else {
            d = reinterpret_cast<const fuse_dirent*>(r.payload.data() + pos);
            sz = FUSE_DIRENT_SIZE(d);
        }
        out.emplace_back(std::string(d->name, d->namelen), nodeid);
        if (last_off) *last_off = d->off;
        pos += sz;
    }
    return out;
}

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string text(const Reply& r) {
    return std::string(reinterpret_cast<const char*>(r.payload.data()), r.payload.size());
}

}  // namespace ocivm::test
