#pragma once
// Set-up code throws Error; the message says what failed, why, and what to do.
#include <stdexcept>
#include <string>

namespace ocivm {

class Error : public std::runtime_error {
public:
    explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// "<what>: <strerror(err)>" plus an optional hint on what the user can do.
std::string errno_message(const std::string& what, int err, const std::string& hint = {});

[[noreturn]] void throw_errno(const std::string& what, int err, const std::string& hint = {});

}  // namespace ocivm
