#include "guest/initramfs.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <vector>

#include "util/error.h"
#include "util/hash.h"
#include "util/log.h"
#include "util/open_beneath.h"
#include "util/paths.h"
#include "util/unique_fd.h"

extern "C" const unsigned char ocivm_init_start[];
extern "C" const unsigned char ocivm_init_end[];

namespace ocivm::guest {

namespace {

// Bumped whenever the layout below changes, so old caches are not reused.
constexpr const char* kFormat = "ocivm-initramfs-1";

const char* const kModules[] = {"virtio_mmio", "virtio_pci", "virtio_console", "virtiofs", "overlay", nullptr};

struct Module {
    std::string name;  // file name, e.g. virtiofs.ko
    std::string data;
};

// What the module tree may cost: it can be an image's (--kernel image).
constexpr size_t kMaxModulesIndex = 64u << 20;  // modules.dep, modules.builtin
constexpr size_t kMaxModule = 64u << 20;
constexpr int kMaxDependencyDepth = 64;

std::string module_name(const std::string& rel) {
    std::string base = rel.substr(rel.rfind('/') + 1);
    std::string name = base.substr(0, base.find(".ko"));
    for (auto& c : name)
        if (c == '-') c = '_';
    return name;
}

// Resolves the required modules and their dependencies, dependencies first.
// Everything is read beneath the module directory by fd, with no symlink
// followed and nothing but regular files opened (openat2 RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS): with --kernel image the tree is the image's, and a
// module "x.ko -> /etc/shadow", a "../../etc/shadow" or an absolute path in
// modules.dep must not put a host file into the guest.
std::vector<Module> resolve_modules(const std::string& dir, const std::vector<std::string>& extra) {
    UniqueFd mdir(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!mdir) throw_errno("cannot open the module directory " + dir, errno, "install the kernel's modules (linux-image-amd64)");
    {
        UniqueFd probe(openat2_fd(mdir.get(), "modules.dep", O_PATH, kResolveNoSymlinks));
        if (!probe && errno == ENOENT)
            throw Error("cannot read " + dir + "/modules.dep: install the kernel's modules (linux-image-amd64)");
    }
    std::istringstream dep(read_regular_beneath(mdir.get(), "modules.dep", kResolveNoSymlinks, kMaxModulesIndex,
                                                dir + "/modules.dep"));
    std::map<std::string, std::pair<std::string, std::vector<std::string>>> by_name;  // name -> (rel, deps)
    std::string line;
    while (std::getline(dep, line)) {
        size_t colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string rel = line.substr(0, colon);
        std::istringstream rest(line.substr(colon + 1));
        std::vector<std::string> deps;
        for (std::string d; rest >> d;) deps.push_back(d);
        by_name[module_name(rel)] = {rel, deps};
    }
    std::set<std::string> builtin;
    {
        UniqueFd probe(openat2_fd(mdir.get(), "modules.builtin", O_PATH, kResolveNoSymlinks));
        if (probe || errno != ENOENT) {
            std::istringstream bi(read_regular_beneath(mdir.get(), "modules.builtin", kResolveNoSymlinks,
                                                       kMaxModulesIndex, dir + "/modules.builtin"));
            while (std::getline(bi, line)) builtin.insert(module_name(line));
        }
    }

    std::vector<Module> order;
    std::set<std::string> seen;
    std::function<void(const std::string&, int)> add = [&](const std::string& rel, int depth) {
        std::string name = module_name(rel);
        if (!seen.insert(name).second) return;
        if (depth > kMaxDependencyDepth)
            throw Error(dir + "/modules.dep: dependencies nest deeper than " + std::to_string(kMaxDependencyDepth));
        auto it = by_name.find(name);
        if (it != by_name.end())
            for (auto& d : it->second.second) add(d, depth + 1);
        std::string file = rel.substr(rel.rfind('/') + 1);
        if (file.size() <= 3 || file.compare(file.size() - 3, 3, ".ko") != 0) {
            if (file.find(".ko.") != std::string::npos)
                throw Error("module " + rel + " is compressed; ocivm needs uncompressed modules (or a kernel "
                            "with them built in)");
            throw Error(dir + "/modules.dep names '" + rel + "', which is not a kernel module (*.ko)");
        }
        order.push_back({file, read_regular_beneath(mdir.get(), rel, kResolveNoSymlinks, kMaxModule,
                                                    "module " + dir + "/" + rel)});
    };
    std::vector<std::string> wanted;
    for (const char* const* m = kModules; *m; ++m) wanted.push_back(*m);
    wanted.insert(wanted.end(), extra.begin(), extra.end());
    for (auto& m : wanted) {
        if (builtin.count(m)) continue;
        auto it = by_name.find(m);
        if (it == by_name.end()) {
            // virtio_pci is only for the q35 fallback; everything else is needed.
            if (m == "virtio_pci") continue;
            throw Error("the guest kernel in " + dir + " has no module " + m +
                        " (neither built in nor in modules.dep); use a kernel with virtio-fs support");
        }
        add(it->second.first, 0);
    }
    return order;
}

class CpioWriter {
public:
    explicit CpioWriter(const std::string& path) : a_(archive_write_new()) {
        setup();
        if (archive_write_open_filename(a_, path.c_str()) != ARCHIVE_OK)
            throw Error("cannot write " + path + ": " + archive_error_string(a_));
    }
    // Appends to an open file (its current end).
    CpioWriter(int fd, const std::string& path) : a_(archive_write_new()) {
        setup();
        if (archive_write_open_fd(a_, fd) != ARCHIVE_OK)
            throw Error("cannot write " + path + ": " + archive_error_string(a_));
    }
    ~CpioWriter() { archive_write_free(a_); }
    CpioWriter(const CpioWriter&) = delete;
    CpioWriter& operator=(const CpioWriter&) = delete;

    void dir(const std::string& path, mode_t mode = 0755) { add(path, AE_IFDIR | mode, nullptr, 0, 0); }
    void file(const std::string& path, const std::string& data, mode_t mode = 0644) {
        add(path, AE_IFREG | mode, data.data(), data.size(), 0);
    }
    void chardev(const std::string& path, unsigned major, unsigned minor) {
        add(path, AE_IFCHR | 0600, nullptr, 0, ::makedev(major, minor));
    }
    void close() {
        if (archive_write_close(a_) != ARCHIVE_OK) throw Error(std::string("cpio: ") + archive_error_string(a_));
    }

private:
    void setup() {
        archive_write_set_format_cpio_newc(a_);
        archive_write_set_bytes_per_block(a_, 512);
    }
    void add(const std::string& path, unsigned mode, const char* data, size_t size, dev_t rdev) {
        archive_entry* e = archive_entry_new();
        archive_entry_set_pathname(e, path.c_str());
        archive_entry_set_mode(e, mode);
        archive_entry_set_size(e, static_cast<la_int64_t>(size));
        archive_entry_set_nlink(e, (mode & AE_IFMT) == AE_IFDIR ? 2 : 1);
        archive_entry_set_ino(e, ++ino_);
        if (rdev) archive_entry_set_rdev(e, rdev);
        if (archive_write_header(a_, e) != ARCHIVE_OK ||
            (size && archive_write_data(a_, data, size) != static_cast<la_ssize_t>(size))) {
            archive_entry_free(e);
            throw Error("cpio: writing " + path + ": " + archive_error_string(a_));
        }
        archive_entry_free(e);
    }
    archive* a_;
    la_int64_t ino_ = 0;
};

}  // namespace

const char* const* required_modules() { return kModules; }

std::string embedded_init() {
    return std::string(reinterpret_cast<const char*>(ocivm_init_start),
                       static_cast<size_t>(ocivm_init_end - ocivm_init_start));
}

std::string base_initramfs(const std::string& modules_dir, const std::string& cache,
                           const std::vector<std::string>& extra_modules) {
    auto modules = resolve_modules(modules_dir, extra_modules);
    std::string init = embedded_init();
    Sha256 key;
    key.update(std::string(kFormat) + "\n");
    key.update(init);
    for (auto& m : modules) {
        key.update("\n" + m.name + "\n");
        key.update(m.data);
    }
    std::string dir = cache + "/initramfs";
    std::string out = dir + "/" + key.hex().substr(0, 32) + ".cpio";
    if (::access(out.c_str(), R_OK) == 0) return out;
    make_dirs(dir);
    std::string tmp = out + ".tmp." + std::to_string(::getpid());
    try {
        CpioWriter w(tmp);
        for (auto* d : {"dev", "proc", "sys", "ocivm", "ocivm/modules", "ocivm/lower", "ocivm/rw", "ocivm/root"})
            w.dir(d);
        w.chardev("dev/console", 5, 1);
        w.file("init", init, 0755);
        std::string order;
        for (auto& m : modules) {
            w.file("ocivm/modules/" + m.name, m.data);
            order += m.name + "\n";
        }
        w.file("ocivm/modules.order", order);
        w.close();
    } catch (...) {
        ::unlink(tmp.c_str());
        throw;
    }
    if (::rename(tmp.c_str(), out.c_str()) < 0) throw_errno("cannot store " + out, errno);
    spdlog::info("built the initramfs {} ({} modules from {})", out, modules.size(), modules_dir);
    return out;
}

void write_run_initramfs(const std::string& base, const std::string& config_text, const std::string& out) {
    UniqueFd in(::open(base.c_str(), O_RDONLY | O_CLOEXEC));
    if (!in) throw_errno("cannot read " + base, errno);
    UniqueFd fd(::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd) throw_errno("cannot write " + out, errno);
    struct stat st;
    ::fstat(in.get(), &st);
    for (off_t left = st.st_size; left > 0;) {
        ssize_t n = ::copy_file_range(in.get(), nullptr, fd.get(), nullptr, static_cast<size_t>(left), 0);
        if (n <= 0) throw_errno("cannot copy " + base + " to " + out, n < 0 ? errno : EIO);
        left -= n;
    }
    // The run's configuration, as a second archive right behind the first.
    CpioWriter w(fd.get(), out);
    w.file("ocivm/config", config_text, 0600);
    w.close();
}

}  // namespace ocivm::guest
