#pragma once
// Image references as podman and docker write them:
//   [REGISTRY[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST]
// A first component with a '.' or ':' in it, or "localhost", is a registry;
// anything else is a short name that registries.conf resolves. docker.io
// puts one-component repositories under library/ ("alpine" is
// "docker.io/library/alpine"). Only sha256 digests are accepted: every
// digest ends up in a path of the store, so its syntax is checked here.
#include <string>

#include "util/digest.h"

namespace ocivm::registry {

struct Reference {
    std::string registry;    // "docker.io", "127.0.0.1:5000"; "" for a short name
    std::string repository;  // "library/alpine"
    std::string tag;         // "latest" when neither a tag nor a digest was given
    std::string digest;      // "sha256:<64 hex>" or ""

    bool qualified() const { return !registry.empty(); }
    // registry/repository
    std::string name() const;
    // registry/repository:tag, registry/repository@digest, or both
    std::string str() const;
    // What the manifest request asks for: the digest if there is one, else the tag.
    std::string manifest_ref() const { return digest.empty() ? tag : digest; }
};

// Parses REF; throws Error saying what is wrong with it. A short name keeps
// registry "" (see with_registry).
Reference parse_reference(const std::string& ref);

// The short name `r` on registry `host`, with docker.io's library/ rule.
Reference with_registry(const Reference& r, const std::string& host);

using ocivm::valid_digest;  // util/digest.h
// One path component of a repository: [a-z0-9]+ ((. | _ | __ | -+) [a-z0-9]+)*
bool valid_component(const std::string& c);
// A registry as a reference names it: host[:port] (DNS labels or IPv4).
bool valid_registry(const std::string& r);

}  // namespace ocivm::registry
