#pragma once
// A scripted registry for the registry client's hostile cases: an HTTP/1.1
// server on 127.0.0.1 (plain, or TLS with a self-signed certificate made at
// start), in this process, whose every answer a test decides. It serves one
// image (a manifest, its config and layers) the usual way; a test's hook
// sees each request first and may answer it itself, in any broken way (a
// reset, a body longer than announced, a redirect elsewhere, bytes held
// back until some other request came).
//
// Threads: one accepting, one per connection; the destructor stops them
// all (connections are shut down, so a hook blocked in wait_for() returns).
// A hook may still run until then: declare the server after everything its
// hook uses, so it is destroyed first.
#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace ocivm::regtest {

struct HttpRequest {
    std::string path;
    std::map<std::string, std::string> headers;  // lowercase names
    bool tls = false;
    std::string header(const std::string& name) const {
        auto it = headers.find(name);
        return it == headers.end() ? std::string() : it->second;
    }
};

// One connection, as a hook answers through it.
class Conn {
public:
    virtual ~Conn() = default;
    // Raw bytes (through TLS on a TLS server); false once the peer is gone.
    virtual bool send(const std::string& bytes) = 0;
    // Ends the connection with a TCP reset (SO_LINGER 0).
    virtual void reset() = 0;
    // Ends the connection cleanly.
    virtual void close() = 0;
    // A complete response with Content-Length.
    bool respond(int status, const std::string& body, const std::vector<std::pair<std::string, std::string>>& headers = {});
};

// The image the server holds.
struct TestImage {
    std::string manifest, manifest_digest;
    std::string config_digest;
    std::vector<std::string> layer_digests;
    std::map<std::string, std::string> blobs;  // digest -> bytes
    // Declared sizes in the manifest, where they differ from the bytes.
    std::map<std::string, uint64_t> declared;

    // An image of `layers` (each a layer's bytes) and a linux/amd64 config
    // with `config_extra` JSON members (",\"variant\":\"v8\"").
    static TestImage make(const std::vector<std::string>& layers, const std::string& config_extra = "",
                          const std::map<std::string, uint64_t>& declared_sizes = {});
};

std::string sha256_digest(const std::string& data);

class RegistryServer {
public:
    // Returns true when it answered the request (or ended the connection).
    using Hook = std::function<bool(const HttpRequest&, Conn&)>;

    explicit RegistryServer(bool tls);
    ~RegistryServer();
    RegistryServer(const RegistryServer&) = delete;
    RegistryServer& operator=(const RegistryServer&) = delete;

    int port() const { return port_; }
    std::string host() const { return "127.0.0.1:" + std::to_string(port_); }

    // The image under every repository name; ranges answered with 206.
    void serve(const TestImage& img);
    void set_hook(Hook h);
    // Every request seen (in order) and the handshakes that failed.
    std::vector<HttpRequest> requests() const;
    int failed_handshakes() const { return failed_handshakes_; }
    // How many requests' paths contain `part`.
    int count(const std::string& part) const;
    // Waits until pred() holds (checked on each request and every 50 ms) or
    // the server stops; false on stop or after 60 s (a hung test fails).
    bool wait_for(const std::function<bool()>& pred);

private:
    struct Impl;
    void accept_loop();
    void serve_conn(int fd);
    bool answer(const HttpRequest& r, Conn& c);

    std::unique_ptr<Impl> impl_;
    int listen_fd_ = -1;
    int port_ = 0;
    std::atomic<bool> stop_{false};
    std::atomic<int> failed_handshakes_{0};
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<HttpRequest> requests_;
    std::vector<int> conn_fds_;
    std::vector<std::thread> threads_;
    std::thread acceptor_;
    Hook hook_;
    TestImage img_;
};

}  // namespace ocivm::regtest
