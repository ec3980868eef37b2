// ocivm image: import, list, inspect, remove and prune images in the store.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/import.h"
#include "image/store.h"
#include "util/error.h"
#include "util/log.h"
#include "util/paths.h"

namespace ocivm::cli {

namespace {

const char kHelp[] = R"(Usage: ocivm image COMMAND [OPTIONS]

The image store ($OCIVM_HOME, default /var/lib/ocivm as root): blobs by
sha256, verified; layers unpacked once by diff_id; one root file system per
image. A malicious layer cannot write outside the store. Images are parsed
and unpacked by a process of their own with no network and only the
capabilities unpacking needs (podman's export, for containers-storage:, runs
before, outside it).

Commands:
  import SOURCE [--name NAME[:TAG]]   import an image; SOURCE is one of
        oci:DIR[:TAG]          an OCI image layout (multi-arch: linux/amd64)
        oci-archive:FILE       a tar of an OCI layout (podman save --format oci-archive)
        docker-archive:FILE    what 'docker save' / 'podman save' write
        containers-storage:NAME  an image of the local podman (via podman image save)
  ls [--format json]                  list the images
  inspect NAME                        the image as JSON (digest, size, layers, config)
  rm NAME                             remove the name (data goes with 'prune')
  prune                               remove blobs, layers and roots no image uses

Options:
      --log-level LEVEL   trace | debug | info | warn | error (default: warn)
  -h, --help              show this help
An image runs with 'ocivm run NAME -- CMD'.
)";

std::string human(uint64_t b) {
    char buf[32];
    if (b >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(b) / (1ull << 30));
    else if (b >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(b) / (1ull << 20));
    else std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(b) / 1024);
    return buf;
}

}  // namespace

int cmd_image(int argc, char** argv) {
    bool help = false;
    std::string name, format = "table", log_level = "warn";
    int result_fd = -1, archive_fd = -1;
    // --result-fd and --archive-fd are import_confined's, for the child it
    // starts (cli/import.h); not for users, so not in the help.
    auto fd_option = [](const char* flag, const std::string& v) {
        if (v.empty() || v.size() > 4 || v.find_first_not_of("0123456789") != std::string::npos)
            throw UsageError{std::string("invalid --") + flag + " '" + v + "'"};
        int fd = std::stoi(v);
        if (fd < 3 || ::fcntl(fd, F_GETFD) < 0) throw UsageError{std::string("--") + flag + " " + v + ": not an open fd"};
        return fd;
    };
    std::vector<Option> opts = {
        {"name", 0, true, [&](const std::string& v) { name = v; }},
        {"format", 0, true, [&](const std::string& v) { format = v; }},
        {"log-level", 0, true, [&](const std::string& v) { log_level = v; }},
        {"result-fd", 0, true, [&](const std::string& v) { result_fd = fd_option("result-fd", v); }},
        {"archive-fd", 0, true, [&](const std::string& v) { archive_fd = fd_option("archive-fd", v); }},
    };
    auto pos = parse_args("image", argc, argv, 2, opts, &help);
    if (help || pos.empty()) {
        std::fputs(kHelp, help ? stdout : stderr);
        if (!help) throw UsageError{"'ocivm image' needs a command: import, ls, inspect, rm or prune"};
        return 0;
    }
    setup_logging(log_level);
    if (format != "table" && format != "json") throw UsageError{"invalid --format '" + format + "': use table or json"};
    const std::string& sub = pos[0];
    auto want_args = [&](size_t n, const char* usage) {
        if (pos.size() != n + 1) throw UsageError{std::string("usage: ocivm image ") + usage};
    };
    if ((result_fd >= 0 || archive_fd >= 0) && sub != "import")
        throw UsageError{"--result-fd and --archive-fd go with 'image import' only"};
    if (sub == "import") {
        want_args(1, "import SOURCE [--name NAME[:TAG]]");
        if (result_fd >= 0) return run_confined_import(pos[1], name, result_fd, archive_fd);
        if (archive_fd >= 0) throw UsageError{"--archive-fd goes with --result-fd"};
        // The parsing happens in a confined child; this process only waits.
        auto img = import_confined(pos[1], name, log_level);
        std::printf("%s %s\n", img.name.c_str(), img.digest.c_str());
        return 0;
    }
    image::Store store(ocivm_home());
    if (sub == "ls") {
        want_args(0, "ls [--format json]");
        auto images = store.list();
        if (format == "json") {
            nlohmann::json j = nlohmann::json::array();
            for (auto& i : images)
                j.push_back({{"name", i.name}, {"digest", i.manifest_digest}, {"size", i.size}, {"created", i.created}});
            std::printf("%s\n", j.dump(2).c_str());
        } else {
            std::printf("%-40s %-19s %10s  %s\n", "NAME", "DIGEST", "SIZE", "IMPORTED");
            for (auto& i : images)
                std::printf("%-40s %-19s %10s  %s\n", i.name.c_str(), i.manifest_digest.substr(0, 19).c_str(),
                            human(i.size).c_str(), i.created.c_str());
        }
        return 0;
    }
    if (sub == "inspect") {
        want_args(1, "inspect NAME");
        auto i = store.find(pos[1]);
        if (!i) throw Error("no image named '" + pos[1] + "'; see 'ocivm image ls'");
        nlohmann::json j = {{"name", i->name}, {"digest", i->manifest_digest}, {"config_digest", i->config_digest},
                            {"size", i->size}, {"created", i->created}, {"layers", i->layers},
                            {"diff_ids", i->diff_ids}, {"config", nlohmann::json::parse(i->config_json)},
                            {"rootfs", store.home() + "/roots/" + i->manifest_digest.substr(7)}};
        std::printf("%s\n", j.dump(2).c_str());
        return 0;
    }
    if (sub == "rm") {
        want_args(1, "rm NAME");
        store.remove(pos[1]);
        return 0;
    }
    if (sub == "prune") {
        want_args(0, "prune");
        for (auto& g : store.prune()) std::printf("removed %s\n", g.c_str());
        return 0;
    }
    throw UsageError{"unknown command 'image " + sub + "'; see 'ocivm image --help'"};
}

}  // namespace ocivm::cli
