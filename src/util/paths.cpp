#include "util/paths.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "util/error.h"
#include "util/unique_fd.h"

namespace ocivm {

namespace {
std::string env(const char* k) {
    const char* v = std::getenv(k);
    return v && *v ? v : "";
}
}  // namespace

std::string ocivm_home() {
    if (auto h = env("OCIVM_HOME"); !h.empty()) return h;
    if (::geteuid() == 0) return "/var/lib/ocivm";
    if (auto x = env("XDG_DATA_HOME"); !x.empty()) return x + "/ocivm";
    return env("HOME") + "/.local/share/ocivm";
}

std::string cache_dir() { return ocivm_home() + "/cache"; }

std::string runtime_dir() {
    if (auto h = env("OCIVM_RUNTIME_DIR"); !h.empty()) return h;
    if (::geteuid() != 0)
        if (auto x = env("XDG_RUNTIME_DIR"); !x.empty()) return x + "/ocivm";
    return "/run/ocivm";
}

void make_dirs(const std::string& path, unsigned mode) {
    size_t pos = 0;
    while (pos <= path.size()) {
        size_t slash = path.find('/', pos);
        if (slash == std::string::npos) slash = path.size();
        std::string cur = path.substr(0, slash);
        pos = slash + 1;
        if (cur.empty()) continue;
        if (::mkdir(cur.c_str(), mode) < 0 && errno != EEXIST)
            throw_errno("cannot create directory " + cur, errno, "set OCIVM_HOME to a writable place");
    }
}

void write_file_atomic(const std::string& path, const std::string& data, unsigned mode) {
    std::string tmp = path + ".tmp." + std::to_string(::getpid());
    {
        UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
        if (!fd) throw_errno("cannot write " + tmp, errno);
        size_t off = 0;
        while (off < data.size()) {
            ssize_t w = ::write(fd.get(), data.data() + off, data.size() - off);
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) {
                int e = errno;
                ::unlink(tmp.c_str());
                throw_errno("cannot write " + tmp, e);
            }
            off += static_cast<size_t>(w);
        }
    }
    if (::rename(tmp.c_str(), path.c_str()) < 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        throw_errno("cannot rename " + tmp + " to " + path, e);
    }
}

std::string read_file(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) throw_errno("cannot read " + path, errno);
    std::string out;
    char buf[1 << 16];
    ssize_t n;
    while ((n = ::read(fd.get(), buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    if (n < 0) throw_errno("cannot read " + path, errno);
    return out;
}

}  // namespace ocivm
