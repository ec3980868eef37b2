#include "unit/registry_server.h"

#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <stdexcept>

#include "util/hash.h"

namespace ocivm::regtest {

namespace {

const char* kManifestType = "application/vnd.oci.image.manifest.v1+json";

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

}  // namespace

std::string sha256_digest(const std::string& data) {
    Sha256 h;
    h.update(data);
    return "sha256:" + h.hex();
}

bool Conn::respond(int status, const std::string& body, const std::vector<std::pair<std::string, std::string>>& headers) {
    std::string head = "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
    for (auto& [k, v] : headers) head += k + ": " + v + "\r\n";
    return send(head + "\r\n" + body);
}

TestImage TestImage::make(const std::vector<std::string>& layers, const std::string& config_extra,
                          const std::map<std::string, uint64_t>& declared_sizes) {
    TestImage img;
    std::string config = R"({"architecture":"amd64","os":"linux")" + config_extra + R"(,"rootfs":{"type":"layers","diff_ids":[]}})";
    img.config_digest = sha256_digest(config);
    img.blobs[img.config_digest] = config;
    std::string ls;
    for (auto& l : layers) {
        std::string d = sha256_digest(l);
        img.layer_digests.push_back(d);
        img.blobs[d] = l;
        uint64_t size = declared_sizes.count(d) ? declared_sizes.at(d) : l.size();
        ls += std::string(ls.empty() ? "" : ",") + R"({"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":")" + d +
              R"(","size":)" + std::to_string(size) + "}";
    }
    img.manifest = std::string(R"({"schemaVersion":2,"mediaType":")") + kManifestType +
                   R"(","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":")" + img.config_digest +
                   R"(","size":)" + std::to_string(config.size()) + R"(},"layers":[)" + ls + "]}";
    img.manifest_digest = sha256_digest(img.manifest);
    img.declared = declared_sizes;
    return img;
}

struct RegistryServer::Impl {
    SSL_CTX* ctx = nullptr;
    ~Impl() {
        if (ctx) SSL_CTX_free(ctx);
    }
};

namespace {

// A self-signed certificate for 127.0.0.1 (the client under test does not
// verify it: its registry is insecure or --tls-verify=false).
SSL_CTX* make_tls_context() {
    EVP_PKEY* key = EVP_EC_gen("P-256");
    X509* x = X509_new();
    if (!key || !x) throw std::runtime_error("OpenSSL: cannot make a key and certificate");
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, key);
    X509_NAME* name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("127.0.0.1"), -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509_sign(x, key, EVP_sha256());
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    bool ok = ctx && SSL_CTX_use_certificate(ctx, x) == 1 && SSL_CTX_use_PrivateKey(ctx, key) == 1;
    X509_free(x);
    EVP_PKEY_free(key);
    if (!ok) throw std::runtime_error("OpenSSL: cannot make the server's TLS context");
    return ctx;
}

class SockConn : public Conn {
public:
    SockConn(int fd, SSL* ssl, std::mutex& mu, std::vector<int>& fds) : fd_(fd), ssl_(ssl), mu_(mu), fds_(fds) {}
    ~SockConn() override {
        finish(false);
        if (ssl_) SSL_free(ssl_);
    }
    bool send(const std::string& bytes) override {
        if (fd_ < 0) return false;
        size_t off = 0;
        while (off < bytes.size()) {
            ssize_t n;
            if (ssl_) n = SSL_write(ssl_, bytes.data() + off, static_cast<int>(bytes.size() - off));
            else n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
            if (n <= 0) return false;
            off += static_cast<size_t>(n);
        }
        return true;
    }
    void reset() override { finish(true); }
    void close() override { finish(false); }
    bool open() const { return fd_ >= 0; }
    // Reads up to n bytes; 0 at the end or on an error.
    size_t read(char* buf, size_t n) {
        if (fd_ < 0) return 0;
        ssize_t r = ssl_ ? SSL_read(ssl_, buf, static_cast<int>(n)) : ::recv(fd_, buf, n, 0);
        return r > 0 ? static_cast<size_t>(r) : 0;
    }

private:
    void finish(bool rst) {
        if (fd_ < 0) return;
        if (ssl_ && !rst) SSL_shutdown(ssl_);
        std::lock_guard<std::mutex> g(mu_);
        fds_.erase(std::remove(fds_.begin(), fds_.end(), fd_), fds_.end());
        if (rst) {
            linger l{1, 0};
            ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        }
        ::close(fd_);
        fd_ = -1;
    }

    int fd_;
    SSL* ssl_;
    std::mutex& mu_;
    std::vector<int>& fds_;
};

}  // namespace

RegistryServer::RegistryServer(bool tls) : impl_(std::make_unique<Impl>()) {
    if (tls) impl_->ctx = make_tls_context();
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 || ::listen(listen_fd_, 64) < 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) < 0)
        throw std::runtime_error("test registry: cannot listen on 127.0.0.1");
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
}

RegistryServer::~RegistryServer() {
    stop_ = true;
    {
        std::lock_guard<std::mutex> g(mu_);
        for (int fd : conn_fds_) ::shutdown(fd, SHUT_RDWR);
    }
    cv_.notify_all();
    acceptor_.join();
    // No new connection threads now; join those there are.
    std::vector<std::thread> ts;
    {
        std::lock_guard<std::mutex> g(mu_);
        ts.swap(threads_);
    }
    for (auto& t : ts) t.join();
    ::close(listen_fd_);
}

void RegistryServer::serve(const TestImage& img) {
    std::lock_guard<std::mutex> g(mu_);
    img_ = img;
}

void RegistryServer::set_hook(Hook h) {
    std::lock_guard<std::mutex> g(mu_);
    hook_ = std::move(h);
}

std::vector<HttpRequest> RegistryServer::requests() const {
    std::lock_guard<std::mutex> g(mu_);
    return requests_;
}

int RegistryServer::count(const std::string& part) const {
    std::lock_guard<std::mutex> g(mu_);
    return static_cast<int>(std::count_if(requests_.begin(), requests_.end(), [&](const HttpRequest& r) { return r.path.find(part) != std::string::npos; }));
}

bool RegistryServer::wait_for(const std::function<bool()>& pred) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    std::unique_lock<std::mutex> g(mu_);
    for (;;) {
        if (stop_) return false;
        g.unlock();
        bool ok = pred();
        g.lock();
        if (ok) return true;
        if (std::chrono::steady_clock::now() > deadline) return false;
        cv_.wait_for(g, std::chrono::milliseconds(50));
    }
}

void RegistryServer::accept_loop() {
    while (!stop_) {
        pollfd p{listen_fd_, POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) continue;
        int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) continue;
        std::lock_guard<std::mutex> g(mu_);
        if (stop_) {
            ::close(fd);
            break;
        }
        conn_fds_.push_back(fd);
        threads_.emplace_back([this, fd] { serve_conn(fd); });
    }
}

void RegistryServer::serve_conn(int fd) {
    // A write to a peer that is gone must fail, not kill the test (SIGPIPE
    // is synchronous: blocking it here affects only this thread).
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
    unsigned char first = 0;
    bool tls_hello = ::recv(fd, &first, 1, MSG_PEEK) == 1 && first == 0x16;
    SSL* ssl = nullptr;
    bool tls_port = impl_->ctx != nullptr;
    if (tls_port && tls_hello) {
        ssl = SSL_new(impl_->ctx);
        SSL_set_fd(ssl, fd);
        if (SSL_accept(ssl) != 1) {
            ++failed_handshakes_;
            SockConn(fd, ssl, mu_, conn_fds_).reset();
            return;
        }
    }
    SockConn c(fd, ssl, mu_, conn_fds_);
    if (tls_port != tls_hello) ++failed_handshakes_;
    if (!tls_port && tls_hello) {
        c.reset();  // a TLS client on the plain port: no answer it could read
        return;
    }
    std::string buf;
    char chunk[4096];
    while (c.open() && !stop_) {
        size_t end;
        while ((end = buf.find("\r\n\r\n")) == std::string::npos) {
            size_t n = c.read(chunk, sizeof chunk);
            if (n == 0) return;
            buf.append(chunk, n);
            if (buf.size() > 65536) return;
        }
        std::string head = buf.substr(0, end);
        buf.erase(0, end + 4);
        HttpRequest r;
        r.tls = ssl != nullptr;
        size_t eol = head.find("\r\n");
        std::string line = head.substr(0, eol);
        size_t sp1 = line.find(' '), sp2 = line.find(' ', sp1 + 1);
        if (sp1 == std::string::npos || sp2 == std::string::npos) return;
        r.path = line.substr(sp1 + 1, sp2 - sp1 - 1);
        for (size_t pos = eol; pos != std::string::npos && pos < head.size();) {
            size_t next = head.find("\r\n", pos + 2);
            std::string h = head.substr(pos + 2, next == std::string::npos ? std::string::npos : next - pos - 2);
            pos = next;
            size_t colon = h.find(':');
            if (colon == std::string::npos) continue;
            size_t v = h.find_first_not_of(' ', colon + 1);
            r.headers[lower(h.substr(0, colon))] = v == std::string::npos ? "" : h.substr(v);
        }
        Hook hook;
        {
            std::lock_guard<std::mutex> g(mu_);
            requests_.push_back(r);
            hook = hook_;
        }
        cv_.notify_all();
        if (tls_port && !tls_hello) {
            // Plain HTTP on the TLS port: what Go's TLS server answers.
            c.respond(400, "Client sent an HTTP request to an HTTPS server.\n");
            c.close();
            return;
        }
        if (hook && hook(r, c)) continue;
        answer(r, c);
    }
}

bool RegistryServer::answer(const HttpRequest& r, Conn& c) {
    TestImage img;
    {
        std::lock_guard<std::mutex> g(mu_);
        img = img_;
    }
    if (r.path == "/v2/") return c.respond(200, "{}");
    size_t m = r.path.find("/manifests/"), b = r.path.find("/blobs/");
    if (m != std::string::npos) {
        std::string ref = r.path.substr(m + 11);
        if (ref.rfind("sha256:", 0) == 0 && ref != img.manifest_digest) return c.respond(404, R"({"errors":[{"code":"MANIFEST_UNKNOWN"}]})");
        return c.respond(200, img.manifest, {{"Content-Type", kManifestType}, {"Docker-Content-Digest", img.manifest_digest}});
    }
    if (b != std::string::npos) {
        auto it = img.blobs.find(r.path.substr(b + 7));
        if (it == img.blobs.end()) return c.respond(404, R"({"errors":[{"code":"BLOB_UNKNOWN"}]})");
        const std::string& data = it->second;
        std::string range = r.header("range");
        if (range.rfind("bytes=", 0) == 0) {
            size_t from = std::stoul(range.substr(6));
            if (from < data.size())
                return c.respond(206, data.substr(from),
                                 {{"Content-Range", "bytes " + std::to_string(from) + "-" + std::to_string(data.size() - 1) + "/" +
                                                        std::to_string(data.size())}});
        }
        return c.respond(200, data, {{"Content-Type", "application/octet-stream"}});
    }
    return c.respond(404, "{}");
}

}  // namespace ocivm::regtest
