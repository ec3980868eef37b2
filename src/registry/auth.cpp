#include "registry/auth.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "util/error.h"
#include "util/log.h"
#include "util/paths.h"
#include "util/printable.h"

namespace ocivm::registry {

namespace {

constexpr size_t kMaxChallenge = 8192;
constexpr size_t kMaxParams = 32;
constexpr size_t kMaxAuthFile = 1 << 20;

bool tchar(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

// Docker's keys: "https://index.docker.io/v1/", "http://host/", "host/ns".
std::string normalize_key(std::string k) {
    for (const char* p : {"https://", "http://"})
        if (k.rfind(p, 0) == 0) k = k.substr(std::string(p).size());
    if (k.size() >= 4 && k.compare(k.size() - 4, 4, "/v1/") == 0) k.resize(k.size() - 4);
    else if (k.size() >= 3 && k.compare(k.size() - 3, 3, "/v1") == 0) k.resize(k.size() - 3);
    while (!k.empty() && k.back() == '/') k.pop_back();
    if (k == "index.docker.io" || k == "registry-1.docker.io") k = "docker.io";
    return k;
}

}  // namespace

std::optional<Challenge> parse_challenge(const std::string& h) {
    if (h.size() > kMaxChallenge) return std::nullopt;
    size_t i = 0;
    auto ws = [&] {
        while (i < h.size() && (h[i] == ' ' || h[i] == '\t')) ++i;
    };
    ws();
    size_t b = i;
    while (i < h.size() && tchar(h[i])) ++i;
    if (i == b) return std::nullopt;
    Challenge c;
    c.scheme = lower(h.substr(b, i - b));
    for (;;) {
        ws();
        while (i < h.size() && (h[i] == ',' || h[i] == ' ' || h[i] == '\t')) ++i;
        if (i >= h.size()) break;
        b = i;
        while (i < h.size() && tchar(h[i])) ++i;
        if (i == b) return std::nullopt;
        std::string key = lower(h.substr(b, i - b));
        ws();
        if (i >= h.size() || h[i] != '=') {
            // token68 (Basic's base64 blob) or a second challenge: not ours to read
            break;
        }
        ++i;
        ws();
        std::string val;
        if (i < h.size() && h[i] == '"') {
            ++i;
            bool closed = false;
            while (i < h.size()) {
                char ch = h[i++];
                if (ch == '\\' && i < h.size()) val += h[i++];
                else if (ch == '"') {
                    closed = true;
                    break;
                } else val += ch;
            }
            if (!closed) return std::nullopt;
        } else {
            b = i;
            while (i < h.size() && tchar(h[i])) ++i;
            val = h.substr(b, i - b);
        }
        if (c.params.size() >= kMaxParams) return std::nullopt;
        c.params[key] = val;
    }
    return c;
}

Credentials parse_creds(const std::string& s) {
    size_t c = s.find(':');
    if (c == std::string::npos || c == 0) throw Error("--creds wants USER:PASSWORD (a user name, a colon, the password)");
    return {s.substr(0, c), s.substr(c + 1), "--creds"};
}

std::vector<std::string> auth_files(const std::string& authfile) {
    if (!authfile.empty()) return {authfile};
    if (const char* e = std::getenv("REGISTRY_AUTH_FILE"); e && *e) return {e};
    std::vector<std::string> out;
    const char* xdg_run = std::getenv("XDG_RUNTIME_DIR");
    if (xdg_run && *xdg_run) out.push_back(std::string(xdg_run) + "/containers/auth.json");
    else out.push_back("/run/containers/" + std::to_string(::getuid()) + "/auth.json");
    const char* home = std::getenv("HOME");
    const char* xdg_cfg = std::getenv("XDG_CONFIG_HOME");
    if (xdg_cfg && *xdg_cfg) out.push_back(std::string(xdg_cfg) + "/containers/auth.json");
    else if (home && *home) out.push_back(std::string(home) + "/.config/containers/auth.json");
    if (home && *home) {
        out.push_back(std::string(home) + "/.docker/config.json");
        out.push_back(std::string(home) + "/.dockercfg");
    }
    return out;
}

std::optional<Credentials> lookup_credentials(const std::vector<std::string>& files, const std::string& registry,
                                              const std::string& repository, bool first_must_exist) {
    std::vector<std::string> keys;
    std::string k = registry + "/" + repository;
    for (;;) {
        keys.push_back(k);
        size_t s = k.rfind('/');
        if (s == std::string::npos) break;
        k.resize(s);
    }
    for (size_t fi = 0; fi < files.size(); ++fi) {
        const std::string& f = files[fi];
        struct stat st;
        if (::stat(f.c_str(), &st) != 0) {
            if (fi == 0 && first_must_exist) throw Error("auth file " + f + " does not exist; check --authfile");
            continue;
        }
        if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) > kMaxAuthFile)
            throw Error("auth file " + f + " is not a regular file of at most 1 MiB; fix it or log in again");
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(read_file(f));
        } catch (const nlohmann::json::exception& e) {
            throw Error("auth file " + f + " is not valid JSON (" + printable(e.what(), 300) + "); fix it or log in again");
        }
        if (!j.is_object()) continue;
        // ~/.dockercfg is the "auths" object itself.
        const nlohmann::json* auths = &j;
        if (j.contains("auths")) auths = &j["auths"];
        if (!auths->is_object()) continue;
        std::map<std::string, const nlohmann::json*> entries;
        for (auto& [key, val] : auths->items()) entries[normalize_key(key)] = &val;
        for (auto& key : keys) {
            auto it = entries.find(key);
            if (it == entries.end() || !it->second->is_object()) continue;
            const nlohmann::json& e = *it->second;
            if (!e.contains("auth") || !e["auth"].is_string()) continue;
            std::string dec;
            try {
                dec = base64_decode(e["auth"].get<std::string>());
            } catch (const Error&) {
                throw Error("auth file " + f + ": the entry for " + key + " is not base64; log in again");
            }
            size_t c = dec.find(':');
            if (c == std::string::npos) throw Error("auth file " + f + ": the entry for " + key + " is not USER:PASSWORD; log in again");
            spdlog::debug("credentials for {} from {} ({})", registry, f, key);
            return Credentials{dec.substr(0, c), dec.substr(c + 1), f};
        }
    }
    return std::nullopt;
}

std::string base64_encode(const std::string& in) {
    static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    size_t i = 0;
    for (; i + 2 < in.size(); i += 3) {
        unsigned v = (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8) |
                     static_cast<unsigned char>(in[i + 2]);
        out += t[v >> 18];
        out += t[(v >> 12) & 63];
        out += t[(v >> 6) & 63];
        out += t[v & 63];
    }
    if (i < in.size()) {
        unsigned v = static_cast<unsigned char>(in[i]) << 16;
        if (i + 1 < in.size()) v |= static_cast<unsigned char>(in[i + 1]) << 8;
        out += t[v >> 18];
        out += t[(v >> 12) & 63];
        out += i + 1 < in.size() ? t[(v >> 6) & 63] : '=';
        out += '=';
    }
    return out;
}

std::string base64_decode(const std::string& in) {
    std::string out;
    unsigned v = 0;
    int bits = 0;
    for (char c : in) {
        int d;
        if (c >= 'A' && c <= 'Z') d = c - 'A';
        else if (c >= 'a' && c <= 'z') d = c - 'a' + 26;
        else if (c >= '0' && c <= '9') d = c - '0' + 52;
        else if (c == '+' || c == '-') d = 62;
        else if (c == '/' || c == '_') d = 63;
        else if (c == '=' || c == '\n' || c == '\r') continue;
        else throw Error("not base64");
        v = (v << 6) | static_cast<unsigned>(d);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>((v >> bits) & 0xff);
        }
    }
    return out;
}

}  // namespace ocivm::registry
