#include "util/error.h"

#include <cstring>

namespace ocivm {

std::string errno_message(const std::string& what, int err, const std::string& hint) {
    std::string m = what + ": " + std::strerror(err);
    if (!hint.empty()) m += "; " + hint;
    return m;
}

void throw_errno(const std::string& what, int err, const std::string& hint) {
    throw Error(errno_message(what, err, hint));
}

}  // namespace ocivm
