#include "cli/import.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

#include "cli/commands.h"
#include "image/store.h"
#include "sandbox/sandbox.h"
#include "util/digest.h"
#include "util/error.h"
#include "util/io.h"
#include "util/log.h"
#include "util/paths.h"
#include "util/process.h"
#include "util/unique_fd.h"

namespace ocivm::cli {

namespace stdfs = std::filesystem;

namespace {

// What unpacking needs: owners, modes, device nodes, file capabilities and
// set-id bits of the image's files, and reading the store's 0700 tree.
const std::vector<int> kImportCaps = {CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER,
                                      CAP_FSETID, CAP_MKNOD, CAP_SETFCAP};

constexpr size_t kMaxResult = 64 * 1024;  // an error message, bounded

}  // namespace

// A child process that execs this binary again rather than a fork() of the
// caller that goes on importing: the caller may have threads (capset and
// no_new_privs confine one thread only, and after a fork of a threaded
// process nothing that allocates is safe until exec); a fresh image holds
// none of the caller's memory or fds (ChildProcess::spawn closes all but
// the result pipe and podman's export); and the child is the very code of
// `ocivm image import`, so there is one importer to confine and test.
ImportedImage import_confined(const std::string& source, const std::string& name, const std::string& log_level) {
    UniqueFd archive;
    const std::string cs = "containers-storage:";
    if (source.rfind(cs, 0) == 0) archive = image::Store(ocivm_home()).export_podman(source.substr(cs.size()));

    int p[2];
    if (::pipe2(p, O_CLOEXEC) < 0) throw_errno("pipe", errno);
    UniqueFd from_child(p[0]), to_parent(p[1]);
    SpawnOptions so;
    so.argv = {"/proc/self/exe", "image", "import", "--log-level", log_level, "--result-fd", "3"};
    so.fds = {to_parent.get()};
    if (archive) {
        so.argv.insert(so.argv.end(), {"--archive-fd", "4"});
        so.fds.push_back(archive.get());
    }
    if (!name.empty()) so.argv.insert(so.argv.end(), {"--name", name});
    so.argv.insert(so.argv.end(), {"--", source});
    // Progress and logs on our stderr; stdout too, so nothing the importer
    // might print lands in the output of `ocivm run`'s command.
    so.stdout_fd = 2;
    ChildProcess child = ChildProcess::spawn(so, "the ocivm binary (/proc/self/exe) cannot be run again");
    const pid_t pid = child.pid();
    to_parent.reset();
    archive.reset();

    std::string result;
    char buf[4096];
    for (;;) {
        ssize_t n = ::read(from_child.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (result.size() < kMaxResult) result.append(buf, static_cast<size_t>(n));
    }
    int st = child.wait();

    const std::string ok = "ok\t", err = "error\t";
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0 && result.rfind(ok, 0) == 0 && result.back() == '\n') {
        std::string rest = result.substr(ok.size(), result.size() - ok.size() - 1);
        size_t tab = rest.find('\t');
        ImportedImage r;
        if (tab != std::string::npos) {
            r.name = rest.substr(0, tab);
            r.digest = rest.substr(tab + 1);
        }
        if (!r.name.empty() && valid_digest(r.digest)) return r;
    }
    if (result.rfind(err, 0) == 0 && result.size() > err.size()) throw Error(result.substr(err.size()));
    std::string how = WIFSIGNALED(st) ? "was killed by signal " + std::to_string(WTERMSIG(st)) + " (" +
                                            strsignal(WTERMSIG(st)) + ")"
                                      : "exited with status " + std::to_string(exit_code(st));
    throw Error("importing " + source + ": the confined importer (ocivm image import, pid " + std::to_string(pid) +
                ") " + how + " without a result; run the command again");
}

int run_confined_import(const std::string& source, const std::string& name, int result_fd, int archive_fd) {
    auto report = [&](const std::string& line) {
        // The caller gone: nothing to tell; the exit status says the rest.
        (void)write_all(result_fd, line.data(), line.size());
    };
    const bool tty = ::isatty(2);
    try {
        // The importer parses layers an image author wrote: no network, the
        // store the only place it may write, only what unpacking needs. The
        // store is made first: its copy is what stays writable.
        make_dirs(ocivm_home(), 0700);
        // It sees the store and the source alone, each at its real path
        // (no symbolic link on the way), so the names stay the same.
        sandbox::ToolView view;
        const std::string home = stdfs::canonical(ocivm_home()).string();
        view.writable.push_back(home);
        image::SourceSpec spec = image::split_source(source);
        std::error_code ec;
        if (!spec.path.empty())
            if (auto real = stdfs::canonical(spec.path, ec); !ec) {
                if (real == "/")
                    throw Error("importing " + source + ": the source is / (the importer would see the whole host); "
                                "name the layout's directory or the archive");
                spec.path = real.string();
                view.readable.push_back(spec.path);
            }
        // (A source that is not there stays as it is: the importer says so.)
        view.keep_fds = {result_fd, archive_fd};
        sandbox::confine_tool("image import", sandbox::SeccompProfile::Importer, kImportCaps, view);
        image::Store store(home);
        auto rep = store.import(
            spec.str(), name,
            [tty](const std::string& line) {
                if (tty) std::fprintf(stderr, "\r\033[Kocivm: %s", line.c_str());
                else spdlog::info("{}", line);
            },
            archive_fd);
        if (tty) std::fputs("\r\033[K", stderr);
        spdlog::info("{} blobs written, {} layers unpacked, root {}", rep.blobs_written, rep.layers_unpacked,
                     rep.root_assembled ? "assembled" : "already there");
        report("ok\t" + rep.image.name + "\t" + rep.image.manifest_digest + "\n");
        return 0;
    } catch (const std::exception& e) {
        if (tty) std::fputs("\r\033[K", stderr);  // the caller's error line replaces the progress line
        report("error\t" + std::string(e.what()));
    }
    return kExitOcivmFailure;
}

}  // namespace ocivm::cli
