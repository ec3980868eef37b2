#include "image/image_fixture.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "util/hash.h"
#include "util/paths.h"

namespace ocivm::imagetest {

namespace stdfs = std::filesystem;

std::string g_ocivm;
std::string g_work;


// Writes a layer tar (gzip unless plain) and returns its path.
std::string write_layer(const std::string& path, const std::vector<Entry>& entries, bool gzip) {
    archive* a = archive_write_new();
    archive_write_set_format_pax(a);
    if (gzip) archive_write_add_filter_gzip(a);
    EXPECT_EQ(archive_write_open_filename(a, path.c_str()), ARCHIVE_OK);
    for (auto& e : entries) {
        archive_entry* ae = archive_entry_new();
        archive_entry_set_pathname(ae, e.path.c_str());
        archive_entry_set_uid(ae, e.uid);
        archive_entry_set_gid(ae, e.gid);
        archive_entry_set_mtime(ae, e.mtime, 0);
        for (auto& [k, v] : e.xattrs) archive_entry_xattr_add_entry(ae, k.c_str(), v.data(), v.size());
        std::string body;
        switch (e.type) {
            case 'f':
                archive_entry_set_filetype(ae, AE_IFREG);
                if (e.sparse_size) {
                    archive_entry_set_size(ae, e.sparse_size);
                    archive_entry_sparse_add_entry(ae, e.sparse_size - static_cast<int64_t>(e.data.size()),
                                                   static_cast<int64_t>(e.data.size()));
                } else {
                    archive_entry_set_size(ae, static_cast<int64_t>(e.data.size()));
                }
                body = e.data;
                break;
            case 'd': archive_entry_set_filetype(ae, AE_IFDIR); break;
            case 'l':
                archive_entry_set_filetype(ae, AE_IFLNK);
                archive_entry_set_symlink(ae, e.data.c_str());
                break;
            case 'h':
                archive_entry_set_filetype(ae, AE_IFREG);
                archive_entry_set_hardlink(ae, e.data.c_str());
                archive_entry_set_size(ae, 0);
                break;
            case 'c':
                archive_entry_set_filetype(ae, AE_IFCHR);
                archive_entry_set_rdev(ae, e.rdev);
                break;
            case 'b':
                archive_entry_set_filetype(ae, AE_IFBLK);
                archive_entry_set_rdev(ae, e.rdev);
                break;
            case 'p': archive_entry_set_filetype(ae, AE_IFIFO); break;
        }
        archive_entry_set_perm(ae, e.mode);
        EXPECT_EQ(archive_write_header(a, ae), ARCHIVE_OK) << e.path << ": " << archive_error_string(a);
        if (!body.empty()) archive_write_data(a, body.data(), body.size());
        archive_entry_free(ae);
    }
    archive_write_close(a);
    archive_write_free(a);
    return path;
}

std::string sha(const std::string& data) {
    Sha256 h;
    h.update(data);
    return "sha256:" + h.hex();
}
std::string file_sha(const std::string& path) {
    Sha256 h;
    h.update_file(path);
    return "sha256:" + h.hex();
}
std::string uncompressed_sha(const std::string& layer) {  // diff_id
    archive* a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_raw(a);
    archive_read_open_filename(a, layer.c_str(), 1 << 16);
    archive_entry* e;
    archive_read_next_header(a, &e);
    Sha256 h;
    char buf[65536];
    la_ssize_t n;
    while ((n = archive_read_data(a, buf, sizeof buf)) > 0) h.update(buf, static_cast<size_t>(n));
    archive_read_free(a);
    return "sha256:" + h.hex();
}

void put_blob(const std::string& layout, const std::string& digest, const std::string& data) {
    make_dirs(layout + "/blobs/sha256");
    std::ofstream(layout + "/blobs/sha256/" + digest.substr(7), std::ios::binary) << data;
}


// An OCI layout with the given layers (each a list of entries) and config.
Layout make_layout(const std::string& dir, const std::vector<std::vector<Entry>>& layers, const json& runtime,
                   const std::string& tag) {
    Layout l;
    l.dir = dir;
    make_dirs(dir + "/blobs/sha256");
    json manifest = {{"schemaVersion", 2}, {"mediaType", "application/vnd.oci.image.manifest.v1+json"}, {"layers", json::array()}};
    json config = {{"architecture", "amd64"}, {"os", "linux"}, {"config", runtime}, {"rootfs", {{"type", "layers"}, {"diff_ids", json::array()}}}};
    for (size_t i = 0; i < layers.size(); ++i) {
        std::string tmp = dir + "/layer" + std::to_string(i) + ".tar.gz";
        write_layer(tmp, layers[i]);
        std::string d = file_sha(tmp);
        std::string dst = dir + "/blobs/sha256/" + d.substr(7);
        stdfs::rename(tmp, dst);
        l.layer_files.push_back(dst);
        manifest["layers"].push_back({{"mediaType", "application/vnd.oci.image.layer.v1.tar+gzip"}, {"digest", d}, {"size", stdfs::file_size(dst)}});
        config["rootfs"]["diff_ids"].push_back(uncompressed_sha(dst));
    }
    std::string cfg = config.dump();
    put_blob(dir, sha(cfg), cfg);
    manifest["config"] = {{"mediaType", "application/vnd.oci.image.config.v1+json"}, {"digest", sha(cfg)}, {"size", cfg.size()}};
    std::string m = manifest.dump();
    put_blob(dir, sha(m), m);
    l.manifest_digest = sha(m);
    json index = {{"schemaVersion", 2},
                  {"manifests", {{{"mediaType", "application/vnd.oci.image.manifest.v1+json"}, {"digest", sha(m)}, {"size", m.size()},
                                  {"annotations", {{"org.opencontainers.image.ref.name", tag}}}}}}};
    std::ofstream(dir + "/index.json") << index.dump();
    std::ofstream(dir + "/oci-layout") << R"({"imageLayoutVersion":"1.0.0"})";
    return l;
}

// Makes MANIFEST the layout's one image (stored, and the index points at it).
void set_manifest(const Layout& l, const json& manifest) {
    std::string ms = manifest.dump();
    put_blob(l.dir, sha(ms), ms);
    json index = json::parse(read_file(l.dir + "/index.json"));
    index["manifests"][0]["digest"] = sha(ms);
    index["manifests"][0]["size"] = ms.size();
    std::ofstream(l.dir + "/index.json") << index.dump();
}

// A tree as "path type mode uid:gid size nlink target xattrs sha" lines.
std::string describe_tree(const std::string& root) {
    std::vector<std::string> lines;
    for (auto it = stdfs::recursive_directory_iterator(root); it != stdfs::recursive_directory_iterator(); ++it) {
        std::string p = it->path().string();
        struct stat st;
        ::lstat(p.c_str(), &st);
        std::ostringstream o;
        o << p.substr(root.size()) << " " << std::oct << st.st_mode << std::dec << " " << st.st_uid << ":" << st.st_gid;
        if (!S_ISDIR(st.st_mode)) o << " size=" << st.st_size << " nlink=" << st.st_nlink;
        if (S_ISLNK(st.st_mode)) o << " -> " << stdfs::read_symlink(p).string();
        if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) o << " dev=" << major(st.st_rdev) << "," << minor(st.st_rdev);
        if (S_ISREG(st.st_mode) && st.st_size < (1 << 20)) o << " " << file_sha(p).substr(7, 12);
        char names[4096];
        ssize_t n = ::llistxattr(p.c_str(), names, sizeof names);
        std::vector<std::string> xs;
        for (ssize_t i = 0; i < n; i += static_cast<ssize_t>(std::strlen(names + i)) + 1) {
            char v[4096];
            ssize_t vn = ::lgetxattr(p.c_str(), names + i, v, sizeof v);
            xs.push_back(std::string(names + i) + "=" + std::string(v, static_cast<size_t>(std::max<ssize_t>(vn, 0))));
        }
        std::sort(xs.begin(), xs.end());
        for (auto& x : xs) o << " [" << x << "]";
        lines.push_back(o.str());
    }
    std::sort(lines.begin(), lines.end());
    std::string out;
    for (auto& l : lines) out += l + "\n";
    return out;
}

std::string store_listing(const std::string& home) {
    std::string out;
    if (!stdfs::exists(home)) return out;
    for (auto* d : {"blobs/sha256", "layers", "roots"})
        if (stdfs::exists(home + "/" + d))
            for (auto& e : stdfs::directory_iterator(home + "/" + d)) out += std::string(d) + "/" + e.path().filename().string() + "\n";
    if (stdfs::exists(home + "/names.json")) out += read_file(home + "/names.json");
    return out;
}

RunResult run_ocivm(const std::vector<std::string>& args, const std::string& home, const std::string& cwd,
                    unsigned timeout_s) {
    static int counter = 0;
    std::string tag = std::to_string(::getpid()) + "-" + std::to_string(++counter);
    std::string o = g_work + "/cmd-" + tag + ".out", e = g_work + "/cmd-" + tag + ".err";
    pid_t pid = ::fork();
    if (pid == 0) {
        ::setenv("OCIVM_HOME", home.c_str(), 1);
        int fo = ::open(o.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644), fe = ::open(e.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ::dup2(fo, 1);
        ::dup2(fe, 2);
        if (!cwd.empty() && ::chdir(cwd.c_str()) < 0) ::_exit(126);
        std::vector<char*> argv{const_cast<char*>(g_ocivm.c_str())};
        for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        ::alarm(timeout_s);  // survives exec: a hung import dies of SIGALRM
        ::execv(g_ocivm.c_str(), argv.data());
        ::_exit(127);
    }
    int st = 0;
    ::waitpid(pid, &st, 0);
    RunResult r{WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), read_file(o), read_file(e)};
    ::unlink(o.c_str());
    ::unlink(e.c_str());
    return r;
}

}  // namespace ocivm::imagetest
