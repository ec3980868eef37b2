#include "registry/http.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>

#include "util/error.h"
#include "util/log.h"
#include "util/paths.h"
#include "util/printable.h"

namespace ocivm::registry {

// A decimal number from a header: digits only, no sign or space, and no
// wrap-around (an absurd value is refused, not reduced modulo 2^64).
std::optional<uint64_t> parse_u64(const std::string& s) {
    if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
    uint64_t v = 0;
    for (char c : s) {
        uint64_t d = static_cast<uint64_t>(c - '0');
        if (v > (UINT64_MAX - d) / 10) return std::nullopt;
        v = v * 10 + d;
    }
    return v;
}


namespace {

constexpr size_t kMaxHeaderLine = 16 * 1024;
constexpr size_t kMaxHeaderTotal = 128 * 1024;
constexpr long kMaxRedirects = 5;

// What one get() shares with its callbacks. Callbacks run inside libcurl's
// C frames, which an exception must never cross: they catch everything,
// keep it here and abort the transfer; get() rethrows it once curl returned.
struct Transfer {
    HttpResponse* resp;
    const Http::Sink* sink;
    size_t max_body;
    const std::atomic<bool>* cancel;
    size_t header_bytes = 0;
    bool too_large = false, header_too_large = false, sink_stopped = false;
    bool error_body_cut = false;  // an error answer's body beyond kMaxErrorBody was dropped
    std::exception_ptr error{};
};

size_t header_line(Transfer* t, const char* data, size_t len) {
    t->header_bytes += len;
    if (len > kMaxHeaderLine || t->header_bytes > kMaxHeaderTotal) {
        t->header_too_large = true;
        return 0;
    }
    std::string line(data, len);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    if (line.rfind("HTTP/", 0) == 0) {
        // A new response (after a redirect or a 100 Continue): its headers only.
        t->resp->headers.clear();
        size_t sp = line.find(' ');
        t->resp->status = sp == std::string::npos ? 0 : std::strtol(line.c_str() + sp + 1, nullptr, 10);
        return len;
    }
    size_t colon = line.find(':');
    if (colon == std::string::npos) return len;
    std::string name = line.substr(0, colon);
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string value = line.substr(colon + 1);
    size_t b = value.find_first_not_of(" \t");
    value = b == std::string::npos ? "" : value.substr(b);
    auto& slot = t->resp->headers[name];
    // WWW-Authenticate may come more than once; the first one we can read wins later.
    if (slot.empty()) slot = value;
    else if (name == "www-authenticate") slot += "\n" + value;
    else slot = value;
    return len;
}

size_t body_bytes(Transfer* t, const char* data, size_t len) {
    if (t->sink && *t->sink) {
        if (!(*t->sink)(*t->resp, data, len)) {
            t->sink_stopped = true;
            return 0;
        }
        return len;
    }
    // An error answer is read for its message only: its first bytes are
    // enough, the transfer ends there and the answer stands.
    if (t->resp->status >= 400 && len > kMaxErrorBody - std::min(kMaxErrorBody, t->resp->body.size())) {
        t->resp->body.append(data, kMaxErrorBody - std::min(kMaxErrorBody, t->resp->body.size()));
        t->error_body_cut = true;
        return 0;
    }
    // A body announced larger than allowed is refused at its first bytes,
    // not after the registry has trickled them all.
    if (t->resp->body.empty() && t->resp->status < 400) {
        const std::string cl = t->resp->header("content-length");
        const bool digits = !cl.empty() && cl.find_first_not_of("0123456789") == std::string::npos;
        auto n = parse_u64(cl);  // none for digits past 2^64: too large as well
        if (digits && (!n || *n > t->max_body)) {
            t->too_large = true;
            return 0;
        }
    }
    if (len > t->max_body - std::min(t->max_body, t->resp->body.size())) {
        t->too_large = true;
        return 0;
    }
    t->resp->body.append(data, len);
    return len;
}

size_t on_header(char* data, size_t size, size_t n, void* user) {
    auto* t = static_cast<Transfer*>(user);
    try {
        return header_line(t, data, size * n);
    } catch (...) {
        t->error = std::current_exception();
        return 0;
    }
}

size_t on_body(char* data, size_t size, size_t n, void* user) {
    auto* t = static_cast<Transfer*>(user);
    try {
        return body_bytes(t, data, size * n);
    } catch (...) {
        t->error = std::current_exception();
        return 0;
    }
}

// Called by curl at least once a second: the way a cancelled pull stops a
// transfer that receives nothing.
int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    auto* t = static_cast<Transfer*>(user);
    return t->cancel && t->cancel->load() ? 1 : 0;
}

bool transient_code(CURLcode c) {
    switch (c) {
        case CURLE_COULDNT_CONNECT:
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_OPERATION_TIMEDOUT:
        case CURLE_PARTIAL_FILE:
        case CURLE_RECV_ERROR:
        case CURLE_SEND_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_HTTP2:
        case CURLE_HTTP2_STREAM:
        case CURLE_SSL_CONNECT_ERROR:
            return true;
        default:
            return false;
    }
}

std::string system_ca_bundle() {
    static std::once_flag once;
    static std::string pem;
    std::call_once(once, [] {
        for (const char* p : {"/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"}) {
            try {
                pem = read_file(p);
                if (!pem.empty()) return;
            } catch (const Error&) {
            }
        }
    });
    return pem;
}

}  // namespace

void http_global_init() {
    static std::once_flag once;
    std::call_once(once, [] {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) throw Error("libcurl failed to initialise (out of memory?); free some memory and try again");
    });
}

Http::Http(const HttpLimits& limits) : curl_(curl_easy_init()), limits_(limits) {
    if (!curl_) throw Error("libcurl: cannot create a handle (out of memory?); free some memory and try again");
}
Http::~Http() { curl_easy_cleanup(static_cast<CURL*>(curl_)); }

namespace {

using SlistPtr = std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)>;

SlistPtr header_list(const std::vector<std::string>& headers) {
    SlistPtr list(nullptr, curl_slist_free_all);
    for (auto& h : headers) {
        curl_slist* head = curl_slist_append(list.get(), h.c_str());
        if (!head) throw Error("libcurl: cannot build the request headers (out of memory); free some memory and try again");
        if (!list) list.reset(head);  // appending to a list returns its unchanged head
    }
    return list;
}

const char* const kReachable = "check that the registry is up and reachable";
const char* const kMisbehaving = "the server does not behave like a registry; report it to its operator or pull from another registry";

TransportError transfer_failed(CURLcode rc, const Transfer& t, const char* errbuf, const std::string& url,
                               const std::string& effective_url, size_t max_body) {
    if (t.header_too_large) return {"the server sent response headers larger than ocivm accepts", false, kMisbehaving};
    if (t.too_large)
        return {"the response body is larger than the " + std::to_string(max_body) + " bytes ocivm accepts here", false, kMisbehaving};
    if (t.sink_stopped) return {"transfer stopped by ocivm", false, "see the message before this one for why; pull again"};
    std::string why = printable(errbuf[0] ? errbuf : curl_easy_strerror(rc), 300);
    switch (rc) {
        case CURLE_ABORTED_BY_CALLBACK:
            return {"transfer cancelled by ocivm", false, "see the message before this one for why; pull again"};
        case CURLE_TOO_MANY_REDIRECTS:
            return {"more than " + std::to_string(kMaxRedirects) + " redirects", false, kMisbehaving};
        case CURLE_UNSUPPORTED_PROTOCOL:
            if (url.rfind("https://", 0) == 0 && effective_url != url)
                return {"the server redirected an HTTPS request to " + printable(effective_url, 300) + ", and ocivm follows HTTPS only to HTTPS",
                        false, "if the registry really serves plain HTTP, mark it insecure in registries.conf"};
            return {why, false, kMisbehaving};
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_ISSUER_ERROR:
        case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
            return {why, false,
                    "if the registry's certificate is signed by a CA of your own, put that CA in $OCIVM_HOME/certs.d/HOST:PORT/ca.crt "
                    "(or /etc/containers/certs.d/HOST:PORT/); --tls-verify=false skips the check"};
        case CURLE_SSL_CONNECT_ERROR:
            return {why, true, std::string(kReachable) + ", and that it speaks HTTPS (a plain-HTTP registry must be insecure in registries.conf)"};
        default:
            return {why, transient_code(rc), kReachable};
    }
}

}  // namespace

HttpResponse Http::get(const std::string& url, const std::vector<std::string>& headers, const TlsSettings& tls,
                       size_t max_body, const Sink& sink, const std::atomic<bool>* cancel) {
    CURL* c = static_cast<CURL*>(curl_);
    curl_easy_reset(c);
    HttpResponse resp;
    Transfer t{&resp, &sink, max_body, cancel};
    SlistPtr hl = header_list(headers);
    char errbuf[CURL_ERROR_SIZE] = {0};
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl.get());
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    // A registry that speaks HTTPS must not move a transfer to plain HTTP,
    // where anyone on the path could read or change it.
    const bool https = url.rfind("https://", 0) == 0;
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, https && !tls.allow_plain_http ? "https" : "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, kMaxRedirects);
    // The Authorization header we add stays with the host (and scheme and
    // port) of the URL: libcurl (since 7.58; scheme and port since 7.83)
    // drops it on a redirect elsewhere, e.g. to a blob CDN, unless this is
    // on. It is off by default; said here so it stays off.
    curl_easy_setopt(c, CURLOPT_UNRESTRICTED_AUTH, 0L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, limits_.connect_seconds);
    // A server that stops sending, or drips bytes to keep the connection
    // alive, ends the transfer.
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, limits_.stall_bytes_per_second);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, limits_.stall_seconds);
    // A body held in memory is small: it has a deadline too. A blob stream
    // (a sink) may take hours on a slow link and has none.
    if (!sink) curl_easy_setopt(c, CURLOPT_TIMEOUT, limits_.collected_seconds);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "ocivm/" OCIVM_VERSION);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
    if (cancel) {
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, &t);
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    }
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, tls.verify ? 1L : 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, tls.verify ? 2L : 0L);
    std::string ca;
    curl_blob blob{};
    if (tls.verify && !tls.extra_ca_pem.empty()) {
        ca = system_ca_bundle() + "\n" + tls.extra_ca_pem;
        blob.data = ca.data();
        blob.len = ca.size();
        blob.flags = CURL_BLOB_NOCOPY;
        curl_easy_setopt(c, CURLOPT_CAINFO_BLOB, &blob);
    }
    CURLcode rc = curl_easy_perform(c);
    if (t.error) std::rethrow_exception(t.error);
    char* eff = nullptr;
    if (curl_easy_getinfo(c, CURLINFO_EFFECTIVE_URL, &eff) == CURLE_OK && eff) resp.effective_url = eff;
    if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && t.error_body_cut))
        throw transfer_failed(rc, t, errbuf, url, resp.effective_url, max_body);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    resp.status = code;
    return resp;
}

std::string url_authority(const std::string& url) {
    std::unique_ptr<CURLU, decltype(&curl_url_cleanup)> u(curl_url(), curl_url_cleanup);
    if (!u || curl_url_set(u.get(), CURLUPART_URL, url.c_str(), 0) != CURLUE_OK) return {};
    char* scheme = nullptr;
    if (curl_url_get(u.get(), CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK) return {};
    const std::string sch = scheme;
    curl_free(scheme);
    if (sch != "http" && sch != "https") return {};
    char* host = nullptr;
    if (curl_url_get(u.get(), CURLUPART_HOST, &host, 0) != CURLUE_OK) return {};
    std::string out = host;
    curl_free(host);
    for (auto& ch : out) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    char* port = nullptr;
    // Without CURLU_DEFAULT_PORT: only a port the URL names; the scheme's
    // default is dropped (CURLU_NO_DEFAULT_PORT), so host and host:443 agree.
    if (curl_url_get(u.get(), CURLUPART_PORT, &port, CURLU_NO_DEFAULT_PORT) == CURLUE_OK && port) {
        out += ":" + std::string(port);
        curl_free(port);
    }
    return out;
}

std::string url_escape(const std::string& s) {
    std::string out;
    for (unsigned char ch : s) {
        if (std::isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '~') out += static_cast<char>(ch);
        else {
            char b[4];
            std::snprintf(b, sizeof b, "%%%02X", ch);
            out += b;
        }
    }
    return out;
}

}  // namespace ocivm::registry
