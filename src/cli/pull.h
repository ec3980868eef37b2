#pragma once
// `ocivm pull`, and the pull that `ocivm run` / `ocivm disk create` do
// before resolving an image (--pull missing|always|never, as podman).
#include <optional>
#include <string>
#include <vector>

#include "cli/args.h"
#include "registry/auth.h"

namespace ocivm::cli {

struct PullRequest {
    std::string reference;              // as the user wrote it
    std::string platform;               // OS/ARCH[/VARIANT]; "" = linux/amd64
    bool tls_verify = true;
    std::optional<registry::Credentials> creds;
    std::string authfile;
    bool quiet = false;                 // nothing on stderr but an error (no progress,
                                        // no summary line): `ocivm pull -q` only
    std::string log_level = "warn";     // for the confined importer
};

struct PulledImage {
    std::string name;    // in the store: the fully qualified reference
    std::string digest;  // manifest digest
};

// Fetches the image (every blob verified while it streams) and imports it
// into the store through `ocivm image import` in a child process, which
// confines itself before parsing any layer. Throws Error with what to do;
// the store is as it was then.
PulledImage pull_image(const PullRequest& req);

// For `ocivm run IMAGE` and `ocivm disk create IMAGE`: what to hand to
// image::resolve_image. policy: "missing" (pull when the store has no
// image of that name), "always", "never". A directory, an oci:/...:
// source or a stored name is returned as it is (missing, never); otherwise
// the reference is pulled (with req's options: --platform, --creds,
// --authfile, --tls-verify, --log-level as the caller took them; run and
// disk create have no --quiet, so their pull shows its progress or summary
// on stderr; req.reference is ignored) and its store name returned.
// Throws UsageError for a bad policy, Error when the pull fails.
std::string pull_for_run(const std::string& image, const std::string& policy, PullRequest req);

// The registry options `ocivm pull`, `ocivm run` and `ocivm disk create`
// share: --platform, --tls-verify, --creds, --authfile (and, with_policy,
// --pull). Add options() to the command's list, then call finish() once
// the arguments are parsed (it checks them together).
struct PullFlags {
    PullRequest req;
    std::string policy = "missing";  // --pull
    std::string creds;               // --creds USER:PASS, parsed by finish()
    std::vector<Option> options(bool with_policy);
    void finish(const std::string& log_level);
};

}  // namespace ocivm::cli
