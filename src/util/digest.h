#pragma once
// Content digests as ocivm accepts them: "sha256:" and 64 lowercase hex
// digits, nothing else (checked before a digest ever names a file).
#include <string>

namespace ocivm {

inline bool valid_digest(const std::string& d) {
    return d.size() == 7 + 64 && d.rfind("sha256:", 0) == 0 &&
           d.find_first_not_of("0123456789abcdef", 7) == std::string::npos;
}

}  // namespace ocivm
