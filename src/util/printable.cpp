#include "util/printable.h"

#include <algorithm>

namespace ocivm {

std::string printable(std::string_view s, size_t max) {
    static const char hex[] = "0123456789abcdef";
    std::string out;
    out.reserve(std::min(s.size(), max) + 3);
    for (unsigned char c : s) {
        if (out.size() >= max) {
            out += "...";
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out += static_cast<char>(c);
        } else {
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 0xf];
        }
    }
    return out;
}

}  // namespace ocivm
