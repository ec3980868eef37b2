#pragma once
// SHA-256 for cache keys and content addresses (OpenSSL's libcrypto).
#include <cstddef>
#include <memory>
#include <string>

namespace ocivm {

class Sha256 {
public:
    Sha256();
    ~Sha256();
    Sha256(const Sha256&) = delete;
    Sha256& operator=(const Sha256&) = delete;
    void update(const void* data, size_t n);
    void update(const std::string& s) { update(s.data(), s.size()); }
    // Adds a file's bytes; throws Error when it cannot be read.
    void update_file(const std::string& path);
    std::string hex();  // finishes; lowercase hex

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace ocivm
