#pragma once
// One HTTP(S) connection to a registry over libcurl: an easy handle reused
// for every request of one thread (keep-alive), with everything a hostile
// server could inflate bounded: header lines and their total, redirects
// (5, http and https only), bodies collected in memory, stalls (no byte for
// 60 s). Not thread-safe: one Http per thread.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace ocivm::registry {

// Call once, before any thread starts (curl_global_init is not thread-safe).
void http_global_init();

struct TlsSettings {
    bool verify = true;
    // PEM certificates trusted for this host besides the system's
    // (certs.d/HOST/*.crt); empty: the system's only.
    std::string extra_ca_pem;
};

struct HttpResponse {
    long status = 0;                             // of the last response (after redirects)
    std::map<std::string, std::string> headers;  // lowercase names; of the last response
    std::string body;                            // when collected (no sink)
    std::string effective_url;
    std::string header(const std::string& name) const {
        auto it = headers.find(name);
        return it == headers.end() ? std::string() : it->second;
    }
};

// A failed transfer that trying again may cure (connection refused or
// reset, timeout, a transfer cut short).
struct TransportError {
    std::string message;
    bool transient;
};

class Http {
public:
    Http();
    ~Http();
    Http(const Http&) = delete;
    Http& operator=(const Http&) = delete;

    // Receives body bytes of the final response (its status and headers in
    // `head`); returns false to abort the transfer.
    using Sink = std::function<bool(const HttpResponse& head, const char* data, size_t n)>;

    // GET url. Without a sink the body is collected, up to max_body bytes
    // (more aborts: TransportError, not transient). Throws TransportError.
    HttpResponse get(const std::string& url, const std::vector<std::string>& headers, const TlsSettings& tls,
                     size_t max_body, const Sink& sink = {});

private:
    void* curl_;
};

// curl_easy_escape for a query value.
std::string url_escape(const std::string& s);

}  // namespace ocivm::registry
