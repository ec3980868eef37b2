#pragma once
// The OCI distribution client: one image (manifest, config, layers) fetched
// from a registry into a staging OCI layout, every blob verified while it
// streams, so what the importer then reads is exactly what the manifest
// names. The registry is treated as hostile: every size it can make ocivm
// read is bounded, digests are checked before they become file names, and
// nothing it sends is used before its digest matched.
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "registry/auth.h"
#include "util/error.h"
#include "util/unique_fd.h"
#include "registry/reference.h"
#include "registry/registries_conf.h"

namespace ocivm::registry {

struct Platform {
    std::string os = "linux", architecture = "amd64", variant;
    std::string str() const { return os + "/" + architecture + (variant.empty() ? "" : "/" + variant); }
};
// OS/ARCH[/VARIANT]; throws Error.
Platform parse_platform(const std::string& s);

struct PullOptions {
    Platform platform;
    bool tls_verify = true;                 // false: no certificate check anywhere (--tls-verify=false)
    std::optional<Credentials> creds;       // --creds
    std::string authfile;                   // --authfile
    unsigned jobs = 4;                      // blobs fetched at once
    // The path of a blob the store holds already, verified ("" when it has
    // none): a layer there is not fetched again, a config is copied from there.
    std::function<std::string(const std::string& digest)> stored_blob;
};

struct BlobProgress {
    std::string digest;
    uint64_t size = 0, done = 0;
    enum class State { Waiting, Fetching, Done, Skipped } state = State::Waiting;
    unsigned resumes = 0;
    bool config = false;  // the image config (else a layer)
};

// Called (from any thread, serialised) as blobs progress; `final` once at the end.
using PullProgressFn = std::function<void(const std::vector<BlobProgress>& blobs, bool final)>;

// A staging OCI layout (index.json, oci-layout, blobs/sha256/...), removed
// with this object.
class StagedImage {
public:
    StagedImage() = default;
    // `lock` holds an flock on the directory for as long as it exists: that
    // is how sweep_stale_staging tells a live pull's directory from one an
    // interrupted pull left (process ids say nothing across PID namespaces
    // and are reused).
    StagedImage(std::string dir, UniqueFd lock) : dir_(std::move(dir)), lock_(std::move(lock)) {}
    ~StagedImage();
    StagedImage(StagedImage&& o) noexcept
        : ref(std::move(o.ref)), manifest_digest(std::move(o.manifest_digest)),
          manifest_media_type(std::move(o.manifest_media_type)), platform(std::move(o.platform)),
          blobs_fetched(o.blobs_fetched), blobs_skipped(o.blobs_skipped), bytes_fetched(o.bytes_fetched),
          dir_(std::move(o.dir_)), lock_(std::move(o.lock_)) {
        o.dir_.clear();
    }
    StagedImage& operator=(StagedImage&&) = delete;
    const std::string& dir() const { return dir_; }

    Reference ref;                 // where it came from, fully qualified
    std::string manifest_digest;   // sha256:...
    std::string manifest_media_type;
    std::string platform;          // os/arch[/variant] of the config, printable (util/printable.h)
    unsigned blobs_fetched = 0, blobs_skipped = 0;
    uint64_t bytes_fetched = 0;

private:
    std::string dir_;
    UniqueFd lock_;
};

// Removes the staging directories below staging_root that no live pull
// holds (left by a pull that was killed), and partial blobs older than a
// week.
void sweep_stale_staging(const std::string& staging_root);

// A reference the registry does not have (404: NAME_UNKNOWN, MANIFEST_UNKNOWN).
class NotFound : public Error {
public:
    using Error::Error;
};
// Credentials refused, or needed and missing.
class AuthFailed : public Error {
public:
    using Error::Error;
};

// Fetches `ref` (qualified) from the endpoints registries.conf gives for it
// into a new staging directory below staging_root. Throws Error (NotFound,
// AuthFailed) with what to do; nothing is left in staging_root then.
StagedImage fetch_image(const Reference& ref, const RegistriesConf& conf, const PullOptions& opts,
                        const std::string& staging_root, const PullProgressFn& progress);

// Upper bounds on what a registry can make ocivm hold in memory.
constexpr size_t kMaxManifestBytes = 4u << 20;
constexpr size_t kMaxConfigBytes = 8u << 20;
constexpr size_t kMaxTokenResponse = 1u << 20;
constexpr size_t kMaxLayers = 256;
// What partial downloads (STAGING/partial, kept for the next pull to resume)
// may hold together; a transfer cut beyond it is discarded instead.
constexpr uint64_t kMaxKeptPartials = 8ull << 30;

}  // namespace ocivm::registry
