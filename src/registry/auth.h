#pragma once
// Registry authentication: the WWW-Authenticate challenge a registry answers
// 401 with, and the credentials ocivm may answer it with, found as podman
// finds them (containers-auth.json(5)).
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace ocivm::registry {

struct Challenge {
    std::string scheme;                         // lowercase: "bearer", "basic"
    std::map<std::string, std::string> params;  // keys lowercase: realm, service, scope, error
};

// Parses one WWW-Authenticate header value (RFC 7235: a scheme, then
// key=token or key="quoted string" pairs). Returns nullopt when it is not a
// challenge ocivm understands; bounded: at most 8 KiB and 32 parameters.
std::optional<Challenge> parse_challenge(const std::string& header);

struct Credentials {
    std::string user, password;
    std::string source;  // where they came from, for messages ("--creds", a file)
};

// "USER:PASS" (the password may hold ':'); throws Error when there is no ':'.
Credentials parse_creds(const std::string& s);

// The auth files in podman's order: authfile if given (only that one), else
// $REGISTRY_AUTH_FILE (only that one), else ${XDG_RUNTIME_DIR}/containers/auth.json
// (/run/containers/UID/auth.json), $XDG_CONFIG_HOME/containers/auth.json,
// ~/.docker/config.json, ~/.dockercfg.
std::vector<std::string> auth_files(const std::string& authfile);

// The credentials for registry/repository from the first file that has an
// entry for it, the most specific key first ("host/ns/repo", "host/ns",
// "host"); docker's "https://index.docker.io/v1/" key counts for docker.io.
// A file named with --authfile must exist; the others may not.
std::optional<Credentials> lookup_credentials(const std::vector<std::string>& files, const std::string& registry,
                                              const std::string& repository, bool first_must_exist);

std::string base64_encode(const std::string& in);
// Throws Error on characters outside the alphabet.
std::string base64_decode(const std::string& in);

}  // namespace ocivm::registry
