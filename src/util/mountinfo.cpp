#include "util/mountinfo.h"

#include <sys/sysmacros.h>

#include <cstdio>
#include <fstream>
#include <sstream>

namespace ocivm {

namespace {
// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 3 < s.size()) {
            int v = 0;
            bool ok = true;
            for (size_t k = 1; k <= 3; ++k) {
                char c = s[i + k];
                if (c < '0' || c > '7') ok = false;
                v = v * 8 + (c - '0');
            }
            if (ok) {
                out += static_cast<char>(v);
                i += 3;
                continue;
            }
        }
        out += s[i];
    }
    return out;
}
}  // namespace

std::optional<MountEntry> find_mount(const std::string& path) {
    std::ifstream in("/proc/self/mountinfo");
    std::string line;
    std::optional<MountEntry> found;
    while (std::getline(in, line)) {
        std::istringstream ls(line);
        std::string id, parent, devno, root, mp;
        ls >> id >> parent >> devno >> root >> mp;
        if (unescape(mp) != path) continue;
        std::string f;
        while (ls >> f && f != "-") {
        }
        MountEntry e;
        ls >> e.fs_type >> e.source;
        e.source = unescape(e.source);
        unsigned maj = 0, min = 0;
        if (std::sscanf(devno.c_str(), "%u:%u", &maj, &min) == 2) e.dev = makedev(maj, min);
        found = e;  // later lines are mounted on top of earlier ones
    }
    return found;
}

}  // namespace ocivm
