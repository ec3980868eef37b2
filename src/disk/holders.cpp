#include "disk/holders.h"

#include <dirent.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <spdlog/spdlog.h>
#include <sstream>

#include "util/error.h"
#include "util/mountinfo.h"

namespace ocivm::disk {

namespace {

MountInfo to_info(const MountEntry& e) {
    MountInfo m;
    m.target = e.target;
    m.source = e.source;
    m.fstype = e.fs_type;
    m.dev = e.dev;
    m.id = e.id;
    return m;
}

std::string comm_of(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/comm");
    std::string c;
    std::getline(in, c);
    return c;
}

std::string readlink_str(const std::string& p) {
    char buf[4096];
    ssize_t n = ::readlink(p.c_str(), buf, sizeof buf - 1);
    return n < 0 ? std::string() : std::string(buf, static_cast<size_t>(n));
}

bool on_dev(const std::string& path, dev_t dev) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && st.st_dev == dev;
}

bool below(const std::string& p, const std::string& dir) {
    if (dir == "/") return p != "/";
    return p.size() > dir.size() && p.compare(0, dir.size(), dir) == 0 && p[dir.size()] == '/';
}

}  // namespace

MountInfo mount_at(const std::string& path) {
    char real[PATH_MAX];
    if (!::realpath(path.c_str(), real)) throw_errno(path, errno, "give an existing mount point");
    std::optional<MountEntry> found = find_mount(real);
    if (!found) throw Error(std::string(real) + " is not a mount point; give the directory a file system is mounted on");
    return to_info(*found);
}

std::vector<std::string> submounts(const std::string& path) {
    MountInfo m = mount_at(path);
    std::vector<std::string> out;
    for (auto& s : self_mounts())
        if (below(s.target, m.target)) out.push_back(s.target);
    std::sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) {
        return std::count(a.begin(), a.end(), '/') > std::count(b.begin(), b.end(), '/');
    });
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

std::vector<Holder> find_holders(const std::string& path) {
    MountInfo m = mount_at(path);
    std::vector<Holder> out;
    pid_t self = ::getpid();
    std::string my_ns = readlink_str("/proc/self/ns/mnt");
    std::set<std::string> seen_ns;
    DIR* d = ::opendir("/proc");
    if (!d) throw_errno("cannot read /proc", errno);
    std::vector<pid_t> pids;
    while (dirent* e = ::readdir(d))
        if (e->d_name[0] >= '1' && e->d_name[0] <= '9') pids.push_back(static_cast<pid_t>(std::atoi(e->d_name)));
    ::closedir(d);
    std::sort(pids.begin(), pids.end());
    for (pid_t pid : pids) {
        if (pid == self) continue;
        std::string base = "/proc/" + std::to_string(pid);
        std::string comm = comm_of(pid);
        auto add = [&](const char* kind, const std::string& what) { out.push_back({pid, comm, kind, what}); };
        for (auto* link : {"cwd", "root", "exe"})
            if (on_dev(base + "/" + link, m.dev)) add(link, readlink_str(base + "/" + link));
        if (DIR* fds = ::opendir((base + "/fd").c_str())) {
            while (dirent* e = ::readdir(fds)) {
                if (e->d_name[0] == '.') continue;
                std::string p = base + "/fd/" + e->d_name;
                if (on_dev(p, m.dev)) add("fd", e->d_name + std::string(" ") + readlink_str(p));
            }
            ::closedir(fds);
        }
        std::ifstream maps(base + "/maps");
        std::set<std::string> mapped;
        for (std::string line; std::getline(maps, line);) {
            std::istringstream ls(line);
            std::string range, perms, off, devs, inode, file;
            ls >> range >> perms >> off >> devs >> inode;
            std::getline(ls, file);
            file.erase(0, file.find_first_not_of(' '));
            unsigned maj = 0, min = 0;
            if (std::sscanf(devs.c_str(), "%x:%x", &maj, &min) != 2 || inode == "0") continue;
            if (::makedev(maj, min) == m.dev && mapped.insert(file).second) add("mmap", file);
        }
        // Another mount namespace that still has the mount: one pid per namespace.
        std::string ns = readlink_str(base + "/ns/mnt");
        if (!ns.empty() && ns != my_ns && seen_ns.insert(ns).second) {
            std::optional<std::vector<MountEntry>> theirs;
            try {
                theirs = mounts_of(pid);
            } catch (const Error& e) {
                // One unreadable process does not hide what the others hold.
                spdlog::warn("{}", e.what());
            }
            // No table: the process exited while we looked; it holds nothing.
            if (theirs) {
                for (auto& other : *theirs)
                    if (other.dev == m.dev) {
                        add("mount-namespace", ns + " has " + other.target);
                        break;
                    }
            } else {
                seen_ns.erase(ns);  // another process may still be in that namespace
            }
        }
    }
    // Loop devices backed by a file on the mount.
    if (DIR* b = ::opendir("/sys/block")) {
        while (dirent* e = ::readdir(b)) {
            if (std::strncmp(e->d_name, "loop", 4) != 0) continue;
            std::ifstream bf(std::string("/sys/block/") + e->d_name + "/loop/backing_file");
            std::string file;
            if (std::getline(bf, file) && on_dev(file, m.dev))
                out.push_back({0, "", "loop", std::string("/dev/") + e->d_name + " backed by " + file});
        }
        ::closedir(b);
    }
    std::ifstream swaps("/proc/swaps");
    std::string line;
    std::getline(swaps, line);
    while (std::getline(swaps, line)) {
        std::string file = line.substr(0, line.find_first_of(" \t"));
        if (on_dev(file, m.dev)) out.push_back({0, "", "swap", file});
    }
    for (auto& s : self_mounts()) {
        if (s.id == m.id) continue;
        if (below(s.target, m.target)) out.push_back({0, "", "submount", s.target + " (" + s.fs_type + ")"});
        else if (s.dev == m.dev && s.target != m.target) out.push_back({0, "", "bind-mount", s.target});
    }
    return out;
}

std::string holders_table(const std::vector<Holder>& hs) {
    std::ostringstream o;
    char line[512];
    std::snprintf(line, sizeof line, "%-8s %-16s %-16s %s\n", "PID", "COMMAND", "KIND", "WHAT");
    o << line;
    for (auto& h : hs) {
        std::snprintf(line, sizeof line, "%-8s %-16s %-16s %s\n", h.pid ? std::to_string(h.pid).c_str() : "-",
                      h.pid ? h.comm.c_str() : "(kernel)", h.kind.c_str(), h.what.c_str());
        o << line;
    }
    return o.str();
}

std::string holders_json(const std::vector<Holder>& hs) {
    nlohmann::json j = nlohmann::json::array();
    for (auto& h : hs) {
        nlohmann::json e = {{"kind", h.kind}, {"what", h.what}};
        e["pid"] = h.pid ? nlohmann::json(h.pid) : nlohmann::json(nullptr);
        e["command"] = h.pid ? nlohmann::json(h.comm) : nlohmann::json(nullptr);
        j.push_back(e);
    }
    return j.dump(2) + "\n";
}

}  // namespace ocivm::disk
