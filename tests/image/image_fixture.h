#pragma once
// Shared by the image tests (tests/image) and the image red-team tests
// (tests/security/image_*): layers, OCI layouts and archives written with
// libarchive, tree and store listings, and the ocivm CLI run as a child.
#include <sys/types.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace ocivm::imagetest {

using json = nlohmann::json;

extern std::string g_ocivm;  // the ocivm binary under test
extern std::string g_work;   // this run's scratch directory

struct Entry {
    std::string path;
    char type = 'f';  // f file, d dir, l symlink, h hard link, c char dev, b block dev, p fifo
    mode_t mode = 0644;
    uid_t uid = 0;
    gid_t gid = 0;
    std::string data;        // file content, or link target
    dev_t rdev = 0;
    int64_t sparse_size = 0;  // a file of this size with `data` at its end and a hole before
    std::vector<std::pair<std::string, std::string>> xattrs;
    time_t mtime = 1700000000;
};

// Writes a layer tar (gzip unless plain) and returns its path.
std::string write_layer(const std::string& path, const std::vector<Entry>& entries, bool gzip = true);

std::string sha(const std::string& data);
std::string file_sha(const std::string& path);
std::string uncompressed_sha(const std::string& layer);  // a layer's diff_id
void put_blob(const std::string& layout, const std::string& digest, const std::string& data);

struct Layout {
    std::string dir, manifest_digest;
    std::vector<std::string> layer_files;
};

// An OCI layout with the given layers (each a list of entries) and config.
Layout make_layout(const std::string& dir, const std::vector<std::vector<Entry>>& layers,
                   const json& runtime = json::object(), const std::string& tag = "v1");

// Makes MANIFEST the layout's one image (stored, and the index points at it).
void set_manifest(const Layout& l, const json& manifest);

// A tree as sorted "path type mode uid:gid size nlink target xattrs sha" lines.
std::string describe_tree(const std::string& root);

// blobs, layers, roots and names.json of a store, by name.
std::string store_listing(const std::string& home);

struct RunResult {
    int status;
    std::string out, err;
};
// ocivm ARGS with OCIVM_HOME=home, in directory cwd ("" = this one). A
// child still running after timeout_s seconds is killed (SIGALRM), so a
// hang shows as status 128 + 14 instead of a stuck test.
RunResult run_ocivm(const std::vector<std::string>& args, const std::string& home, const std::string& cwd = "",
                    unsigned timeout_s = 300);

}  // namespace ocivm::imagetest
