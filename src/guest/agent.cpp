// The exec agent: serves `ocivm exec` sessions over the "ocivm.agent"
// virtio-serial port (frames of agent_protocol.h). One process, one poll
// loop, every fd non-blocking: a slow or stuck session never holds up
// another, and flow control (credits) bounds what is buffered either way.
#include "guest/agent.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "guest/agent_protocol.h"
#include "guest/command.h"
#include "guest/restore.h"
#include "util/io.h"

namespace ocivm::guest {

namespace {

using agent::Frame;
using agent::Type;

// How many finished sessions are remembered, so an Open re-sent after a
// reset is answered with the same exit instead of running the command again.
constexpr size_t kRemembered = 1024;

struct Session {
    uint32_t id = 0;
    enum State { Opened, Running, Done } state = Opened;
    GuestConfig config;
    pid_t pid = -1;
    int in = -1;              // the command's stdin (or the pty master for writing)
    int out = -1, err = -1;   // its stdout, stderr (a pty: the master as out)
    bool tty = false;
    std::string in_buf;
    bool in_eof = false;
    uint32_t out_credit = agent::kWindow;
    bool exited = false, abandoned = false;
    bool forget = false;  // Close: nothing of it is remembered
    std::string reported;  // an Exit already sent for it (the one an Open re-sent gets)
    int wstatus = 0;
};

void close_fd(int& fd) {
    if (fd >= 0) ::close(fd);
    fd = -1;
}

void set_nonblock(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

class Agent {
public:
    Agent(int port, RestoreHook on_restore) : port_(port), on_restore_(on_restore ? on_restore : apply_restore) {}
    int run();

private:
    void send(uint32_t id, Type t, const std::string& p = {}) { agent::append_frame(out_, id, t, p); }
    void hello();
    void abandon_sessions();
    void restore(const std::string& payload);
    void on_frame(const Frame& f);
    void start(Session& s);
    void finish(Session& s, const std::string& exit_payload);
    void pump_output(Session& s, int& fd, Type t);
    void reap();
    void flush_port();

    int port_;
    RestoreHook on_restore_;
    std::string out_;  // frames for the host not written yet
    agent::FrameReader reader_;
    std::map<uint32_t, std::unique_ptr<Session>> sessions_;
    std::map<uint32_t, std::string> done_;  // id -> its Exit payload
    std::deque<uint32_t> done_order_;
    uint64_t epoch_ = 0;  // of the last restore (0: none), echoed by hello()
};

// In the guest (agent_main), messages go to the console (console.log on
// the host), not into the main command's stderr; serve_agent alone (the
// unit tests, on the host) writes them to stderr.
bool g_report_to_console = false;

void report(const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    std::string line = "ocivm-init --agent: " + std::string(buf, std::min<size_t>(static_cast<size_t>(n), sizeof buf - 1)) + "\n";
    int fd = g_report_to_console ? ::open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC) : -1;
    ssize_t w = ::write(fd >= 0 ? fd : 2, line.data(), line.size());
    (void)w;
    if (fd >= 0) ::close(fd);
}

void Agent::hello() {
    std::string boot;
    int fd = ::open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char buf[64];
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n > 0) boot.assign(buf, static_cast<size_t>(n));
        ::close(fd);
    }
    while (!boot.empty() && boot.back() == '\n') boot.pop_back();
    send(0, Type::Hello, "ocivm-agent " + std::to_string(agent::kVersion) + " " + (boot.empty() ? "unknown" : boot) +
                             (epoch_ ? " epoch " + std::to_string(epoch_) : ""));
}

// Every session is given up: its processes are killed and nothing of it is
// sent any more (its host side is gone, or will not know it).
void Agent::abandon_sessions() {
    for (auto it = sessions_.begin(); it != sessions_.end();) {
        Session& sp = *it->second;
        sp.abandoned = true;
        if (sp.state == Session::Running && !sp.exited) ::kill(-sp.pid, SIGKILL);
        if (sp.state == Session::Running) ++it;
        else it = sessions_.erase(it);  // never started: nothing to reap
    }
}

// The VM was restored from a snapshot: a new host, a new identity. The
// sessions of the snapshot's VM are dropped (their clients are not this
// host's), and the Hello carries the host's epoch. A Restore of the epoch
// already taken (the host sends it again when it saw a Hello without it)
// only greets again.
void Agent::restore(const std::string& payload) {
    agent::RestoreInfo r;
    if (std::string err = r.parse(payload); !err.empty()) {
        report("ignoring a malformed restore request: %s", err.c_str());
        return;
    }
    if (r.epoch != epoch_) {
        abandon_sessions();
        done_.clear();
        done_order_.clear();
        on_restore_(r, report);
        epoch_ = r.epoch;
    }
    hello();
}

void Agent::finish(Session& s, const std::string& payload) {
    if (!s.abandoned) send(s.id, Type::Exit, payload);
    if (!s.forget) {
        done_[s.id] = s.reported.empty() ? payload : s.reported;
        done_order_.push_back(s.id);
    }
    while (done_order_.size() > kRemembered) {
        done_.erase(done_order_.front());
        done_order_.pop_front();
    }
    close_fd(s.in);
    close_fd(s.out);
    close_fd(s.err);
    s.state = Session::Done;
}

void Agent::start(Session& s) {
    CommandStdio io;
    int inp[2] = {-1, -1}, outp[2] = {-1, -1}, errp[2] = {-1, -1};
    auto fail = [&](const std::string& why) {
        for (int* p : {inp, outp, errp})
            for (int k = 0; k < 2; ++k) close_fd(p[k]);
        finish(s, "error 125 " + why);
    };
    if (s.config.tty) {
        int master = ::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0 || ::grantpt(master) < 0 || ::unlockpt(master) < 0) {
            if (master >= 0) ::close(master);
            return fail(std::string("cannot allocate a pty: ") + std::strerror(errno));
        }
        io.tty = ::ptsname(master);
        set_winsize(master, s.config.rows, s.config.cols);
        s.tty = true;
        s.out = master;
        s.in = ::fcntl(master, F_DUPFD_CLOEXEC, 3);
        if (!s.config.stdin_open) close_fd(s.in);
    } else {
        if ((s.config.stdin_open && ::pipe2(inp, O_CLOEXEC) < 0) || ::pipe2(outp, O_CLOEXEC) < 0 ||
            ::pipe2(errp, O_CLOEXEC) < 0)
            return fail(std::string("pipe: ") + std::strerror(errno));
        io.in = inp[0];
        io.out = outp[1];
        io.err = errp[1];
    }
    SpawnFailure failure;
    pid_t pid = spawn_command(s.config, io, &failure);
    close_fd(inp[0]);
    close_fd(outp[1]);
    close_fd(errp[1]);
    if (!s.tty) {
        s.in = inp[1];
        s.out = outp[0];
        s.err = errp[0];
    }
    for (int fd : {s.in, s.out, s.err})
        if (fd >= 0) set_nonblock(fd);
    if (pid < 0) {
        finish(s, "error " + std::to_string(failure.code) + " " + failure.message);
        return;
    }
    s.pid = pid;
    s.state = Session::Running;
    send(s.id, Type::Started, std::to_string(pid));
}

void Agent::on_frame(const Frame& f) {
    auto it = sessions_.find(f.session);
    Session* s = it == sessions_.end() ? nullptr : it->second.get();
    switch (f.type) {
        case Type::Restore:
            if (f.session == 0) restore(f.payload);
            return;
        case Type::Open: {
            if (s) {
                send(f.session, Type::Ack);
                return;
            }
            if (auto d = done_.find(f.session); d != done_.end()) {
                send(f.session, Type::Ack);
                send(f.session, Type::Exit, d->second);
                return;
            }
            if (f.session == 0 || sessions_.size() >= agent::kMaxSessions) {
                send(f.session, Type::Exit,
                     f.session == 0 ? "error 125 session 0 is the channel's own"
                                    : "error 125 too many sessions at once (" + std::to_string(agent::kMaxSessions) + ")");
                return;
            }
            auto n = std::make_unique<Session>();
            n->id = f.session;
            std::string err = decode(f.payload, n->config);
            if (!err.empty()) {
                send(f.session, Type::Exit, "error 125 bad request: " + err);
                return;
            }
            sessions_[f.session] = std::move(n);
            send(f.session, Type::Ack);
            return;
        }
        case Type::Go:
            if (!s && !done_.count(f.session))
                send(f.session, Type::Exit, "error 125 go for a session that was never opened");
            else if (s->state == Session::Opened) start(*s);
            return;  // a second Go runs nothing again
        case Type::Stdin:
            if (!s || s->state != Session::Running || s->in < 0) return;
            if (s->in_buf.size() + f.payload.size() > agent::kWindow) {
                // The host broke the window: the session cannot be trusted.
                if (!s->exited) ::kill(-s->pid, SIGKILL);
                s->abandoned = true;
                s->reported = "error 125 stdin beyond the credit window";
                send(s->id, Type::Exit, s->reported);
                return;
            }
            s->in_buf += f.payload;
            return;
        case Type::StdinEof:
            if (s) s->in_eof = true;
            return;
        case Type::Signal: {
            uint32_t sig = 0;
            // Not once reaped: its process group id may belong to another
            // process by now.
            if (s && s->state == Session::Running && !s->exited && agent::parse_u32(f.payload, &sig) && sig > 0 &&
                sig < 65)
                ::kill(-s->pid, static_cast<int>(sig));
            return;
        }
        case Type::Winsize: {
            unsigned rows = 0, cols = 0;
            if (s && s->tty && s->out >= 0 && std::sscanf(f.payload.c_str(), "%u %u", &rows, &cols) == 2)
                set_winsize(s->out, rows, cols);
            return;
        }
        case Type::CreditOut: {
            uint32_t n = 0;
            if (s && agent::parse_u32(f.payload, &n))
                s->out_credit = static_cast<uint32_t>(std::min<uint64_t>(uint64_t(s->out_credit) + n, agent::kWindow));
            return;
        }
        case Type::Close:
            if (!s) {
                done_.erase(f.session);
                return;
            }
            s->abandoned = true;
            s->forget = true;
            if (s->state == Session::Running && !s->exited) ::kill(-s->pid, SIGKILL);
            else if (s->state != Session::Running) sessions_.erase(it);
            return;
        default:
            return;  // the guest's own frame types coming back: ignored
    }
}

void Agent::pump_output(Session& s, int& fd, Type t) {
    while (fd >= 0 && s.out_credit > 0) {
        char buf[agent::kMaxPayload];
        size_t want = std::min<size_t>(sizeof buf, s.out_credit);
        ssize_t n = ::read(fd, buf, want);
        if (n > 0) {
            if (!s.abandoned) agent::append_frame(out_, s.id, t, buf, static_cast<size_t>(n));
            if (!s.abandoned) s.out_credit -= static_cast<uint32_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            // Gone, and nothing more in the pipe now: whatever still holds
            // the write end (a background child) is not waited for.
            if (s.exited) close_fd(fd);
            return;
        }
        close_fd(fd);  // end of file, or EIO: the pty's last holder is gone
    }
}

void Agent::reap() {
    int st;
    pid_t p;
    while ((p = ::waitpid(-1, &st, WNOHANG)) > 0)
        for (auto& [id, s] : sessions_)
            if (s->pid == p && !s->exited) {
                s->exited = true;
                s->wstatus = st;
            }
}

void Agent::flush_port() {
    while (!out_.empty()) {
        ssize_t n = ::write(port_, out_.data(), out_.size());
        if (n > 0) {
            out_.erase(0, static_cast<size_t>(n));
            continue;
        }
        return;  // EAGAIN (QEMU is not reading yet) or an error: try later
    }
}

int Agent::run() {
    set_nonblock(port_);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    ::sigprocmask(SIG_BLOCK, &chld, nullptr);
    int sfd = ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    ::signal(SIGPIPE, SIG_IGN);
    hello();
    std::vector<pollfd> pf;
    std::vector<std::pair<Session*, int>> who;  // for pf[2..]: session, which fd (0 in, 1 out, 2 err)
    while (true) {
        flush_port();
        pf.clear();
        who.clear();
        pf.push_back({port_, static_cast<short>(POLLIN | (out_.empty() ? 0 : POLLOUT)), 0});
        pf.push_back({sfd, POLLIN, 0});
        // Output is read only while the host can take it (credit), and only
        // when the frames already waiting for the port are few.
        bool port_backed_up = out_.size() > 4 * agent::kWindow;
        for (auto& [id, s] : sessions_) {
            if (s->state != Session::Running) continue;
            if (s->in >= 0 && !s->in_buf.empty()) {
                pf.push_back({s->in, POLLOUT, 0});
                who.push_back({s.get(), 0});
            }
            if (!port_backed_up && s->out_credit > 0) {
                if (s->out >= 0) {
                    pf.push_back({s->out, POLLIN, 0});
                    who.push_back({s.get(), 1});
                }
                if (s->err >= 0) {
                    pf.push_back({s->err, POLLIN, 0});
                    who.push_back({s.get(), 2});
                }
            }
        }
        int n = ::poll(pf.data(), pf.size(), -1);
        if (n < 0 && errno != EINTR) return 1;
        if (n <= 0) continue;
        if (pf[0].revents & POLLIN) {
            char buf[65536];
            ssize_t r = ::read(port_, buf, sizeof buf);
            if (r > 0) {
                reader_.feed(buf, static_cast<size_t>(r));
                Frame f;
                while (reader_.next(f)) on_frame(f);
                if (!reader_.error().empty()) {
                    // Nothing after a broken frame can be trusted: start
                    // over and tell the host (a Hello is its reset signal,
                    // and it fails every session it had), so nothing of
                    // the old sessions may keep running without a reader.
                    reader_.reset();
                    abandon_sessions();
                    hello();
                }
            } else if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                ::usleep(50000);  // the host side is not connected (yet)
            }
        }
        if (pf[1].revents & POLLIN) {
            signalfd_siginfo si;
            while (::read(sfd, &si, sizeof si) == sizeof si) {
            }
            reap();
        }
        for (size_t i = 0; i < who.size(); ++i) {
            auto [s, which] = who[i];
            if (!pf[2 + i].revents) continue;
            if (which == 0) {
                ssize_t w = ::write(s->in, s->in_buf.data(), s->in_buf.size());
                if (w > 0) {
                    s->in_buf.erase(0, static_cast<size_t>(w));
                    send(s->id, Type::CreditIn, agent::u32_payload(static_cast<uint32_t>(w)));
                } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                    // The command closed its stdin: what it did not take
                    // is dropped, and its credit returned.
                    send(s->id, Type::CreditIn, agent::u32_payload(static_cast<uint32_t>(s->in_buf.size())));
                    s->in_buf.clear();
                    if (!s->tty) close_fd(s->in);
                }
            }
        }
        for (auto& [id, s] : sessions_) {
            if (s->state != Session::Running) continue;
            if (!port_backed_up) {
                pump_output(*s, s->out, Type::Stdout);
                pump_output(*s, s->err, Type::Stderr);
            }
            if (s->in_eof && s->in_buf.empty() && s->in >= 0 && !s->tty) close_fd(s->in);
        }
        // Sessions whose command has gone and whose output is all sent.
        for (auto it = sessions_.begin(); it != sessions_.end();) {
            Session& s = *it->second;
            if (s.state == Session::Running && s.exited && s.out < 0 && s.err < 0) {
                const int st = s.wstatus;
                finish(s, WIFSIGNALED(st) ? "signal " + std::to_string(WTERMSIG(st))
                                          : "exit " + std::to_string(WEXITSTATUS(st)));
            }
            if (s.state == Session::Done) it = sessions_.erase(it);
            else ++it;
        }
    }
}

}  // namespace

std::string find_agent_port(double wait_s) {
    for (int tries = 0; tries <= static_cast<int>(wait_s * 100); ++tries) {
        auto ports = virtio_ports();
        if (auto it = ports.find(agent::kPort); it != ports.end()) return it->second;
        ::usleep(10000);
    }
    return {};
}

int agent_main() {
    g_report_to_console = true;
    std::string dev = find_agent_port(20);
    if (dev.empty()) {
        std::fprintf(stderr, "ocivm-init --agent: no virtio-serial port named %s\n", agent::kPort);
        return 1;
    }
    int port = ::open(dev.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (port < 0) {
        std::fprintf(stderr, "ocivm-init --agent: cannot open %s: %s\n", dev.c_str(), std::strerror(errno));
        return 1;
    }
    return serve_agent(port);
}

int serve_agent(int fd, RestoreHook on_restore) {
    Agent a(fd, on_restore);
    return a.run();
}

}  // namespace ocivm::guest
