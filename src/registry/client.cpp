#include "registry/client.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "registry/http.h"
#include "util/bounded_json.h"
#include "util/hash.h"
#include "util/io.h"
#include "util/log.h"
#include "util/paths.h"
#include "util/printable.h"
#include "util/unique_fd.h"

namespace ocivm::registry {

using json = nlohmann::json;
namespace stdfs = std::filesystem;

namespace {

// The /v2/ ping's body is not used: "{}" or a short error.
constexpr size_t kMaxPingBody = 16 * 1024;
constexpr size_t kMaxToken = 64 * 1024;
constexpr int kAttempts = 5;  // per request: the first try and 4 retries

const char* kOciManifest = "application/vnd.oci.image.manifest.v1+json";
const char* kOciIndex = "application/vnd.oci.image.index.v1+json";
const char* kDockerManifest = "application/vnd.docker.distribution.manifest.v2+json";
const char* kDockerList = "application/vnd.docker.distribution.manifest.list.v2+json";

// What to do about an image the registry serves wrongly: nothing ocivm can fix.
const char* const kMalformed = "the image in the registry is malformed: tell its publisher, or pull another image";
const char* const kCorrupt =
    "the registry, or something between it and you, changed the data; pull again, and if it stays wrong, tell the registry's operator";

const std::set<std::string> kLayerTypes = {
    "application/vnd.oci.image.layer.v1.tar",          "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",     "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
};
const std::set<std::string> kConfigTypes = {"application/vnd.oci.image.config.v1+json",
                                            "application/vnd.docker.container.image.v1+json"};

// The registry's JSON (parse_bounded_json sanitises the bytes a parse
// error quotes).
json parse_json(const std::string& text, const std::string& what) {
    try {
        return parse_bounded_json(text, what);
    } catch (const Error& e) {
        throw Error(std::string(e.what()) + "; " + kMalformed);
    }
}

std::string str_field(const json& o, const char* k, const std::string& what, bool required) {
    if (o.is_object()) {
        auto it = o.find(k);
        if (it != o.end() && !it->is_null()) {
            if (!it->is_string()) throw Error(what + ": \"" + k + "\" is not a string; " + kMalformed);
            return it->get<std::string>();
        }
    }
    if (required) throw Error(what + " has no \"" + k + "\"; " + kMalformed);
    return {};
}

// START of "bytes START-END/TOTAL" (RFC 9110 Content-Range), if it is one.
std::optional<uint64_t> content_range_start(const std::string& cr) {
    if (cr.rfind("bytes ", 0) != 0) return std::nullopt;
    size_t dash = cr.find('-', 6);
    if (dash == std::string::npos) return std::nullopt;
    return parse_u64(cr.substr(6, dash - 6));
}

struct Descriptor {
    std::string media_type, digest;
    uint64_t size = 0;
    json platform;
};

Descriptor descriptor(const json& d, const std::string& what) {
    if (!d.is_object()) throw Error(what + " is not a JSON object; " + kMalformed);
    Descriptor r;
    r.media_type = str_field(d, "mediaType", what, false);
    r.digest = str_field(d, "digest", what, true);
    if (!valid_digest(r.digest))
        throw Error(what + " has the digest '" + printable(r.digest) + "' (ocivm accepts sha256 only); " + kMalformed);
    auto s = d.find("size");
    if (s == d.end() || !s->is_number_unsigned()) throw Error(what + " has no size (a non-negative integer); " + kMalformed);
    r.size = s->get<uint64_t>();
    if (auto p = d.find("platform"); p != d.end()) r.platform = *p;
    if (auto u = d.find("urls"); u != d.end() && !u->is_null())
        throw Error(what + " (" + r.digest +
                    ") is a foreign layer to be fetched from other URLs; ocivm fetches only what the registry serves: pull an image without foreign layers");
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

std::string error_summary(long status, const std::string& body) {
    // {"errors":[{"code":"MANIFEST_UNKNOWN","message":"..."}]}
    try {
        json j = parse_bounded_json(body.size() > kMaxErrorBody ? body.substr(0, kMaxErrorBody) : body, "error");
        if (j.is_object() && j.contains("errors") && j["errors"].is_array() && !j["errors"].empty()) {
            const json& e = j["errors"][0];
            std::string code = str_field(e, "code", "error", false), msg = str_field(e, "message", "error", false);
            return printable(code + (msg.empty() ? "" : ": " + msg));
        }
    } catch (...) {
    }
    return "HTTP " + std::to_string(status);
}
std::string error_summary(const HttpResponse& r) { return error_summary(r.status, r.body); }

void sleep_for(double seconds) { std::this_thread::sleep_for(std::chrono::duration<double>(seconds)); }

// One endpoint (registry host + repository) with its authentication state,
// shared by the threads fetching from it.
class Session {
public:
    Session(const Endpoint& ep, const PullOptions& opts) : ep_(ep), opts_(opts) {
        tls_.verify = opts.tls_verify && !ep.insecure;
        tls_.allow_plain_http = ep.insecure;
        if (tls_.verify) tls_.extra_ca_pem = extra_cas(ep.host);
    }
    const Endpoint& endpoint() const { return ep_; }
    std::string where() const { return ep_.host + "/" + ep_.repository; }

    // One request, authenticated (a 401 is answered once per token), retried
    // with backoff on transient failures and on 429/5xx. `prepare` is called
    // before each try (a blob's Range header), `sink` gets the body.
    HttpResponse request(Http& http, const std::string& path, std::vector<std::string> headers, size_t max_body,
                         const std::function<std::vector<std::string>()>& prepare = {}, const Http::Sink& sink = {},
                         const std::atomic<bool>* cancel = nullptr) {
        const std::string url = scheme(http, cancel) + ep_.host + path;
        bool tried_auth = false;
        for (int attempt = 0;; ++attempt) {
            if (cancel && *cancel) throw Error("cancelled: another blob of this pull failed");
            std::vector<std::string> h = headers;
            if (prepare)
                for (auto& x : prepare()) h.push_back(x);
            std::string auth = auth_header();
            if (!auth.empty()) h.push_back("Authorization: " + auth);
            HttpResponse r;
            double wait = 0.25 * (1 << attempt);
            try {
                r = http.get(url, h, tls_, max_body, sink, cancel);
            } catch (const TransportError& e) {
                if (!e.transient() || attempt + 1 >= kAttempts)
                    throw Error("cannot fetch " + url + ": " + e.reason() +
                                (e.transient() ? " (gave up after " + std::to_string(kAttempts) + " tries)" : "") + "; " + e.advice());
                spdlog::info("{}: {}; retrying in {:.2f} s", ep_.host, e.reason(), wait);
                sleep_for(wait);
                continue;
            }
            if (r.status == 401) check_challenger(r);
            if (r.status == 401 && !tried_auth) {
                tried_auth = true;
                authenticate(http, r);
                continue;
            }
            if (r.status == 429 || (r.status >= 500 && r.status <= 599)) {
                if (attempt + 1 >= kAttempts)
                    throw Error(ep_.host + path + ": the registry answered " + error_summary(r) + " " + std::to_string(kAttempts) +
                                " times (it is overloaded or failing); try again later");
                if (auto ra = parse_u64(r.header("retry-after")))
                    wait = std::min(30.0, std::max(wait, static_cast<double>(std::min<uint64_t>(*ra, 30))));
                spdlog::info("{}: HTTP {}; retrying in {:.2f} s", ep_.host, r.status, wait);
                sleep_for(wait);
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
    // A 401 is answered with credentials only when the registry itself sent
    // it. A redirect may lead anywhere (a blob CDN, or a host the registry's
    // attacker picked); a challenge from there would name a token service
    // of its choosing, and the credentials would go to it. As
    // containers/image, the challenge comes from the registry, and a token
    // service on another host is trusted only because the registry named it.
    void check_challenger(const HttpResponse& r) {
        const std::string got = url_authority(r.effective_url);
        if (!got.empty() && got == url_authority(scheme_ + ep_.host + "/")) return;
        const std::string shown = printable(got.empty() ? r.effective_url : got, 300);
        throw AuthFailed(shown + ", where " + ep_.host + " redirected, asks for credentials; ocivm sends credentials only to the registry and its token service. "
                         "Tell the registry's operator, or pull from another registry");
    }

    // The scheme is decided once per session, before the first request, by
    // a ping of /v2/ (as podman does) and never changes afterwards: a
    // connection reset in the middle of a pull must not move the rest of it
    // to plain HTTP. Only an insecure registry may speak plain HTTP at all,
    // and only if HTTPS fails and plain HTTP gets a registry's answer to the
    // ping (200 or 401): an HTTPS server answers plain HTTP with 400 (Go's
    // does), which must not turn a reset HTTPS ping into a plain-HTTP pull.
    const std::string& scheme(Http& http, const std::atomic<bool>* cancel) {
        std::call_once(scheme_once_, [&] { scheme_ = ep_.insecure ? probe_scheme(http, cancel) : "https://"; });
        return scheme_;
    }

    std::string probe_scheme(Http& http, const std::atomic<bool>* cancel) {
        std::string why_https, why_http;
        for (int attempt = 0; attempt < kAttempts; ++attempt) {
            if (attempt > 0) sleep_for(0.25 * (1 << (attempt - 1)));
            try {
                auto r = http.get("https://" + ep_.host + "/v2/", {}, tls_, kMaxPingBody, {}, cancel);
                spdlog::debug("{}: HTTPS answers (HTTP {})", ep_.host, r.status);
                return "https://";
            } catch (const TransportError& e) {
                why_https = e.reason();
            }
            try {
                auto r = http.get("http://" + ep_.host + "/v2/", {}, tls_, kMaxPingBody, {}, cancel);
                if (r.status == 200 || r.status == 401) {
                    spdlog::info("{}: no HTTPS ({}); using plain HTTP (insecure in registries.conf)", ep_.host, why_https);
                    return "http://";
                }
                why_http = "HTTP " + std::to_string(r.status) + " to the ping of /v2/, not a registry's answer";
            } catch (const TransportError& e) {
                why_http = e.reason();
            }
        }
        throw Error("cannot reach the registry " + ep_.host + " (insecure in registries.conf) over HTTPS (" + why_https +
                    ") or plain HTTP (" + why_http + "), " + std::to_string(kAttempts) +
                    " tries each; check that the registry is up and reachable");
    }

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
        if (!ch)
            throw AuthFailed(ep_.host + " asks for authentication ocivm does not speak (WWW-Authenticate: " + printable(all) +
                             "); ocivm speaks Basic and Bearer: pull with podman, or from another registry");
        if (creds_ && scheme_ == "http://" && !ep_.insecure)
            throw AuthFailed(ep_.host + ": refusing to send credentials over plain HTTP; use the registry over HTTPS");
        if (ch->scheme == "basic") {
            if (!creds_)
                throw AuthFailed(ep_.host + " wants credentials for " + ep_.repository +
                                 "; give them with --creds USER:PASS or --authfile FILE (or podman login " + ep_.host + ")");
            auth_ = "Basic " + base64_encode(creds_->user + ":" + creds_->password);
            return;
        }
        auth_ = "Bearer " + fetch_token(http, *ch);
    }

    // The bearer token flow (distribution's token authentication): the
    // realm named in the challenge hands out a token for our scope.
    std::string fetch_token(Http& http, Challenge& ch) {
        const std::string realm = ch.params["realm"], shown = printable(realm);
        if (realm.rfind("https://", 0) != 0 && realm.rfind("http://", 0) != 0)
            throw AuthFailed(ep_.host + " names a token service that is not an http(s) URL: '" + shown + "'; " + kMalformed);
        if (creds_ && realm.rfind("http://", 0) == 0 && !ep_.insecure)
            throw AuthFailed(ep_.host + ": refusing to send credentials to the plain-HTTP token service " + shown +
                             "; mark the registry insecure in registries.conf only if you trust the network to it");
        std::string url = realm + (realm.find('?') == std::string::npos ? "?" : "&");
        if (ch.params.count("service")) url += "service=" + url_escape(ch.params["service"]) + "&";
        url += "scope=" + url_escape("repository:" + ep_.repository + ":pull");
        std::vector<std::string> h;
        if (creds_) h.push_back("Authorization: Basic " + base64_encode(creds_->user + ":" + creds_->password));
        HttpResponse t;
        try {
            t = http.get(url, h, tls_, kMaxTokenResponse);
        } catch (const TransportError& e) {
            throw Error("cannot get a token from " + shown + " for " + ep_.host + ": " + e.reason() + "; " + e.advice());
        }
        if (t.status == 401 || t.status == 403) {
            if (creds_)
                throw AuthFailed("authentication to " + ep_.host + " failed: wrong user name or password (from " + creds_->source +
                                 "); the token service " + shown + " answered " + error_summary(t) + "; check them, or log in again");
            throw AuthFailed(ep_.host + " wants credentials for " + ep_.repository + "; give them with --creds or --authfile");
        }
        const std::string bad = "the token service " + shown + " of " + ep_.host;
        if (t.status != 200) throw Error(bad + " answered " + error_summary(t) + "; try again later, or tell the registry's operator");
        json j = parse_json(t.body, "the token from " + shown);
        std::string token = str_field(j, "token", "token response", false);
        if (token.empty()) token = str_field(j, "access_token", "token response", false);
        // It goes into a header line: visible ASCII only (RFC 6750 b64token is narrower still).
        auto visible = [](char c) { return c > 0x20 && c < 0x7f; };
        if (token.empty() || token.size() > kMaxToken || !std::all_of(token.begin(), token.end(), visible))
            throw Error(bad + " sent no usable token; tell the registry's operator");
        return token;
    }

    Endpoint ep_;
    const PullOptions& opts_;
    TlsSettings tls_;
    std::once_flag scheme_once_;
    std::string scheme_;  // written once, in scheme()
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
    if (r.status != 200)
        throw Error(s.where() + ": the manifest request for " + ref + " answered " + error_summary(r) +
                    "; check the name, or tell the registry's operator");
    Manifest m;
    m.body = r.body;
    m.digest = "sha256:" + sha256_hex(r.body);
    if (!expect_digest.empty() && m.digest != expect_digest)
        throw Error("manifest " + expect_digest + " from " + s.where() + " is corrupt: its content has the digest " + m.digest +
                    "; nothing was stored; " + kCorrupt);
    if (std::string hd = r.header("docker-content-digest"); expect_digest.empty() && valid_digest(hd) && hd != m.digest)
        throw Error("the manifest of " + s.where() + ":" + ref + " has the digest " + m.digest + ", but the registry says " + hd +
                    "; nothing was stored; " + kCorrupt);
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

// One blob's transfer: what its tries and curl's callbacks for it share.
// Each transfer has its own (one thread's), so one blob's failure never
// reads as another's.
struct BlobTransfer {
    size_t index = 0;
    std::string digest;
    uint64_t size = 0;
    std::string final_path, part, kept;
    UniqueFd fd;
    std::unique_ptr<Sha256> hash = std::make_unique<Sha256>();
    uint64_t have = 0;        // bytes in `part`, all hashed; never more than size
    bool resumed = false;     // some of them came from an earlier try or pull
    bool too_long = false;    // the registry sent more than `size` bytes
    bool start_over = false;  // a range answer that does not continue: fetch again from byte 0
    int write_errno = 0;      // writing `part` failed
    bool first_chunk = true;  // of the current response
    std::string err_body;     // of an error response
};

class Fetcher {
public:
    Fetcher(Session& s, const PullOptions& o, const Staging& st, const PullProgressFn& p) : s_(s), opts_(o), st_(st), progress_(p) {}

    std::vector<BlobProgress> blobs;
    uint64_t bytes = 0;  // received for blobs, those discarded included

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
                } catch (...) {
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
    void set_done(const BlobTransfer& t, uint64_t received) {
        {
            std::lock_guard<std::mutex> g(mu_);
            blobs[t.index].done = t.have;
            bytes += received;
        }
        report(false);
    }

    // Streams blob i into a temp file beside its final name, hashing every
    // byte as it arrives; an interrupted transfer resumes from what was
    // written (HTTP Range); the file is renamed to its digest only when size
    // and digest match. A resumed transfer that ends with the wrong digest
    // is fetched once more from byte 0: the part from before (perhaps another
    // registry's, or written by anyone who could write there) may be what
    // was wrong, and must not make every later pull of this blob fail.
    void fetch(Http& http, size_t i) {
        BlobTransfer t = begin_transfer(i);
        for (int pass = 0;; ++pass) {
            try {
                receive(http, t);
            } catch (...) {
                keep_partial(t);
                throw;
            }
            std::string got = "sha256:" + t.hash->hex();
            if (t.have == t.size && got == t.digest) break;
            ::unlink(t.part.c_str());
            if (t.resumed && pass == 0) {
                spdlog::warn("blob {} from {}: the resumed transfer has the digest {}; discarding it and fetching the whole blob again",
                             t.digest, s_.where(), got);
                t.fd = create_part(t.part);
                restart(t);
                continue;
            }
            throw Error("blob " + t.digest + " from " + s_.where() + " is corrupt: its " + std::to_string(t.have) + " bytes have the digest " +
                        got + (t.have != t.size ? " (the manifest says " + std::to_string(t.size) + " bytes)" : "") +
                        "; it was discarded and nothing was stored; " + kCorrupt);
        }
        // No fsync: the staged file lives until the importer has copied it
        // (and checked it again); after a crash it is garbage the next pull
        // removes. Forcing 100s of MB to disk here only slowed the pull.
        if (::rename(t.part.c_str(), t.final_path.c_str()) < 0)
            throw_errno("storing " + t.final_path, errno, "check the free space and permissions of " + st_.dir);
        set_state(i, BlobProgress::State::Done);
    }

    static UniqueFd create_part(const std::string& part) {
        UniqueFd fd(::open(part.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
        if (!fd) throw_errno("cannot create " + part, errno, "check the free space and permissions of its directory");
        return fd;
    }

    // The transfer of blob i, continuing what an earlier pull of the blob
    // received before it failed. Those bytes are hashed with the rest, so
    // nothing is used unless the whole blob has its digest.
    BlobTransfer begin_transfer(size_t i) {
        BlobTransfer t;
        t.index = i;
        t.digest = blobs[i].digest;
        t.size = blobs[i].size;
        t.final_path = st_.blob(t.digest);
        t.part = t.final_path + ".partial";
        t.kept = st_.kept + "/" + t.digest.substr(7);
        if (::rename(t.kept.c_str(), t.part.c_str()) != 0) {
            t.fd = create_part(t.part);
            return t;
        }
        t.fd = UniqueFd(::open(t.part.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
        if (!t.fd) throw_errno("cannot open " + t.part, errno, "check the permissions of " + st_.dir);
        std::vector<char> buf(1 << 20);
        ssize_t n;
        while ((n = ::read(t.fd.get(), buf.data(), buf.size())) > 0 && static_cast<uint64_t>(n) <= t.size - t.have) {
            t.hash->update(buf.data(), static_cast<size_t>(n));
            t.have += static_cast<uint64_t>(n);
        }
        if (n != 0 || t.have >= t.size) {
            // Unreadable, or as long as the blob (or longer): start over.
            restart(t);
            if (t.write_errno) throw_errno("truncating " + t.part, t.write_errno, "check the free space of " + st_.dir);
            return t;
        }
        spdlog::info("blob {}: continuing the {} bytes an earlier pull received", t.digest, t.have);
        t.resumed = true;
        std::lock_guard<std::mutex> g(mu_);
        blobs[i].done = t.have;
        return t;
    }

    // Back to byte 0 of an empty `part`.
    void restart(BlobTransfer& t) {
        if (::ftruncate(t.fd.get(), 0) < 0 || ::lseek(t.fd.get(), 0, SEEK_SET) < 0) t.write_errno = errno;
        t.hash = std::make_unique<Sha256>();
        t.have = 0;
        t.resumed = false;
        std::lock_guard<std::mutex> g(mu_);
        blobs[t.index].done = 0;
    }

    // A transfer that broke off (not a blob found wrong, which was removed
    // already) is kept for the next pull, while what is kept stays within
    // kMaxKeptPartials: a registry that cuts every transfer of many large
    // blobs must not fill the disk for a week.
    void keep_partial(const BlobTransfer& t) {
        if (t.have == 0 || ::access(t.part.c_str(), F_OK) != 0) return;
        try {
            make_dirs(st_.kept, 0700);
            std::lock_guard<std::mutex> g(keep_mu_);
            const uint64_t kept = bytes_in(st_.kept);
            if (kept > kMaxKeptPartials || t.have > kMaxKeptPartials - kept) {
                ::unlink(t.part.c_str());
                spdlog::info("blob {}: not keeping its {} bytes for the next pull: {} holds {} bytes of partial downloads already (at most {})",
                             t.digest, t.have, st_.kept, kept, kMaxKeptPartials);
                return;
            }
            if (::rename(t.part.c_str(), t.kept.c_str()) == 0) spdlog::info("blob {}: kept {} bytes for the next pull", t.digest, t.have);
        } catch (const Error&) {
        }
    }

    static uint64_t bytes_in(const std::string& dir) {
        uint64_t total = 0;
        std::error_code ec;
        for (stdfs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
            struct stat st;
            if (::lstat(it->path().c_str(), &st) == 0 && S_ISREG(st.st_mode)) total += static_cast<uint64_t>(st.st_size);
        }
        return total;
    }

    // The first bytes of a response: does it continue what `part` holds?
    // Returns false to stop the transfer.
    bool start_response(BlobTransfer& t, const HttpResponse& head) {
        if (t.have > 0) {
            bool continues = false;
            if (head.status == 206) {
                // Content-Range: bytes START-END/TOTAL must start where we are.
                std::string cr = head.header("content-range");
                auto from = content_range_start(cr);
                continues = from && *from == t.have;
                if (!continues) {
                    spdlog::info("blob {}: range answer '{}' does not continue at {}; starting over", t.digest, printable(cr), t.have);
                    restart(t);
                    t.start_over = true;
                    return false;
                }
                t.resumed = true;
            } else {
                // The server sent the whole blob again: start over.
                restart(t);
                if (t.write_errno) return false;
            }
        }
        // A body announced longer than the manifest's size is refused before
        // a byte of it is stored.
        if (auto cl = parse_u64(head.header("content-length")); cl && *cl > t.size - t.have) {
            t.too_long = true;
            return false;
        }
        return true;
    }

    bool on_chunk(BlobTransfer& t, const HttpResponse& head, const char* data, size_t n) {
        if (cancel_) return false;
        if (head.status != 200 && head.status != 206) {
            if (n > kMaxErrorBody - t.err_body.size()) return false;
            t.err_body.append(data, n);
            return true;
        }
        if (t.first_chunk) {
            t.first_chunk = false;
            if (!start_response(t, head)) return false;
        }
        // The manifest's size is a hard cap, checked before the bytes count
        // (have <= size always, so the subtraction cannot wrap).
        if (n > t.size - t.have) {
            t.too_long = true;
            return false;
        }
        if (!write_all(t.fd.get(), data, n)) {
            t.write_errno = errno;
            return false;
        }
        t.hash->update(data, n);
        t.have += n;
        set_done(t, n);
        return true;
    }

    // The requests for one blob: resumed (Range) after a cut, until the
    // registry sent it whole or failed.
    void receive(Http& http, BlobTransfer& t) {
        set_state(t.index, BlobProgress::State::Fetching);
        auto prepare = [&]() -> std::vector<std::string> {
            t.first_chunk = true;
            t.start_over = false;
            t.err_body.clear();
            if (t.have == 0) return {};
            spdlog::info("blob {}: resuming at byte {} of {}", t.digest, t.have, t.size);
            std::lock_guard<std::mutex> g(mu_);
            ++blobs[t.index].resumes;
            return {"Range: bytes=" + std::to_string(t.have) + "-"};
        };
        auto sink = [&](const HttpResponse& head, const char* data, size_t n) { return on_chunk(t, head, data, n); };
        HttpResponse r;
        for (int round = 0;; ++round) {
            try {
                r = s_.request(http, "/v2/" + s_.endpoint().repository + "/blobs/" + t.digest, {}, 0, prepare, sink, &cancel_);
            } catch (const Error&) {
                if (t.start_over && !t.write_errno && round + 1 < kAttempts) continue;
                if (t.too_long || t.write_errno || t.start_over) break;
                throw;
            }
            // A transfer the server ended early without an error from curl
            // (no Content-Length, connection closed): resume it.
            if ((r.status == 200 || r.status == 206) && t.have < t.size && round + 1 < kAttempts) continue;
            break;
        }
        check_received(t, r);
    }

    void check_received(BlobTransfer& t, const HttpResponse& r) {
        const std::string blob = "blob " + t.digest + " from " + s_.where();
        if (t.too_long) {
            ::unlink(t.part.c_str());
            throw Error(blob + " is longer than the " + std::to_string(t.size) + " bytes its manifest says; it was discarded and nothing was stored; " +
                        kMalformed);
        }
        if (t.write_errno) throw_errno("writing " + t.part, t.write_errno, "check the free space of " + st_.dir + " and pull again");
        if (t.start_over)
            throw Error(blob + ": the registry answered every range request with other bytes than asked for; " + kCorrupt);
        if (r.status == 404)
            throw Error("blob " + t.digest + " is missing on " + s_.where() + " (" + error_summary(404, t.err_body) + "); " + kMalformed);
        if (r.status != 200 && r.status != 206)
            throw Error(blob + ": the registry answered " + error_summary(r.status, t.err_body) +
                        "; try again later, or tell the registry's operator");
    }

    Session& s_;
    const PullOptions& opts_;
    const Staging& st_;
    const PullProgressFn& progress_;
    std::mutex mu_;
    std::chrono::steady_clock::time_point last_report_{};
    std::atomic<bool> cancel_{false};
    std::exception_ptr error_;
    std::mutex keep_mu_;
};

bool is_index_type(const std::string& mt) { return mt == kOciIndex || mt == kDockerList; }

void write_small(const std::string& path, const std::string& data) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd) throw_errno("cannot create " + path, errno, "check the free space and permissions of its directory");
    if (!write_all(fd.get(), data.data(), data.size())) throw_errno("writing " + path, errno, "check the free space of its directory");
}

// The image manifest of `ref` for opts.platform: the manifest itself, or
// the one an index lists for the platform. `chosen` is the index entry's
// platform, printable (empty without an index).
Manifest image_manifest(Session& s, Http& http, const Reference& ref, const PullOptions& opts, std::string& chosen) {
    Manifest m = get_manifest(s, http, ref.digest.empty() ? ref.tag : ref.digest, ref.digest);
    if (m.media_type.rfind("application/vnd.docker.distribution.manifest.v1", 0) == 0)
        throw Error(ref.str() + " has a Docker schema 1 manifest, which is deprecated and not supported; push the image again with a current tool");
    if (!is_index_type(m.media_type)) return m;
    const std::string what = "image index " + m.digest;
    json idx = parse_json(m.body, what);
    auto it = idx.is_object() ? idx.find("manifests") : idx.end();
    if (it == idx.end() || !it->is_array()) throw Error(what + " has no \"manifests\" array; " + kMalformed);
    if (it->size() > 4096) throw Error(what + " lists more than 4096 manifests; " + kMalformed);
    std::optional<Descriptor> pick;
    std::vector<std::string> seen;
    for (auto& e : *it) {
        Descriptor d = descriptor(e, what + ": an entry");
        if (d.platform.is_null()) continue;
        if (!d.platform.is_object()) throw Error(what + ": a platform is not a JSON object; " + kMalformed);
        Platform p = platform_of(d.platform);
        seen.push_back(printable(p.str()));
        if (p.os != opts.platform.os || p.architecture != opts.platform.architecture) continue;
        if (!opts.platform.variant.empty() && p.variant != opts.platform.variant) continue;
        if (!d.media_type.empty() && d.media_type != kOciManifest && d.media_type != kDockerManifest) continue;
        if (!pick) {
            pick = d;
            chosen = printable(p.str());
        }
    }
    if (!pick) {
        std::string list;
        for (auto& p : seen) list += (list.empty() ? "" : ", ") + p;
        throw Error(ref.str() + " has no image for " + opts.platform.str() + " (it has: " + (list.empty() ? "none" : list) +
                    "); choose one with --platform");
    }
    if (pick->size > kMaxManifestBytes) throw Error(what + ": the manifest for " + chosen + " is larger than ocivm accepts; " + kMalformed);
    m = get_manifest(s, http, pick->digest, pick->digest);
    if (is_index_type(m.media_type)) throw Error(what + " points at another index for " + chosen + "; ocivm reads one level: " + kMalformed);
    return m;
}

struct ImageParts {
    Descriptor config;
    std::vector<Descriptor> layers;
};

// The config and layer descriptors of an image manifest, each one checked.
ImageParts image_parts(const Manifest& m, const Reference& ref) {
    if (m.media_type != kOciManifest && m.media_type != kDockerManifest)
        throw Error(ref.str() + " is not a container image: its manifest has the media type '" + printable(m.media_type) +
                    "'; pull a container image");
    const std::string mwhat = "manifest " + m.digest;
    json mj = parse_json(m.body, mwhat);
    if (!mj.is_object() || !mj.contains("config")) throw Error(mwhat + " has no config; " + kMalformed);
    ImageParts out;
    out.config = descriptor(mj["config"], mwhat + ": its config");
    const Descriptor& cfg = out.config;
    if (!cfg.media_type.empty() && !kConfigTypes.count(cfg.media_type))
        throw Error(ref.str() + " is not a container image: its config has the media type '" + printable(cfg.media_type) +
                    "' (an artifact?); pull a container image");
    if (cfg.size > kMaxConfigBytes)
        throw Error(mwhat + ": the config is larger than the " + std::to_string(kMaxConfigBytes) + " bytes ocivm accepts; " + kMalformed);
    auto li = mj.find("layers");
    if (li == mj.end() || !li->is_array()) throw Error(mwhat + " has no \"layers\" array; " + kMalformed);
    if (li->size() > kMaxLayers)
        throw Error(mwhat + " lists " + std::to_string(li->size()) + " layers; ocivm takes at most " + std::to_string(kMaxLayers) +
                    ": pull an image with fewer layers");
    for (size_t k = 0; k < li->size(); ++k) {
        Descriptor d = descriptor((*li)[k], mwhat + ": layer " + std::to_string(k + 1));
        if (d.media_type.find("nondistributable") != std::string::npos || d.media_type.find("foreign") != std::string::npos)
            throw Error(ref.str() + ": layer " + std::to_string(k + 1) + " (" + d.digest + ") is non-distributable ('" + printable(d.media_type) +
                        "'): its licence keeps it off registries, and ocivm does not fetch it from elsewhere; build the image without it");
        if (!kLayerTypes.count(d.media_type))
            throw Error(ref.str() + ": layer " + std::to_string(k + 1) + " has the media type '" + printable(d.media_type) +
                        "', not a tar, gzip or zstd image layer (encrypted, or an artifact?); pull a container image");
        out.layers.push_back(d);
    }
    return out;
}

// The config's text: the store's copy if it has one (checked again, a few
// KiB, before it is used), else fetched into the staging layout.
std::string fetch_config(Session& s, const PullOptions& opts, const Staging& st, const PullProgressFn& progress, const Descriptor& cfg,
                         uint64_t& bytes, unsigned& fetched) {
    if (std::string p = opts.stored_blob ? opts.stored_blob(cfg.digest) : ""; !p.empty()) {
        // Its size first: a manifest may name any stored blob (a layer of
        // GiBs) as its config, and only cfg.size bytes (<= kMaxConfigBytes)
        // may be read into memory.
        UniqueFd fd(::open(p.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
        struct stat sb;
        if (fd && ::fstat(fd.get(), &sb) == 0 && S_ISREG(sb.st_mode) && static_cast<uint64_t>(sb.st_size) == cfg.size) {
            std::string text(cfg.size, '\0');
            ssize_t n = 0;
            size_t got = 0;
            while (got < text.size() && (n = ::pread(fd.get(), text.data() + got, text.size() - got, static_cast<off_t>(got))) > 0)
                got += static_cast<size_t>(n);
            if (got == cfg.size && "sha256:" + sha256_hex(text) == cfg.digest) {
                write_small(st.blob(cfg.digest), text);
                return text;
            }
        }
    }
    Fetcher f(s, opts, st, progress);
    BlobProgress b{cfg.digest, cfg.size};
    b.config = true;
    f.blobs.push_back(b);
    f.run();
    bytes += f.bytes;
    fetched += 1;
    return read_file(st.blob(cfg.digest));
}

// The config says which platform the image is for; it must be ours.
Platform check_config(const std::string& text, const Descriptor& cfg, const Reference& ref, const PullOptions& opts, bool from_index) {
    json cj = parse_json(text, "config " + cfg.digest);
    if (!cj.is_object()) throw Error("config " + cfg.digest + " is not a JSON object; " + kMalformed);
    Platform cp;
    cp.os = str_field(cj, "os", "config", false);
    cp.architecture = str_field(cj, "architecture", "config", false);
    cp.variant = str_field(cj, "variant", "config", false);
    if ((!cp.os.empty() && cp.os != opts.platform.os) || (!cp.architecture.empty() && cp.architecture != opts.platform.architecture))
        throw Error(ref.str() + " is an image for " + printable(cp.str()) + ", not " + opts.platform.str() +
                    (from_index ? "; " + std::string(kMalformed) : "; choose another image or --platform"));
    return cp;
}

// The manifest's sizes decide how much is written: refused before a byte
// is fetched when they cannot fit (a hostile manifest may declare any size,
// up to 2^64-1 per layer; the sum saturates). What a kept partial holds
// already counts as fetched: it moves into the staging layout by rename.
void check_free_space(const Staging& st, const std::vector<BlobProgress>& todo) {
    uint64_t need = 0;
    for (auto& b : todo) {
        uint64_t size = b.size;
        struct stat sb;
        if (::stat((st.kept + "/" + b.digest.substr(7)).c_str(), &sb) == 0 && S_ISREG(sb.st_mode))
            size -= std::min(size, static_cast<uint64_t>(sb.st_size));
        need = size > UINT64_MAX - need ? UINT64_MAX : need + size;
    }
    struct statvfs vs;
    if (::statvfs(st.dir.c_str(), &vs) < 0) throw_errno("checking the free space of " + st.dir, errno);
    const unsigned __int128 avail = static_cast<unsigned __int128>(vs.f_bavail) * vs.f_frsize;
    if (need > avail)
        throw Error("the layers to fetch take " + std::to_string(need) + " bytes (as the manifest says), but the file system of " + st.dir +
                    " has only " + std::to_string(static_cast<uint64_t>(avail)) +
                    " bytes free; free some space there (or set OCIVM_HOME to a larger file system), or pull a smaller image");
}

// The layers the store lacks, fetched into the staging layout.
void fetch_layers(Session& s, const PullOptions& opts, const Staging& st, const PullProgressFn& progress,
                  const std::vector<Descriptor>& layers, StagedImage& img) {
    Fetcher lf(s, opts, st, progress);
    std::set<std::string> dup;
    std::vector<BlobProgress> todo, skipped;
    for (auto& d : layers) {
        if (!dup.insert(d.digest).second) continue;
        BlobProgress b{d.digest, d.size};
        if (opts.stored_blob && !opts.stored_blob(d.digest).empty()) {
            b.state = BlobProgress::State::Skipped;
            skipped.push_back(b);
        } else {
            todo.push_back(b);
        }
    }
    check_free_space(st, todo);
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
    img.blobs_fetched += static_cast<unsigned>(todo.size());
    img.blobs_skipped = static_cast<unsigned>(skipped.size());
    img.bytes_fetched += lf.bytes;
}

// The staging root's own lock, held while a staging directory is made and
// locked, and while the sweep looks: a sweep never sees a new directory
// before its owner holds it.
UniqueFd lock_staging_root(const std::string& staging_root) {
    UniqueFd root(::open(staging_root.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!root) throw_errno("opening the download directory " + staging_root, errno,
                           "check that it is a directory of yours (ocivm keeps pulls in progress there)");
    while (::flock(root.get(), LOCK_EX) < 0)
        if (errno != EINTR) throw_errno("locking " + staging_root, errno);
    return root;
}

// A new, empty staging layout below staging_root, locked for its lifetime.
StagedImage make_staging_dir(const std::string& staging_root) {
    make_dirs(staging_root, 0700);
    UniqueFd root = lock_staging_root(staging_root);
    std::string templ = staging_root + "/pull-XXXXXX";
    if (!::mkdtemp(templ.data())) throw_errno("creating a download directory in " + staging_root, errno);
    UniqueFd lock(::open(templ.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!lock || ::flock(lock.get(), LOCK_EX | LOCK_NB) < 0) throw_errno("locking " + templ, errno);
    StagedImage img(templ, std::move(lock));
    make_dirs(templ + "/blobs/sha256", 0700);
    return img;
}

void write_layout(const std::string& dir, const Staging& st, const Manifest& m) {
    write_small(st.blob(m.digest), m.body);
    json index = {{"schemaVersion", 2},
                  {"manifests", json::array({{{"mediaType", m.media_type}, {"digest", m.digest}, {"size", m.body.size()}}})}};
    write_small(dir + "/index.json", index.dump());
    write_small(dir + "/oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}");
}

StagedImage fetch_from(const Endpoint& ep, const Reference& ref, const PullOptions& opts, const std::string& staging_root,
                       const PullProgressFn& progress) {
    Session s(ep, opts);
    Http http;
    std::string chosen_platform;
    Manifest m = image_manifest(s, http, ref, opts, chosen_platform);
    ImageParts parts = image_parts(m, ref);

    StagedImage img = make_staging_dir(staging_root);
    const std::string& dir = img.dir();
    Staging st{dir, staging_root + "/partial"};
    // The config first (small, and it says whether the image is for us).
    std::string cfg_text = fetch_config(s, opts, st, progress, parts.config, img.bytes_fetched, img.blobs_fetched);
    Platform cp = check_config(cfg_text, parts.config, ref, opts, !chosen_platform.empty());
    fetch_layers(s, opts, st, progress, parts.layers, img);
    write_layout(dir, st, m);
    img.ref = ref;
    img.manifest_digest = m.digest;
    img.manifest_media_type = m.media_type;
    img.platform = printable(cp.str());
    return img;
}

}  // namespace

void sweep_stale_staging(const std::string& staging_root) {
    std::error_code ec;
    const auto week_ago = stdfs::file_time_type::clock::now() - std::chrono::hours(24 * 7);
    for (stdfs::directory_iterator p(staging_root + "/partial", ec), end; !ec && p != end; p.increment(ec)) {
        std::error_code e2;
        if (stdfs::last_write_time(p->path(), e2) < week_ago && !e2) stdfs::remove(p->path(), e2);
    }
    UniqueFd root = lock_staging_root(staging_root);
    std::vector<stdfs::path> stale;
    for (stdfs::directory_iterator it(staging_root, ec), end; !ec && it != end; it.increment(ec)) {
        if (it->path().filename().string().rfind("pull-", 0) != 0) continue;
        UniqueFd d(::open(it->path().c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        // Not a directory (nothing ocivm made) or held by a live pull.
        if (!d || ::flock(d.get(), LOCK_EX | LOCK_NB) < 0) continue;
        stale.push_back(it->path());
    }
    for (const auto& p : stale) {
        std::error_code e2;
        stdfs::remove_all(p, e2);
        if (e2) spdlog::warn("cannot remove {} left by an interrupted pull: {}", p.string(), e2.message());
        else spdlog::info("removed {} left by an interrupted pull", p.string());
    }
}

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
    throw Error("no endpoint for " + ref.str() + "; check registries.conf");
}

}  // namespace ocivm::registry
