#include "image/resolve.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <sstream>

#include "image/store.h"
#include "util/error.h"
#include "util/open_beneath.h"
#include "util/paths.h"
#include "util/unique_fd.h"

namespace ocivm::image {

namespace {

bool is_number(const std::string& s) {
    return !s.empty() && s.size() < 10 && s.find_first_not_of("0123456789") == std::string::npos;
}

// Splits the lines of the image's /etc/passwd-style file `rel` into fields.
// The file is read beneath the image root, its symlinks resolved inside
// the image (openat2 RESOLVE_IN_ROOT): an image's "/etc/passwd ->
// /etc/shadow" names its own /etc/shadow, never the host's. A missing file
// has no lines; a device, fifo or directory there is an error, never opened.
std::vector<std::vector<std::string>> colon_file(int root, const std::string& rel) {
    std::vector<std::vector<std::string>> rows;
    {
        UniqueFd probe(openat2_fd(root, rel, O_PATH, kResolveInRoot));
        if (!probe && (errno == ENOENT || errno == ENOTDIR)) return rows;
    }
    std::string text = read_regular_beneath(root, rel, kResolveInRoot, 16u << 20, "the image's /" + rel);
    std::stringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty() || line[0] == '#') continue;
        std::vector<std::string> f;
        std::stringstream ss(line);
        std::string field;
        while (std::getline(ss, field, ':')) f.push_back(field);
        if (!line.empty() && line.back() == ':') f.emplace_back();
        rows.push_back(f);
    }
    return rows;
}

}  // namespace

ResolvedImage resolve_image(const std::string& ref, const LayoutImporter& import_layout) {
    if (ref.empty()) throw Error("no IMAGE given; see 'ocivm run --help'");
    struct stat st;
    if (::stat(ref.c_str(), &st) == 0) {
        if (!S_ISDIR(st.st_mode)) throw Error("image " + ref + " is not a directory (a root file system)");
        char real[PATH_MAX];
        if (!::realpath(ref.c_str(), real)) throw_errno("resolving " + ref, errno);
        if (::access((std::string(real) + "/oci-layout").c_str(), F_OK) == 0) {
            // An OCI layout runs through the store (imported once, by digest).
            std::string digest = import_layout(std::string("oci:") + real);
            Store store(ocivm_home());
            auto r = store.resolve(digest);
            if (!r) throw Error("the image of " + ref + " vanished from the store");
            r->kind = "OCI layout " + ref;
            return *r;
        }
        ResolvedImage r;
        r.rootfs = real;
        r.kind = "rootfs directory";
        r.config.env = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"};
        return r;
    }
    if (ref[0] == '/' || ref[0] == '.')
        throw Error("image " + ref + " does not exist; pass a root file system directory, an OCI layout or an image name");
    Store store(ocivm_home());
    if (auto r = store.resolve(ref)) return *r;
    throw Error("no image named '" + ref + "' in " + ocivm_home() + "; import it with 'ocivm image import SOURCE --name " +
                ref + "' (see 'ocivm image ls')");
}

User resolve_user(const std::string& rootfs, const std::string& spec) {
    User u;
    std::string user = spec, group;
    if (size_t c = spec.find(':'); c != std::string::npos) {
        user = spec.substr(0, c);
        group = spec.substr(c + 1);
    }
    UniqueFd root(::open(rootfs.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    // No root on the host to read (a --disk boot): numbers only, as for an
    // image without /etc/passwd.
    if (!root && errno != ENOENT) throw_errno("opening the image root " + rootfs, errno);
    std::vector<std::vector<std::string>> passwd, groups;
    if (root) {
        passwd = colon_file(root.get(), "etc/passwd");
        groups = colon_file(root.get(), "etc/group");
    }
    std::string name;
    bool found = false;
    if (user.empty()) user = "0";
    for (auto& p : passwd) {
        if (p.size() < 6) continue;
        if ((is_number(user) && p[2] == user) || (!is_number(user) && p[0] == user)) {
            name = p[0];
            u.uid = static_cast<uint32_t>(std::strtoul(p[2].c_str(), nullptr, 10));
            u.gid = static_cast<uint32_t>(std::strtoul(p[3].c_str(), nullptr, 10));
            u.home = p[5].empty() ? "/" : p[5];
            found = true;
            break;
        }
    }
    if (!found) {
        if (!is_number(user)) throw Error("user '" + user + "' is not in the image's /etc/passwd; give a numeric UID");
        u.uid = static_cast<uint32_t>(std::strtoul(user.c_str(), nullptr, 10));
        u.gid = u.uid == 0 ? 0 : u.uid;
        u.home = u.uid == 0 ? "/root" : "/";
    }
    if (!group.empty()) {
        bool gfound = false;
        for (auto& g : groups) {
            if (g.size() < 3) continue;
            if ((is_number(group) && g[2] == group) || (!is_number(group) && g[0] == group)) {
                u.gid = static_cast<uint32_t>(std::strtoul(g[2].c_str(), nullptr, 10));
                gfound = true;
                break;
            }
        }
        if (!gfound) {
            if (!is_number(group)) throw Error("group '" + group + "' is not in the image's /etc/group; give a numeric GID");
            u.gid = static_cast<uint32_t>(std::strtoul(group.c_str(), nullptr, 10));
        }
    }
    u.groups.push_back(u.gid);
    if (!name.empty()) {
        for (auto& g : groups) {
            if (g.size() < 4) continue;
            std::stringstream ss(g[3]);
            std::string m;
            while (std::getline(ss, m, ','))
                if (m == name) {
                    uint32_t gid = static_cast<uint32_t>(std::strtoul(g[2].c_str(), nullptr, 10));
                    if (gid != u.gid) u.groups.push_back(gid);
                }
        }
    }
    return u;
}

}  // namespace ocivm::image
