#include "registry/http.h"

#include <curl/curl.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "util/error.h"
#include "util/log.h"
#include "util/paths.h"

namespace ocivm::registry {

namespace {

constexpr size_t kMaxHeaderLine = 16 * 1024;
constexpr size_t kMaxHeaderTotal = 128 * 1024;
constexpr long kMaxRedirects = 5;

struct Transfer {
    HttpResponse* resp;
    const Http::Sink* sink;
    size_t max_body;
    size_t header_bytes = 0;
    bool too_large = false, header_too_large = false, sink_stopped = false;
};

size_t on_header(char* data, size_t size, size_t n, void* user) {
    auto* t = static_cast<Transfer*>(user);
    size_t len = size * n;
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

size_t on_body(char* data, size_t size, size_t n, void* user) {
    auto* t = static_cast<Transfer*>(user);
    size_t len = size * n;
    if (t->sink && *t->sink) {
        if (!(*t->sink)(*t->resp, data, len)) {
            t->sink_stopped = true;
            return 0;
        }
        return len;
    }
    if (t->resp->body.size() + len > t->max_body) {
        t->too_large = true;
        return 0;
    }
    t->resp->body.append(data, len);
    return len;
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
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) throw Error("libcurl failed to initialise");
    });
}

Http::Http() : curl_(curl_easy_init()) {
    if (!curl_) throw Error("libcurl: cannot create a handle (out of memory?)");
}
Http::~Http() { curl_easy_cleanup(static_cast<CURL*>(curl_)); }

HttpResponse Http::get(const std::string& url, const std::vector<std::string>& headers, const TlsSettings& tls,
                       size_t max_body, const Sink& sink) {
    CURL* c = static_cast<CURL*>(curl_);
    curl_easy_reset(c);
    HttpResponse resp;
    Transfer t{&resp, &sink, max_body};
    curl_slist* hl = nullptr;
    for (auto& h : headers) hl = curl_slist_append(hl, h.c_str());
    char errbuf[CURL_ERROR_SIZE] = {0};
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, kMaxRedirects);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 20L);
    // A server that stops sending: no byte for 60 s ends the transfer.
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "ocivm/" OCIVM_VERSION);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
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
    curl_slist_free_all(hl);
    char* eff = nullptr;
    if (curl_easy_getinfo(c, CURLINFO_EFFECTIVE_URL, &eff) == CURLE_OK && eff) resp.effective_url = eff;
    if (rc != CURLE_OK) {
        if (t.header_too_large) throw TransportError{"the server sent response headers larger than ocivm accepts", false};
        if (t.too_large)
            throw TransportError{"the response body is larger than the " + std::to_string(max_body) + " bytes ocivm accepts here", false};
        if (t.sink_stopped) throw TransportError{"transfer stopped", false};
        std::string msg = errbuf[0] ? errbuf : curl_easy_strerror(rc);
        if (rc == CURLE_TOO_MANY_REDIRECTS) msg = "more than " + std::to_string(kMaxRedirects) + " redirects";
        throw TransportError{msg, transient_code(rc)};
    }
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    resp.status = code;
    return resp;
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
