// The guest side of `ocivm exec` (guest/agent.cpp) driven over a socketpair
// with real commands, the way the supervisor's hub drives it over the
// virtio-serial port: the Hello first, Open/Ack/Go running a command exactly
// once, exit reports, stdout and stderr kept apart with the Exit after them,
// both credit windows, signals to the process group, Close, and a reset on a
// broken frame.
//
// The agent runs as the init of a PID namespace of its own (below a keeper
// process), so killing it takes every command it started with it, detached
// or not: a test leaves no process behind, even when it fails. Every read of
// the agent's output is bounded: a hung agent fails the test.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "guest/agent.h"
#include "guest/agent_protocol.h"
#include "guest/protocol.h"
#include "test_util.h"
#include "util/clock.h"
#include "util/unique_fd.h"

namespace ocivm {
namespace {

using agent::Frame;
using agent::Type;

// Far above what any step takes; reached only when the agent hangs.
constexpr int kTimeoutMs = 30000;

std::string read_file(const std::string& path) {
    std::ifstream f(path);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

size_t count_lines(const std::string& path) {
    std::string s = read_file(path);
    size_t n = 0;
    for (char c : s) n += c == '\n';
    return n;
}

// The agent's restore hook in these tests: what it was given, appended to
// a file of the test's (the real one would set the host's clock and name).
std::string g_restore_log;
void record_restore(const agent::RestoreInfo& r, void (*)(const char*, ...)) {
    int fd = ::open(g_restore_log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    std::string line = r.encode() + "--\n";
    if (fd >= 0) {
        ssize_t w = ::write(fd, line.data(), line.size());
        (void)w;
        ::close(fd);
    }
}

class AgentGuest : public ::testing::Test {
protected:
    void SetUp() override {
        static unsigned counter = 0;
        dir_ = test::temp_base() + "/ocivm-agent-guest-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
        ASSERT_EQ(::mkdir(dir_.c_str(), 0755), 0) << dir_ << ": " << std::strerror(errno);
        g_restore_log = dir_ + "/restores";
        int sv[2];
        ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        host_ = UniqueFd(sv[0]);
        UniqueFd agent_end(sv[1]);
        int rp[2];
        ASSERT_EQ(::pipe2(rp, O_CLOEXEC), 0);
        UniqueFd report_r(rp[0]), report_w(rp[1]);

        // The keeper waits on SIGTERM (TearDown) and SIGCHLD (the agent
        // ending by itself, which is a bug): blocked before the fork so
        // neither can come before it waits.
        sigset_t waitset, old;
        sigemptyset(&waitset);
        sigaddset(&waitset, SIGTERM);
        sigaddset(&waitset, SIGCHLD);
        ::sigprocmask(SIG_BLOCK, &waitset, &old);
        const pid_t test_pid = ::getpid();
        keeper_ = ::fork();
        if (keeper_ == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // the test process crashed: go
            if (::getppid() != test_pid) ::_exit(1);
            host_.reset();
            report_r.reset();
            int err = ::unshare(CLONE_NEWPID) < 0 ? errno : 0;
            pid_t a = err ? -1 : ::fork();
            if (a == 0) {
                ::prctl(PR_SET_PDEATHSIG, SIGKILL);
                report_w.reset();
                ::sigprocmask(SIG_SETMASK, &old, nullptr);
                ::_exit(guest::serve_agent(agent_end.release(), record_restore));
            }
            if (!err && a < 0) err = errno;
            agent_end.reset();
            ssize_t w = ::write(report_w.get(), &err, sizeof err);
            (void)w;
            report_w.reset();
            if (err) ::_exit(2);
            while (true) {
                siginfo_t si;
                int sig = ::sigwaitinfo(&waitset, &si);
                if (sig == SIGTERM) {
                    // The namespace's init killed: the kernel kills and
                    // reaps everything in it before the init is reaped.
                    ::kill(a, SIGKILL);
                    while (::waitpid(a, nullptr, 0) < 0 && errno == EINTR) {
                    }
                    ::_exit(0);
                }
                if (sig == SIGCHLD && ::waitpid(a, nullptr, WNOHANG) == a) ::_exit(3);
            }
        }
        ::sigprocmask(SIG_SETMASK, &old, nullptr);
        ASSERT_GE(keeper_, 0) << "fork: " << std::strerror(errno);
        agent_end.reset();
        report_w.reset();
        int err = -1;
        pollfd pf{report_r.get(), POLLIN, 0};
        ASSERT_EQ(::poll(&pf, 1, kTimeoutMs), 1) << "the agent's keeper does not report";
        ASSERT_EQ(::read(report_r.get(), &err, sizeof err), static_cast<ssize_t>(sizeof err));
        ASSERT_EQ(err, 0) << "cannot start the agent in a PID namespace of its own (unshare(CLONE_NEWPID), fork): "
                          << std::strerror(err) << "; these tests need root (CAP_SYS_ADMIN)";
        ::fcntl(host_.get(), F_SETFL, ::fcntl(host_.get(), F_GETFL) | O_NONBLOCK);
        Frame f;
        ASSERT_TRUE(next(f));
        hello_ = f;
    }

    void TearDown() override {
        if (keeper_ > 0) {
            ::kill(keeper_, SIGTERM);
            int st = 0;
            while (::waitpid(keeper_, &st, 0) < 0 && errno == EINTR) {
            }
            EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0)
                << "the agent ended before the test did (keeper status " << st << ")";
        }
        test::remove_tree(dir_);
    }

    // The next frame from the agent, also kept in log_.
    ::testing::AssertionResult next(Frame& f) {
        const uint64_t deadline = mono_ns() + uint64_t{kTimeoutMs} * 1000000;
        while (!reader_.next(f)) {
            if (!reader_.error().empty()) return ::testing::AssertionFailure() << "broken frame: " << reader_.error();
            uint64_t now = mono_ns();
            if (now >= deadline)
                return ::testing::AssertionFailure() << "no frame from the agent within " << kTimeoutMs << " ms";
            pollfd pf{host_.get(), POLLIN, 0};
            int r = ::poll(&pf, 1, static_cast<int>((deadline - now) / 1000000) + 1);
            if (r < 0 && errno != EINTR) return ::testing::AssertionFailure() << "poll: " << std::strerror(errno);
            if (r <= 0) continue;
            char buf[65536];
            ssize_t n = ::read(host_.get(), buf, sizeof buf);
            if (n == 0) return ::testing::AssertionFailure() << "the agent closed the channel";
            if (n < 0 && errno != EAGAIN && errno != EINTR)
                return ::testing::AssertionFailure() << "read: " << std::strerror(errno);
            if (n > 0) reader_.feed(buf, static_cast<size_t>(n));
        }
        log_.push_back(f);
        return ::testing::AssertionSuccess();
    }

    // Reads frames until one of `session` of type `t` arrives; *out gets it.
    ::testing::AssertionResult wait_for(uint32_t session, Type t, Frame* out = nullptr) {
        Frame f;
        do {
            auto r = next(f);
            if (!r) return r << " (waiting for " << agent::type_name(t) << " of session " << session << ")";
        } while (f.session != session || f.type != t);
        if (out) *out = f;
        return ::testing::AssertionSuccess();
    }

    ::testing::AssertionResult send_raw(const std::string& w) {
        const uint64_t deadline = mono_ns() + uint64_t{kTimeoutMs} * 1000000;
        size_t off = 0;
        while (off < w.size()) {
            ssize_t n = ::write(host_.get(), w.data() + off, w.size() - off);
            if (n > 0) {
                off += static_cast<size_t>(n);
                continue;
            }
            if (n < 0 && errno != EAGAIN && errno != EINTR)
                return ::testing::AssertionFailure() << "write: " << std::strerror(errno);
            uint64_t now = mono_ns();
            if (now >= deadline) return ::testing::AssertionFailure() << "the agent takes nothing more";
            pollfd pf{host_.get(), POLLOUT, 0};
            ::poll(&pf, 1, static_cast<int>((deadline - now) / 1000000) + 1);
        }
        return ::testing::AssertionSuccess();
    }
    ::testing::AssertionResult send(uint32_t session, Type t, const std::string& p = {}) {
        std::string w;
        agent::append_frame(w, session, t, p);
        return send_raw(w);
    }

    guest::GuestConfig config(std::vector<std::string> argv, bool stdin_open = false) {
        guest::GuestConfig c;
        c.argv = std::move(argv);
        c.env = {"PATH=/usr/bin:/bin", "LC_ALL=C"};
        c.cwd = dir_;
        c.stdin_open = stdin_open;
        return c;
    }
    guest::GuestConfig sh(const std::string& script, bool stdin_open = false) {
        return config({"/bin/sh", "-c", script}, stdin_open);
    }

    // Open, its Ack, Go and Started; *pid gets the command's pid (as the
    // agent's PID namespace numbers it).
    ::testing::AssertionResult start(uint32_t session, const guest::GuestConfig& c, std::string* pid = nullptr) {
        if (auto r = send(session, Type::Open, guest::encode(c)); !r) return r;
        if (auto r = wait_for(session, Type::Ack); !r) return r;
        if (auto r = send(session, Type::Go); !r) return r;
        Frame f;
        if (auto r = wait_for(session, Type::Started, &f); !r) return r;
        if (pid) *pid = f.payload;
        return ::testing::AssertionSuccess();
    }

    // The Exit of a session.
    std::string exit_of(uint32_t session) {
        Frame f;
        EXPECT_TRUE(wait_for(session, Type::Exit, &f));
        return f.payload;
    }
    std::string run(uint32_t session, const guest::GuestConfig& c) {
        EXPECT_TRUE(send(session, Type::Open, guest::encode(c)));
        EXPECT_TRUE(wait_for(session, Type::Ack));
        EXPECT_TRUE(send(session, Type::Go));
        return exit_of(session);
    }

    // Frames are handled in order and their answers queued in order: once
    // the answer to this one is in, every answer to what was sent before it
    // is in log_ too. (A Go for a session never opened is answered at once.)
    ::testing::AssertionResult barrier() {
        uint32_t id = next_barrier_++;
        if (auto r = send(id, Type::Go); !r) return r;
        Frame f;
        if (auto r = wait_for(id, Type::Exit, &f); !r) return r;
        if (f.payload.rfind("error 125 ", 0) != 0) return ::testing::AssertionFailure() << "barrier got " << f.payload;
        return ::testing::AssertionSuccess();
    }

    // Returns once the agent has reaped the process `pid` of its namespace:
    // a command of a new session polls for it to be gone (kill -0 succeeds
    // on a zombie). A process that is never killed fails the test.
    void wait_reaped(const std::string& pid) {
        ASSERT_FALSE(pid.empty());
        uint32_t id = next_waiter_++;
        EXPECT_EQ(run(id, sh("while kill -0 " + pid + " 2>/dev/null; do :; done")), "exit 0")
            << "process " << pid << " is still there";
    }

    std::vector<Frame> of(uint32_t session, size_t from = 0) const {
        std::vector<Frame> v;
        for (size_t i = from; i < log_.size(); ++i)
            if (log_[i].session == session) v.push_back(log_[i]);
        return v;
    }
    size_t count(uint32_t session, Type t, size_t from = 0) const {
        size_t n = 0;
        for (auto& f : of(session, from)) n += f.type == t;
        return n;
    }
    std::string output(uint32_t session, Type t) const {
        std::string s;
        for (auto& f : of(session))
            if (f.type == t) s += f.payload;
        return s;
    }
    // Index in log_ of the first frame of a session of type t, or -1.
    long index_of(uint32_t session, Type t) const {
        for (size_t i = 0; i < log_.size(); ++i)
            if (log_[i].session == session && log_[i].type == t) return static_cast<long>(i);
        return -1;
    }
    // Reads until the session's Stdout so far ends with `marker`.
    ::testing::AssertionResult wait_output(uint32_t session, const std::string& marker) {
        while (true) {
            std::string s = output(session, Type::Stdout);
            if (s.size() >= marker.size() && s.compare(s.size() - marker.size(), marker.size(), marker) == 0)
                return ::testing::AssertionSuccess();
            if (auto r = wait_for(session, Type::Stdout); !r) return r << " (waiting for output " << marker << ")";
        }
    }

    std::string dir_;
    UniqueFd host_;
    pid_t keeper_ = -1;
    agent::FrameReader reader_;
    std::vector<Frame> log_;
    Frame hello_;
    uint32_t next_barrier_ = 0x70000000;
    uint32_t next_waiter_ = 0x60000000;
};

TEST_F(AgentGuest, HelloComesFirst) {
    ASSERT_EQ(log_.size(), 1u);
    EXPECT_EQ(hello_.session, 0u);
    EXPECT_EQ(hello_.type, Type::Hello);
    std::string boot = read_file("/proc/sys/kernel/random/boot_id");
    while (!boot.empty() && boot.back() == '\n') boot.pop_back();
    ASSERT_FALSE(boot.empty());
    EXPECT_EQ(hello_.payload, "ocivm-agent 1 " + boot);
}

TEST_F(AgentGuest, GoRunsTheCommandExactlyOnce) {
    const std::string runs = dir_ + "/runs";
    // cat keeps it running (its stdin open, nothing sent) until StdinEof.
    auto c = sh("echo x >> '" + runs + "'; echo ran; exec cat", true);
    ASSERT_TRUE(send(1, Type::Open, guest::encode(c)));
    ASSERT_TRUE(wait_for(1, Type::Ack));
    ASSERT_TRUE(barrier());
    EXPECT_EQ(count(1, Type::Started), 0u) << "ran before its Go";
    EXPECT_EQ(count_lines(runs), 0u);

    ASSERT_TRUE(send(1, Type::Go));
    ASSERT_TRUE(wait_for(1, Type::Started));
    ASSERT_TRUE(wait_output(1, "ran\n"));
    EXPECT_EQ(count_lines(runs), 1u);

    // A second Go, and an Open re-sent while it runs (after a reset).
    size_t mark = log_.size();
    ASSERT_TRUE(send(1, Type::Go));
    ASSERT_TRUE(send(1, Type::Open, guest::encode(c)));
    ASSERT_TRUE(barrier());
    EXPECT_EQ(count(1, Type::Ack, mark), 1u) << "the re-sent Open of a running session is acknowledged";
    EXPECT_EQ(count(1, Type::Started, mark), 0u);
    EXPECT_EQ(count(1, Type::Exit, mark), 0u);

    ASSERT_TRUE(send(1, Type::StdinEof));
    EXPECT_EQ(exit_of(1), "exit 0");
    EXPECT_EQ(count_lines(runs), 1u);

    // Re-sent once it has finished: acknowledged, and the same Exit again.
    mark = log_.size();
    ASSERT_TRUE(send(1, Type::Open, guest::encode(c)));
    ASSERT_TRUE(barrier());
    auto again = of(1, mark);
    ASSERT_EQ(again.size(), 2u);
    EXPECT_EQ(again[0].type, Type::Ack);
    EXPECT_EQ(again[1].type, Type::Exit);
    EXPECT_EQ(again[1].payload, "exit 0");
    EXPECT_EQ(count(1, Type::Started), 1u);
    EXPECT_EQ(count_lines(runs), 1u) << "the command ran more than once";
}

TEST_F(AgentGuest, RequestsForNoSessionAreRefused) {
    ASSERT_TRUE(send(77, Type::Go));
    std::string e = exit_of(77);
    EXPECT_EQ(e.rfind("error 125 ", 0), 0u) << e;
    EXPECT_EQ(agent::exit_status(e, nullptr), 125);

    ASSERT_TRUE(send(0, Type::Open, guest::encode(sh("true"))));
    e = exit_of(0);
    EXPECT_EQ(e.rfind("error 125 ", 0), 0u) << e;

    ASSERT_TRUE(send(78, Type::Open, "arg sh\nbogus 1\n"));
    e = exit_of(78);
    EXPECT_EQ(e.rfind("error 125 bad request", 0), 0u) << e;
    EXPECT_EQ(count(78, Type::Ack), 0u);
}

TEST_F(AgentGuest, ExitStatuses) {
    EXPECT_EQ(run(1, sh("exit 3")), "exit 3");
    EXPECT_EQ(run(2, sh("kill -9 $$")), "signal 9");
    EXPECT_EQ(run(3, sh("exit 0")), "exit 0");

    std::string e = run(4, config({"no-such-program-ocivm-agent-test"}));
    EXPECT_EQ(e.rfind("error 127 ", 0), 0u) << e;
    e = run(5, config({dir_ + "/missing"}));
    EXPECT_EQ(e.rfind("error 127 ", 0), 0u) << e;

    const std::string plain = dir_ + "/not-executable";
    { std::ofstream(plain) << "#!/bin/sh\nexit 0\n"; }
    ASSERT_EQ(::chmod(plain.c_str(), 0644), 0);
    e = run(6, config({plain}));
    EXPECT_EQ(e.rfind("error 126 ", 0), 0u) << e;

    for (uint32_t s : {4u, 5u, 6u}) EXPECT_EQ(count(s, Type::Started), 0u) << "session " << s;
}

TEST_F(AgentGuest, StdoutAndStderrApartAndExitAfterThem) {
    // More than one pipe's worth each, less than the window together.
    EXPECT_EQ(run(1, sh("head -c 100000 /dev/zero; head -c 90000 /dev/zero | tr '\\0' e >&2; echo end")), "exit 0");
    std::string out = output(1, Type::Stdout), err = output(1, Type::Stderr);
    EXPECT_EQ(out, std::string(100000, '\0') + "end\n");
    EXPECT_EQ(err, std::string(90000, 'e'));
    ASSERT_TRUE(barrier());
    auto frames = of(1);
    ASSERT_FALSE(frames.empty());
    EXPECT_EQ(frames.back().type, Type::Exit) << "output after the Exit";
    EXPECT_EQ(count(1, Type::Exit), 1u);
}

TEST_F(AgentGuest, OutputWaitsForCredit) {
    constexpr size_t kTotal = 1 << 20;
    ASSERT_TRUE(start(1, sh("head -c " + std::to_string(kTotal) + " /dev/zero")));
    size_t got = 0;
    Frame f;
    while (got < agent::kWindow) {
        ASSERT_TRUE(next(f));
        if (f.session != 1) continue;
        ASSERT_NE(f.type, Type::Exit) << "finished without credit, after " << got << " bytes";
        if (f.type == Type::Stdout || f.type == Type::Stderr) got += f.payload.size();
        ASSERT_LE(got, agent::kWindow);
    }
    // The window is used up: whatever was going to come without credit has.
    ASSERT_TRUE(barrier());
    ASSERT_TRUE(barrier());
    size_t held = 0;
    for (auto& fr : of(1))
        if (fr.type == Type::Stdout || fr.type == Type::Stderr) held += fr.payload.size();
    EXPECT_EQ(held, size_t{agent::kWindow});
    EXPECT_EQ(count(1, Type::Exit), 0u);

    // Credit returned as a client takes the output, the rest comes.
    size_t credited = 0;
    ASSERT_TRUE(send(1, Type::CreditOut, agent::u32_payload(agent::kWindow)));
    credited += agent::kWindow;
    while (true) {
        ASSERT_TRUE(next(f));
        if (f.session != 1) continue;
        if (f.type == Type::Exit) {
            EXPECT_EQ(f.payload, "exit 0");
            break;
        }
        ASSERT_EQ(f.type, Type::Stdout);
        got += f.payload.size();
        ASSERT_LE(got - credited, size_t{agent::kWindow}) << "output beyond the credit window";
        ASSERT_TRUE(send(1, Type::CreditOut, agent::u32_payload(static_cast<uint32_t>(f.payload.size()))));
        credited += f.payload.size();
    }
    EXPECT_EQ(got, kTotal);
}

TEST_F(AgentGuest, StdinReachesTheCommandWithinItsCredit) {
    constexpr size_t kTotal = 1 << 20;  // four windows: only credit returned lets it all through
    ASSERT_TRUE(start(1, config({"wc", "-c"}, true)));
    size_t sent = 0, returned = 0;
    const std::string chunk(agent::kMaxPayload, 's');
    Frame f;
    while (sent < kTotal) {
        if (sent - returned + chunk.size() <= agent::kWindow) {
            ASSERT_TRUE(send(1, Type::Stdin, chunk));
            sent += chunk.size();
            continue;
        }
        ASSERT_TRUE(wait_for(1, Type::CreditIn, &f));
        uint32_t n = 0;
        ASSERT_TRUE(agent::parse_u32(f.payload, &n));
        returned += n;
        ASSERT_LE(returned, sent);
    }
    ASSERT_TRUE(send(1, Type::StdinEof));
    EXPECT_EQ(exit_of(1), "exit 0") << "StdinEof did not end its input";
    EXPECT_EQ(output(1, Type::Stdout), std::to_string(kTotal) + "\n");
    returned = 0;
    for (auto& fr : of(1))
        if (fr.type == Type::CreditIn) {
            uint32_t n = 0;
            ASSERT_TRUE(agent::parse_u32(fr.payload, &n));
            returned += n;
        }
    EXPECT_EQ(returned, kTotal) << "every byte taken is credited back";
}

TEST_F(AgentGuest, StdinBeyondTheWindowKillsTheSession) {
    std::string pid;
    // sleep never reads its stdin: after a pipe's worth, the agent holds it.
    ASSERT_TRUE(start(1, sh("echo ready; exec sleep 1000", true), &pid));
    ASSERT_TRUE(wait_output(1, "ready\n"));
    std::string w;
    const std::string chunk(agent::kMaxPayload, 's');
    for (size_t sent = 0; sent < agent::kWindow + (1u << 17); sent += chunk.size())
        agent::append_frame(w, 1, Type::Stdin, chunk);
    ASSERT_TRUE(send_raw(w));
    std::string e = exit_of(1);
    EXPECT_EQ(e.rfind("error 125 ", 0), 0u) << e;
    wait_reaped(pid);
    ASSERT_TRUE(barrier());
    EXPECT_EQ(count(1, Type::Exit), 1u) << "a second Exit once it was reaped";
    // An Open re-sent after a reset gets the Exit that was sent, not the
    // wait status of the kill that followed it.
    size_t mark = log_.size();
    ASSERT_TRUE(send(1, Type::Open, guest::encode(sh("exit 0"))));
    ASSERT_TRUE(barrier());
    auto again = of(1, mark);
    ASSERT_EQ(again.size(), 2u);
    EXPECT_EQ(again[1].type, Type::Exit);
    EXPECT_EQ(again[1].payload, e);
}

TEST_F(AgentGuest, SignalReachesTheProcessGroup) {
    // The background job prints its pid once it runs a program of its own
    // (a job forked but not exec'd yet still has its parent's trap, and a
    // TERM then would be lost), and that program becomes the sleep.
    ASSERT_TRUE(start(1, sh("trap 'exit 7' TERM; sh -c 'echo $$; exec sleep 1000' & wait")));
    ASSERT_TRUE(wait_output(1, "\n"));
    std::string sleeper = output(1, Type::Stdout);
    sleeper.pop_back();
    ASSERT_TRUE(send(1, Type::Signal, agent::u32_payload(SIGTERM)));
    EXPECT_EQ(exit_of(1), "exit 7");
    wait_reaped(sleeper);  // the background sleep got it too
}

TEST_F(AgentGuest, CloseKillsARunningSessionWithoutAnExit) {
    std::string pid;
    ASSERT_TRUE(start(1, sh("echo ready; exec sleep 1000"), &pid));
    ASSERT_TRUE(wait_output(1, "ready\n"));
    ASSERT_TRUE(send(1, Type::Close));
    wait_reaped(pid);
    ASSERT_TRUE(barrier());
    EXPECT_EQ(count(1, Type::Exit), 0u);
    // Closed means forgotten: an Open of its id is a new session (acked,
    // not answered with the killed one's exit).
    size_t mark = log_.size();
    ASSERT_TRUE(send(1, Type::Open, guest::encode(sh("exit 0"))));
    ASSERT_TRUE(barrier());
    auto again = of(1, mark);
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(again[0].type, Type::Ack);
}

TEST_F(AgentGuest, GarbageFrameResetsTheChannel) {
    std::string pid;
    ASSERT_TRUE(start(1, sh("echo ready; exec sleep 1000"), &pid));
    ASSERT_TRUE(wait_output(1, "ready\n"));
    ASSERT_TRUE(send(2, Type::Open, guest::encode(sh("echo must not run"))));
    ASSERT_TRUE(wait_for(2, Type::Ack));

    unsigned char h[agent::kHeaderSize] = {};
    agent::put_u32(h, 1);
    h[4] = 99;  // no such type
    ASSERT_TRUE(send_raw(std::string(reinterpret_cast<char*>(h), sizeof h)));
    Frame f;
    ASSERT_TRUE(wait_for(0, Type::Hello, &f));
    EXPECT_EQ(f.payload, hello_.payload);

    wait_reaped(pid);
    ASSERT_TRUE(send(2, Type::Go));  // forgotten: never runs
    std::string e = exit_of(2);
    EXPECT_EQ(e.rfind("error 125 ", 0), 0u) << e;
    ASSERT_TRUE(barrier());
    EXPECT_EQ(count(1, Type::Exit), 0u);
    EXPECT_EQ(count(2, Type::Started), 0u);
}

TEST_F(AgentGuest, TooManySessionsAreRefused) {
    // Opened sessions hold no process: the limit is cheap to reach.
    std::string w;
    const std::string open = guest::encode(sh("true"));
    for (uint32_t s = 1; s <= agent::kMaxSessions; ++s) agent::append_frame(w, s, Type::Open, open);
    ASSERT_TRUE(send_raw(w));
    ASSERT_TRUE(wait_for(agent::kMaxSessions, Type::Ack));
    for (uint32_t s = 1; s <= agent::kMaxSessions; ++s) ASSERT_EQ(count(s, Type::Ack), 1u) << s;

    const uint32_t extra = agent::kMaxSessions + 1;
    ASSERT_TRUE(send(extra, Type::Open, open));
    std::string e = exit_of(extra);
    EXPECT_EQ(e.rfind("error 125 too many sessions", 0), 0u) << e;
    EXPECT_EQ(count(extra, Type::Ack), 0u);

    // A Close makes room again.
    ASSERT_TRUE(send(1, Type::Close));
    ASSERT_TRUE(send(extra, Type::Open, open));
    ASSERT_TRUE(wait_for(extra, Type::Ack));
    ASSERT_TRUE(send(extra, Type::Go));
    EXPECT_EQ(exit_of(extra), "exit 0");
}


agent::RestoreInfo restore_info(uint64_t epoch) {
    agent::RestoreInfo r;
    r.epoch = epoch;
    r.hostname = "clone-1";
    r.mac = "52:54:00:aa:bb:cc";
    r.time_sec = 1800000000;
    r.time_nsec = 5;
    r.seed = std::string(64, 'a');
    r.machine_id = std::string(32, '0');
    return r;
}

TEST_F(AgentGuest, RestoreTakesTheIdentityDropsSessionsAndGreetsWithItsEpoch) {
    std::string pid;
    ASSERT_TRUE(start(1, sh("echo ready; exec sleep 1000"), &pid));
    ASSERT_TRUE(wait_output(1, "ready\n"));
    ASSERT_TRUE(send(0, Type::Restore, restore_info(42).encode()));
    Frame f;
    ASSERT_TRUE(wait_for(0, Type::Hello, &f));
    EXPECT_EQ(f.payload, hello_.payload + " epoch 42");
    EXPECT_EQ(read_file(g_restore_log), restore_info(42).encode() + "--\n");
    wait_reaped(pid);  // the snapshot's session is not this host's: killed, no Exit
    ASSERT_TRUE(barrier());
    EXPECT_EQ(count(1, Type::Exit), 0u);
    // The same epoch again (the host saw a Hello without it): only a Hello.
    ASSERT_TRUE(send(0, Type::Restore, restore_info(42).encode()));
    ASSERT_TRUE(wait_for(0, Type::Hello, &f));
    EXPECT_EQ(f.payload, hello_.payload + " epoch 42");
    EXPECT_EQ(read_file(g_restore_log), restore_info(42).encode() + "--\n");
    // A new session after the restore runs as usual.
    ASSERT_TRUE(start(2, sh("echo after")));
    EXPECT_EQ(exit_of(2), "exit 0");
}

TEST_F(AgentGuest, MalformedRestoreIsIgnored) {
    agent::RestoreInfo r = restore_info(7);
    r.hostname = "bad name;rm";
    size_t mark = log_.size();
    ASSERT_TRUE(send(0, Type::Restore, r.encode()));
    ASSERT_TRUE(send(0, Type::Restore, "epoch 9\nhostname x\n"));  // fields missing
    ASSERT_TRUE(barrier());
    EXPECT_EQ(count(0, Type::Hello), 1u) << "only the first Hello";
    EXPECT_GT(log_.size(), mark);
    struct stat st;
    EXPECT_NE(::stat(g_restore_log.c_str(), &st), 0) << "the hook never ran";
}

}  // namespace
}  // namespace ocivm
