#include "registry/registries_conf.h"

#include <sys/stat.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <variant>

#include "util/error.h"
#include "util/printable.h"
#include "util/log.h"
#include "util/paths.h"

namespace ocivm::registry {

namespace {

constexpr size_t kMaxConfBytes = 1 << 20;  // a registries.conf is a few KiB
constexpr size_t kMaxEntries = 4096;       // registries, mirrors, aliases, search entries

using Value = std::variant<std::string, bool, long long, std::vector<std::string>>;

struct Parser {
    const std::string& s;
    const std::string& where;
    size_t i = 0;
    int line = 1;

    [[noreturn]] void fail(const std::string& why) const {
        throw Error(where + ":" + std::to_string(line) + ": " + why + " (ocivm reads the TOML subset of containers-registries.conf(5))");
    }
    bool eof() const { return i >= s.size(); }
    // Spaces and tabs; with newlines, also newlines and comments.
    void skip(bool newlines) {
        while (!eof()) {
            char c = s[i];
            if (c == ' ' || c == '\t' || c == '\r') ++i;
            else if (c == '#') {
                while (!eof() && s[i] != '\n') ++i;
            } else if (newlines && c == '\n') {
                ++i;
                ++line;
            } else break;
        }
    }
    void end_of_line() {
        skip(false);
        if (eof()) return;
        if (s[i] != '\n') fail("unexpected '" + std::string(1, s[i]) + "' after a value");
        ++i;
        ++line;
    }
    std::string key() {
        skip(false);
        if (eof()) fail("a key is missing");
        if (s[i] == '"' || s[i] == '\'') return string();
        size_t b = i;
        while (!eof() && (std::isalnum(static_cast<unsigned char>(s[i])) || s[i] == '-' || s[i] == '_')) ++i;
        if (b == i) fail("a key is missing");
        return s.substr(b, i - b);
    }
    std::string string() {
        char q = s[i++];
        std::string out;
        while (!eof() && s[i] != q) {
            char c = s[i++];
            if (c == '\n') fail("a string runs past the end of its line");
            if (q == '"' && c == '\\') {
                if (eof()) break;
                char e = s[i++];
                switch (e) {
                    case 'n': out += '\n'; break;
                    case 't': out += '\t'; break;
                    case '\\': out += '\\'; break;
                    case '"': out += '"'; break;
                    default: fail(std::string("unsupported escape \\") + e);
                }
            } else {
                out += c;
            }
        }
        if (eof()) fail("a string is not closed");
        ++i;
        return out;
    }
    Value value() {
        skip(false);
        if (eof()) fail("a value is missing");
        char c = s[i];
        if (c == '"' || c == '\'') return string();
        if (c == '[') {
            ++i;
            std::vector<std::string> arr;
            for (;;) {
                skip(true);
                if (eof()) fail("an array is not closed");
                if (s[i] == ']') {
                    ++i;
                    return arr;
                }
                if (s[i] != '"' && s[i] != '\'') fail("ocivm reads arrays of strings only");
                arr.push_back(string());
                if (arr.size() > kMaxEntries) fail("an array with more than " + std::to_string(kMaxEntries) + " entries");
                skip(true);
                if (!eof() && s[i] == ',') ++i;
                else if (!eof() && s[i] != ']') fail("expected ',' or ']' in an array");
            }
        }
        if (s.compare(i, 4, "true") == 0) {
            i += 4;
            return true;
        }
        if (s.compare(i, 5, "false") == 0) {
            i += 5;
            return false;
        }
        size_t b = i;
        if (c == '-' || c == '+') ++i;
        while (!eof() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
        if (i == b || i - b > 18) fail("unsupported value");
        return std::stoll(s.substr(b, i - b));
    }
};

template <class T>
const T& as(const Value& v, const Parser& p, const std::string& key, const char* type) {
    if (auto* x = std::get_if<T>(&v)) return *x;
    p.fail("\"" + key + "\" must be " + type);
}

// "*.example.com" matches any host below example.com, with or without a path.
bool prefix_matches(const std::string& prefix, const std::string& name) {
    if (prefix.rfind("*.", 0) == 0) {
        std::string host = name.substr(0, name.find('/'));
        std::string suffix = prefix.substr(1);  // ".example.com"
        return host.size() > suffix.size() && host.compare(host.size() - suffix.size(), suffix.size(), suffix) == 0;
    }
    if (name.rfind(prefix, 0) != 0) return false;
    return name.size() == prefix.size() || name[prefix.size()] == '/' || name[prefix.size()] == ':' ||
           name[prefix.size()] == '@';
}

// prefix -> location applied to registry/repository; "" when the result is not host/repo.
void split_location(const std::string& full, std::string& host, std::string& repo) {
    size_t slash = full.find('/');
    host = full.substr(0, slash);
    repo = slash == std::string::npos ? "" : full.substr(slash + 1);
}

// HOST[:PORT][/PATH] as a location, prefix or search registry is written
// (a prefix may start with "*." for every subdomain). These become URLs
// and lines on the user's terminal: anything else is refused, shown escaped.
void check_location(const std::string& where, const std::string& what, const std::string& loc, bool host_only,
                    bool wildcard_ok) {
    std::string host, repo;
    split_location(loc, host, repo);
    if (wildcard_ok && host.rfind("*.", 0) == 0) host = host.substr(2);
    bool ok = valid_registry(host) && (repo.empty() || !host_only);
    for (size_t b = 0; ok && !repo.empty();) {
        size_t e = repo.find('/', b);
        ok = valid_component(repo.substr(b, e == std::string::npos ? std::string::npos : e - b));
        if (e == std::string::npos) break;
        b = e + 1;
    }
    if (!ok)
        throw Error(where + ": " + what + " \"" + printable(loc) + "\" is not " +
                    (host_only ? "a registry HOST[:PORT]" : "HOST[:PORT][/PATH] (lowercase path components)") +
                    "; fix that line");
}

enum class Section { Top, Registry, Mirror, Aliases, Other };

// What one file says, before it is merged.
struct FileState {
    Section sec = Section::Top;
    std::vector<RegistryEntry> registries;
    std::optional<std::vector<std::string>> search;
};

// "[name]" or "[[name]]" at p.i: which section follows.
void read_table_header(Parser& p, FileState& f) {
    const std::string& text = p.s;
    bool array = text.compare(p.i, 2, "[[") == 0;
    p.i += array ? 2 : 1;
    size_t b = p.i;
    while (!p.eof() && text[p.i] != ']' && text[p.i] != '\n') ++p.i;
    std::string name = text.substr(b, p.i - b);
    while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.pop_back();
    while (!name.empty() && (name.front() == ' ' || name.front() == '\t')) name.erase(0, 1);
    if (text.compare(p.i, array ? 2 : 1, array ? "]]" : "]") != 0) p.fail("a table header is not closed");
    p.i += array ? 2 : 1;
    p.end_of_line();
    if (array && name == "registry") {
        if (f.registries.size() >= kMaxEntries) p.fail("more than " + std::to_string(kMaxEntries) + " [[registry]] tables");
        f.registries.emplace_back();
        f.sec = Section::Registry;
    } else if (array && name == "registry.mirror") {
        if (f.registries.empty()) p.fail("[[registry.mirror]] before any [[registry]]");
        if (f.registries.back().mirrors.size() >= kMaxEntries) p.fail("too many mirrors");
        f.registries.back().mirrors.emplace_back();
        f.sec = Section::Mirror;
    } else if (!array && name == "aliases") {
        f.sec = Section::Aliases;
    } else {
        spdlog::debug("{}:{}: ignoring table [{}]", p.where, p.line - 1, name);
        f.sec = Section::Other;
    }
}

// "key = value" at p.i, into the current section.
void read_key_value(Parser& p, FileState& f, std::map<std::string, std::string>& aliases) {
    std::string k = p.key();
    p.skip(false);
    if (p.eof() || p.s[p.i] != '=') p.fail("expected '=' after \"" + k + "\"");
    ++p.i;
    Value v = p.value();
    p.end_of_line();
    switch (f.sec) {
        case Section::Top:
            if (k == "unqualified-search-registries") f.search = as<std::vector<std::string>>(v, p, k, "an array of strings");
            else spdlog::debug("{}: ignoring {}", p.where, k);
            break;
        case Section::Registry: {
            RegistryEntry& r = f.registries.back();
            if (k == "prefix") r.prefix = as<std::string>(v, p, k, "a string");
            else if (k == "location") r.location = as<std::string>(v, p, k, "a string");
            else if (k == "insecure") r.insecure = as<bool>(v, p, k, "true or false");
            else if (k == "blocked") r.blocked = as<bool>(v, p, k, "true or false");
            else if (k == "mirror-by-digest-only") r.mirror_by_digest_only = as<bool>(v, p, k, "true or false");
            else spdlog::debug("{}: ignoring registry key {}", p.where, k);
            break;
        }
        case Section::Mirror: {
            Mirror& m = f.registries.back().mirrors.back();
            if (k == "location") m.location = as<std::string>(v, p, k, "a string");
            else if (k == "insecure") m.insecure = as<bool>(v, p, k, "true or false");
            else spdlog::debug("{}: ignoring mirror key {}", p.where, k);
            break;
        }
        case Section::Aliases:
            if (aliases.size() >= kMaxEntries) p.fail("too many aliases");
            aliases[k] = as<std::string>(v, p, k, "a string");
            break;
        case Section::Other:
            break;
    }
}

}  // namespace

void RegistriesConf::merge(const std::string& text, const std::string& where) {
    if (text.size() > kMaxConfBytes)
        throw Error(where + " is larger than " + std::to_string(kMaxConfBytes) + " bytes; a registries.conf is a few KiB: fix the file");
    Parser p{text, where};
    FileState f;
    for (;;) {
        p.skip(true);
        if (p.eof()) break;
        if (text[p.i] == '[') read_table_header(p, f);
        else read_key_value(p, f, aliases);
    }
    for (auto& r : f.registries) {
        if (r.prefix.empty()) r.prefix = r.location;
        if (r.prefix.empty()) throw Error(where + ": a [[registry]] has neither prefix nor location; give it one");
        check_location(where, "the [[registry]] prefix", r.prefix, false, true);
        if (r.location.empty() && r.prefix.rfind("*.", 0) != 0) r.location = r.prefix;
        if (!r.location.empty()) check_location(where, "the [[registry]] location", r.location, false, false);
        for (auto& m : r.mirrors) {
            if (m.location.empty()) throw Error(where + ": a [[registry.mirror]] of " + r.prefix + " has no location; give it one");
            check_location(where, "the [[registry.mirror]] location", m.location, false, false);
        }
        bool replaced = false;
        for (auto& old : registries)
            if (old.prefix == r.prefix) {
                old = r;
                replaced = true;
            }
        if (!replaced) registries.push_back(r);
    }
    if (f.search) {
        for (auto& r : *f.search) check_location(where, "the unqualified-search-registries entry", r, true, false);
        have_search = true;
        search = *f.search;
    }
}

RegistriesConf RegistriesConf::load() {
    RegistriesConf c;
    const char* env = std::getenv("CONTAINERS_REGISTRIES_CONF");
    std::vector<std::string> files = {env && *env ? env : "/etc/containers/registries.conf", ocivm_home() + "/registries.conf"};
    for (auto& f : files) {
        struct stat st;
        if (::stat(f.c_str(), &st) != 0) continue;
        if (!S_ISREG(st.st_mode) && !S_ISCHR(st.st_mode)) throw Error(f + " is not a file; make it a registries.conf file or remove it");
        if (static_cast<uint64_t>(st.st_size) > kMaxConfBytes)
            throw Error(f + " is larger than " + std::to_string(kMaxConfBytes) + " bytes; a registries.conf is a few KiB: fix the file");
        c.merge(read_file(f), f);
        spdlog::debug("read {}", f);
    }
    return c;
}

const RegistryEntry* RegistriesConf::match(const std::string& name) const {
    const RegistryEntry* best = nullptr;
    for (auto& r : registries) {
        if (!prefix_matches(r.prefix, name)) continue;
        // An exact prefix beats a wildcard; among each, the longest wins.
        auto rank = [](const RegistryEntry& e) {
            return (e.prefix.rfind("*.", 0) == 0 ? 0 : 1000000) + e.prefix.size();
        };
        if (!best || rank(r) > rank(*best)) best = &r;
    }
    return best;
}

std::vector<Endpoint> endpoints_for(const RegistriesConf& conf, const Reference& ref) {
    std::string name = ref.name();
    const RegistryEntry* e = conf.match(name);
    std::vector<Endpoint> out;
    if (!e) {
        out.push_back({ref.registry, ref.repository, false, false});
        return out;
    }
    if (e->blocked)
        throw Error("registry " + ref.registry + " is blocked by registries.conf (the [[registry]] with prefix \"" + e->prefix +
                    "\"); pull from another registry or change that file");
    // The part of the name below the prefix moves with it to a mirror or location.
    auto rewrite = [&](const std::string& location) {
        std::string full;
        if (e->prefix.rfind("*.", 0) == 0) full = name;  // a wildcard prefix does not rewrite
        else full = location + name.substr(e->prefix.size());
        std::string host, repo;
        split_location(full, host, repo);
        return std::make_pair(host, repo);
    };
    if (!e->mirror_by_digest_only || !ref.digest.empty())
        for (auto& m : e->mirrors) {
            auto [h, r] = rewrite(m.location);
            if (!r.empty()) out.push_back({h, r, m.insecure, true});
        }
    auto [h, r] = rewrite(e->location);
    if (r.empty()) throw Error("registries.conf: location \"" + e->location + "\" leaves " + name + " without a repository; fix that [[registry]]");
    out.push_back({h, r, e->insecure, false});
    return out;
}

std::vector<Reference> candidates_for(const RegistriesConf& conf, const Reference& short_ref) {
    std::vector<Reference> out;
    std::string key = short_ref.repository;
    if (auto it = conf.aliases.find(key); it != conf.aliases.end()) {
        Reference a = parse_reference(it->second);
        if (!a.qualified()) throw Error("registries.conf: alias \"" + key + "\" is not a fully qualified name; write it as HOST/REPOSITORY[:TAG]");
        if (it->second.find(':', it->second.find('/')) == std::string::npos || !short_ref.digest.empty() || short_ref.tag != "latest") {
            a.tag = short_ref.tag;
            a.digest = short_ref.digest;
        }
        out.push_back(a);
        return out;
    }
    std::vector<std::string> regs = conf.have_search ? conf.search : std::vector<std::string>{"docker.io"};
    if (regs.empty())
        throw Error("short name '" + short_ref.str() +
                    "' cannot be resolved: registries.conf lists no unqualified-search-registries; write the full name "
                    "(e.g. docker.io/library/" + short_ref.repository + ") or add a registry there");
    for (auto& r : regs) out.push_back(with_registry(short_ref, r));
    return out;
}

}  // namespace ocivm::registry
