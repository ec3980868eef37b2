#include "image/store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <ctime>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "image/unpack.h"
#include "util/error.h"
#include "util/hash.h"
#include "util/log.h"
#include "util/paths.h"
#include "util/subprocess.h"
#include "util/unique_fd.h"

namespace ocivm::image {

using json = nlohmann::json;
namespace stdfs = std::filesystem;

namespace {

bool valid_digest(const std::string& d) {
    if (d.rfind("sha256:", 0) != 0 || d.size() != 7 + 64) return false;
    return d.find_first_not_of("0123456789abcdef", 7) == std::string::npos;
}
std::string hex_of(const std::string& d) { return d.substr(7); }

json parse_json(const std::string& text, const std::string& what) {
    try {
        return json::parse(text);
    } catch (const json::exception& e) {
        throw Error(what + " is not valid JSON: " + e.what());
    }
}

std::string file_digest(const std::string& path) {
    Sha256 h;
    h.update_file(path);
    return "sha256:" + h.hex();
}

// A directory removed with everything in it when this goes.
struct TempDir {
    std::string path;
    explicit TempDir(std::string p) : path(std::move(p)) {
        make_dirs(path, 0700);
    }
    ~TempDir() {
        std::error_code ec;
        stdfs::remove_all(path, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
};

// The store's lock: exclusive for writers, shared for readers.
class StoreLock {
public:
    StoreLock(const std::string& home, bool exclusive) {
        make_dirs(home, 0700);
        fd_ = UniqueFd(::open((home + "/lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
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
    json j = parse_json(read_file(p), p);
    if (!j.contains("images") || !j["images"].is_object()) throw Error(p + " is damaged: no \"images\" object");
    return j;
}
void save_names(const std::string& home, const json& j) { write_file_atomic(home + "/names.json", j.dump(2) + "\n"); }

// The image a source names, as an OCI layout directory plus the chosen
// manifest. Archives are extracted into a temporary directory first.
struct Source {
    std::unique_ptr<TempDir> tmp;
    std::string layout;  // directory with blobs/sha256/...
    std::string manifest_digest, manifest_json, tag;
    std::string blob(const std::string& digest) const { return layout + "/blobs/sha256/" + hex_of(digest); }
};

std::string read_blob(const Source& s, const std::string& digest, const std::string& what) {
    if (!valid_digest(digest)) throw Error(what + " has an invalid digest '" + digest + "'");
    std::string p = s.blob(digest);
    if (::access(p.c_str(), R_OK) != 0) throw Error(what + " " + digest + " is missing from the source");
    std::string data = read_file(p);
    Sha256 h;
    h.update(data);
    if ("sha256:" + h.hex() != digest) throw Error(what + " " + digest + " is corrupt (its content has another digest)");
    return data;
}

bool is_index(const json& j) {
    std::string mt = j.value("mediaType", "");
    return j.contains("manifests") || mt == "application/vnd.oci.image.index.v1+json" ||
           mt == "application/vnd.docker.distribution.manifest.list.v2+json";
}

// From an index, the manifest for linux/amd64 (or the only one / the tag).
std::string pick_manifest(const Source& s, const json& index, const std::string& tag, const std::string& where) {
    if (!index.contains("manifests") || !index["manifests"].is_array() || index["manifests"].empty())
        throw Error(where + " lists no manifests");
    std::vector<json> cands;
    for (auto& m : index["manifests"]) {
        std::string ref = m.contains("annotations") ? m["annotations"].value("org.opencontainers.image.ref.name", "") : "";
        if (tag.empty() || ref == tag) cands.push_back(m);
    }
    if (cands.empty()) throw Error(where + " has no image tagged '" + tag + "'");
    const json* chosen = nullptr;
    for (auto& m : cands) {
        if (m.contains("platform")) {
            if (m["platform"].value("os", "") == "linux" && m["platform"].value("architecture", "") == "amd64") {
                chosen = &m;
                break;
            }
        } else if (!chosen) {
            chosen = &m;
        }
    }
    if (!chosen) {
        if (cands.size() == 1 && !cands[0].contains("platform")) chosen = &cands[0];
        else throw Error(where + " has no linux/amd64 image");
    }
    std::string digest = chosen->value("digest", "");
    std::string body = read_blob(s, digest, "manifest");
    json j = parse_json(body, "manifest " + digest);
    if (is_index(j)) return pick_manifest(s, j, "", "image index " + digest);
    return digest;
}

void open_oci_dir(Source& s, const std::string& dir, const std::string& tag) {
    struct stat st;
    if (::stat(dir.c_str(), &st) < 0 || !S_ISDIR(st.st_mode)) throw Error("OCI layout " + dir + " is not a directory");
    if (::access((dir + "/index.json").c_str(), R_OK) != 0)
        throw Error(dir + " is not an OCI image layout (no index.json)");
    s.layout = dir;
    json index = parse_json(read_file(dir + "/index.json"), dir + "/index.json");
    s.manifest_digest = pick_manifest(s, index, tag, dir + "/index.json");
    s.manifest_json = read_blob(s, s.manifest_digest, "manifest");
    if (tag.empty() && index["manifests"].size() == 1) {
        auto& m = index["manifests"][0];
        if (m.contains("annotations")) s.tag = m["annotations"].value("org.opencontainers.image.ref.name", "");
    } else {
        s.tag = tag;
    }
}

// A docker-archive (docker/podman save): manifest.json + config + layer
// tars, turned into an OCI layout in s.tmp so there is one import path.
void open_docker_archive(Source& s, const std::string& dir) {
    json m = parse_json(read_file(dir + "/manifest.json"), "manifest.json of the docker archive");
    if (!m.is_array() || m.empty()) throw Error("the docker archive's manifest.json lists no image");
    auto& img = m[0];
    std::string layout = dir + "/.oci";
    make_dirs(layout + "/blobs/sha256");
    auto add_blob = [&](const std::string& rel) {
        std::vector<std::string> comps;
        std::string why;
        if (!safe_relative_path(rel, comps, &why) || comps.empty()) throw Error("docker archive: bad path '" + rel + "'");
        std::string p = dir + "/" + rel;
        std::string d = file_digest(p);
        std::string dst = layout + "/blobs/sha256/" + hex_of(d);
        if (::access(dst.c_str(), F_OK) != 0 && ::link(p.c_str(), dst.c_str()) < 0)
            throw_errno("docker archive: " + rel, errno);
        struct stat st{};
        ::stat(p.c_str(), &st);
        return std::make_pair(d, static_cast<uint64_t>(st.st_size));
    };
    auto [cfg_digest, cfg_size] = add_blob(img.value("Config", ""));
    json manifest = {{"schemaVersion", 2},
                     {"mediaType", "application/vnd.oci.image.manifest.v1+json"},
                     {"config", {{"mediaType", "application/vnd.oci.image.config.v1+json"}, {"digest", cfg_digest}, {"size", cfg_size}}},
                     {"layers", json::array()}};
    if (!img.contains("Layers") || !img["Layers"].is_array()) throw Error("the docker archive's manifest.json has no Layers");
    for (auto& l : img["Layers"]) {
        auto [d, size] = add_blob(l.get<std::string>());
        manifest["layers"].push_back({{"mediaType", "application/vnd.oci.image.layer.v1.tar"}, {"digest", d}, {"size", size}});
    }
    std::string body = manifest.dump();
    Sha256 h;
    h.update(body);
    std::string md = "sha256:" + h.hex();
    write_file_atomic(layout + "/blobs/sha256/" + hex_of(md), body);
    s.layout = layout;
    s.manifest_digest = md;
    s.manifest_json = body;
    if (img.contains("RepoTags") && img["RepoTags"].is_array() && !img["RepoTags"].empty())
        s.tag = img["RepoTags"][0].get<std::string>();
}

Source open_source(const std::string& spec, const std::string& tmp_root) {
    Source s;
    size_t colon = spec.find(':');
    if (colon == std::string::npos)
        throw Error("source '" + spec + "' names no transport; use oci:DIR[:TAG], oci-archive:FILE, "
                    "docker-archive:FILE or containers-storage:NAME");
    std::string transport = spec.substr(0, colon), rest = spec.substr(colon + 1);
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
        return dir;
    };
    if (transport == "oci") {
        std::string dir = rest, tag;
        // DIR:TAG, unless the whole thing is a directory with a colon in its name
        if (size_t c = rest.rfind(':'); c != std::string::npos && ::access(rest.c_str(), F_OK) != 0) {
            dir = rest.substr(0, c);
            tag = rest.substr(c + 1);
        }
        open_oci_dir(s, dir, tag);
    } else if (transport == "oci-archive") {
        open_oci_dir(s, extract(rest), "");
    } else if (transport == "docker-archive") {
        std::string dir = extract(rest);
        if (::access((dir + "/manifest.json").c_str(), R_OK) != 0)
            throw Error("archive " + rest + " is not a docker archive (no manifest.json)");
        open_docker_archive(s, dir);
    } else if (transport == "containers-storage") {
        if (!have_program("podman"))
            throw Error("containers-storage: needs podman (apt-get install podman)");
        s.tmp = std::make_unique<TempDir>(tmp_root + "/podman-" + std::to_string(::getpid()));
        std::string out = s.tmp->path + "/image.tar";
        auto r = run_command({"podman", "image", "save", "--format", "oci-archive", "-o", out, rest});
        if (!r.ok())
            throw Error("podman image save " + rest + " failed (" + r.why("podman") + "); check the name with 'podman images'");
        std::string dir = s.tmp->path + "/x";
        unpack_layer(out, dir, "");
        open_oci_dir(s, dir, "");
        if (s.tag.empty()) s.tag = rest;
    } else {
        throw Error("unknown transport '" + transport + "'; use oci:, oci-archive:, docker-archive: or containers-storage:");
    }
    return s;
}

// Copies a source blob into the store, verifying its digest on the way.
bool store_blob(const std::string& home, const Source& s, const std::string& digest) {
    std::string dst = home + "/blobs/sha256/" + hex_of(digest);
    if (::access(dst.c_str(), F_OK) == 0) return false;
    std::string src = s.blob(digest);
    UniqueFd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
    if (!in) throw_errno("blob " + digest + " is missing from the source", errno);
    std::string tmp = home + "/tmp/blob-" + hex_of(digest);
    UniqueFd out(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!out) throw_errno("cannot write " + tmp, errno);
    Sha256 h;
    std::vector<char> buf(1 << 20);
    ssize_t n;
    while ((n = ::read(in.get(), buf.data(), buf.size())) > 0) {
        h.update(buf.data(), static_cast<size_t>(n));
        if (::write(out.get(), buf.data(), static_cast<size_t>(n)) != n) throw_errno("writing " + tmp, errno);
    }
    if (n < 0) throw_errno("reading blob " + digest, errno);
    if ("sha256:" + h.hex() != digest) {
        ::unlink(tmp.c_str());
        throw Error("blob " + digest + " is corrupt: its content hashes to sha256:" + h.hex());
    }
    if (::rename(tmp.c_str(), dst.c_str()) < 0) throw_errno("storing blob " + digest, errno);
    return true;
}

std::string now_iso() {
    char buf[32];
    std::time_t t = std::time(nullptr);
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    return buf;
}

ImageInfo info_from(const std::string& home, const std::string& name, const json& entry) {
    ImageInfo i;
    i.name = name;
    i.manifest_digest = entry.value("manifest", "");
    i.created = entry.value("created", "");
    std::string mpath = home + "/blobs/sha256/" + hex_of(i.manifest_digest);
    json m = parse_json(read_file(mpath), "manifest " + i.manifest_digest);
    i.config_digest = m["config"].value("digest", "");
    i.size = m["config"].value("size", 0ull);
    for (auto& l : m["layers"]) {
        i.layers.push_back(l.value("digest", ""));
        i.size += l.value("size", 0ull);
    }
    i.config_json = read_file(home + "/blobs/sha256/" + hex_of(i.config_digest));
    json c = parse_json(i.config_json, "config " + i.config_digest);
    if (c.contains("rootfs") && c["rootfs"].contains("diff_ids"))
        for (auto& d : c["rootfs"]["diff_ids"]) i.diff_ids.push_back(d.get<std::string>());
    return i;
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
    if (!j.contains("config") || !j["config"].is_object()) return c;
    auto& cfg = j["config"];
    auto strings = [&](const char* k) {
        std::vector<std::string> v;
        if (cfg.contains(k) && cfg[k].is_array())
            for (auto& x : cfg[k]) v.push_back(x.get<std::string>());
        return v;
    };
    c.entrypoint = strings("Entrypoint");
    c.cmd = strings("Cmd");
    c.env = strings("Env");
    if (cfg.contains("WorkingDir") && cfg["WorkingDir"].is_string()) c.workdir = cfg["WorkingDir"];
    if (cfg.contains("User") && cfg["User"].is_string()) c.user = cfg["User"];
    return c;
}

Store::Store(std::string home) : home_(std::move(home)) {}

ImportReport Store::import(const std::string& source, const std::string& name, const Progress& progress) {
    auto say = [&](const std::string& l) {
        if (progress) progress(l);
    };
    StoreLock lock(home_, true);
    for (auto* d : {"/blobs/sha256", "/layers", "/roots", "/tmp"}) make_dirs(home_ + d, 0700);
    // Work an interrupted import left behind.
    for (auto& e : stdfs::directory_iterator(home_ + "/tmp")) {
        std::error_code ec;
        stdfs::remove_all(e.path(), ec);
    }
    Source s = open_source(source, home_ + "/tmp");
    std::string full = normalize_name(!name.empty() ? name : !s.tag.empty() ? s.tag : hex_of(s.manifest_digest).substr(0, 12));
    json manifest = parse_json(s.manifest_json, "manifest " + s.manifest_digest);
    if (!manifest.contains("config") || !manifest.contains("layers") || !manifest["layers"].is_array())
        throw Error("manifest " + s.manifest_digest + " has no config or layers");
    std::string cfg_digest = manifest["config"].value("digest", "");
    std::string cfg_text = read_blob(s, cfg_digest, "config");
    json cfg = parse_json(cfg_text, "config " + cfg_digest);
    std::vector<std::string> diff_ids;
    if (cfg.contains("rootfs") && cfg["rootfs"].contains("diff_ids"))
        for (auto& d : cfg["rootfs"]["diff_ids"]) diff_ids.push_back(d.get<std::string>());
    if (diff_ids.size() != manifest["layers"].size())
        throw Error("config " + cfg_digest + " lists " + std::to_string(diff_ids.size()) + " diff_ids for " +
                    std::to_string(manifest["layers"].size()) + " layers");
    if (cfg.contains("os") && cfg["os"] != "linux") throw Error("the image is for " + cfg["os"].get<std::string>() + ", not linux");

    ImportReport rep;
    std::vector<std::string> layers;
    for (auto& l : manifest["layers"]) {
        std::string d = l.value("digest", "");
        if (!valid_digest(d)) throw Error("manifest " + s.manifest_digest + " has a layer with an invalid digest");
        layers.push_back(d);
    }
    for (auto& d : diff_ids)
        if (!valid_digest(d)) throw Error("config " + cfg_digest + " has an invalid diff_id '" + d + "'");
    // Blobs first (verified), then layers, then the root, then the name.
    for (auto& d : layers) rep.blobs_written += store_blob(home_, s, d);
    for (size_t i = 0; i < layers.size(); ++i) {
        std::string dir = home_ + "/layers/" + hex_of(diff_ids[i]);
        if (::access(dir.c_str(), F_OK) == 0) continue;
        std::string tmp = home_ + "/tmp/layer-" + hex_of(diff_ids[i]);
        std::string label = "layer " + std::to_string(i + 1) + "/" + std::to_string(layers.size());
        say(label + ": unpacking " + diff_ids[i].substr(0, 19));
        auto st = unpack_layer(home_ + "/blobs/sha256/" + hex_of(layers[i]), tmp, diff_ids[i],
                               [&](uint64_t b) { say(label + ": " + std::to_string(b >> 20) + " MiB"); });
        if (::rename(tmp.c_str(), dir.c_str()) < 0) throw_errno("storing " + dir, errno);
        if (st.clean) write_file_atomic(dir + ".clean", "");
        say(label + ": " + std::to_string(st.entries) + " entries, " + std::to_string(st.bytes >> 20) + " MiB");
        ++rep.layers_unpacked;
    }
    std::string root = home_ + "/roots/" + hex_of(s.manifest_digest);
    std::string only = diff_ids.size() == 1 ? home_ + "/layers/" + hex_of(diff_ids[0]) : "";
    if (::access(root.c_str(), F_OK) == 0) {
        // already assembled
    } else if (!only.empty() && ::access((only + ".clean").c_str(), F_OK) == 0) {
        // One layer without whiteouts is its own root: share all of it.
        std::string tmp = home_ + "/tmp/root-" + hex_of(s.manifest_digest);
        if (::symlink(("../layers/" + hex_of(diff_ids[0])).c_str(), tmp.c_str()) < 0 ||
            ::rename(tmp.c_str(), root.c_str()) < 0)
            throw_errno("storing " + root, errno);
        rep.root_assembled = true;
    } else {
        std::string tmp = home_ + "/tmp/root-" + hex_of(s.manifest_digest);
        ::mkdir(tmp.c_str(), 0755);
        for (size_t i = 0; i < diff_ids.size(); ++i) {
            say("root file system: applying layer " + std::to_string(i + 1) + "/" + std::to_string(diff_ids.size()));
            apply_layer(home_ + "/layers/" + hex_of(diff_ids[i]), tmp);
        }
        if (::rename(tmp.c_str(), root.c_str()) < 0) throw_errno("storing " + root, errno);
        rep.root_assembled = true;
    }
    // The config and manifest last: a manifest in blobs/ means its image is complete.
    write_file_atomic(home_ + "/blobs/sha256/" + hex_of(cfg_digest), cfg_text);
    write_file_atomic(home_ + "/blobs/sha256/" + hex_of(s.manifest_digest), s.manifest_json);
    json names = load_names(home_);
    names["images"][full] = {{"manifest", s.manifest_digest}, {"created", now_iso()}};
    save_names(home_, names);
    rep.image = info_from(home_, full, names["images"][full]);
    return rep;
}

std::vector<ImageInfo> Store::list() {
    std::vector<ImageInfo> out;
    if (::access((home_ + "/names.json").c_str(), F_OK) != 0) return out;
    StoreLock lock(home_, false);
    json names = load_names(home_);
    for (auto& [n, e] : names["images"].items()) out.push_back(info_from(home_, n, e));
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
        for (auto& [n, e] : names["images"].items())
            if (hex_of(e.value("manifest", "")).rfind(want, 0) == 0) return info_from(home_, n, e);
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
    if (!names["images"].contains(full)) throw Error("no image named '" + full + "'; see 'ocivm image ls'");
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
            keep_layers.insert(hex_of(d) + ".clean");
        }
        keep_roots.insert(hex_of(i.manifest_digest));
    }
    auto sweep = [&](const std::string& dir, const std::set<std::string>& keep, const char* kind) {
        if (::access(dir.c_str(), F_OK) != 0) return;
        for (auto& e : stdfs::directory_iterator(dir)) {
            std::string n = e.path().filename();
            if (keep.count(n)) continue;
            std::error_code ec;
            stdfs::remove_all(e.path(), ec);
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
