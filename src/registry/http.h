#pragma once
// One HTTP(S) connection to a registry over libcurl: an easy handle reused
// for every request of one thread (keep-alive), with everything a hostile
// server could inflate bounded: header lines and their total, redirects
// (5; from https only to https unless the registry may speak plain HTTP),
// bodies collected in memory (in size and in time), error bodies, stalls
// (below a floor rate for too long). Not thread-safe: one Http per thread.
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "util/error.h"

namespace ocivm::registry {

// A decimal number from a header: digits only, no sign or space, and no
// wrap-around (an absurd value is refused, not reduced modulo 2^64).
std::optional<uint64_t> parse_u64(const std::string& s);

// Call once, before any thread starts (curl_global_init is not thread-safe).
void http_global_init();

struct TlsSettings {
    bool verify = true;
    // PEM certificates trusted for this host besides the system's
    // (certs.d/HOST/*.crt); empty: the system's only.
    std::string extra_ca_pem;
    // The registry is insecure in registries.conf: it may speak plain HTTP,
    // so an https request may be redirected to http. Otherwise an https
    // request follows https redirects only.
    bool allow_plain_http = false;
};

// How long a registry may take. A body collected in memory (a ping, a
// manifest, a token, an error) is a few KiB to MiB: the whole transfer is
// bounded in time, so a server that drips bytes cannot hold a pull for
// days. A blob streamed to a sink may legitimately take hours: only the
// stall floor applies to it (and to everything else).
struct HttpLimits {
    long connect_seconds = 20;
    long collected_seconds = 120;         // whole transfer of a body collected in memory
    long stall_bytes_per_second = 1024;   // slower than this ...
    long stall_seconds = 30;              // ... for this long ends any transfer
};

// The body of an error answer (4xx/5xx) is kept only for the message it
// carries: at most this much of it, the rest is not read.
constexpr size_t kMaxErrorBody = 64 * 1024;

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

// A transfer that failed. An Error, so one that escapes is reported like
// any other failure: what() is the reason and what to do. `transient`: trying
// again may cure it (connection refused or reset, timeout, a transfer cut
// short). The reason is sanitised: curl's messages may quote a redirect.
class TransportError : public Error {
public:
    TransportError(const std::string& reason, bool transient, const std::string& advice)
        : Error(reason + "; " + advice), reason_(reason), advice_(advice), transient_(transient) {}
    const std::string& reason() const { return reason_; }
    const std::string& advice() const { return advice_; }
    bool transient() const { return transient_; }

private:
    std::string reason_, advice_;
    bool transient_;
};

class Http {
public:
    explicit Http(const HttpLimits& limits = {});
    ~Http();
    Http(const Http&) = delete;
    Http& operator=(const Http&) = delete;

    // Receives body bytes of the final response (its status and headers in
    // `head`); returns false to abort the transfer. May throw: the transfer
    // is aborted and get() rethrows the exception once curl has returned.
    using Sink = std::function<bool(const HttpResponse& head, const char* data, size_t n)>;

    // GET url. Without a sink the body is collected, up to max_body bytes
    // (more aborts: TransportError, not transient), of an error answer
    // (status >= 400) up to kMaxErrorBody (the rest is dropped: the answer
    // is returned with the first bytes), within limits.collected_seconds. A set *cancel aborts the
    // transfer within a second (TransportError, not transient). Throws
    // TransportError, or what the sink threw.
    HttpResponse get(const std::string& url, const std::vector<std::string>& headers, const TlsSettings& tls,
                     size_t max_body, const Sink& sink = {}, const std::atomic<bool>* cancel = nullptr);

private:
    void* curl_;
    HttpLimits limits_;
};

// "host[:port]" of an http(s) URL as libcurl reads it: the host lowercased,
// the port only when it is not the scheme's default. "" when it is not one.
std::string url_authority(const std::string& url);

// curl_easy_escape for a query value.
std::string url_escape(const std::string& s);

}  // namespace ocivm::registry
