#include "vm/agent_hub.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <random>

#include "util/clock.h"
#include "util/log.h"
#include "vm/vm_state.h"

namespace ocivm::vm {

using agent::Frame;
using agent::Type;

struct AgentHub::Client {
    UniqueFd fd;
    enum Mode { Line, Exec, Control } mode = Line;
    std::string line;  // the request line, until its '\n'
    agent::FrameReader reader;
    std::string out;
    uint32_t session = 0;
    std::string open_payload;  // kept until acknowledged: re-sent after a reset
    bool acked = false, done = false;
    uint64_t open_sent_ns = 0;  // when the Open went to the agent (0: held)
    // Output the agent sent that the client has not credited back: the
    // hub's own check of the window, as the guest may ignore it.
    uint64_t unacked_out = 0;
};

namespace {

// What the hub holds for the agent at most before it stops reading
// clients (their Stdin waits in their sockets instead).
constexpr size_t kMaxToAgent = 1u << 20;

// A boot id as the guest reports it: letters, digits and '-' (a UUID), so
// a hostile guest puts no odd bytes into state.json or the logs.
bool valid_boot_id(const std::string& id) {
    if (id.empty() || id.size() > 64) return false;
    for (char ch : id)
        if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-') return false;
    return true;
}

}  // namespace

AgentHub::AgentHub(UniqueFd agent_port, UniqueFd listener, Hooks hooks)
    : port_(std::move(agent_port)), listener_(std::move(listener)), hooks_(std::move(hooks)) {
    ::fcntl(port_.get(), F_SETFL, ::fcntl(port_.get(), F_GETFL) | O_NONBLOCK);
    // Ids never reused within a supervisor, and unlikely to match what an
    // agent remembers from another supervisor of the same guest.
    std::random_device rd;
    next_session_ = (rd() & 0x7fff) << 16 | 1;
}

AgentHub::~AgentHub() = default;

void AgentHub::restore(const agent::RestoreInfo& r) {
    restore_epoch_ = r.epoch;
    restore_payload_ = r.encode();
    // Not held for a Hello: the restored agent greets only once it has it.
    agent::append_frame(port_out_, 0, Type::Restore, restore_payload_);
    flush_agent();
}

bool AgentHub::idle() const { return sessions() == 0 && port_out_.empty() && held_.empty() && port_reader_.pending() == 0; }

size_t AgentHub::sessions() const {
    size_t n = 0;
    for (auto& [fd, c] : clients_) n += c->mode == Client::Exec && c->session != 0 && !c->done;
    return n;
}

void AgentHub::to_agent(uint32_t session, Type t, const std::string& p) {
    agent::append_frame(hellos_ ? port_out_ : held_, session, t, p);
    flush_agent();
}

void AgentHub::flush_agent() {
    while (port_ && !port_out_.empty()) {
        // send, not write: a port whose QEMU went away must not SIGPIPE us.
        ssize_t n = ::send(port_.get(), port_out_.data(), port_out_.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n <= 0) return;
        port_out_.erase(0, static_cast<size_t>(n));
    }
}

void AgentHub::fail_client(Client& c, const std::string& why) {
    if (c.done) return;
    agent::append_frame(c.out, c.session, Type::Exit, "error 125 " + why);
    c.done = true;
    if (c.session) {
        by_session_.erase(c.session);
        // Whatever still runs for it in the guest is killed, not left to
        // stall without credit.
        if (port_ && hellos_) to_agent(c.session, Type::Close);
    }
}

void AgentHub::drop_client(int fd) {
    auto it = clients_.find(fd);
    if (it == clients_.end()) return;
    Client& c = *it->second;
    if (c.mode == Client::Exec && c.session && !c.done) {
        to_agent(c.session, Type::Close);  // nobody reads its output any more
        by_session_.erase(c.session);
    }
    clients_.erase(it);
}

void AgentHub::shutdown(const std::string& why) {
    for (auto& [fd, c] : clients_)
        if (c->mode == Client::Exec) fail_client(*c, why);
    // Best effort, blocking briefly: the clients learn why before the EOF.
    for (auto& [fd, c] : clients_) {
        int flags = ::fcntl(fd, F_GETFL);
        ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
        struct timeval tv = {0, 200000};
        ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (!c->out.empty()) {
            ssize_t w = ::send(fd, c->out.data(), c->out.size(), MSG_NOSIGNAL);
            (void)w;
        }
    }
    clients_.clear();
    by_session_.clear();
    port_.reset();
}

void AgentHub::on_agent_frame(const Frame& f) {
    if (f.type == Type::Hello) {
        std::string boot = "invalid";
        unsigned version = 0;
        char id[80] = {};
        unsigned long long epoch = 0;
        int fields = std::sscanf(f.payload.c_str(), "ocivm-agent %u %79s epoch %llu", &version, id, &epoch);
        if (fields >= 2 && valid_boot_id(id)) boot = id;
        if (restore_epoch_ && (fields != 3 || epoch != restore_epoch_)) {
            // From before the restore (the snapshot's), or an agent that
            // reset before it read the Restore: not the clone's greeting.
            if (restore_resends_++ < 8) {
                agent::append_frame(port_out_, 0, Type::Restore, restore_payload_);
                flush_agent();
            } else if (restore_resends_ == 9) {
                spdlog::warn("the restored guest keeps greeting without the restore's epoch; not sending it again");
            }
            return;
        }
        if (version != agent::kVersion && hellos_ == 0)
            spdlog::warn("the guest agent speaks protocol {} (this ocivm: {})", version, agent::kVersion);
        // The hook first, while what clients sent before the Hello is still
        // held: a boot snapshot taken in it (Run::on_booted) must hold no
        // exec's command or environment (no run's secrets).
        if (boot != boot_id_) {
            boot_id_ = boot;
            if (hooks_.on_hello) hooks_.on_hello(boot);
        }
        uint64_t now = mono_ns();
        if (hellos_++ == 0) {
            port_out_ += held_;
            held_.clear();
            for (auto& [fd, c] : clients_)
                if (c->session && !c->open_sent_ns) c->open_sent_ns = now;
        } else {
            // Said once: a guest sending Hellos in a loop gets no log flood.
            if (hellos_ <= 4) spdlog::warn("the guest agent restarted: its sessions are lost");
            // Frames already queued stay (cutting one in half would break
            // the channel); the agent ignores those of sessions it lacks.
            for (auto& [fd, c] : clients_) {
                if (c->mode != Client::Exec || c->done || !c->session) continue;
                if (c->acked) {
                    fail_client(*c, "the guest agent restarted; the command's fate is unknown");
                } else {
                    agent::append_frame(port_out_, c->session, Type::Open, c->open_payload);
                    c->open_sent_ns = now;
                }
            }
        }
        flush_agent();
        return;
    }
    auto it = by_session_.find(f.session);
    if (it == by_session_.end()) return;  // a session whose client left
    Client& c = *clients_.at(it->second);
    if (f.type == Type::Ack) {
        if (!c.acked) {
            c.acked = true;
            c.open_payload.clear();
            to_agent(c.session, Type::Go);
        }
        return;
    }
    if (f.type == Type::Stdout || f.type == Type::Stderr) {
        c.unacked_out += f.payload.size();
        if (c.unacked_out > agent::kWindow) {
            spdlog::warn("the guest agent sent output beyond the credit window: failing the session");
            fail_client(c, "the guest broke the output credit window");
            return;
        }
    }
    agent::append_frame(c.out, 0, f.type, f.payload);
    if (f.type == Type::Exit) {
        c.done = true;
        by_session_.erase(it);
    }
}

void AgentHub::on_client_line(Client& c, const std::string& line) {
    double secs = 0;
    int sig = 0;
    if (line == "exec") {
        c.mode = Client::Exec;
    } else if (std::sscanf(line.c_str(), "stop %lf", &secs) == 1 && secs >= 0 && secs <= 1e6) {
        c.mode = Client::Control;
        if (hooks_.stop) hooks_.stop(secs);
    } else if (std::sscanf(line.c_str(), "kill %d", &sig) == 1 && sig > 0 && sig < 65) {
        c.mode = Client::Control;
        if (hooks_.kill) hooks_.kill(sig);
    } else if (line.rfind("snapshot ", 0) == 0) {
        // "snapshot NAME" or "snapshot NAME stop": answered with one line,
        // "ok ..." or "error WHY".
        c.mode = Client::Control;
        std::string rest = line.substr(9);
        bool stop = rest.size() > 5 && rest.compare(rest.size() - 5, 5, " stop") == 0;
        if (stop) rest.resize(rest.size() - 5);
        c.out += (hooks_.snapshot ? hooks_.snapshot(rest, stop) : std::string("error this VM cannot be snapshotted")) + "\n";
    } else {
        c.mode = Client::Control;
        c.out += "error unknown request\n";
    }
}

void AgentHub::on_client_frame(Client& c, const Frame& f) {
    if (c.done) return;
    if (f.type == Type::Open) {
        if (c.session) return;  // one session per connection
        if (!port_) return fail_client(c, "the VM has stopped");
        c.session = next_session_++;
        if (next_session_ == 0) next_session_ = 1;
        c.open_payload = f.payload;
        by_session_[c.session] = c.fd.get();
        if (hellos_) c.open_sent_ns = mono_ns();
        to_agent(c.session, Type::Open, f.payload);
        return;
    }
    if (!c.session) return;
    if (f.type == Type::CreditOut) {
        uint32_t n = 0;
        if (!agent::parse_u32(f.payload, &n)) return;
        c.unacked_out -= std::min<uint64_t>(c.unacked_out, n);
    }
    switch (f.type) {
        case Type::Stdin:
        case Type::StdinEof:
        case Type::Signal:
        case Type::Winsize:
        case Type::CreditOut: to_agent(c.session, f.type, f.payload); return;
        default: return;
    }
}

void AgentHub::tick() {
    uint64_t now = mono_ns();
    for (auto& [fd, c] : clients_)
        if (c->mode == Client::Exec && c->session && !c->acked && !c->done && c->open_sent_ns &&
            now - c->open_sent_ns > kAckTimeoutNs)
            fail_client(*c, "the guest agent does not answer (no acknowledgement within " +
                                std::to_string(kAckTimeoutNs / 1000000000) + " s)");
}

void AgentHub::add_pollfds(std::vector<pollfd>& pf) {
    pf_first_ = pf.size();
    pf_fds_.clear();
    pf.push_back({port_ ? port_.get() : -1, static_cast<short>(POLLIN | (port_out_.empty() ? 0 : POLLOUT)), 0});
    pf.push_back({listener_ ? listener_.get() : -1, POLLIN, 0});
    // Clients are always read (what they send is small: credit, signals)
    // unless the agent is not taking what is queued for it: their Stdin
    // then waits in their sockets. What is queued for a client is bounded
    // by the output window the hub enforces.
    bool agent_full = port_out_.size() + held_.size() > kMaxToAgent;
    for (auto& [fd, c] : clients_) {
        short ev = static_cast<short>((agent_full ? 0 : POLLIN) | (c->out.empty() ? 0 : POLLOUT));
        pf.push_back({fd, ev, 0});
        pf_fds_.push_back(fd);
    }
    pf_count_ = pf.size() - pf_first_;
}

void AgentHub::handle(const std::vector<pollfd>& pf) {
    if (pf_count_ == 0 || pf.size() < pf_first_ + pf_count_) return;
    const pollfd& port = pf[pf_first_];
    if (port_ && (port.revents & (POLLIN | POLLHUP))) {
        char buf[65536];
        ssize_t r = ::read(port_.get(), buf, sizeof buf);
        if (r > 0) {
            port_reader_.feed(buf, static_cast<size_t>(r));
            Frame f;
            while (port_reader_.next(f)) on_agent_frame(f);
            if (!port_reader_.error().empty()) {
                // Garbage from the guest: what follows cannot be framed. Its
                // sessions are lost; the agent resets on its own garbage too.
                spdlog::warn("the guest agent's channel is broken ({}): failing its sessions", port_reader_.error());
                for (auto& [fd, c] : clients_)
                    if (c->mode == Client::Exec && c->session) fail_client(*c, "the guest agent's channel broke");
                port_reader_.reset();
            }
        } else if (r == 0) {
            shutdown("the VM's agent channel closed (QEMU has exited)");
            return;
        }
    }
    if (port.revents & POLLOUT) flush_agent();
    if (listener_ && (pf[pf_first_ + 1].revents & POLLIN)) {
        while (true) {
            int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd < 0) break;
            if (!trusted_peer(fd)) {  // anyone in the netns can reach an abstract socket
                ::close(fd);
                continue;
            }
            auto c = std::make_unique<Client>();
            c->fd = UniqueFd(fd);
            clients_[fd] = std::move(c);
        }
    }
    for (size_t i = 0; i < pf_fds_.size(); ++i) {
        int fd = pf_fds_[i];
        short rev = pf[pf_first_ + 2 + i].revents;
        auto it = clients_.find(fd);
        if (it == clients_.end() || !rev) continue;
        Client& c = *it->second;
        bool gone = false;
        if (rev & POLLIN) {
            char buf[65536];
            ssize_t r = ::read(fd, buf, sizeof buf);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                gone = true;
            } else if (r > 0) {
                size_t off = 0;
                if (c.mode == Client::Line) {
                    while (off < static_cast<size_t>(r) && buf[off] != '\n' && c.line.size() < 256) c.line += buf[off++];
                    if (off < static_cast<size_t>(r) && buf[off] == '\n') {
                        ++off;
                        on_client_line(c, c.line);
                    } else if (c.line.size() >= 256) {
                        gone = true;
                    }
                }
                if (c.mode == Client::Exec && off < static_cast<size_t>(r)) {
                    c.reader.feed(buf + off, static_cast<size_t>(r) - off);
                    Frame f;
                    while (c.reader.next(f)) on_client_frame(c, f);
                    if (!c.reader.error().empty()) gone = true;
                }
            }
        } else if (rev & (POLLHUP | POLLERR)) {
            gone = true;
        }
        if (!gone && !c.out.empty()) {
            ssize_t w = ::send(fd, c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) c.out.erase(0, static_cast<size_t>(w));
            else if (w < 0 && errno != EAGAIN && errno != EINTR) gone = true;
        }
        if (!gone && c.done && c.out.empty()) gone = true;  // everything told
        if (gone) drop_client(fd);
    }
}

}  // namespace ocivm::vm
