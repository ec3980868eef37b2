#include "registry/reference.h"

#include <cctype>

#include "util/error.h"

namespace ocivm::registry {

namespace {

constexpr size_t kMaxReference = 255;  // what docker and podman accept for NAME

bool lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

bool valid_tag(const std::string& t) {
    if (t.empty() || t.size() > 128) return false;
    auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
    if (!word(t[0])) return false;
    for (char c : t)
        if (!word(c) && c != '.' && c != '-') return false;
    return true;
}

}  // namespace

// A path component: [a-z0-9]+ ((\. | _ | __ | -+) [a-z0-9]+)*
bool valid_component(const std::string& c) {
    if (c.empty() || !lower_alnum(c.front()) || !lower_alnum(c.back())) return false;
    for (size_t i = 0; i < c.size();) {
        if (lower_alnum(c[i])) {
            ++i;
            continue;
        }
        size_t j = i;
        while (j < c.size() && !lower_alnum(c[j])) ++j;
        std::string sep = c.substr(i, j - i);
        bool ok = sep == "." || sep == "_" || sep == "__" || sep.find_first_not_of('-') == std::string::npos;
        if (!ok) return false;
        i = j;
    }
    return true;
}

// host[:port]: DNS labels or an IPv4 address, a numeric port.
bool valid_registry(const std::string& r) {
    std::string host = r, port;
    if (size_t c = r.rfind(':'); c != std::string::npos) {
        host = r.substr(0, c);
        port = r.substr(c + 1);
        if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) return false;
    }
    if (host.empty() || host.front() == '.' || host.back() == '.' || host.front() == '-') return false;
    for (char c : host)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-') return false;
    return true;
}


std::string Reference::name() const { return registry.empty() ? repository : registry + "/" + repository; }

std::string Reference::str() const {
    std::string s = name();
    if (!tag.empty() && (digest.empty() || tag != "latest")) s += ":" + tag;
    if (!digest.empty()) s += "@" + digest;
    return s;
}

Reference parse_reference(const std::string& in) {
    auto bad = [&](const std::string& why) -> Error {
        std::string shown;
        for (char c : in.substr(0, 100)) shown += (c >= 0x20 && c < 0x7f) ? c : '?';
        return Error("invalid image reference '" + shown + "': " + why +
                     " (write [REGISTRY[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST], e.g. docker.io/library/alpine:3.19)");
    };
    if (in.empty()) throw bad("it is empty");
    if (in.size() > kMaxReference) throw bad("it is longer than " + std::to_string(kMaxReference) + " characters");
    for (char c : in)
        if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) throw bad("it holds a space or control character");
    Reference r;
    std::string rest = in;
    if (size_t at = rest.find('@'); at != std::string::npos) {
        r.digest = rest.substr(at + 1);
        rest = rest.substr(0, at);
        if (r.digest.rfind("sha256:", 0) != 0) throw bad("only sha256 digests are supported");
        if (!valid_digest(r.digest)) throw bad("a sha256 digest is 64 lowercase hex digits");
    }
    size_t slash = rest.find('/');
    if (slash != std::string::npos) {
        std::string first = rest.substr(0, slash);
        if (first.find('.') != std::string::npos || first.find(':') != std::string::npos || first == "localhost") {
            if (!valid_registry(first)) throw bad("'" + first + "' is not a registry host[:port]");
            r.registry = first;
            rest = rest.substr(slash + 1);
        }
    }
    size_t last_slash = rest.rfind('/');
    size_t colon = rest.rfind(':');
    if (colon != std::string::npos && (last_slash == std::string::npos || colon > last_slash)) {
        r.tag = rest.substr(colon + 1);
        rest = rest.substr(0, colon);
        if (!valid_tag(r.tag)) throw bad("'" + r.tag + "' is not a tag (letters, digits, _ . -, up to 128, not starting with . or -)");
    }
    if (rest.empty()) throw bad("it names no repository");
    size_t start = 0;
    for (;;) {
        size_t end = rest.find('/', start);
        std::string comp = rest.substr(start, end == std::string::npos ? std::string::npos : end - start);
        if (!valid_component(comp))
            throw bad("'" + comp + "' is not a repository path component (lowercase letters and digits, separated by . _ __ or -)");
        if (end == std::string::npos) break;
        start = end + 1;
    }
    r.repository = rest;
    if (r.tag.empty() && r.digest.empty()) r.tag = "latest";
    if (r.registry == "index.docker.io" || r.registry == "registry-1.docker.io") r.registry = "docker.io";
    if (r.registry == "docker.io" && r.repository.find('/') == std::string::npos) r.repository = "library/" + r.repository;
    return r;
}

Reference with_registry(const Reference& r, const std::string& host) {
    Reference q = r;
    q.registry = host;
    if ((host == "docker.io" || host == "index.docker.io") && q.repository.find('/') == std::string::npos) {
        q.registry = "docker.io";
        q.repository = "library/" + q.repository;
    }
    return q;
}

}  // namespace ocivm::registry
