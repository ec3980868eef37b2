// ocivm pull: an image from a registry into the store.
#include "cli/pull.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/import.h"
#include "image/store.h"
#include "registry/client.h"
#include "registry/http.h"
#include "util/error.h"
#include "util/log.h"
#include "util/paths.h"

namespace ocivm::cli {

namespace {

const char kHelp[] = R"(Usage: ocivm pull [OPTIONS] REFERENCE

Fetches an image from a registry (the OCI distribution protocol over HTTPS)
into the image store, then unpacks it as 'ocivm image import' does.

REFERENCE is [REGISTRY[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST]:
  docker.io/library/alpine:3.19, quay.io/fedora/fedora@sha256:..., alpine
A short name (no registry) is tried on each unqualified-search registry of
registries.conf in turn (docker.io when no file lists any); docker.io
repositories without a '/' are under library/. The image is stored under its
fully qualified name (docker.io/library/alpine:latest), which 'ocivm image ls'
shows and 'ocivm run' accepts.

Options:
      --platform OS/ARCH[/VARIANT]
                          which image of a multi-platform index to pull
                          (default: linux/amd64)
      --tls-verify=false  do not verify the registry's TLS certificate
      --creds USER:PASS   credentials for the registry
      --authfile FILE     credentials from FILE (auth.json, as podman login
                          writes it) instead of the default files
  -q, --quiet             print only the image's manifest digest
      --log-level LEVEL   trace | debug | info | warn | error (default: warn)
  -h, --help              show this help

Configuration:
  /etc/containers/registries.conf (or $CONTAINERS_REGISTRIES_CONF), then
  $OCIVM_HOME/registries.conf: unqualified-search-registries, [[registry]]
  prefix/location/insecure/blocked and its [[registry.mirror]]s, [aliases].
  Credentials: --creds, else --authfile, else $REGISTRY_AUTH_FILE, else
  $XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json,
  ~/.docker/config.json. CA certificates for a registry: *.crt in
  $OCIVM_HOME/certs.d/HOST:PORT/, /etc/containers/certs.d/HOST:PORT/ or
  /etc/docker/certs.d/HOST:PORT/.

Every blob is verified against its digest while it streams; a blob that does
not match is discarded and the pull fails naming both digests. Interrupted
transfers resume (HTTP Range) and are retried with backoff; layers the store
has are not fetched again. A failed pull leaves the store as it was.
Exit status: 0, or 125 on any failure (wrong password, unknown image, ...).
)";

std::string human(double b) {
    char buf[32];
    if (b >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.1fGiB", b / (1ull << 30));
    else if (b >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.1fMiB", b / (1ull << 20));
    else if (b >= 1024) std::snprintf(buf, sizeof buf, "%.1fKiB", b / 1024);
    else std::snprintf(buf, sizeof buf, "%.0fB", b);
    return buf;
}

// Per-blob lines on a terminal, redrawn in place (as podman shows them).
class TtyProgress {
public:
    void draw(const std::vector<registry::BlobProgress>& blobs, bool final) {
        auto now = std::chrono::steady_clock::now();
        if (lines_ > 0) std::fprintf(stderr, "\033[%dA", lines_);
        int n = 0;
        for (auto& b : blobs) {
            auto& start = started_[b.digest];
            if (b.state == registry::BlobProgress::State::Fetching && start.time_since_epoch().count() == 0) start = now;
            std::string line = std::string(b.config ? "Copying config " : "Copying blob ") + b.digest.substr(7, 12) + " ";
            using S = registry::BlobProgress::State;
            if (b.state == S::Skipped) line += "skipped: already in the store";
            else if (b.state == S::Done) line += "done   " + human(static_cast<double>(b.size));
            else if (b.state == S::Waiting) line += "waiting " + human(static_cast<double>(b.size));
            else {
                double secs = std::chrono::duration<double>(now - start).count();
                double rate = secs > 0.05 ? static_cast<double>(b.done) / secs : 0;
                int width = 20, fill = b.size ? static_cast<int>(width * static_cast<double>(b.done) / static_cast<double>(b.size)) : 0;
                line += "[" + std::string(static_cast<size_t>(fill), '=') + (fill < width ? ">" : "") +
                        std::string(static_cast<size_t>(std::max(0, width - fill - 1)), ' ') + "] " +
                        human(static_cast<double>(b.done)) + " / " + human(static_cast<double>(b.size));
                if (rate > 0) {
                    line += " " + human(rate) + "/s";
                    double eta = static_cast<double>(b.size - std::min(b.size, b.done)) / rate;
                    line += " ETA " + std::to_string(static_cast<long>(eta + 0.5)) + "s";
                }
                if (b.resumes) line += " (resumed)";
            }
            std::fprintf(stderr, "\r%s\033[K\n", line.c_str());
            ++n;
        }
        // Lines of an earlier, longer list (the config's fetch) are cleared.
        for (int k = n; k < lines_; ++k) std::fprintf(stderr, "\033[K\n");
        if (lines_ > n) std::fprintf(stderr, "\033[%dA", lines_ - n);
        lines_ = n;
        if (final) lines_ = 0;
        std::fflush(stderr);
    }

private:
    int lines_ = 0;
    std::map<std::string, std::chrono::steady_clock::time_point> started_;
};

// Whether the store holds a blob: it is there only once verified (the store
// renames a blob to its digest after hashing it), so it need not be fetched.
std::string stored_blob(const std::string& home, const std::string& digest) {
    if (!registry::valid_digest(digest)) return {};
    std::string p = home + "/blobs/sha256/" + digest.substr(7);
    struct stat st;
    return ::lstat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) ? p : std::string();
}

// An image neither in the store nor pulled: what to do, then `how`.
Error not_in_store(const std::string& image, const std::string& how) {
    return Error("no image named '" + image + "' in the store; import it with 'ocivm image import SOURCE --name " +
                 image + "' " + how);
}

PulledImage import_staged(const registry::StagedImage& img, const std::string& name, const std::string& log_level) {
    // The importer parses layers an image author wrote: it runs in a child
    // that confines itself (no network, only the capabilities unpacking
    // needs), the one import path of ocivm, and checks every blob again.
    ImportedImage r = import_confined("oci:" + img.dir(), name, log_level);
    if (r.digest != img.manifest_digest)
        throw Error("importing " + name + ": the importer stored " + r.digest + ", not the pulled manifest " + img.manifest_digest);
    return {r.name, r.digest};
}

}  // namespace

PulledImage pull_image(const PullRequest& req) {
    registry::Reference ref = registry::parse_reference(req.reference);
    registry::RegistriesConf conf = registry::RegistriesConf::load();
    std::vector<registry::Reference> cands = ref.qualified() ? std::vector<registry::Reference>{ref} : registry::candidates_for(conf, ref);

    std::string home = ocivm_home();
    make_dirs(home, 0700);
    std::string staging = home + "/downloads";
    make_dirs(staging, 0700);
    ::chmod(staging.c_str(), 0700);
    registry::sweep_stale_staging(staging);

    registry::PullOptions opts;
    if (!req.platform.empty()) opts.platform = registry::parse_platform(req.platform);
    opts.tls_verify = req.tls_verify;
    opts.creds = req.creds;
    opts.authfile = req.authfile;
    opts.stored_blob = [home](const std::string& d) { return stored_blob(home, d); };

    const bool tty = !req.quiet && ::isatty(2);
    TtyProgress bar;
    registry::PullProgressFn progress;
    if (tty) progress = [&bar](const std::vector<registry::BlobProgress>& b, bool final) { bar.draw(b, final); };

    registry::http_global_init();
    auto t0 = std::chrono::steady_clock::now();
    std::string errors;
    for (size_t k = 0; k < cands.size(); ++k) {
        const auto& c = cands[k];
        if (tty) std::fprintf(stderr, "Trying to pull %s...\n", c.str().c_str());
        try {
            registry::StagedImage img = registry::fetch_image(c, conf, opts, staging, progress);
            if (tty) std::fprintf(stderr, "Unpacking %s\n", img.manifest_digest.c_str());
            PulledImage p = import_staged(img, c.str(), req.log_level);
            double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            if (!req.quiet)
                std::fprintf(stderr, "ocivm: pulled %s (%s): %u blobs fetched, %s in %.1f s (%s/s), %u already in the store\n",
                             p.name.c_str(), img.platform.c_str(), img.blobs_fetched, human(static_cast<double>(img.bytes_fetched)).c_str(),
                             secs, human(static_cast<double>(img.bytes_fetched) / std::max(secs, 0.001)).c_str(), img.blobs_skipped);
            return p;
        } catch (const registry::NotFound& e) {
            if (cands.size() == 1) throw;
            errors += std::string("\n  ") + c.str() + ": " + e.what();
        } catch (const Error& e) {
            if (cands.size() == 1) throw;
            // A registry that fails is reported with the others, as podman does.
            errors += std::string("\n  ") + c.str() + ": " + e.what();
        }
    }
    throw Error("short name '" + req.reference + "' was not found in any unqualified-search registry of registries.conf:" + errors);
}

std::string pull_for_run(const std::string& image, const std::string& policy, PullRequest req) {
    if (policy != "missing" && policy != "always" && policy != "never")
        throw UsageError{"invalid --pull '" + policy + "': use missing, always or never"};
    struct stat st;
    if (::stat(image.c_str(), &st) == 0) return image;  // a root file system or a layout
    for (const char* t : {"oci:", "oci-archive:", "docker-archive:", "containers-storage:"})
        if (image.rfind(t, 0) == 0) return image;
    if (policy == "never") return image;
    image::Store store(ocivm_home());
    registry::Reference ref;
    try {
        ref = registry::parse_reference(image);
    } catch (const Error&) {
        return image;  // not a reference: a store name or digest, which resolve_image judges
    }
    if (policy == "missing") {
        if (store.find(image)) return image;
        std::vector<registry::Reference> cands;
        if (ref.qualified()) cands.push_back(ref);
        else {
            try {
                cands = registry::candidates_for(registry::RegistriesConf::load(), ref);
            } catch (const Error& e) {
                throw not_in_store(image, "or pull a full reference with 'ocivm pull' (" + std::string(e.what()) + ")");
            }
        }
        for (auto& c : cands)
            if (store.find(c.str())) return c.str();
    }
    req.reference = image;
    try {
        return pull_image(req).name;
    } catch (const UsageError&) {
        throw;
    } catch (const Error& e) {
        if (policy == "always") throw;
        throw not_in_store(image, "or pull it with 'ocivm pull REFERENCE' (pulling '" + image + "' failed: " + e.what() + ")");
    }
}

std::vector<Option> PullFlags::options(bool with_policy) {
    std::vector<Option> opts = {
        {"platform", 0, true, [this](const std::string& v) { req.platform = v; }},
        {"tls-verify", 0, false,
         [this](const std::string& v) {
             if (v.empty() || v == "true") req.tls_verify = true;
             else if (v == "false") req.tls_verify = false;
             else throw UsageError{"--tls-verify takes no value, =true or =false (as podman: --tls-verify=false)"};
         },
         /*optional_value=*/true},
        {"creds", 0, true, [this](const std::string& v) { creds = v; }},
        {"authfile", 0, true, [this](const std::string& v) { req.authfile = v; }},
    };
    if (with_policy) opts.push_back({"pull", 0, true, [this](const std::string& v) { policy = v; }});
    return opts;
}

void PullFlags::finish(const std::string& log_level) {
    req.log_level = log_level;
    if (!creds.empty()) req.creds = registry::parse_creds(creds);
    if (req.creds && !req.authfile.empty()) throw UsageError{"--creds and --authfile cannot be used together"};
    if (!req.platform.empty()) registry::parse_platform(req.platform);  // a bad one fails before any request
    if (policy != "missing" && policy != "always" && policy != "never")
        throw UsageError{"invalid --pull '" + policy + "': use missing, always or never"};
}

int cmd_pull(int argc, char** argv) {
    bool help = false;
    PullFlags flags;
    std::string log_level = "warn";
    std::vector<Option> opts = flags.options(false);
    opts.push_back({"quiet", 'q', false, [&](const std::string&) { flags.req.quiet = true; }});
    opts.push_back({"log-level", 0, true, [&](const std::string& v) { log_level = v; }});
    auto pos = parse_args("pull", argc, argv, 2, opts, &help);
    if (help) {
        std::fputs(kHelp, stdout);
        return 0;
    }
    if (pos.size() != 1) {
        std::fputs(kHelp, stderr);
        throw UsageError{"usage: ocivm pull [OPTIONS] REFERENCE"};
    }
    setup_logging(log_level);
    flags.finish(log_level);
    PullRequest& req = flags.req;
    req.reference = pos[0];
    PulledImage p = pull_image(req);
    if (req.quiet) std::printf("%s\n", p.digest.c_str());
    else std::printf("%s %s\n", p.name.c_str(), p.digest.c_str());
    return 0;
}

}  // namespace ocivm::cli
