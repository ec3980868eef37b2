#pragma once
// Builds FUSE requests by hand and runs them through fuse::Server over a
// Passthrough on a temporary directory: the protocol as the kernel speaks it,
// without a mount.
#include <linux/fuse.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fs/passthrough.h"
#include "fuse/server.h"

namespace ocivm::test {

// $TMPDIR, or /tmp without one.
std::string temp_base();
// A new directory below temp_base().
std::string make_temp_dir();
void remove_tree(const std::string& path);

class Request {
public:
    Request(uint32_t opcode, uint64_t nodeid);
    template <typename T>
    Request& arg(const T& v) {
        return raw(&v, sizeof v);
    }
    Request& str(const std::string& s);  // with its NUL
    Request& raw(const void* p, size_t n);
    Request& uid(uint32_t u, uint32_t g);
    // Finalizes len and returns the bytes.
    std::vector<std::byte> bytes() const;

private:
    std::vector<std::byte> buf_;
};

struct Reply {
    fs::Context ctx;
    bool replied = false;
    int error = 0;
    std::vector<std::byte> payload;
    uint64_t unique = 0;
    template <typename T>
    T as() const {
        T v{};
        std::memcpy(&v, payload.data(), std::min(sizeof v, payload.size()));
        return v;
    }
};

// A host file's contents; a reply's payload as text.
std::string slurp(const std::string& path);
std::string text(const Reply& r);

class Harness {
public:
    explicit Harness(fs::CacheMode mode = fs::CacheMode::Auto, bool readonly = false,
                     bool no_open = false);
    // Any options; the source is always a fresh temporary directory.
    explicit Harness(fs::PassthroughOptions o, fuse::ServerOptions so = {});
    ~Harness();
    // Sends INIT with the flags a current kernel offers.
    Reply init();
    Reply send(const std::vector<std::byte>& req);
    Reply send(const Request& r) { return send(r.bytes()); }
    fuse::Server::Result last_result() const { return last_; }

    // Shorthands returning nodeid / fh (and failing the test on error).
    uint64_t lookup(uint64_t parent, const std::string& name, int* err = nullptr);
    uint64_t mkdir(uint64_t parent, const std::string& name);
    // Creates a file; returns {nodeid, fh}.
    std::pair<uint64_t, uint64_t> create(uint64_t parent, const std::string& name);
    uint64_t opendir(uint64_t node);
    // READDIR/READDIRPLUS names from offset; nodeids too for plus.
    std::vector<std::pair<std::string, uint64_t>> readdir(uint64_t node, uint64_t fh, bool plus,
                                                          uint64_t offset = 0,
                                                          uint64_t* last_off = nullptr,
                                                          uint32_t size = 65536);

    std::string dir;  // the shared directory
    std::unique_ptr<fs::Passthrough> fs;
    std::unique_ptr<fuse::Server> server;

private:
    std::vector<std::byte> out_;
    fuse::Server::Result last_{};
};

}  // namespace ocivm::test
