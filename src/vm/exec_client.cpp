#include "vm/exec_client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "guest/agent_protocol.h"
#include "util/error.h"
#include "util/io.h"
#include "util/log.h"
#include "util/terminal.h"

namespace ocivm::vm {

namespace {

using agent::Frame;
using agent::Type;

struct SignalMask {
    sigset_t set{}, old{};
    SignalMask() {
        sigemptyset(&set);
        for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH, SIGUSR1, SIGUSR2}) sigaddset(&set, s);
        ::sigprocmask(SIG_BLOCK, &set, &old);
    }
    ~SignalMask() { ::sigprocmask(SIG_SETMASK, &old, nullptr); }
};

}  // namespace

int exec_session(const VmEntry& vm, const guest::GuestConfig& c) {
    ::signal(SIGPIPE, SIG_IGN);
    UniqueFd sock = connect_supervisor(vm);
    std::string hello = "exec\n";
    agent::append_frame(hello, 0, Type::Open, guest::encode(c));
    if (!write_all(sock.get(), hello.data(), hello.size()))
        throw_errno("cannot send the request to VM '" + vm.record.name + "'", errno);

    SignalMask mask;
    UniqueFd sfd(::signalfd(-1, &mask.set, SFD_CLOEXEC | SFD_NONBLOCK));
    std::unique_ptr<RawTerminal> raw;
    if (c.tty && c.stdin_open && ::isatty(0)) raw = std::make_unique<RawTerminal>(0);
    // The socket never blocks us: what we send (credit, stdin, signals)
    // queues here, so we always keep reading what the supervisor sends.
    ::fcntl(sock.get(), F_SETFL, ::fcntl(sock.get(), F_GETFL) | O_NONBLOCK);
    std::string sendq;
    auto queue = [&sendq](Type t, const std::string& p) { agent::append_frame(sendq, 0, t, p); };

    agent::FrameReader reader;
    uint32_t in_credit = agent::kWindow;
    bool started = false, stdin_done = !c.stdin_open, out_ok = true, err_ok = true, lost = false, peer_closed = false;
    int status = -1;
    std::string message;
    char buf[65536];
    while (status < 0 && !lost) {
        bool want_stdin = started && !stdin_done && in_credit > 0 && sendq.size() < agent::kWindow;
        pollfd pf[3] = {{sock.get(), static_cast<short>(POLLIN | (sendq.empty() || peer_closed ? 0 : POLLOUT)), 0},
                        {sfd.get(), POLLIN, 0},
                        {want_stdin ? 0 : -1, POLLIN, 0}};
        if (::poll(pf, 3, -1) < 0) {
            if (errno == EINTR) continue;
            throw_errno("poll", errno);
        }
        if (pf[1].revents & POLLIN) {
            signalfd_siginfo si;
            while (::read(sfd.get(), &si, sizeof si) == sizeof si) {
                if (si.ssi_signo == SIGWINCH) {
                    winsize ws{};
                    if (c.tty && ::ioctl(0, TIOCGWINSZ, &ws) == 0)
                        queue(Type::Winsize, std::to_string(ws.ws_row) + " " + std::to_string(ws.ws_col));
                } else {
                    queue(Type::Signal, agent::u32_payload(si.ssi_signo));
                }
            }
        }
        if (pf[2].revents & (POLLIN | POLLHUP)) {
            size_t want = std::min<size_t>({sizeof buf, in_credit, agent::kMaxPayload});
            ssize_t n = ::read(0, buf, want);
            if (n > 0) {
                agent::append_frame(sendq, 0, Type::Stdin, buf, static_cast<size_t>(n));
                in_credit -= static_cast<uint32_t>(n);
            } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
                stdin_done = true;
                queue(Type::StdinEof, {});
            }
        }
        if (pf[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = ::read(sock.get(), buf, sizeof buf);
            if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
                lost = true;
                break;
            }
            if (n > 0) reader.feed(buf, static_cast<size_t>(n));
            Frame f;
            uint64_t credit = 0;  // one CreditOut for the whole batch
            while (status < 0 && reader.next(f)) {
                switch (f.type) {
                    case Type::Started: started = true; break;
                    case Type::Stdout:
                    case Type::Stderr: {
                        bool& ok = f.type == Type::Stdout ? out_ok : err_ok;
                        if (ok) ok = write_all(f.type == Type::Stdout ? 1 : 2, f.payload.data(), f.payload.size());
                        // Credit back even when our stdout is gone: the
                        // command must not block on a reader that left.
                        credit += f.payload.size();
                        break;
                    }
                    case Type::CreditIn: {
                        uint32_t k = 0;
                        if (agent::parse_u32(f.payload, &k)) in_credit = std::min(agent::kWindow, in_credit + k);
                        break;
                    }
                    case Type::Exit: status = agent::exit_status(f.payload, &message); break;
                    default: break;
                }
            }
            if (credit) queue(Type::CreditOut, agent::u32_payload(static_cast<uint32_t>(credit)));
            if (!reader.error().empty()) {
                message = "the supervisor's reply is garbled (" + reader.error() + ")";
                status = 125;
            }
        }
        while (!sendq.empty() && !peer_closed) {
            ssize_t w = ::send(sock.get(), sendq.data(), sendq.size(), MSG_NOSIGNAL);
            if (w > 0) {
                sendq.erase(0, static_cast<size_t>(w));
            } else {
                // The supervisor may have sent the exit status and closed
                // while a credit of ours was on its way: what it sent is
                // still to be read, and only its end of file means lost.
                if (w < 0 && errno != EAGAIN && errno != EINTR) {
                    peer_closed = true;
                    sendq.clear();
                }
                break;
            }
        }
    }
    raw.reset();
    if (status < 0) {
        std::fprintf(stderr, "ocivm: error: lost the connection to VM '%s' (its supervisor or QEMU exited)\n",
                     vm.record.name.c_str());
        return 125;
    }
    if (!message.empty()) std::fprintf(stderr, "ocivm: error: %s\n", message.c_str());
    return status;
}

}  // namespace ocivm::vm
