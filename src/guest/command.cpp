#include "guest/command.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace ocivm::guest {

namespace {

std::string env_value(const std::vector<std::string>& env, const std::string& key) {
    for (auto& e : env)
        if (e.compare(0, key.size() + 1, key + "=") == 0) return e.substr(key.size() + 1);
    return {};
}

// Finds the program the way execvp would, with the command's PATH; returns
// "" and sets *err (ENOENT or EACCES) when there is none to run.
std::string resolve_program(const std::string& prog, const std::vector<std::string>& env, int* err) {
    auto runnable = [err](const std::string& p) {
        struct stat st;
        if (::stat(p.c_str(), &st) < 0) return false;
        if (S_ISDIR(st.st_mode) || ::access(p.c_str(), X_OK) < 0) {
            *err = EACCES;
            return false;
        }
        return true;
    };
    *err = ENOENT;
    if (prog.find('/') != std::string::npos) return runnable(prog) ? prog : "";
    std::string path = env_value(env, "PATH");
    if (path.empty()) path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    int first_err = ENOENT;
    size_t pos = 0;
    while (pos <= path.size()) {
        size_t c = path.find(':', pos);
        if (c == std::string::npos) c = path.size();
        std::string dir = path.substr(pos, c - pos);
        pos = c + 1;
        std::string cand = (dir.empty() ? "." : dir) + "/" + prog;
        if (runnable(cand)) return cand;
        if (*err == EACCES) first_err = EACCES;
        *err = ENOENT;
    }
    *err = first_err;
    return "";
}

}  // namespace

void set_winsize(int fd, unsigned rows, unsigned cols) {
    if (rows == 0 || cols == 0) return;
    winsize ws{};
    ws.ws_row = static_cast<unsigned short>(rows);
    ws.ws_col = static_cast<unsigned short>(cols);
    ::ioctl(fd, TIOCSWINSZ, &ws);
}

std::map<std::string, std::string> virtio_ports() {
    std::map<std::string, std::string> ports;
    DIR* d = ::opendir("/sys/class/virtio-ports");
    if (!d) return ports;
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        std::string name;
        int fd = ::open((std::string("/sys/class/virtio-ports/") + e->d_name + "/name").c_str(), O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            char buf[256];
            ssize_t n = ::read(fd, buf, sizeof buf);
            if (n > 0) name.assign(buf, static_cast<size_t>(n));
            ::close(fd);
        }
        while (!name.empty() && name.back() == '\n') name.pop_back();
        std::string dev = std::string("/dev/") + e->d_name;
        if (!name.empty() && ::access(dev.c_str(), F_OK) == 0) ports[name] = dev;
    }
    ::closedir(d);
    return ports;
}

void mkdir_p(const std::string& path, mode_t mode) {
    std::string cur;
    size_t pos = 0;
    while (pos <= path.size()) {
        size_t slash = path.find('/', pos);
        if (slash == std::string::npos) slash = path.size();
        cur = path.substr(0, slash);
        if (!cur.empty()) ::mkdir(cur.c_str(), mode);
        pos = slash + 1;
    }
}

pid_t spawn_command(const GuestConfig& c, const CommandStdio& io, SpawnFailure* failure) {
    int errpipe[2];
    if (::pipe2(errpipe, O_CLOEXEC) < 0) {
        *failure = {125, std::string("pipe: ") + std::strerror(errno)};
        return -1;
    }
    int err = 0;
    std::string prog = c.argv.empty() ? "" : resolve_program(c.argv[0], c.env, &err);
    // Everything the child needs is built before the fork.
    std::vector<char*> argv, envp;
    for (auto& a : c.argv) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    for (auto& e : c.env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    std::vector<gid_t> groups(c.groups.begin(), c.groups.end());

    pid_t child = ::fork();
    if (child < 0) {
        int e = errno;
        ::close(errpipe[0]);
        ::close(errpipe[1]);
        *failure = {125, std::string("fork: ") + std::strerror(e)};
        return -1;
    }
    if (child == 0) {
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        for (int s = 1; s < NSIG; ++s) ::signal(s, SIG_DFL);
        ::setsid();
        auto fail = [&](int code, int e) {
            int msg[2] = {code, e};
            ssize_t w = ::write(errpipe[1], msg, sizeof msg);
            (void)w;
            ::_exit(code);
        };
        if (!io.tty.empty()) {
            int s = ::open(io.tty.c_str(), O_RDWR);
            if (s < 0) fail(125, errno);
            ::ioctl(s, TIOCSCTTY, 0);
            ::dup2(s, 0);
            ::dup2(s, 1);
            ::dup2(s, 2);
            if (s > 2) ::close(s);
        } else {
            // Moved above 2 first: a source that is itself 0, 1 or 2 (PID 1
            // may start without a console) must not be clobbered by the dup2s.
            int in = io.in >= 0 ? io.in : ::open("/dev/null", O_RDONLY);
            int src[3] = {::fcntl(in, F_DUPFD, 10), ::fcntl(io.out, F_DUPFD, 10), ::fcntl(io.err, F_DUPFD, 10)};
            for (int k = 0; k < 3; ++k) {
                if (src[k] < 0 || ::dup2(src[k], k) < 0) fail(125, errno);
                ::close(src[k]);
            }
        }
        if (!groups.empty() || c.uid != 0)
            if (::setgroups(groups.size(), groups.data()) < 0) fail(125, errno);
        struct stat cst;
        if (::stat(c.cwd.c_str(), &cst) < 0) mkdir_p(c.cwd);
        if (::setgid(c.gid) < 0 || ::setuid(c.uid) < 0) fail(125, errno);
        if (::chdir(c.cwd.c_str()) < 0) fail(126, errno);
        if (prog.empty()) fail(err == EACCES ? 126 : 127, err);
        ::execve(prog.c_str(), argv.data(), envp.data());
        int e = errno;
        fail(e == ENOENT ? 127 : 126, e);
    }
    ::close(errpipe[1]);
    int msg[2] = {0, 0};
    ssize_t got;
    do {
        got = ::read(errpipe[0], msg, sizeof msg);
    } while (got < 0 && errno == EINTR);
    ::close(errpipe[0]);
    if (got != sizeof msg) return child;
    while (::waitpid(child, nullptr, 0) < 0 && errno == EINTR) {
    }
    std::string name = c.argv.empty() ? "(none)" : c.argv[0];
    const char* what = msg[0] == 127 ? "command not found" : msg[0] == 126 ? "command not executable" : "cannot start the command";
    failure->code = msg[0];
    failure->message = name + ": " + what + " (" + std::strerror(msg[1]) + ")";
    if (msg[0] == 126 && msg[1] != EACCES) failure->message = "cannot start " + name + ": " + std::strerror(msg[1]);
    return -1;
}

}  // namespace ocivm::guest
