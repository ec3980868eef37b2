#pragma once
// containers-registries.conf(5), version 2, the subset a pull needs:
//   unqualified-search-registries = ["registry.fedoraproject.org", "docker.io"]
//   [[registry]]
//   prefix = "example.com/foo"     (or "*.example.com"; default: location)
//   location = "internal.example.com/bar"
//   insecure = true                 (plain HTTP, or TLS without verification)
//   blocked = true
//   mirror-by-digest-only = false
//   [[registry.mirror]]
//   location = "mirror.example.com/bar"
//   insecure = false
//   [aliases]
//   "alpine" = "docker.io/library/alpine"
// Files read in order, later ones overriding: /etc/containers/registries.conf
// (or $CONTAINERS_REGISTRIES_CONF instead, as podman does), then
// $OCIVM_HOME/registries.conf. A later file's unqualified-search-registries
// replaces the earlier list; a [[registry]] with the same prefix replaces the
// earlier one. Other keys (short-name-mode, credential-helpers, ...) are
// ignored with a debug log line. The TOML is parsed by hand: strings (basic
// and literal), booleans, integers, arrays of strings, tables, arrays of
// tables, comments; anything else is an error naming the file and line.
#include <map>
#include <string>
#include <vector>

#include "registry/reference.h"

namespace ocivm::registry {

struct Mirror {
    std::string location;
    bool insecure = false;
};

struct RegistryEntry {
    std::string prefix, location;
    bool insecure = false, blocked = false, mirror_by_digest_only = false;
    std::vector<Mirror> mirrors;
};

struct RegistriesConf {
    bool have_search = false;  // some file set unqualified-search-registries
    std::vector<std::string> search;
    std::vector<RegistryEntry> registries;
    std::map<std::string, std::string> aliases;

    // Parses one file's text on top of this one; `where` names it in errors.
    void merge(const std::string& text, const std::string& where);
    // The default files (see above); a missing file is not an error.
    static RegistriesConf load();

    // The [[registry]] whose prefix matches `name` (registry/repository)
    // longest, or nullptr.
    const RegistryEntry* match(const std::string& name) const;
};

// One place a reference can be fetched from.
struct Endpoint {
    std::string host;        // host[:port] to connect to
    std::string repository;  // the repository there
    bool insecure = false;
    bool mirror = false;
};

// Where to fetch `ref` (qualified) from, in order: mirrors, then the
// location. Throws Error when the registry is blocked.
std::vector<Endpoint> endpoints_for(const RegistriesConf& conf, const Reference& ref);

// The fully qualified candidates for a short name: its alias, or one per
// unqualified-search registry (docker.io when no file says anything).
std::vector<Reference> candidates_for(const RegistriesConf& conf, const Reference& short_ref);

}  // namespace ocivm::registry
