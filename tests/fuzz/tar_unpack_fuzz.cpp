// Layer unpacking and root assembly: one or two layers from the input
// through image::unpack_layer into fresh directories, then image::apply_layer
// of each onto a root, as an import does. A layer is whatever the input is
// (a tar, or gzip/zstd/xz/... that libarchive or ISA-L takes); the harness
// can also gzip it itself, so mutations of the tar inside still reach the
// tar reader through the gzip path.
//
// Input:
//   u8  flags: bit 0 the harness gzips each layer, bit 1 pass the right
//       diff_id (the uncompressed bytes' digest), bit 2 a wrong one (bit 1
//       wins), bit 3 two layers
//   [u16 n: with two layers, the first is the next n bytes]
//   the (last) layer: the rest
//
// The layers unpack four directories deep (RUN/a/b/c/l1), next to a
// sentinel file (RUN/a/b/sentinel). Oracles: every failure is an
// ocivm::Error, after which the layer's directory is gone; nothing appears
// or changes outside the layer and root directories (a "..", a symlink or a
// hard link that escapes); no FIFO or device stays open.
#include <sys/stat.h>
#include <zlib.h>

#include <functional>
#include <string>
#include <typeinfo>
#include <vector>

#include "harness.h"
#include "image/unpack.h"
#include "util/error.h"

using namespace ocivm;
using namespace ocivm::fuzz;

namespace {

constexpr const char kSentinel[] = "sentinel: a layer must never reach this file\n";

std::string gzip(std::span<const uint8_t> in) {
    z_stream z{};
    if (deflateInit2(&z, 1, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) != Z_OK) fail("deflateInit2");
    std::string out(deflateBound(&z, in.size()) + 64, '\0');
    z.next_in = const_cast<Bytef*>(in.data());
    z.avail_in = static_cast<uInt>(in.size());
    z.next_out = reinterpret_cast<Bytef*>(out.data());
    z.avail_out = static_cast<uInt>(out.size());
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) fail("deflate");
    out.resize(z.total_out);
    deflateEnd(&z);
    return out;
}

bool step(const char* what, const std::function<void()>& f) {
    try {
        f();
        if (verbose()) std::fprintf(stderr, "%s: ok\n", what);
        return true;
    } catch (const Error& e) {
        if (verbose()) std::fprintf(stderr, "%s: %s\n", what, e.what());
        return false;
    } catch (const std::exception& e) {
        finding("tar-exception", "%s: a %s escaped instead of an ocivm::Error: %s", what, typeid(e).name(), e.what());
        return false;
    }
}

bool exists(const std::string& p) {
    struct stat st;
    return ::lstat(p.c_str(), &st) == 0;
}

}  // namespace

int fuzz_one(const uint8_t* data, size_t size) {
    Input in(data, size);
    uint8_t flags = in.u8();
    std::vector<std::span<const uint8_t>> layers;
    if (flags & 8) layers.push_back(in.take(in.u16()));
    layers.push_back(in.rest());

    std::string run = fresh_dir("tar");
    std::string a = run + "/a", b = a + "/b", c = b + "/c";
    for (auto& d : {a, b, c}) ::mkdir(d.c_str(), 0755);
    write_file(b + "/sentinel", kSentinel, sizeof kSentinel - 1);

    std::vector<std::string> expect_run = {"a"}, expect_c;
    std::vector<std::pair<std::string, image::LayerRecords>> unpacked;
    for (size_t i = 0; i < layers.size(); ++i) {
        std::string blob = "blob" + std::to_string(i + 1);
        std::string bytes = (flags & 1) ? gzip(layers[i]) : std::string(layers[i].begin(), layers[i].end());
        write_file(run + "/" + blob, bytes.data(), bytes.size());
        expect_run.push_back(blob);
        std::string diff_id;
        if (flags & 2) diff_id = "sha256:" + sha256_hex(layers[i].data(), layers[i].size());
        else if (flags & 4) diff_id = "sha256:" + std::string(64, '0');
        std::string dest = c + "/l" + std::to_string(i + 1);
        image::LayerRecords records;
        if (step("unpack_layer", [&] { records = image::unpack_layer(run + "/" + blob, dest, diff_id).records; })) {
            unpacked.emplace_back(dest, records);
            expect_c.push_back("l" + std::to_string(i + 1));
        } else if (exists(dest)) {
            finding("tar-leftover", "unpack_layer failed and left %s behind", dest.c_str());
            expect_c.push_back("l" + std::to_string(i + 1));
        }
    }
    check_no_special_fds("unpacking");
    if (!unpacked.empty()) {
        std::string root = c + "/root";
        ::mkdir(root.c_str(), 0755);
        expect_c.push_back("root");
        for (auto& layer : unpacked)  // (clang 14 cannot capture structured bindings)
            if (!step("apply_layer", [&] { image::apply_layer(layer.first, layer.second, root); })) break;
        check_no_special_fds("assembling a root");
    }

    const char* escape = "a layer reached outside its directory";
    expect_entries(run, expect_run, "tar-escape", escape);
    expect_entries(a, {"b"}, "tar-escape", escape);
    expect_entries(b, {"c", "sentinel"}, "tar-escape", escape);
    expect_entries(c, expect_c, "tar-escape", escape);
    if (read_file_or_empty(b + "/sentinel") != kSentinel)
        finding("tar-escape", "a layer changed a file outside its directory");
    remove_tree(run);
    return 0;
}
