#include "registry/client.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "registry/http.h"
#include "util/bounded_json.h"
#include "util/hash.h"
#include "util/log.h"
#include "util/paths.h"
#include "util/unique_fd.h"

namespace ocivm::registry {

using json = nlohmann::json;
namespace stdfs = std::filesystem;

namespace {

constexpr size_t kMaxErrorBody = 64 * 1024;  // a registry's error JSON, kept for the message
constexpr size_t kMaxToken = 64 * 1024;
constexpr int kAttempts = 5;  // per request: the first try and 4 retries

const char* kOciManifest = "application/vnd.oci.image.manifest.v1+json";
const char* kOciIndex = "application/vnd.oci.image.index.v1+json";
const char* kDockerManifest = "application/vnd.docker.distribution.manifest.v2+json";
const char* kDockerList = "application/vnd.docker.distribution.manifest.list.v2+json";

const std::set<std::string> kLayerTypes = {
    "application/vnd.oci.image.layer.v1.tar",          "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",     "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
};
const std::set<std::string> kConfigTypes = {"application/vnd.oci.image.config.v1+json",
                                            "application/vnd.docker.container.image.v1+json"};

std::string printable(const std::string& s) {
    std::string out;
    for (char c : s.substr(0, 200)) {
        if (c >= 0x20 && c < 0x7f) out += c;
        else {
            char b[8];
            std::snprintf(b, sizeof b, "\\x%02x", static_cast<unsigned char>(c));
            out += b;
        }
    }
    return out;
}

json parse_json(const std::string& text, const std::string& what) { return parse_bounded_json(text, what); }

std::string str_field(const json& o, const char* k, const std::string& what, bool required) {
    if (o.is_object()) {
        auto it = o.find(k);
        if (it != o.end() && !it->is_null()) {
            if (!it->is_string()) throw Error(what + ": \"" + k + "\" is not a string");
            return it->get<std::string>();
        }
    }
    if (required) throw Error(what + " has no \"" + k + "\"");
    return {};
}

struct Descriptor {
    std::string media_type, digest;
    uint64_t size = 0;
    json platform;
};

Descriptor descriptor(const json& d, const std::string& what) {
    if (!d.is_object()) throw Error(what + " is not a JSON object");
    Descriptor r;
    r.media_type = str_field(d, "mediaType", what, false);
    r.digest = str_field(d, "digest", what, true);
    if (!valid_digest(r.digest)) throw Error(what + " has the digest '" + printable(r.digest) + "' (ocivm accepts sha256 only)");
    auto s = d.find("size");
    if (s == d.end() || !s->is_number_unsigned()) throw Error(what + " has no size (a non-negative integer)");
    r.size = s->get<uint64_t>();
    if (auto p = d.find("platform"); p != d.end()) r.platform = *p;
    if (auto u = d.find("urls"); u != d.end() && !u->is_null())
        throw Error(what + " (" + r.digest + ") is a foreign layer to be fetched from other URLs; ocivm fetches only what the registry serves");
    return r;
}

std::string sha256_hex(const std::string& data) {
    Sha256 h;
    h.update(data);
    return h.hex();
}

std::string media_type_of(const HttpResponse& r, const json& body) {
    std::string ct = r.header("content-type");
    if (size_t semi = ct.find(';'); semi != std::string::npos) ct.resize(semi);
    while (!ct.empty() && ct.back() == ' ') ct.pop_back();
    std::string mt = str_field(body, "mediaType", "manifest", false);
    if (!mt.empty()) return mt;  // the document's own word beats a generic content type
    if (ct == "application/json" || ct.empty()) return body.is_object() && body.contains("manifests") ? kOciIndex : kOciManifest;
    return ct;
}

// certs.d as podman and docker read it: HOST[:PORT]/*.crt are CAs for that registry.
std::string extra_cas(const std::string& host) {
    std::string pem;
    for (const std::string& base : {ocivm_home() + "/certs.d/", std::string("/etc/containers/certs.d/"), std::string("/etc/docker/certs.d/")}) {
        std::error_code ec;
        stdfs::directory_iterator it(base + host, ec);
        if (ec) continue;
        for (auto& e : it) {
            std::string p = e.path().string();
            if (p.size() < 4 || p.compare(p.size() - 4, 4, ".crt") != 0 || !e.is_regular_file()) continue;
            pem += read_file(p) + "\n";
            spdlog::debug("trusting {} for {}", p, host);
        }
    }
    return pem;
}

std::string error_summary(const HttpResponse& r) {
    // {"errors":[{"code":"MANIFEST_UNKNOWN","message":"..."}]}
    try {
        json j = json::parse(r.body);
        if (j.is_object() && j.contains("errors") && j["errors"].is_array() && !j["errors"].empty()) {
            const json& e = j["errors"][0];
            std::string code = str_field(e, "code", "error", false), msg = str_field(e, "message", "error", false);
            return printable(code + (msg.empty() ? "" : ": " + msg));
        }
    } catch (...) {
    }
    return "HTTP " + std::to_string(r.status);
}

// One endpoint (registry host + repository) with its authentication state,
// shared by the threads fetching from it.
class Session {
public:
    Session(const Endpoint& ep, const PullOptions& opts) : ep_(ep), opts_(opts) {
        tls_.verify = opts.tls_verify && !ep.insecure;
        if (tls_.verify) tls_.extra_ca_pem = extra_cas(ep.host);
        scheme_ = "https://";
    }
    const Endpoint& endpoint() const { return ep_; }
    std::string where() const { return ep_.host + "/" + ep_.repository; }

    // One request, authenticated (a 401 is answered once per token), retried
    // with backoff on transient failures and on 429/5xx. `prepare` is called
    // before each try (a blob's Range header), `sink` gets the body.
    HttpResponse request(Http& http, const std::string& path, std::vector<std::string> headers, size_t max_body,
                         const std::function<std::vector<std::string>()>& prepare = {}, const Http::Sink& sink = {},
                         const std::atomic<bool>* cancel = nullptr) {
        std::string last;
        bool tried_auth = false;
        for (int attempt = 0;; ++attempt) {
            if (cancel && *cancel) throw Error("cancelled");
            std::vector<std::string> h = headers;
            if (prepare)
                for (auto& x : prepare()) h.push_back(x);
            std::string auth = auth_header();
            if (!auth.empty()) h.push_back("Authorization: " + auth);
            HttpResponse r;
            double wait = 0.25 * (1 << attempt);
            try {
                r = http.get(scheme_ + ep_.host + path, h, tls_, max_body, sink);
            } catch (const TransportError& e) {
                // An insecure registry may speak plain HTTP (as podman tries).
                if (ep_.insecure && scheme_ == "https://" && attempt == 0) {
                    spdlog::info("{}: HTTPS failed ({}); trying plain HTTP (insecure in registries.conf)", ep_.host, e.message);
                    scheme_ = "http://";
                    continue;
                }
                if (!e.transient || attempt + 1 >= kAttempts)
                    throw Error("cannot fetch " + scheme_ + ep_.host + path + ": " + e.message +
                                (e.transient ? " (gave up after " + std::to_string(kAttempts) + " tries)" : "") +
                                "; check that the registry is up and reachable");
                spdlog::info("{}: {}; retrying in {:.2f} s", ep_.host, e.message, wait);
                std::this_thread::sleep_for(std::chrono::duration<double>(wait));
                continue;
            }
            if (r.status == 401 && !tried_auth) {
                tried_auth = true;
                authenticate(http, r);
                continue;
            }
            if (r.status == 429 || (r.status >= 500 && r.status <= 599)) {
                if (attempt + 1 >= kAttempts)
                    throw Error(ep_.host + path + ": the registry answered " + error_summary(r) + " " + std::to_string(kAttempts) +
                                " times; try again later");
                if (std::string ra = r.header("retry-after"); !ra.empty() && ra.find_first_not_of("0123456789") == std::string::npos)
                    wait = std::min(30.0, std::max(wait, std::strtod(ra.c_str(), nullptr)));
                spdlog::info("{}: HTTP {}; retrying in {:.2f} s", ep_.host, r.status, wait);
                std::this_thread::sleep_for(std::chrono::duration<double>(wait));
                continue;
            }
            if (r.status == 401) {
                std::lock_guard<std::mutex> g(mu_);
                if (creds_)
                    throw AuthFailed("authentication to " + ep_.host + " failed: wrong user name or password (from " +
                                     creds_->source + "); check them, or log in again (podman login " + ep_.host + ")");
                throw AuthFailed(ep_.host + " wants credentials for " + ep_.repository +
                                 "; give them with --creds USER:PASS or --authfile FILE (or podman login " + ep_.host + ")");
            }
            if (r.status == 403)
                throw AuthFailed(ep_.host + " denies access to " + ep_.repository + " (" + error_summary(r) +
                                 "); check the name and that your account may pull it");
            return r;
        }
    }

private:
    std::string auth_header() {
        std::lock_guard<std::mutex> g(mu_);
        return auth_;
    }

    void load_creds() {
        if (creds_loaded_) return;
        creds_loaded_ = true;
        if (opts_.creds) creds_ = opts_.creds;
        else {
            // Credentials for the host actually contacted (a mirror has its own).
            auto files = auth_files(opts_.authfile);
            creds_ = lookup_credentials(files, ep_.host, ep_.repository, !opts_.authfile.empty());
        }
    }

    void authenticate(Http& http, const HttpResponse& r) {
        std::optional<Challenge> ch;
        std::string all = r.header("www-authenticate");
        size_t start = 0;
        while (start <= all.size()) {
            size_t nl = all.find('\n', start);
            auto c = parse_challenge(all.substr(start, nl == std::string::npos ? std::string::npos : nl - start));
            if (c && (c->scheme == "bearer" || c->scheme == "basic")) {
                ch = c;
                if (c->scheme == "bearer") break;
            }
            if (nl == std::string::npos) break;
            start = nl + 1;
        }
        std::lock_guard<std::mutex> g(mu_);
        load_creds();
        if (!ch) throw AuthFailed(ep_.host + " asks for authentication ocivm does not speak (WWW-Authenticate: " + printable(all) + ")");
        if (creds_ && scheme_ == "http://" && !ep_.insecure)
            throw AuthFailed(ep_.host + ": refusing to send credentials over plain HTTP");
        if (ch->scheme == "basic") {
            if (!creds_)
                throw AuthFailed(ep_.host + " wants credentials for " + ep_.repository +
                                 "; give them with --creds USER:PASS or --authfile FILE (or podman login " + ep_.host + ")");
            auth_ = "Basic " + base64_encode(creds_->user + ":" + creds_->password);
            return;
        }
        std::string realm = ch->params["realm"];
        if (realm.rfind("https://", 0) != 0 && realm.rfind("http://", 0) != 0)
            throw AuthFailed(ep_.host + " names a token service that is not an http(s) URL: '" + printable(realm) + "'");
        if (creds_ && realm.rfind("http://", 0) == 0 && !ep_.insecure)
            throw AuthFailed(ep_.host + ": refusing to send credentials to the plain-HTTP token service " + printable(realm));
        std::string url = realm + (realm.find('?') == std::string::npos ? "?" : "&");
        if (ch->params.count("service")) url += "service=" + url_escape(ch->params["service"]) + "&";
        url += "scope=" + url_escape("repository:" + ep_.repository + ":pull");
        std::vector<std::string> h;
        if (creds_) h.push_back("Authorization: Basic " + base64_encode(creds_->user + ":" + creds_->password));
        HttpResponse t;
        try {
            t = http.get(url, h, tls_, kMaxTokenResponse);
        } catch (const TransportError& e) {
            throw Error("cannot get a token from " + printable(realm) + ": " + e.message);
        }
        if (t.status == 401 || t.status == 403) {
            if (creds_)
                throw AuthFailed("authentication to " + ep_.host + " failed: wrong user name or password (from " + creds_->source +
                                 "); the token service " + printable(realm) + " answered " + error_summary(t));
            throw AuthFailed(ep_.host + " wants credentials for " + ep_.repository + "; give them with --creds or --authfile");
        }
        if (t.status != 200) throw Error("the token service " + printable(realm) + " answered " + error_summary(t));
        json j = parse_json(t.body, "the token from " + printable(realm));
        std::string token = str_field(j, "token", "token response", false);
        if (token.empty()) token = str_field(j, "access_token", "token response", false);
        if (token.empty() || token.size() > kMaxToken || token.find_first_of("\r\n") != std::string::npos)
            throw Error("the token service " + printable(realm) + " sent no usable token");
        auth_ = "Bearer " + token;
    }

    Endpoint ep_;
    const PullOptions& opts_;
    TlsSettings tls_;
    std::string scheme_;
    std::mutex mu_;
    std::string auth_;
    bool creds_loaded_ = false;
    std::optional<Credentials> creds_;
};

struct Manifest {
    std::string body, digest, media_type;
};

Manifest get_manifest(Session& s, Http& http, const std::string& ref, const std::string& expect_digest) {
    auto r = s.request(http, "/v2/" + s.endpoint().repository + "/manifests/" + ref,
                       {std::string("Accept: ") + kOciManifest + ", " + kOciIndex + ", " + kDockerManifest + ", " + kDockerList},
                       kMaxManifestBytes);
    if (r.status == 404)
        throw NotFound(s.where() + ":" + ref + " was not found (" + error_summary(r) + "); check the name and tag");
    if (r.status != 200) throw Error(s.where() + ": the manifest request for " + ref + " answered " + error_summary(r));
    Manifest m;
    m.body = r.body;
    m.digest = "sha256:" + sha256_hex(r.body);
    if (!expect_digest.empty() && m.digest != expect_digest)
        throw Error("manifest " + expect_digest + " from " + s.where() + " is corrupt: its content has the digest " + m.digest +
                    "; nothing was stored");
    if (std::string hd = r.header("docker-content-digest"); expect_digest.empty() && valid_digest(hd) && hd != m.digest)
        throw Error("the manifest of " + s.where() + ":" + ref + " has the digest " + m.digest + ", but the registry says " + hd +
                    "; nothing was stored");
    json j = parse_json(m.body, "manifest " + m.digest);
    m.media_type = media_type_of(r, j);
    return m;
}

Platform platform_of(const json& p) {
    Platform out;
    out.os = str_field(p, "os", "platform", false);
    out.architecture = str_field(p, "architecture", "platform", false);
    out.variant = str_field(p, "variant", "platform", false);
    return out;
}

// The staging layout: blobs land here by rename once verified.
struct Staging {
    std::string dir;
    std::string kept;  // partial transfers kept for the next pull (downloads/partial)
    std::string blob(const std::string& digest) const { return dir + "/blobs/sha256/" + digest.substr(7); }
};

class Fetcher {
public:
    Fetcher(Session& s, const PullOptions& o, const Staging& st, const PullProgressFn& p) : s_(s), opts_(o), st_(st), progress_(p) {}

    std::vector<BlobProgress> blobs;
    uint64_t bytes = 0;

    void run() {
        std::vector<size_t> order;
        for (size_t i = 0; i < blobs.size(); ++i) order.push_back(i);
        // Largest first: the long transfer starts at once, small ones fill in.
        std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return blobs[a].size > blobs[b].size; });
        std::atomic<size_t> next{0};
        unsigned n = std::max(1u, std::min<unsigned>(opts_.jobs, static_cast<unsigned>(blobs.size())));
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < n; ++t)
            threads.emplace_back([&] {
                try {
                    Http http;
                    for (size_t k; (k = next++) < order.size() && !cancel_;) fetch(http, order[k]);
                } catch (const std::exception& e) {
                    std::lock_guard<std::mutex> g(mu_);
                    if (!error_) error_ = std::current_exception();
                    cancel_ = true;
                }
            });
        for (auto& t : threads) t.join();
        if (error_) std::rethrow_exception(error_);
        report(true);
    }

private:
    void report(bool final) {
        std::lock_guard<std::mutex> g(mu_);
        auto now = std::chrono::steady_clock::now();
        if (!final && now - last_report_ < std::chrono::milliseconds(100)) return;
        last_report_ = now;
        if (progress_) progress_(blobs, final);
    }
    void set_state(size_t i, BlobProgress::State s) {
        {
            std::lock_guard<std::mutex> g(mu_);
            blobs[i].state = s;
            last_report_ = {};
        }
        report(false);
    }

    // Streams blob i into a temp file beside its final name, hashing every
    // byte as it arrives; an interrupted transfer resumes from what was
    // written (HTTP Range); the file is renamed to its digest only when size
    // and digest match.
    void fetch(Http& http, size_t i) {
        const std::string digest = blobs[i].digest;
        const uint64_t size = blobs[i].size;
        const std::string final_path = st_.blob(digest), part = final_path + ".partial";
        const std::string kept = st_.kept + "/" + digest.substr(7);
        auto hash = std::make_unique<Sha256>();
        uint64_t have = 0;
        UniqueFd fd;
        // What an earlier pull of this blob received before it failed: the
        // transfer continues from there. Those bytes are hashed with the
        // rest, so nothing is used unless the whole blob has its digest.
        if (::rename(kept.c_str(), part.c_str()) == 0) {
            fd = UniqueFd(::open(part.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
            if (!fd) throw_errno("cannot open " + part, errno);
            std::vector<char> buf(1 << 20);
            ssize_t n;
            while ((n = ::read(fd.get(), buf.data(), buf.size())) > 0 && have + static_cast<uint64_t>(n) <= size) {
                hash->update(buf.data(), static_cast<size_t>(n));
                have += static_cast<uint64_t>(n);
            }
            if (n != 0 || have >= size) {
                // Unreadable, or as long as the blob (or longer): start over.
                if (::ftruncate(fd.get(), 0) < 0 || ::lseek(fd.get(), 0, SEEK_SET) < 0) throw_errno("truncating " + part, errno);
                hash = std::make_unique<Sha256>();
                have = 0;
            } else {
                spdlog::info("blob {}: continuing the {} bytes an earlier pull received", digest, have);
                std::lock_guard<std::mutex> g(mu_);
                blobs[i].done = have;
            }
        } else {
            fd = UniqueFd(::open(part.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
            if (!fd) throw_errno("cannot create " + part, errno);
        }
        try {
            fetch_into(http, i, fd, part, hash, have);
        } catch (...) {
            // A transfer that broke off (not a blob found wrong) is kept for
            // the next pull; a corrupt or over-long one was removed already.
            if (have > 0 && ::access(part.c_str(), F_OK) == 0) {
                try {
                    make_dirs(st_.kept, 0700);
                    if (::rename(part.c_str(), kept.c_str()) == 0)
                        spdlog::info("blob {}: kept {} bytes for the next pull", digest, have);
                } catch (const Error&) {
                }
            }
            throw;
        }
    }

    void fetch_into(Http& http, size_t i, UniqueFd& fd, const std::string& part, std::unique_ptr<Sha256>& hash, uint64_t& have) {
        const std::string digest = blobs[i].digest;
        const uint64_t size = blobs[i].size;
        const std::string final_path = st_.blob(digest);
        std::string err_body;
        bool first = true;
        set_state(i, BlobProgress::State::Fetching);
        auto prepare = [&]() -> std::vector<std::string> {
            first = true;
            err_body.clear();
            if (have > 0) {
                spdlog::info("blob {}: resuming at byte {} of {}", digest, have, size);
                std::lock_guard<std::mutex> g(mu_);
                ++blobs[i].resumes;
                return {"Range: bytes=" + std::to_string(have) + "-"};
            }
            return {};
        };
        auto sink = [&](const HttpResponse& head, const char* data, size_t n) -> bool {
            if (cancel_) return false;
            if (head.status != 200 && head.status != 206) {
                if (err_body.size() + n > kMaxErrorBody) return false;
                err_body.append(data, n);
                return true;
            }
            if (first) {
                first = false;
                bool continues = false;
                if (head.status == 206) {
                    // Content-Range: bytes START-END/TOTAL must start where we are.
                    std::string cr = head.header("content-range");
                    unsigned long long from = 0;
                    continues = std::sscanf(cr.c_str(), "bytes %llu-", &from) == 1 && from == have;
                    if (!continues) spdlog::info("blob {}: range answer '{}' does not continue at {}; starting over", digest, printable(cr), have);
                }
                if (!continues && have > 0) {
                    // The server sent the whole blob again: start over.
                    if (::ftruncate(fd.get(), 0) < 0 || ::lseek(fd.get(), 0, SEEK_SET) < 0) return false;
                    hash = std::make_unique<Sha256>();
                    std::lock_guard<std::mutex> g(mu_);
                    bytes -= have;
                    blobs[i].done = 0;
                    have = 0;
                }
            }
            if (have + n > size) {
                too_long_ = true;
                return false;
            }
            hash->update(data, n);
            for (size_t off = 0; off < n;) {
                ssize_t w = ::write(fd.get(), data + off, n - off);
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) return false;
                off += static_cast<size_t>(w);
            }
            have += n;
            {
                std::lock_guard<std::mutex> g(mu_);
                blobs[i].done = have;
                bytes += n;
            }
            report(false);
            return true;
        };
        HttpResponse r;
        for (int round = 0;; ++round) {
            too_long_ = false;
            try {
                r = s_.request(http, "/v2/" + s_.endpoint().repository + "/blobs/" + digest, {}, 0, prepare, sink, &cancel_);
            } catch (const Error&) {
                if (too_long_) break;
                throw;
            }
            // A transfer the server ended early without an error from curl
            // (no Content-Length, connection closed): resume it.
            if ((r.status == 200 || r.status == 206) && have < size && round + 1 < kAttempts) continue;
            break;
        }
        if (too_long_) {
            ::unlink(part.c_str());
            throw Error("blob " + digest + " from " + s_.where() + " is longer than the " + std::to_string(size) +
                        " bytes its manifest says; it was discarded and nothing was stored");
        }
        if (r.status == 404) throw Error("blob " + digest + " is missing on " + s_.where() + " (" + error_summary(HttpResponse{404, {}, err_body, {}}) + ")");
        if (r.status != 200 && r.status != 206)
            throw Error("blob " + digest + " from " + s_.where() + ": the registry answered HTTP " + std::to_string(r.status));
        std::string got = "sha256:" + hash->hex();
        if (have != size || got != digest) {
            ::unlink(part.c_str());
            throw Error("blob " + digest + " from " + s_.where() + " is corrupt: its " + std::to_string(have) + " bytes have the digest " +
                        got + (have != size ? " (the manifest says " + std::to_string(size) + " bytes)" : "") +
                        "; it was discarded and nothing was stored");
        }
        // No fsync: the staged file lives until the importer has copied it
        // (and checked it again); after a crash it is garbage the next pull
        // removes. Forcing 100s of MB to disk here only slowed the pull.
        if (::rename(part.c_str(), final_path.c_str()) < 0) throw_errno("storing " + final_path, errno);
        set_state(i, BlobProgress::State::Done);
    }

    Session& s_;
    const PullOptions& opts_;
    const Staging& st_;
    const PullProgressFn& progress_;
    std::mutex mu_;
    std::chrono::steady_clock::time_point last_report_{};
    std::atomic<bool> cancel_{false};
    std::exception_ptr error_;
    std::atomic<bool> too_long_{false};
};

bool is_index_type(const std::string& mt) { return mt == kOciIndex || mt == kDockerList; }

void write_small(const std::string& path, const std::string& data) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd) throw_errno("cannot create " + path, errno);
    for (size_t off = 0; off < data.size();) {
        ssize_t w = ::write(fd.get(), data.data() + off, data.size() - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) throw_errno("writing " + path, errno);
        off += static_cast<size_t>(w);
    }
}

StagedImage fetch_from(const Endpoint& ep, const Reference& ref, const PullOptions& opts, const std::string& staging_root,
                       const PullProgressFn& progress) {
    Session s(ep, opts);
    Http http;
    Manifest m = get_manifest(s, http, ref.digest.empty() ? ref.tag : ref.digest, ref.digest);
    if (m.media_type.rfind("application/vnd.docker.distribution.manifest.v1", 0) == 0)
        throw Error(ref.str() + " has a Docker schema 1 manifest, which is deprecated and not supported; push the image again with a current tool");
    std::string chosen_platform;
    if (is_index_type(m.media_type)) {
        json idx = parse_json(m.body, "image index " + m.digest);
        const std::string what = "image index " + m.digest;
        auto it = idx.is_object() ? idx.find("manifests") : idx.end();
        if (it == idx.end() || !it->is_array()) throw Error(what + " has no \"manifests\" array");
        if (it->size() > 4096) throw Error(what + " lists more than 4096 manifests");
        std::optional<Descriptor> pick;
        std::vector<std::string> seen;
        for (auto& e : *it) {
            Descriptor d = descriptor(e, what + ": an entry");
            if (d.platform.is_null()) continue;
            if (!d.platform.is_object()) throw Error(what + ": a platform is not a JSON object");
            Platform p = platform_of(d.platform);
            seen.push_back(printable(p.str()));
            if (p.os != opts.platform.os || p.architecture != opts.platform.architecture) continue;
            if (!opts.platform.variant.empty() && p.variant != opts.platform.variant) continue;
            if (!d.media_type.empty() && d.media_type != kOciManifest && d.media_type != kDockerManifest) continue;
            if (!pick) {
                pick = d;
                chosen_platform = p.str();
            }
        }
        if (!pick) {
            std::string list;
            for (auto& p : seen) list += (list.empty() ? "" : ", ") + p;
            throw Error(ref.str() + " has no image for " + opts.platform.str() + " (it has: " + (list.empty() ? "none" : list) +
                        "); choose one with --platform");
        }
        if (pick->size > kMaxManifestBytes) throw Error(what + ": the manifest for " + chosen_platform + " is larger than ocivm accepts");
        m = get_manifest(s, http, pick->digest, pick->digest);
        if (is_index_type(m.media_type)) throw Error(what + " points at another index for " + chosen_platform + "; ocivm reads one level");
    }
    if (m.media_type != kOciManifest && m.media_type != kDockerManifest)
        throw Error(ref.str() + " is not a container image: its manifest has the media type '" + printable(m.media_type) + "'");
    json mj = parse_json(m.body, "manifest " + m.digest);
    const std::string mwhat = "manifest " + m.digest;
    if (!mj.is_object() || !mj.contains("config")) throw Error(mwhat + " has no config");
    Descriptor cfg = descriptor(mj["config"], mwhat + ": its config");
    if (!cfg.media_type.empty() && !kConfigTypes.count(cfg.media_type))
        throw Error(ref.str() + " is not a container image: its config has the media type '" + printable(cfg.media_type) +
                    "' (an artifact?)");
    if (cfg.size > kMaxConfigBytes) throw Error(mwhat + ": the config is larger than the " + std::to_string(kMaxConfigBytes) + " bytes ocivm accepts");
    auto li = mj.find("layers");
    if (li == mj.end() || !li->is_array()) throw Error(mwhat + " has no \"layers\" array");
    if (li->size() > kMaxLayers) throw Error(mwhat + " lists " + std::to_string(li->size()) + " layers; ocivm takes at most " + std::to_string(kMaxLayers));
    std::vector<Descriptor> layers;
    for (size_t k = 0; k < li->size(); ++k) {
        std::string lw = mwhat + ": layer " + std::to_string(k + 1);
        Descriptor d = descriptor((*li)[k], lw);
        if (d.media_type.find("nondistributable") != std::string::npos || d.media_type.find("foreign") != std::string::npos)
            throw Error(ref.str() + ": layer " + std::to_string(k + 1) + " (" + d.digest + ") is non-distributable ('" + printable(d.media_type) +
                        "'): its licence keeps it off registries, and ocivm does not fetch it from elsewhere; build the image without it");
        if (!kLayerTypes.count(d.media_type))
            throw Error(ref.str() + ": layer " + std::to_string(k + 1) + " has the media type '" + printable(d.media_type) +
                        "', not a tar, gzip or zstd image layer (encrypted, or an artifact?)");
        layers.push_back(d);
    }

    // The staging layout.
    static std::atomic<unsigned> counter{0};
    std::string dir = staging_root + "/pull-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    make_dirs(staging_root, 0700);
    std::error_code ec;
    stdfs::remove_all(dir, ec);
    make_dirs(dir + "/blobs/sha256", 0700);
    StagedImage img(dir);
    Staging st{dir, staging_root + "/partial"};

    // The config first (small, and it says whether the image is for us).
    Fetcher f(s, opts, st, progress);
    std::string cfg_text;
    if (std::string p = opts.stored_blob ? opts.stored_blob(cfg.digest) : ""; !p.empty()) {
        // The store's copy, checked again (a few KiB) before it is used.
        cfg_text = read_file(p);
        if (cfg_text.size() != cfg.size || "sha256:" + sha256_hex(cfg_text) != cfg.digest) cfg_text.clear();
        else write_small(st.blob(cfg.digest), cfg_text);
    }
    if (cfg_text.empty()) {
        BlobProgress b{cfg.digest, cfg.size};
        b.config = true;
        f.blobs.push_back(b);
        f.run();
        cfg_text = read_file(st.blob(cfg.digest));
    }
    json cj = parse_json(cfg_text, "config " + cfg.digest);
    if (!cj.is_object()) throw Error("config " + cfg.digest + " is not a JSON object");
    Platform cp;
    cp.os = str_field(cj, "os", "config", false);
    cp.architecture = str_field(cj, "architecture", "config", false);
    cp.variant = str_field(cj, "variant", "config", false);
    if ((!cp.os.empty() && cp.os != opts.platform.os) || (!cp.architecture.empty() && cp.architecture != opts.platform.architecture))
        throw Error(ref.str() + " is an image for " + printable(cp.str()) + ", not " + opts.platform.str() +
                    (chosen_platform.empty() ? "; choose another image or --platform" : ""));

    Fetcher lf(s, opts, st, progress);
    std::set<std::string> dup;
    for (auto& d : layers) {
        if (!dup.insert(d.digest).second) continue;
        BlobProgress b{d.digest, d.size};
        if (opts.stored_blob && !opts.stored_blob(d.digest).empty()) b.state = BlobProgress::State::Skipped;
        lf.blobs.push_back(b);
    }
    std::vector<BlobProgress> todo;
    std::vector<BlobProgress> skipped;
    for (auto& b : lf.blobs) (b.state == BlobProgress::State::Skipped ? skipped : todo).push_back(b);
    lf.blobs = todo;
    if (progress) {
        std::vector<BlobProgress> all = skipped;
        all.insert(all.end(), todo.begin(), todo.end());
        progress(all, false);
    }
    if (!todo.empty()) lf.run();
    if (progress) {
        std::vector<BlobProgress> all = skipped;
        all.insert(all.end(), lf.blobs.begin(), lf.blobs.end());
        progress(all, true);
    }
    img.blobs_fetched = static_cast<unsigned>(todo.size() + f.blobs.size());
    img.blobs_skipped = static_cast<unsigned>(skipped.size());
    img.bytes_fetched = f.bytes + lf.bytes;

    write_small(st.blob(m.digest), m.body);
    json index = {{"schemaVersion", 2},
                  {"manifests", json::array({{{"mediaType", m.media_type}, {"digest", m.digest}, {"size", m.body.size()}}})}};
    write_small(dir + "/index.json", index.dump());
    write_small(dir + "/oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}");
    img.ref = ref;
    img.manifest_digest = m.digest;
    img.manifest_media_type = m.media_type;
    img.platform = cp.str();
    return img;
}

}  // namespace

StagedImage::~StagedImage() {
    if (dir_.empty()) return;
    std::error_code ec;
    stdfs::remove_all(dir_, ec);
    if (ec) spdlog::warn("cannot remove {}: {}", dir_, ec.message());
}

Platform parse_platform(const std::string& s) {
    Platform p;
    std::vector<std::string> parts;
    size_t b = 0;
    for (;;) {
        size_t e = s.find('/', b);
        parts.push_back(s.substr(b, e == std::string::npos ? std::string::npos : e - b));
        if (e == std::string::npos) break;
        b = e + 1;
    }
    auto ok = [](const std::string& x) {
        return !x.empty() && x.size() <= 32 && std::isalnum(static_cast<unsigned char>(x[0])) && x.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_-.") == std::string::npos;
    };
    if (parts.size() < 2 || parts.size() > 3 || !ok(parts[0]) || !ok(parts[1]) || (parts.size() == 3 && !ok(parts[2])))
        throw Error("invalid --platform '" + printable(s) + "': write OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8");
    p.os = parts[0];
    p.architecture = parts[1];
    if (parts.size() == 3) p.variant = parts[2];
    return p;
}

StagedImage fetch_image(const Reference& ref, const RegistriesConf& conf, const PullOptions& opts, const std::string& staging_root,
                        const PullProgressFn& progress) {
    http_global_init();
    std::vector<Endpoint> eps = endpoints_for(conf, ref);
    std::string errors;
    for (size_t k = 0; k < eps.size(); ++k) {
        try {
            StagedImage img = fetch_from(eps[k], ref, opts, staging_root, progress);
            img.ref = ref;
            return img;
        } catch (const Error& e) {
            // A mirror that fails is skipped; the last endpoint's error is the answer.
            if (k + 1 == eps.size()) {
                if (eps.size() == 1) throw;
                if (dynamic_cast<const NotFound*>(&e)) throw NotFound(std::string(e.what()) + errors);
                if (dynamic_cast<const AuthFailed*>(&e)) throw AuthFailed(std::string(e.what()) + errors);
                throw Error(std::string(e.what()) + errors);
            }
            spdlog::warn("mirror {}/{} failed: {}", eps[k].host, eps[k].repository, e.what());
            errors += " (mirror " + eps[k].host + ": " + e.what() + ")";
        }
    }
    throw Error("no endpoint for " + ref.str());
}

}  // namespace ocivm::registry
