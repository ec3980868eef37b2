#include "image/store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <ctime>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "image/unpack.h"
#include "util/bounded_json.h"
#include "util/digest.h"
#include "util/error.h"
#include "util/hash.h"
#include "util/log.h"
#include "util/open_beneath.h"
#include "util/paths.h"
#include "util/process.h"
#include "util/subprocess.h"
#include "util/unique_fd.h"

namespace ocivm::image {

using json = nlohmann::json;
namespace stdfs = std::filesystem;

namespace {

// What an image's JSON may cost (docs/images.md). Manifests and indexes are
// a few KiB in practice, configs rarely more than a few hundred.
constexpr size_t kMaxJsonBytes = 8u << 20;
constexpr int kMaxNestedIndexes = 4;  // an index of indexes of ... of manifests
constexpr size_t kMaxLayers = 256;    // docker and podman stop well below this

const std::set<std::string> kManifestTypes = {"application/vnd.oci.image.manifest.v1+json",
                                              "application/vnd.docker.distribution.manifest.v2+json"};
const std::set<std::string> kIndexTypes = {"application/vnd.oci.image.index.v1+json",
                                           "application/vnd.docker.distribution.manifest.list.v2+json"};
const std::set<std::string> kConfigTypes = {"application/vnd.oci.image.config.v1+json",
                                            "application/vnd.docker.container.image.v1+json"};
const std::set<std::string> kLayerTypes = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
};

std::string hex_of(const std::string& d) { return d.substr(7); }

json parse_json(const std::string& text, const std::string& what) { return parse_bounded_json(text, what); }

// Typed access to JSON an image supplied: a wrong type is an Error naming
// the field, never a json::type_error from deep inside.
const json* member(const json& obj, const char* key) {
    if (!obj.is_object()) return nullptr;
    auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
}
std::string string_member(const json& obj, const char* key, const std::string& what, bool required) {
    const json* v = member(obj, key);
    if (!v) {
        if (required) throw Error(what + " has no \"" + key + "\"");
        return {};
    }
    if (!v->is_string()) throw Error(what + ": \"" + key + "\" is not a string");
    return v->get<std::string>();
}
const json& array_member(const json& obj, const char* key, const std::string& what) {
    const json* v = member(obj, key);
    if (!v || !v->is_array()) throw Error(what + " has no \"" + key + "\" array");
    return *v;
}

struct Descriptor {
    std::string media_type, digest;
    std::optional<uint64_t> size;
};

Descriptor descriptor(const json& d, const std::string& what) {
    if (!d.is_object()) throw Error(what + " is not a JSON object");
    Descriptor r;
    r.media_type = string_member(d, "mediaType", what, false);
    r.digest = string_member(d, "digest", what, true);
    if (!valid_digest(r.digest)) throw Error(what + " has an invalid digest '" + printable(r.digest) + "' (ocivm reads sha256 only)");
    if (const json* s = member(d, "size")) {
        if (!s->is_number_unsigned()) throw Error(what + ": \"size\" is not a non-negative integer");
        r.size = s->get<uint64_t>();
    }
    return r;
}

// Image names: what a registry reference may hold, so a name from an image
// cannot carry control characters into a terminal or names.json.
bool valid_name(const std::string& n) {
    auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); };
    if (n.empty() || n.size() > 255 || !alnum(n[0])) return false;
    for (char c : n)
        if (!alnum(c) && c != '.' && c != '_' && c != '-' && c != '/' && c != ':' && c != '@') return false;
    return true;
}

// A directory removed with everything in it when this goes.
struct TempDir {
    std::string path;
    explicit TempDir(std::string p) : path(std::move(p)) { make_dirs(path, 0700); }
    ~TempDir() {
        try {
            remove_tree(path);
        } catch (const Error& e) {
            spdlog::warn("{}", e.what());
        }
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
};

// The store's lock: exclusive for writers, shared for readers.
class StoreLock {
public:
    StoreLock(const std::string& home, bool exclusive) {
        make_dirs(home, 0700);
        fd_ = UniqueFd(::open((home + "/lock").c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
        if (!fd_) throw_errno("cannot open the store lock " + home + "/lock", errno);
        while (::flock(fd_.get(), exclusive ? LOCK_EX : LOCK_SH) < 0)
            if (errno != EINTR) throw_errno("cannot lock the store", errno);
    }

private:
    UniqueFd fd_;
};

json load_names(const std::string& home) {
    std::string p = home + "/names.json";
    if (::access(p.c_str(), F_OK) != 0) return json{{"images", json::object()}};
    json j;
    try {
        j = json::parse(read_file(p));
    } catch (const json::exception& e) {
        throw Error(p + " is damaged: " + e.what());
    }
    if (!j.is_object() || !j.contains("images") || !j["images"].is_object()) throw Error(p + " is damaged: no \"images\" object");
    return j;
}
void save_names(const std::string& home, const json& j) { write_file_atomic(home + "/names.json", j.dump(2) + "\n", 0600); }

// The image a source names. Everything in it is read by fd beneath `root`
// (the layout directory, or the directory an archive was extracted to),
// with the source's own symlinks resolved inside it and nothing but
// regular files opened: a source cannot make ocivm read a host file.
struct Source {
    std::unique_ptr<TempDir> tmp;
    UniqueFd root;
    std::string where;                                 // for messages
    std::map<std::string, std::string> docker_blobs;  // digest -> path in root (docker archives)
    std::string manifest_digest, manifest_json, tag;

    std::string blob_path(const std::string& digest) const {
        auto it = docker_blobs.find(digest);
        return it != docker_blobs.end() ? it->second : "blobs/sha256/" + hex_of(digest);
    }
    UniqueFd open_blob(const Descriptor& d, const std::string& what, uint64_t max, struct stat* st) const {
        struct stat s;
        UniqueFd fd;
        try {
            fd = open_regular_beneath(root.get(), blob_path(d.digest), kResolveInRoot, what + " " + d.digest, &s);
        } catch (const Error& e) {
            throw Error(std::string(e.what()) + " (in " + where + ")");
        }
        uint64_t size = static_cast<uint64_t>(s.st_size);
        if (d.size && *d.size != size)
            throw Error(what + " " + d.digest + " is " + std::to_string(size) + " bytes, but its descriptor says " +
                        std::to_string(*d.size));
        if (size > max)
            throw Error(what + " " + d.digest + " is " + std::to_string(size) + " bytes, more than the " +
                        std::to_string(max) + " ocivm accepts");
        if (st) *st = s;
        return fd;
    }
};

std::string read_blob(const Source& s, const Descriptor& d, const std::string& what) {
    struct stat st;
    UniqueFd fd = s.open_blob(d, what, kMaxJsonBytes, &st);
    std::string data(static_cast<size_t>(st.st_size), '\0');
    size_t got = 0;
    while (got < data.size()) {
        ssize_t n = ::read(fd.get(), data.data() + got, data.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw_errno("reading " + what + " " + d.digest, errno);
        if (n == 0) break;
        got += static_cast<size_t>(n);
    }
    data.resize(got);
    Sha256 h;
    h.update(data);
    if ("sha256:" + h.hex() != d.digest) throw Error(what + " " + d.digest + " is corrupt (its content has another digest)");
    return data;
}

bool is_index(const json& j) {
    std::string mt = j.is_object() && j.contains("mediaType") && j["mediaType"].is_string() ? j["mediaType"].get<std::string>() : "";
    return (j.is_object() && j.contains("manifests")) || kIndexTypes.count(mt);
}

struct Picked {
    std::string digest, body;
};

// From an index, the manifest for linux/amd64 (or the only one / the tag).
Picked pick_manifest(const Source& s, const json& index, const std::string& tag, const std::string& where, int depth) {
    if (depth > kMaxNestedIndexes)
        throw Error(where + " is an index nested more than " + std::to_string(kMaxNestedIndexes) + " deep");
    const json& manifests = array_member(index, "manifests", where);
    if (manifests.empty()) throw Error(where + " lists no manifests");
    std::vector<const json*> cands;
    for (auto& m : manifests) {
        if (!m.is_object()) throw Error(where + ": a manifest entry is not a JSON object");
        std::string ref;
        if (const json* a = member(m, "annotations")) {
            if (!a->is_object()) throw Error(where + ": annotations that are not a JSON object");
            ref = string_member(*a, "org.opencontainers.image.ref.name", where, false);
        }
        if (tag.empty() || ref == tag) cands.push_back(&m);
    }
    if (cands.empty()) throw Error(where + " has no image tagged '" + printable(tag) + "'");
    const json* chosen = nullptr;
    for (auto* m : cands) {
        if (const json* p = member(*m, "platform")) {
            if (!p->is_object()) throw Error(where + ": a platform that is not a JSON object");
            if (string_member(*p, "os", where, false) == "linux" && string_member(*p, "architecture", where, false) == "amd64") {
                chosen = m;
                break;
            }
        } else if (!chosen) {
            chosen = m;
        }
    }
    if (!chosen) throw Error(where + " has no linux/amd64 image");
    Descriptor d = descriptor(*chosen, where + ": the chosen manifest");
    if (!d.media_type.empty() && !kManifestTypes.count(d.media_type) && !kIndexTypes.count(d.media_type))
        throw Error(where + " points at " + d.digest + " of media type '" + printable(d.media_type) +
                    "', not an image manifest or index");
    std::string body = read_blob(s, d, "manifest");
    json j = parse_json(body, "manifest " + d.digest);
    if (is_index(j)) return pick_manifest(s, j, "", "image index " + d.digest, depth + 1);
    return {d.digest, body};
}

void open_oci_dir(Source& s, const std::string& tag) {
    std::string index_text;
    {
        UniqueFd probe(openat2_fd(s.root.get(), "index.json", O_PATH, kResolveInRoot));
        if (!probe && errno == ENOENT) throw Error(s.where + " is not an OCI image layout (no index.json)");
        index_text = read_regular_beneath(s.root.get(), "index.json", kResolveInRoot, kMaxJsonBytes, s.where + "/index.json");
    }
    json index = parse_json(index_text, s.where + "/index.json");
    Picked p = pick_manifest(s, index, tag, s.where + "/index.json", 0);
    s.manifest_digest = p.digest;
    s.manifest_json = p.body;
    const json& manifests = array_member(index, "manifests", s.where + "/index.json");
    if (tag.empty() && manifests.size() == 1) {
        if (const json* a = member(manifests[0], "annotations"); a && a->is_object())
            s.tag = string_member(*a, "org.opencontainers.image.ref.name", s.where + "/index.json", false);
    } else {
        s.tag = tag;
    }
}

// A docker-archive (docker/podman save): manifest.json names a config and
// layer tars anywhere in the archive. They are hashed where they are and
// read from there by digest, so there is one import path.
void open_docker_archive(Source& s) {
    std::string what = "the docker archive's manifest.json";
    json m = parse_json(read_regular_beneath(s.root.get(), "manifest.json", kResolveInRoot, kMaxJsonBytes, what), what);
    if (!m.is_array() || m.empty()) throw Error(what + " lists no image");
    const json& img = m[0];
    if (!img.is_object()) throw Error(what + ": its first image is not a JSON object");
    auto add_blob = [&](const std::string& rel) {
        std::vector<std::string> comps;
        std::string why;
        if (!safe_relative_path(rel, comps, &why) || comps.empty())
            throw Error("docker archive: bad path '" + printable(rel) + "'" + (why.empty() ? "" : ": " + why));
        struct stat st;
        UniqueFd fd = open_regular_beneath(s.root.get(), rel, kResolveInRoot, "docker archive: " + printable(rel), &st);
        Sha256 h;
        std::vector<char> buf(1 << 20);
        ssize_t n;
        while ((n = ::read(fd.get(), buf.data(), buf.size())) > 0) h.update(buf.data(), static_cast<size_t>(n));
        if (n < 0) throw_errno("docker archive: reading " + printable(rel), errno);
        std::string d = "sha256:" + h.hex();
        s.docker_blobs[d] = rel;
        return std::make_pair(d, static_cast<uint64_t>(st.st_size));
    };
    auto [cfg_digest, cfg_size] = add_blob(string_member(img, "Config", what, true));
    json manifest = {{"schemaVersion", 2},
                     {"mediaType", "application/vnd.oci.image.manifest.v1+json"},
                     {"config", {{"mediaType", "application/vnd.oci.image.config.v1+json"}, {"digest", cfg_digest}, {"size", cfg_size}}},
                     {"layers", json::array()}};
    const json& layers = array_member(img, "Layers", what);
    if (layers.size() > kMaxLayers)
        throw Error(what + " lists " + std::to_string(layers.size()) + " layers; ocivm takes at most " + std::to_string(kMaxLayers));
    for (auto& l : layers) {
        if (!l.is_string()) throw Error(what + ": a layer is not a path");
        auto [d, size] = add_blob(l.get<std::string>());
        manifest["layers"].push_back({{"mediaType", "application/vnd.oci.image.layer.v1.tar"}, {"digest", d}, {"size", size}});
    }
    std::string body = manifest.dump();
    Sha256 h;
    h.update(body);
    s.manifest_digest = "sha256:" + h.hex();
    s.manifest_json = body;
    if (const json* tags = member(img, "RepoTags")) {
        if (!tags->is_array()) throw Error(what + ": RepoTags is not an array");
        if (!tags->empty()) {
            if (!(*tags)[0].is_string()) throw Error(what + ": RepoTags holds something else than names");
            s.tag = (*tags)[0].get<std::string>();
        }
    }
}

void open_root(Source& s, const std::string& dir) {
    s.root = UniqueFd(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!s.root) throw_errno("opening " + s.where, errno);
}

}  // namespace

SourceSpec split_source(const std::string& spec) {
    SourceSpec r;
    size_t colon = spec.find(':');
    if (colon == std::string::npos)
        throw Error("source '" + spec + "' names no transport; use oci:DIR[:TAG], oci-archive:FILE, "
                    "docker-archive:FILE or containers-storage:NAME");
    r.transport = spec.substr(0, colon);
    r.path = spec.substr(colon + 1);
    if (r.transport == "oci") {
        // DIR:TAG, unless the whole thing is a directory with a colon in its name
        if (size_t c = r.path.rfind(':'); c != std::string::npos && ::access(r.path.c_str(), F_OK) != 0) {
            r.tag = r.path.substr(c + 1);
            r.path.resize(c);
        }
    } else if (r.transport == "containers-storage") {
        r.tag = std::move(r.path);
        r.path.clear();
    }
    return r;
}

std::string SourceSpec::str() const {
    if (transport == "containers-storage") return transport + ":" + tag;
    return transport + ":" + path + (tag.empty() ? "" : ":" + tag);
}

namespace {

Source open_source(const std::string& spec, const std::string& tmp_root, int archive_fd) {
    Source s;
    const SourceSpec parts = split_source(spec);
    const std::string& transport = parts.transport;
    const std::string rest = transport == "containers-storage" ? parts.tag : parts.path;
    if (archive_fd >= 0 && transport != "containers-storage")
        throw Error("source '" + spec + "': an exported archive goes with containers-storage: only");
    auto extract = [&](const std::string& file) {
        struct stat st;
        if (::stat(file.c_str(), &st) < 0) throw_errno("archive " + file, errno, "check the path");
        if (!S_ISREG(st.st_mode)) throw Error("archive " + file + " is not a file");
        s.tmp = std::make_unique<TempDir>(tmp_root + "/src-" + std::to_string(::getpid()) + "-" + std::to_string(std::time(nullptr)));
        std::string dir = s.tmp->path + "/x";
        try {
            unpack_layer(file, dir, "");
        } catch (const Error& e) {
            throw Error("archive " + file + " cannot be read: " + e.what());
        }
        s.where = "archive " + file;
        open_root(s, dir);
    };
    if (transport == "oci") {
        const std::string& dir = parts.path;
        const std::string& tag = parts.tag;
        struct stat st;
        if (::stat(dir.c_str(), &st) < 0 || !S_ISDIR(st.st_mode)) throw Error("OCI layout " + dir + " is not a directory");
        s.where = dir;
        open_root(s, dir);
        open_oci_dir(s, tag);
    } else if (transport == "oci-archive") {
        extract(rest);
        open_oci_dir(s, "");
    } else if (transport == "docker-archive") {
        extract(rest);
        UniqueFd probe(openat2_fd(s.root.get(), "manifest.json", O_PATH, kResolveInRoot));
        if (!probe && errno == ENOENT) throw Error("archive " + rest + " is not a docker archive (no manifest.json)");
        open_docker_archive(s);
    } else if (transport == "containers-storage") {
        // podman ran before (Store::export_podman); its archive is read
        // through our fd, the only name the unnamed file has.
        struct stat st;
        if (archive_fd < 0 || ::fstat(archive_fd, &st) < 0 || !S_ISREG(st.st_mode))
            throw Error("containers-storage:" + rest + ": podman's export of it is missing (Store::export_podman runs podman first)");
        s.tmp = std::make_unique<TempDir>(tmp_root + "/podman-" + std::to_string(::getpid()));
        std::string dir = s.tmp->path + "/x";
        try {
            unpack_layer("/proc/self/fd/" + std::to_string(archive_fd), dir, "");
        } catch (const Error& e) {
            throw Error("podman's export of " + rest + " cannot be read: " + e.what());
        }
        s.where = "podman's image " + rest;
        open_root(s, dir);
        open_oci_dir(s, "");
        if (s.tag.empty()) s.tag = rest;
    } else {
        throw Error("unknown transport '" + printable(transport) + "'; use oci:, oci-archive:, docker-archive: or containers-storage:");
    }
    return s;
}

// Copies a source blob into the store, verifying its size and digest on the
// way; false when the store has it already.
bool store_blob(const std::string& home, const Source& s, const Descriptor& d, const std::string& what) {
    std::string dst = home + "/blobs/sha256/" + hex_of(d.digest);
    if (::access(dst.c_str(), F_OK) == 0) return false;
    UniqueFd in = s.open_blob(d, what, UINT64_MAX, nullptr);
    std::string tmp = home + "/tmp/blob-" + hex_of(d.digest);
    UniqueFd out(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!out) throw_errno("cannot write " + tmp, errno);
    try {
        Sha256 h;
        std::vector<char> buf(1 << 20);
        ssize_t n;
        while ((n = ::read(in.get(), buf.data(), buf.size())) > 0) {
            h.update(buf.data(), static_cast<size_t>(n));
            if (::write(out.get(), buf.data(), static_cast<size_t>(n)) != n) throw_errno("writing " + tmp, errno);
        }
        if (n < 0) throw_errno("reading blob " + d.digest, errno);
        if ("sha256:" + h.hex() != d.digest)
            throw Error(what + " " + d.digest + " is corrupt: its content hashes to sha256:" + h.hex());
        if (::rename(tmp.c_str(), dst.c_str()) < 0) throw_errno("storing blob " + d.digest, errno);
    } catch (...) {
        ::unlink(tmp.c_str());
        throw;
    }
    return true;
}

std::string now_iso() {
    char buf[32];
    std::time_t t = std::time(nullptr);
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    return buf;
}

// A manifest and config as ocivm uses them, checked field by field.
struct Manifest {
    Descriptor config;
    std::vector<Descriptor> layers;
};

// strict: the media types and the layer count are checked too (at import;
// a manifest already in the store is read as it is).
Manifest check_manifest(const json& m, const std::string& digest, bool strict) {
    std::string what = "manifest " + digest;
    if (!m.is_object()) throw Error(what + " is not a JSON object");
    std::string mt = string_member(m, "mediaType", what, false);
    if (strict && !mt.empty() && !kManifestTypes.count(mt)) throw Error(what + " has media type '" + printable(mt) + "', not an image manifest");
    const json* c = member(m, "config");
    if (!c) throw Error(what + " has no config or layers");
    Manifest r;
    r.config = descriptor(*c, what + ": its config");
    if (strict && !r.config.media_type.empty() && !kConfigTypes.count(r.config.media_type))
        throw Error(what + " is not a container image: its config has media type '" + printable(r.config.media_type) + "'");
    const json* layers = member(m, "layers");
    if (!layers || !layers->is_array()) throw Error(what + " has no config or layers");
    if (strict && layers->size() > kMaxLayers)
        throw Error(what + " lists " + std::to_string(layers->size()) + " layers; ocivm takes at most " + std::to_string(kMaxLayers));
    for (size_t i = 0; i < layers->size(); ++i) {
        Descriptor d = descriptor((*layers)[i], what + ": layer " + std::to_string(i + 1));
        if (strict && !d.media_type.empty() && !kLayerTypes.count(d.media_type))
            throw Error(what + ": layer " + std::to_string(i + 1) + " has media type '" + printable(d.media_type) +
                        "', not a container image layer (an artifact, or an encrypted image?)");
        r.layers.push_back(d);
    }
    return r;
}

std::vector<std::string> diff_ids_of(const json& cfg, const std::string& what) {
    std::vector<std::string> out;
    const json* rootfs = member(cfg, "rootfs");
    if (!rootfs) return out;
    for (auto& d : array_member(*rootfs, "diff_ids", what + ": rootfs")) {
        if (!d.is_string() || !valid_digest(d.get<std::string>()))
            throw Error(what + " has an invalid diff_id '" + printable(d.is_string() ? d.get<std::string>() : d.dump()) + "'");
        out.push_back(d.get<std::string>());
    }
    return out;
}

ImageInfo info_from(const std::string& home, const std::string& name, const json& entry) {
    ImageInfo i;
    i.name = name;
    i.manifest_digest = string_member(entry, "manifest", home + "/names.json: " + name, true);
    i.created = string_member(entry, "created", home + "/names.json: " + name, false);
    if (!valid_digest(i.manifest_digest)) throw Error(home + "/names.json is damaged: " + name + " has no valid digest");
    std::string mpath = home + "/blobs/sha256/" + hex_of(i.manifest_digest);
    Manifest m = check_manifest(parse_json(read_file(mpath), "manifest " + i.manifest_digest), i.manifest_digest, false);
    i.config_digest = m.config.digest;
    i.size = m.config.size.value_or(0);
    for (auto& l : m.layers) {
        i.layers.push_back(l.digest);
        i.size += l.size.value_or(0);
    }
    i.config_json = read_file(home + "/blobs/sha256/" + hex_of(i.config_digest));
    i.diff_ids = diff_ids_of(parse_json(i.config_json, "config " + i.config_digest), "config " + i.config_digest);
    return i;
}

// A layer's records live beside its directory (layers/HEX.json), never in
// it, with the layer blobs (compressed digests) known to decompress to it.
struct StoredLayer {
    LayerRecords records;
    bool clean = false;
    std::vector<std::string> blobs;
};

std::string records_json(const StoredLayer& l) {
    json links = json::array();
    for (auto& [p, t] : l.records.links) links.push_back({p, t});
    return json{{"format", 1}, {"whiteouts", l.records.whiteouts}, {"opaque", l.records.opaque},
                {"implicit", l.records.implicit}, {"links", links}, {"clean", l.clean}, {"blobs", l.blobs}}
        .dump();
}

StoredLayer load_records(const std::string& path) {
    StoredLayer l;
    try {
        json j = json::parse(read_file(path));
        if (j.at("format").get<int>() != 1) throw Error(path + " has an unknown format; update ocivm");
        l.records.whiteouts = j.at("whiteouts").get<std::vector<std::string>>();
        l.records.opaque = j.at("opaque").get<std::vector<std::string>>();
        l.records.implicit = j.at("implicit").get<std::vector<std::string>>();
        for (auto& k : j.at("links")) l.records.links.emplace_back(k.at(0).get<std::string>(), k.at(1).get<std::string>());
        l.clean = j.at("clean").get<bool>();
        l.blobs = j.at("blobs").get<std::vector<std::string>>();
    } catch (const json::exception& e) {
        throw Error(path + " is damaged (" + e.what() + "); remove the image, 'ocivm image prune' and import it again");
    }
    return l;
}

// What an import added to the store, taken out again unless it completes.
class Rollback {
public:
    void added(const std::string& path) { paths_.push_back(path); }
    void commit() { paths_.clear(); }
    ~Rollback() {
        for (auto it = paths_.rbegin(); it != paths_.rend(); ++it) {
            try {
                remove_tree(*it);
            } catch (const Error& e) {
                spdlog::warn("undoing a failed import: {}", e.what());
            }
        }
    }

private:
    std::vector<std::string> paths_;
};

// The store's directories: created 0700 and kept so, since layers and roots
// hold the images' setuid files and device nodes, which no other host user
// may reach.
void prepare_dirs(const std::string& home) {
    make_dirs(home, 0700);
    for (auto* d : {"/blobs", "/blobs/sha256", "/layers", "/roots", "/tmp"}) {
        std::string p = home + d;
        if (::mkdir(p.c_str(), 0700) < 0 && errno != EEXIST) throw_errno("cannot create " + p, errno);
        struct stat st;
        if (::lstat(p.c_str(), &st) < 0 || !S_ISDIR(st.st_mode))
            throw Error(p + " is not a directory; the store is damaged (move it away and import again)");
        if ((st.st_mode & 077) && ::chmod(p.c_str(), 0700) < 0) throw_errno("cannot make " + p + " private (0700)", errno);
    }
}

}  // namespace

std::string normalize_name(const std::string& name) {
    size_t slash = name.rfind('/');
    size_t colon = name.rfind(':');
    if (colon == std::string::npos || (slash != std::string::npos && colon < slash)) return name + ":latest";
    return name;
}

ImageConfig parse_image_config(const std::string& text) {
    ImageConfig c;
    json j = parse_json(text, "image config");
    const json* cfg = member(j, "config");
    if (!cfg) return c;
    if (!cfg->is_object()) throw Error("image config: \"config\" is not a JSON object");
    auto strings = [&](const char* k) {
        std::vector<std::string> v;
        if (const json* a = member(*cfg, k)) {
            if (!a->is_array()) throw Error(std::string("image config: ") + k + " is not an array of strings");
            for (auto& x : *a) {
                if (!x.is_string()) throw Error(std::string("image config: ") + k + " holds something else than strings");
                v.push_back(x.get<std::string>());
            }
        }
        return v;
    };
    c.entrypoint = strings("Entrypoint");
    c.cmd = strings("Cmd");
    c.env = strings("Env");
    c.workdir = string_member(*cfg, "WorkingDir", "image config", false);
    c.user = string_member(*cfg, "User", "image config", false);
    return c;
}

Store::Store(std::string home) : home_(std::move(home)) {}

ImportReport Store::import(const std::string& source, const std::string& name, const Progress& progress, int archive_fd) {
    auto say = [&](const std::string& l) {
        if (progress) progress(l);
    };
    StoreLock lock(home_, true);
    prepare_dirs(home_);
    // Work an interrupted import left behind.
    for (auto& e : stdfs::directory_iterator(home_ + "/tmp")) remove_tree(e.path().string());
    Source s = open_source(source, home_ + "/tmp", archive_fd);
    if (name.empty() && !s.tag.empty() && !valid_name(s.tag))
        throw Error("the image's own name '" + printable(s.tag) + "' is not a valid image name; give one with --name NAME");
    std::string full = normalize_name(!name.empty() ? name : !s.tag.empty() ? s.tag : hex_of(s.manifest_digest).substr(0, 12));
    if (!valid_name(full))
        throw Error("'" + printable(full) + "' is not a valid image name (letters, digits and . _ - / : @, up to 255)");
    Manifest manifest = check_manifest(parse_json(s.manifest_json, "manifest " + s.manifest_digest), s.manifest_digest, true);
    const std::string& cfg_digest = manifest.config.digest;
    std::string cfg_text = read_blob(s, manifest.config, "config");
    json cfg = parse_json(cfg_text, "config " + cfg_digest);
    if (!cfg.is_object()) throw Error("config " + cfg_digest + " is not a JSON object");
    // What `ocivm run` will read of it must parse now: an image that
    // imports must be runnable.
    parse_image_config(cfg_text);
    std::vector<std::string> diff_ids = diff_ids_of(cfg, "config " + cfg_digest);
    if (diff_ids.size() != manifest.layers.size())
        throw Error("config " + cfg_digest + " lists " + std::to_string(diff_ids.size()) + " diff_ids for " +
                    std::to_string(manifest.layers.size()) + " layers");
    std::string os = string_member(cfg, "os", "config " + cfg_digest, false);
    if (!os.empty() && os != "linux") throw Error("the image is for " + printable(os) + ", not linux");

    ImportReport rep;
    Rollback undo;
    std::vector<std::pair<std::string, StoredLayer>> verified;
    // Blobs first (verified), then layers, then the root, then the name.
    for (size_t i = 0; i < manifest.layers.size(); ++i)
        if (store_blob(home_, s, manifest.layers[i], "layer " + std::to_string(i + 1))) {
            undo.added(home_ + "/blobs/sha256/" + hex_of(manifest.layers[i].digest));
            ++rep.blobs_written;
        }
    for (size_t i = 0; i < manifest.layers.size(); ++i) {
        std::string hex = hex_of(diff_ids[i]);
        std::string dir = home_ + "/layers/" + hex, rec = dir + ".json";
        std::string blob = home_ + "/blobs/sha256/" + hex_of(manifest.layers[i].digest);
        std::string label = "layer " + std::to_string(i + 1) + "/" + std::to_string(manifest.layers.size());
        struct stat st;
        bool have_dir = ::lstat(dir.c_str(), &st) == 0;
        if (have_dir && ::access(rec.c_str(), F_OK) == 0) {
            // Unpacked already, from some blob. That this image's blob gives
            // the same bytes is checked once, or an image could name another
            // image's layer by its diff_id and get its files.
            StoredLayer stored = load_records(rec);
            if (std::find(stored.blobs.begin(), stored.blobs.end(), manifest.layers[i].digest) != stored.blobs.end()) continue;
            say(label + ": checking " + manifest.layers[i].digest.substr(0, 19) + " against " + diff_ids[i].substr(0, 19));
            std::string got = layer_diff_id(blob);
            if (got != diff_ids[i])
                throw Error("layer " + std::to_string(i + 1) + " (" + manifest.layers[i].digest + ") does not match its diff_id: expected " +
                            diff_ids[i] + ", got " + got);
            stored.blobs.push_back(manifest.layers[i].digest);
            verified.emplace_back(rec, std::move(stored));  // noted once the import succeeds
            continue;
        }
        std::string tmp = home_ + "/tmp/layer-" + hex;
        say(label + ": unpacking " + diff_ids[i].substr(0, 19));
        auto stats = unpack_layer(blob, tmp, diff_ids[i], [&](uint64_t b) { say(label + ": " + std::to_string(b >> 20) + " MiB"); });
        std::string records = records_json({stats.records, stats.clean, {manifest.layers[i].digest}});
        if (have_dir) {
            // Unpacked by an older ocivm, which kept its records inside the
            // layer: replaced by this unpack, then given its records (a
            // directory without them is unpacked again).
            spdlog::info("{}: replacing the layer an older ocivm unpacked", label);
            std::string old = home_ + "/tmp/old-layer-" + hex;
            if (::rename(dir.c_str(), old.c_str()) < 0) throw_errno("moving the old " + dir + " away", errno);
            if (::rename(tmp.c_str(), dir.c_str()) < 0) throw_errno("storing " + dir, errno);
            write_file_atomic(rec, records, 0600);
            ::unlink((dir + ".clean").c_str());
            remove_tree(old);
        } else {
            // Records first: records without a directory are unpacked again.
            write_file_atomic(rec, records, 0600);
            undo.added(rec);
            if (::rename(tmp.c_str(), dir.c_str()) < 0) throw_errno("storing " + dir, errno);
            undo.added(dir);
        }
        say(label + ": " + std::to_string(stats.entries) + " entries, " + std::to_string(stats.bytes >> 20) + " MiB");
        ++rep.layers_unpacked;
    }
    std::string root = home_ + "/roots/" + hex_of(s.manifest_digest);
    struct stat rst;
    if (::lstat(root.c_str(), &rst) == 0) {
        // already assembled
    } else {
        std::vector<StoredLayer> layers;
        for (auto& d : diff_ids) layers.push_back(load_records(home_ + "/layers/" + hex_of(d) + ".json"));
        std::string tmp = home_ + "/tmp/root-" + hex_of(s.manifest_digest);
        undo.added(tmp);  // a root half assembled
        if (diff_ids.size() == 1 && layers[0].clean) {
            // One layer without hard links into lower ones is its own root: share all of it.
            if (::symlink(("../layers/" + hex_of(diff_ids[0])).c_str(), tmp.c_str()) < 0) throw_errno("storing " + root, errno);
        } else {
            if (::mkdir(tmp.c_str(), 0755) < 0) throw_errno("creating " + tmp, errno);
            for (size_t i = 0; i < diff_ids.size(); ++i) {
                say("root file system: applying layer " + std::to_string(i + 1) + "/" + std::to_string(diff_ids.size()));
                apply_layer(home_ + "/layers/" + hex_of(diff_ids[i]), layers[i].records, tmp);
            }
        }
        if (::rename(tmp.c_str(), root.c_str()) < 0) throw_errno("storing " + root, errno);
        undo.added(root);
        rep.root_assembled = true;
    }
    // The config and manifest last: a manifest in blobs/ means its image is complete.
    for (auto& [digest, text] : {std::pair{cfg_digest, cfg_text}, std::pair{s.manifest_digest, s.manifest_json}}) {
        std::string p = home_ + "/blobs/sha256/" + hex_of(digest);
        if (::access(p.c_str(), F_OK) == 0) continue;
        write_file_atomic(p, text, 0600);
        undo.added(p);
    }
    for (auto& [rec, stored] : verified) write_file_atomic(rec, records_json(stored), 0600);
    json names = load_names(home_);
    names["images"][full] = {{"manifest", s.manifest_digest}, {"created", now_iso()}};
    save_names(home_, names);
    undo.commit();
    rep.image = info_from(home_, full, names["images"][full]);
    return rep;
}

UniqueFd Store::export_podman(const std::string& image) {
    if (!have_program("podman")) throw Error("containers-storage: needs podman (apt-get install podman)");
    prepare_dirs(home_);
    std::string tmp = home_ + "/tmp";
    UniqueFd out(::open(tmp.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
    if (!out && (errno == EOPNOTSUPP || errno == EISDIR)) {
        // A file system without O_TMPFILE: a name only until the unlink
        // below, before podman writes anything (a sweep of tmp/ in between
        // takes nothing the fd does not keep).
        std::string path = tmp + "/podman-XXXXXX";
        int fd = ::mkostemp(path.data(), O_CLOEXEC);
        if (fd >= 0) {
            out.reset(fd);
            ::unlink(path.c_str());
        }
    }
    if (!out) throw_errno("cannot create a temporary file in " + tmp + " for podman's export", errno);
    int err[2];
    if (::pipe2(err, O_CLOEXEC) < 0) throw_errno("pipe", errno);
    UniqueFd err_r(err[0]), err_w(err[1]);
    SpawnOptions so;
    // No -o: podman writes the archive to its stdout, our unnamed file.
    so.argv = {"podman", "image", "save", "--format", "oci-archive", "--", image};
    so.stdout_fd = out.get();
    so.stderr_fd = err_w.get();
    spdlog::info("exporting podman's image {}", image);
    ChildProcess podman = ChildProcess::spawn(so, "install podman (apt-get install podman)");
    err_w.reset();
    std::string why;
    char buf[4096];
    for (;;) {
        ssize_t n = ::read(err_r.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (why.size() < 65536) why.append(buf, static_cast<size_t>(n));
    }
    int status = exit_code(podman.wait());
    while (!why.empty() && (why.back() == '\n' || why.back() == '\r')) why.pop_back();
    if (status != 0)
        throw Error("podman image save " + image + " failed (" + (why.empty() ? "exit status " + std::to_string(status) : why) +
                    "); check the name with 'podman images'");
    // Read-only for the importer, which only reads it.
    UniqueFd ro(::open(("/proc/self/fd/" + std::to_string(out.get())).c_str(), O_RDONLY | O_CLOEXEC));
    if (!ro) throw_errno("reopening podman's export of " + image, errno);
    return ro;
}

std::vector<ImageInfo> Store::list() {
    std::vector<ImageInfo> out;
    if (::access((home_ + "/names.json").c_str(), F_OK) != 0) return out;
    StoreLock lock(home_, false);
    json names = load_names(home_);
    for (auto& [n, e] : names["images"].items()) {
        // What `image ls` prints, and bash completion offers, is only ever
        // a name `image import --name` would take: a name with control
        // characters, blanks or shell metacharacters (a damaged store, or
        // one another program wrote) is named escaped and left out.
        if (!valid_name(n)) {
            spdlog::warn("{}/names.json lists '{}', which is not a valid image name: left out; remove that entry from the file "
                         "(or re-import the image under a valid name)", home_, printable(n));
            continue;
        }
        ImageInfo i = info_from(home_, n, e);
        i.created = printable(i.created);
        out.push_back(std::move(i));
    }
    return out;
}

std::optional<ImageInfo> Store::find(const std::string& name) {
    if (::access((home_ + "/names.json").c_str(), F_OK) != 0) return std::nullopt;
    StoreLock lock(home_, false);
    json names = load_names(home_);
    std::string full = normalize_name(name);
    if (names["images"].contains(full)) return info_from(home_, full, names["images"][full]);
    // A digest (or its prefix) names an image too.
    std::string want = name.rfind("sha256:", 0) == 0 ? name.substr(7) : name;
    if (want.size() >= 12)
        for (auto& [n, e] : names["images"].items()) {
            const json* m = member(e, "manifest");
            if (m && m->is_string() && valid_digest(m->get<std::string>()) && hex_of(m->get<std::string>()).rfind(want, 0) == 0)
                return info_from(home_, n, e);
        }
    return std::nullopt;
}

std::optional<ResolvedImage> Store::resolve(const std::string& name) {
    auto info = find(name);
    if (!info) return std::nullopt;
    ResolvedImage r;
    std::string root = home_ + "/roots/" + hex_of(info->manifest_digest);
    char real[PATH_MAX];
    if (!::realpath(root.c_str(), real))
        throw Error("image " + info->name + " has no root file system in the store; import it again");
    r.rootfs = real;
    r.config = parse_image_config(info->config_json);
    r.kind = "image " + info->name;
    return r;
}

void Store::remove(const std::string& name) {
    StoreLock lock(home_, true);
    json names = load_names(home_);
    std::string full = normalize_name(name);
    if (!names["images"].contains(full)) throw Error("no image named '" + printable(full) + "'; see 'ocivm image ls'");
    names["images"].erase(full);
    save_names(home_, names);
}

std::vector<std::string> Store::prune() {
    StoreLock lock(home_, true);
    std::vector<std::string> gone;
    json names = load_names(home_);
    std::set<std::string> keep_blobs, keep_layers, keep_roots;
    for (auto& [n, e] : names["images"].items()) {
        ImageInfo i = info_from(home_, n, e);
        keep_blobs.insert(hex_of(i.manifest_digest));
        keep_blobs.insert(hex_of(i.config_digest));
        for (auto& l : i.layers) keep_blobs.insert(hex_of(l));
        for (auto& d : i.diff_ids) {
            keep_layers.insert(hex_of(d));
            keep_layers.insert(hex_of(d) + ".json");
        }
        keep_roots.insert(hex_of(i.manifest_digest));
    }
    auto sweep = [&](const std::string& dir, const std::set<std::string>& keep, const char* kind) {
        if (::access(dir.c_str(), F_OK) != 0) return;
        for (auto& e : stdfs::directory_iterator(dir)) {
            std::string n = e.path().filename();
            if (keep.count(n)) continue;
            remove_tree(e.path().string());
            gone.push_back(std::string(kind) + " " + n);
        }
    };
    sweep(home_ + "/roots", keep_roots, "root");
    sweep(home_ + "/layers", keep_layers, "layer");
    sweep(home_ + "/blobs/sha256", keep_blobs, "blob");
    sweep(home_ + "/tmp", {}, "temporary");
    return gone;
}

}  // namespace ocivm::image
