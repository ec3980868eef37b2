#pragma once
// The content-addressed image store under $OCIVM_HOME (see docs/images.md):
//   blobs/sha256/HEX     manifests, configs, compressed layers; verified
//                        while written (temp file + rename)
//   layers/HEX/          a layer unpacked, keyed by its diff_id (the
//                        uncompressed digest, verified while unpacking):
//                        the layer's files and nothing else
//   layers/HEX.json      its records (whiteouts, implied directories, hard
//                        links into lower layers), beside it, never in it
//   roots/HEX/           an image's root file system (HEX: manifest digest),
//                        assembled from its layers
//   names.json           NAME:TAG -> manifest digest
//   lock                 flock: one writer at a time, readers share
//   tmp/                 work in progress; cleared by the next writer
// Everything lands by rename, so an interrupted import leaves the store as
// it was plus garbage in tmp/ (and unused blobs or layers `prune` removes);
// a failed import takes out what it added. blobs/, layers/, roots/ and
// tmp/ are 0700: they hold the images' setuid files and device nodes.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "image/resolve.h"
#include "util/unique_fd.h"

namespace ocivm::image {

struct ImageInfo {
    std::string name;             // NAME:TAG
    std::string manifest_digest;  // sha256:...
    std::string config_digest;
    std::vector<std::string> layers;    // compressed blob digests, bottom first
    std::vector<std::string> diff_ids;  // uncompressed
    uint64_t size = 0;                  // sum of the blobs' sizes
    std::string created;                // when imported (UTC, ISO 8601)
    std::string config_json;            // the image config as stored
};

// What an import did, for its report.
struct ImportReport {
    ImageInfo image;
    unsigned blobs_written = 0, layers_unpacked = 0;
    bool root_assembled = false;
};

using Progress = std::function<void(const std::string& line)>;

class Store {
public:
    explicit Store(std::string home);
    const std::string& home() const { return home_; }

    // SOURCE: oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE,
    // containers-storage:NAME. name "" = the source's own tag. Throws Error
    // (the store unchanged) on a bad source. containers-storage:NAME needs
    // podman's export of NAME as archive_fd (export_podman): podman runs
    // with privileges of its own, the parsing in a confined process
    // (cli/import.h), so the two are separate steps.
    ImportReport import(const std::string& source, const std::string& name, const Progress& progress = {},
                        int archive_fd = -1);

    // podman's image NAME as an OCI archive (podman image save), written
    // into an unnamed file in tmp/ (O_TMPFILE): it never has a name another
    // import could sweep away, and nothing is left to remove on any path,
    // not even a kill -9; it goes with the last fd. Returns it read-only.
    // Throws Error when podman is missing or cannot save NAME.
    UniqueFd export_podman(const std::string& image);

    std::vector<ImageInfo> list();
    std::optional<ImageInfo> find(const std::string& name);
    // Root file system and config for `ocivm run NAME`.
    std::optional<ResolvedImage> resolve(const std::string& name);
    void remove(const std::string& name);  // throws Error when there is no such image
    // Removes blobs, layers and roots no name refers to; returns what went.
    std::vector<std::string> prune();

private:
    std::string home_;
};

// An import SOURCE in its parts: transport ("oci"), the host path it names
// ("" for containers-storage:, which comes as podman's export) and the tag
// of oci:DIR:TAG. DIR:TAG is a tag unless the whole of it exists (a
// directory with a colon in its name). Throws Error on a SOURCE without a
// transport.
struct SourceSpec {
    std::string transport, path, tag;
    std::string str() const;  // back to SOURCE
};
SourceSpec split_source(const std::string& spec);

// "name" -> "name:latest"; "host:5000/name" keeps its port.
std::string normalize_name(const std::string& name);

// The image config's runtime fields (Entrypoint, Cmd, Env, WorkingDir, User).
ImageConfig parse_image_config(const std::string& json);

}  // namespace ocivm::image
