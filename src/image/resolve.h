#pragma once
// What `ocivm run IMAGE` runs: IMAGE resolved to a root file system on the
// host and the image's configuration (entrypoint, cmd, env, workdir, user).
// One function, so the image store plugs in here when it lands.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ocivm::image {

struct ImageConfig {
    std::vector<std::string> entrypoint, cmd, env;
    std::string workdir, user;
};

struct ResolvedImage {
    std::string rootfs;  // absolute path of the root file system
    ImageConfig config;
    std::string kind;  // "rootfs directory", ...
};

// Imports SOURCE ("oci:DIR") into the store and returns the image's
// manifest digest ("sha256:..."). ocivm's is cli::import_confined: the
// layout is parsed by a confined process of its own, never by the caller.
using LayoutImporter = std::function<std::string(const std::string& source)>;

// IMAGE: an existing directory (a root file system or an OCI layout, which
// import_layout brings into the store first) or a stored image name.
// Throws Error with what to do when it is neither.
ResolvedImage resolve_image(const std::string& ref, const LayoutImporter& import_layout);

struct User {
    uint32_t uid = 0, gid = 0;
    std::vector<uint32_t> groups;
    std::string home = "/";
};

// "UID[:GID]" or "NAME[:GROUP]", names looked up in the image's /etc/passwd
// and /etc/group (numeric ids need not exist there, as in podman).
User resolve_user(const std::string& rootfs, const std::string& spec);

}  // namespace ocivm::image
