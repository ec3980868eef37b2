// OCI index, manifest and config parsing: the image store's only public
// way in is Store::import of a source, so the harness lays the input out as
// an OCI layout (or an oci-archive / docker-archive of one), imports it
// into a fresh store and then lists, resolves, removes and prunes it. The
// JSON parsers (pick_manifest, read_blob, open_docker_archive, import,
// info_from) are internal to store.cpp; parse_image_config and
// resolve_user (the image's /etc/passwd and /etc/group) are also called
// directly on every part.
//
// Input: u8 mode, then parts separated by NUL bytes (JSON has none):
//   mode bits 0-1: 0 oci:DIR, 1 oci:DIR:latest, 2 oci-archive:FILE,
//                  3 docker-archive:FILE; bit 2: import with a name
//   part 0     index.json (docker-archive: manifest.json)
//   parts 1-7  blobs (docker-archive: files 1.json ... 7.json)
//   part 8, 9  /etc/passwd and /etc/group of layer L1
// Layers are the harness's, not the input's (tar_unpack_fuzz covers them):
// L0 an empty tar, L1 a tar with etc/passwd and etc/group, L2 L1 gzipped
// (docker-archive: files L0.tar, L1.tar, L2.tar.gz). Since the input cannot
// compute digests, parts name them by placeholders: @k the digest of part k
// (k = 1..7, only parts after the one that names it) or of layer Lk, %k the
// diff_id (digest of the uncompressed layer), #k the size in bytes.
//
// Oracles: every failure is an ocivm::Error (a json or filesystem exception
// escaping is a finding: the CLI would print the library's text instead of
// what failed and what to do); an image that imported can be listed, found
// and resolved; a failed import leaves the store as it was (listable, no
// image); nothing is written outside the store.
#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <typeinfo>
#include <vector>

#include "harness.h"
#include "image/resolve.h"
#include "image/store.h"
#include "util/error.h"

using namespace ocivm;
using namespace ocivm::fuzz;

namespace {

struct File {
    std::string path, data;
    bool dir = false;
};

std::string make_tar(const std::vector<File>& files, bool gzip) {
    archive* a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    if (gzip) {
        archive_write_add_filter_gzip(a);
        archive_write_set_filter_option(a, "gzip", "timestamp", nullptr);  // the same bytes every time
    }
    archive_write_set_bytes_in_last_block(a, 1);
    size_t cap = 16384;
    for (auto& f : files) cap += 4096 + f.path.size() * 4 + f.data.size() * 2;
    std::string buf(cap, '\0');
    size_t used = 0;
    if (archive_write_open_memory(a, buf.data(), buf.size(), &used) != ARCHIVE_OK)
        fail("archive_write_open_memory: %s", archive_error_string(a));
    for (auto& f : files) {
        archive_entry* e = archive_entry_new();
        archive_entry_set_pathname(e, f.path.c_str());
        archive_entry_set_filetype(e, f.dir ? AE_IFDIR : AE_IFREG);
        archive_entry_set_perm(e, f.dir ? 0755 : 0644);
        archive_entry_set_size(e, f.dir ? 0 : static_cast<la_int64_t>(f.data.size()));
        archive_entry_set_mtime(e, 1700000000, 0);
        if (archive_write_header(a, e) != ARCHIVE_OK) fail("tar header: %s", archive_error_string(a));
        if (!f.dir && !f.data.empty() &&
            archive_write_data(a, f.data.data(), f.data.size()) != static_cast<la_ssize_t>(f.data.size()))
            fail("tar data: %s", archive_error_string(a));
        archive_entry_free(e);
    }
    if (archive_write_close(a) != ARCHIVE_OK) fail("tar close: %s", archive_error_string(a));
    archive_write_free(a);
    buf.resize(used);
    return buf;
}

struct Blob {
    std::string data, digest, diff_id;  // digest/diff_id: "sha256:HEX"
};

// Replaces @k, %k and #k (k = 1..7 for parts after `self`, L0..L2 for
// layers) by digest, diff_id and size.
std::string substitute(const std::string& text, int self, const std::map<std::string, Blob>& blobs) {
    std::string out;
    for (size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if ((c == '@' || c == '%' || c == '#') && i + 1 < text.size()) {
            std::string key;
            if (text[i + 1] == 'L' && i + 2 < text.size() && text[i + 2] >= '0' && text[i + 2] <= '2')
                key = text.substr(i + 1, 2);
            else if (text[i + 1] >= '1' && text[i + 1] <= '7' && text[i + 1] - '0' > self)
                key = text.substr(i + 1, 1);
            auto it = key.empty() ? blobs.end() : blobs.find(key);
            if (it != blobs.end()) {
                out += c == '@' ? it->second.digest : c == '%' ? it->second.diff_id
                                                               : std::to_string(it->second.data.size());
                i += key.size();
                continue;
            }
        }
        out += c;
    }
    return out;
}

std::string digest_of(const std::string& s) { return "sha256:" + sha256_hex(s.data(), s.size()); }

// Runs one store step: an ocivm::Error is an accepted failure (false),
// anything else escaping is a finding.
bool step(const char* what, const std::function<void()>& f) {
    try {
        f();
        if (verbose()) std::fprintf(stderr, "%s: ok\n", what);
        return true;
    } catch (const Error& e) {
        if (verbose()) std::fprintf(stderr, "%s: %s\n", what, e.what());
        return false;
    } catch (const std::exception& e) {
        finding("oci-exception", "%s: a %s escaped instead of an ocivm::Error: %s", what, typeid(e).name(), e.what());
        return false;
    }
}

}  // namespace

int fuzz_one(const uint8_t* data, size_t size) {
    Input in(data, size);
    uint8_t mode = in.u8();
    auto rest = in.rest();
    std::vector<std::string> parts(1);
    for (uint8_t b : rest) {
        if (b == 0) parts.emplace_back();
        else parts.back() += static_cast<char>(b);
    }
    parts.resize(std::max<size_t>(parts.size(), 10));

    std::map<std::string, Blob> blobs;
    {
        std::string passwd = parts[8].empty() ? "root:x:0:0:root:/root:/bin/sh\n" : parts[8];
        std::string group = parts[9].empty() ? "root:x:0:\n" : parts[9];
        std::vector<File> l1 = {{"etc", "", true}, {"etc/passwd", passwd, false}, {"etc/group", group, false}};
        Blob b0, b1, b2;
        b0.data = make_tar({}, false);
        b1.data = make_tar(l1, false);
        b2.data = make_tar(l1, true);
        b0.digest = b0.diff_id = digest_of(b0.data);
        b1.digest = b1.diff_id = digest_of(b1.data);
        b2.digest = digest_of(b2.data);
        b2.diff_id = b1.diff_id;
        blobs["L0"] = b0;
        blobs["L1"] = b1;
        blobs["L2"] = b2;
    }
    for (int k = 7; k >= 1; --k) {
        Blob b;
        b.data = substitute(parts[k], k, blobs);
        b.digest = b.diff_id = digest_of(b.data);
        blobs[std::to_string(k)] = b;
    }
    std::string top = substitute(parts[0], 0, blobs);

    std::string run = fresh_dir("oci");
    std::string src_dir = run + "/layout", store_dir = run + "/store", fake_root = run + "/root";
    std::string source;
    std::vector<File> files;
    unsigned kind = mode & 3;
    if (kind == 3) {
        files.push_back({"manifest.json", top, false});
        for (int k = 1; k <= 7; ++k) files.push_back({std::to_string(k) + ".json", blobs[std::to_string(k)].data, false});
        files.push_back({"L0.tar", blobs["L0"].data, false});
        files.push_back({"L1.tar", blobs["L1"].data, false});
        files.push_back({"L2.tar.gz", blobs["L2"].data, false});
    } else {
        files.push_back({"oci-layout", "{\"imageLayoutVersion\": \"1.0.0\"}", false});
        files.push_back({"index.json", top, false});
        files.push_back({"blobs", "", true});
        files.push_back({"blobs/sha256", "", true});
        for (auto& [k, b] : blobs) files.push_back({"blobs/sha256/" + b.digest.substr(7), b.data, false});
    }
    if (kind <= 1) {
        ::mkdir(src_dir.c_str(), 0755);
        for (auto& f : files) {
            std::string p = src_dir + "/" + f.path;
            if (f.dir) ::mkdir(p.c_str(), 0755);
            else write_file(p, f.data.data(), f.data.size());
        }
        source = "oci:" + src_dir + (kind == 1 ? ":latest" : "");
    } else {
        std::string tar = make_tar(files, false);
        write_file(src_dir, tar.data(), tar.size());
        source = (kind == 2 ? "oci-archive:" : "docker-archive:") + src_dir;
    }

    image::Store store(store_dir);
    std::string name = (mode & 4) ? "fuzz/image:1" : "";
    std::string imported;
    step("import", [&] { imported = store.import(source, name).image.name; });
    if (!imported.empty()) {
        // What imported must be usable: no step may fail, not even with an Error.
        auto must = [&](const char* what, const std::function<void()>& f) {
            if (!step(what, f)) finding("oci-imported-unusable", "%s of an image that imported failed", what);
        };
        must("list", [&] { (void)store.list(); });
        must("find", [&] {
            if (!store.find(imported)) finding("oci-imported-unusable", "the imported image %s is not found", imported.c_str());
        });
        std::optional<image::ResolvedImage> r;
        must("resolve", [&] { r = store.resolve(imported); });
        if (!r) finding("oci-imported-unusable", "the imported image %s does not resolve", imported.c_str());
        else step("resolve_user", [&] { (void)image::resolve_user(r->rootfs, r->config.user); });
        must("remove", [&] { store.remove(imported); });
    } else {
        // "Throws Error (the store unchanged) on a bad source" (store.h).
        std::vector<image::ImageInfo> images;
        if (!step("list", [&] { images = store.list(); }))
            finding("oci-failed-import-changed-store", "the store cannot be listed after a failed import");
        else if (!images.empty())
            finding("oci-failed-import-changed-store", "a failed import left image %s in the store",
                    images[0].name.c_str());
    }
    step("prune", [&] { (void)store.prune(); });

    // The parsers directly, on every part.
    std::string user;
    for (int k = 0; k <= 7; ++k) {
        const std::string& text = k ? blobs[std::to_string(k)].data : top;
        if (text.empty()) continue;
        step("parse_image_config", [&] {
            auto c = image::parse_image_config(text);
            if (!c.user.empty()) user = c.user;
        });
    }
    ::mkdir(fake_root.c_str(), 0755);
    ::mkdir((fake_root + "/etc").c_str(), 0755);
    write_file(fake_root + "/etc/passwd", parts[8].data(), parts[8].size());
    write_file(fake_root + "/etc/group", parts[9].data(), parts[9].size());
    step("resolve_user", [&] { (void)image::resolve_user(fake_root, user); });
    step("normalize_name", [&] { (void)image::normalize_name(parts[1]); });

    expect_entries(run, {"layout", "root", "store"}, "oci-escape", "the import wrote outside its store");
    remove_tree(run);
    return 0;
}
