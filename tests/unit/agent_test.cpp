// The exec agent's wire format (agent_protocol.h) and the supervisor's hub
// (vm/agent_hub): framing across arbitrary splits, broken frames refused,
// podman's exit statuses, and the session life cycle as a guest agent sees
// it: nothing before its Hello, Go only after the Ack, Close when the client
// leaves, and a reset (a second Hello) failing what ran and re-sending what
// was never acknowledged.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <vector>

#include "guest/agent_protocol.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/io.h"
#include "vm/agent_hub.h"
#include "vm/vm_state.h"

namespace ocivm {
namespace {

using agent::Frame;
using agent::Type;

TEST(AgentProtocol, FramesSurviveAnySplit) {
    std::string wire;
    agent::append_frame(wire, 7, Type::Open, "arg sh\n");
    agent::append_frame(wire, 7, Type::Stdin, std::string(70000 - 4466, 'x'));
    agent::append_frame(wire, 9, Type::StdinEof);
    for (size_t step : {size_t{1}, size_t{5}, size_t{12}, size_t{4096}, wire.size()}) {
        agent::FrameReader r;
        std::vector<Frame> got;
        for (size_t i = 0; i < wire.size(); i += step) {
            r.feed(wire.data() + i, std::min(step, wire.size() - i));
            Frame f;
            while (r.next(f)) got.push_back(f);
        }
        ASSERT_EQ(got.size(), 3u) << "step " << step;
        EXPECT_EQ(got[0].session, 7u);
        EXPECT_EQ(got[0].type, Type::Open);
        EXPECT_EQ(got[0].payload, "arg sh\n");
        EXPECT_EQ(got[1].payload.size(), 70000u - 4466);
        EXPECT_EQ(got[2].session, 9u);
        EXPECT_EQ(got[2].type, Type::StdinEof);
        EXPECT_EQ(r.pending(), 0u);
        EXPECT_TRUE(r.error().empty());
    }
}

TEST(AgentProtocol, OversizedOrUnknownFramesBreakTheChannel) {
    unsigned char h[agent::kHeaderSize] = {};
    agent::put_u32(h, 1);
    h[4] = static_cast<unsigned char>(Type::Stdout);
    agent::put_u32(h + 8, agent::kMaxPayload + 1);
    agent::FrameReader r;
    r.feed(reinterpret_cast<char*>(h), sizeof h);
    Frame f;
    EXPECT_FALSE(r.next(f));
    EXPECT_NE(r.error().find("limit"), std::string::npos);
    // Nothing after a broken frame is yielded, even a good one.
    std::string good;
    agent::append_frame(good, 1, Type::Go);
    r.feed(good.data(), good.size());
    EXPECT_FALSE(r.next(f));

    agent::FrameReader u;
    h[4] = 99;
    agent::put_u32(h + 8, 0);
    u.feed(reinterpret_cast<char*>(h), sizeof h);
    EXPECT_FALSE(u.next(f));
    EXPECT_NE(u.error().find("unknown type 99"), std::string::npos);
}

TEST(AgentProtocol, ExitStatusesArePodmans) {
    std::string msg;
    EXPECT_EQ(agent::exit_status("exit 0", &msg), 0);
    EXPECT_EQ(agent::exit_status("exit 3", &msg), 3);
    EXPECT_EQ(agent::exit_status("signal 9", &msg), 137);
    EXPECT_EQ(agent::exit_status("error 127 sh: command not found", &msg), 127);
    EXPECT_EQ(msg, "sh: command not found");
    EXPECT_EQ(agent::exit_status("error 126 x: not executable", &msg), 126);
    EXPECT_EQ(agent::exit_status("error 42 odd", &msg), 125);
    EXPECT_EQ(agent::exit_status("garbage", &msg), 125);
    EXPECT_NE(msg.find("malformed"), std::string::npos);
}

// A hub with a fake guest agent on the other end of its port, and clients
// connecting the way `ocivm exec` does.
class HubTest : public ::testing::Test {
protected:
    void SetUp() override {
        int sv[2];
        ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        guest_ = UniqueFd(sv[1]);
        dir_ = "/nonexistent/ocivm-hub-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++);
        token_ = vm::new_control_token();
        AgentHub::Hooks hooks;
        hooks.on_hello = [this](const std::string& boot) {
            boots_.push_back(boot);
            if (on_hello_extra_) on_hello_extra_();
        };
        hub_ = std::make_unique<vm::AgentHub>(UniqueFd(sv[0]), vm::listen_supervisor(token_), hooks);
    }
    using AgentHub = vm::AgentHub;

    UniqueFd client() {
        vm::VmEntry e;
        e.dir = dir_;
        e.record.name = "hub-test";
        e.record.supervisor_pid = ::getpid();
        e.record.control = token_;
        e.supervisor_alive = true;
        UniqueFd c = vm::connect_supervisor(e);
        pump();
        return c;
    }
    // Runs the hub until nothing happens for a while.
    void pump(int idle_ms = 50) {
        uint64_t idle_since = mono_ns();
        while (mono_ns() - idle_since < static_cast<uint64_t>(idle_ms) * 1000000) {
            std::vector<pollfd> pf;
            hub_->add_pollfds(pf);
            if (::poll(pf.data(), pf.size(), 10) > 0) {
                hub_->handle(pf);
                idle_since = mono_ns();
            }
        }
    }
    void send(int fd, uint32_t session, Type t, const std::string& p = {}) {
        std::string w;
        agent::append_frame(w, session, t, p);
        ASSERT_TRUE(write_all(fd, w.data(), w.size()));
        pump();
    }
    void open_session(int fd) {
        std::string w = "exec\n";
        agent::append_frame(w, 0, Type::Open, "arg true\n");
        ASSERT_TRUE(write_all(fd, w.data(), w.size()));
        pump();
    }
    // Opens a session from client fd and lets the fake agent acknowledge
    // it (the hub's Go is consumed); returns the session id.
    uint32_t running_session(int fd) {
        open_session(fd);
        auto g = frames(guest_.get(), guest_reader_);
        EXPECT_EQ(g.size(), 1u);
        if (g.size() != 1) return 0;
        EXPECT_EQ(g[0].type, Type::Open);
        uint32_t id = g[0].session;
        send(guest_.get(), id, Type::Ack);
        auto go = frames(guest_.get(), guest_reader_);
        EXPECT_EQ(go.size(), 1u);
        return id;
    }
    // What arrived on fd so far, as frames; *eof when it was closed.
    std::vector<Frame> frames(int fd, agent::FrameReader& r, bool* eof = nullptr) {
        std::vector<Frame> out;
        char buf[65536];
        pollfd p{fd, POLLIN, 0};
        // The hub writes as the socket takes it: keep it running meanwhile.
        for (int idle = 0; idle < 3;) {
            if (::poll(&p, 1, 20) <= 0) {
                pump(20);
                ++idle;
                continue;
            }
            ssize_t n = ::read(fd, buf, sizeof buf);
            if (n <= 0) {
                if (eof) *eof = true;
                break;
            }
            r.feed(buf, static_cast<size_t>(n));
            idle = 0;
        }
        Frame f;
        while (r.next(f)) out.push_back(f);
        return out;
    }

    static inline int counter_ = 0;
    std::string dir_, token_;
    UniqueFd guest_;
    agent::FrameReader guest_reader_;
    std::unique_ptr<vm::AgentHub> hub_;
    std::vector<std::string> boots_;
    std::function<void()> on_hello_extra_;
};

TEST_F(HubTest, HelloHookRunsBeforeHeldFramesReachTheGuest) {
    // A boot snapshot is taken in the hook: an exec that was waiting for the
    // guest must not be in it (its command and environment are a run's).
    UniqueFd c = client();
    open_session(c.get());
    int pending = -1;
    on_hello_extra_ = [&] { ::ioctl(guest_.get(), FIONREAD, &pending); };
    send(guest_.get(), 0, Type::Hello, "ocivm-agent 1 boot-a");
    EXPECT_EQ(pending, 0) << "the held Open was sent before the hook ran";
    auto g = frames(guest_.get(), guest_reader_);
    ASSERT_EQ(g.size(), 1u);
    EXPECT_EQ(g[0].type, Type::Open) << "and it is sent right after";
}

TEST_F(HubTest, ClientsTalkOnlyToTheRecordedSupervisor) {
    vm::VmEntry e;
    e.dir = dir_;
    e.record.name = "hub-test";
    e.record.control = token_;
    e.record.supervisor_pid = ::getpid() + 100000;  // someone else holds the socket
    e.supervisor_alive = true;
    try {
        vm::connect_supervisor(e);
        FAIL() << "connected to a listener that is not the recorded supervisor";
    } catch (const Error& err) {
        EXPECT_NE(std::string(err.what()).find("not its supervisor"), std::string::npos) << err.what();
    }
}

TEST_F(HubTest, GuestIgnoringTheOutputWindowLosesItsSession) {
    send(guest_.get(), 0, Type::Hello, "ocivm-agent 1 boot-a");
    UniqueFd c = client();
    uint32_t id = running_session(c.get());
    ASSERT_NE(id, 0u);
    // The client credits nothing back; the guest sends beyond the window.
    std::string chunk(agent::kMaxPayload, 'x');
    for (uint32_t sent = 0; sent <= agent::kWindow; sent += agent::kMaxPayload) send(guest_.get(), id, Type::Stdout, chunk);
    agent::FrameReader cr;
    auto cf = frames(c.get(), cr);
    ASSERT_FALSE(cf.empty());
    EXPECT_EQ(cf.back().type, Type::Exit);
    std::string msg;
    EXPECT_EQ(agent::exit_status(cf.back().payload, &msg), 125);
    EXPECT_NE(msg.find("credit window"), std::string::npos) << msg;
    size_t data = 0;
    for (auto& f : cf) data += f.type == Type::Stdout ? f.payload.size() : 0;
    EXPECT_LE(data, agent::kWindow) << "nothing beyond the window reaches (or is held for) the client";
    auto g = frames(guest_.get(), guest_reader_);
    ASSERT_EQ(g.size(), 1u);
    EXPECT_EQ(g[0].type, Type::Close) << "the guest is told to kill the session";
}

TEST_F(HubTest, RestoredVmTakesOnlyTheHelloWithItsEpoch) {
    agent::RestoreInfo r;
    r.epoch = 77;
    r.hostname = "clone";
    r.time_sec = 1800000000;
    r.seed = std::string(64, 'f');
    r.machine_id = std::string(32, '1');
    UniqueFd c = client();
    open_session(c.get());  // held until the clone's agent greets
    hub_->restore(r);
    pump();
    auto g = frames(guest_.get(), guest_reader_);
    ASSERT_EQ(g.size(), 1u) << "the Restore goes out at once, nothing else before the Hello";
    EXPECT_EQ(g[0].type, Type::Restore);
    EXPECT_EQ(g[0].payload, r.encode());
    // A Hello from before the restore (the snapshot's, still in the port)
    // is not the clone's: the Restore is sent again, nothing else.
    send(guest_.get(), 0, Type::Hello, "ocivm-agent 1 boot-a");
    send(guest_.get(), 0, Type::Hello, "ocivm-agent 1 boot-a epoch 76");
    EXPECT_TRUE(boots_.empty());
    g = frames(guest_.get(), guest_reader_);
    ASSERT_EQ(g.size(), 2u);
    EXPECT_EQ(g[0].type, Type::Restore);
    EXPECT_EQ(g[1].type, Type::Restore);
    send(guest_.get(), 0, Type::Hello, "ocivm-agent 1 boot-a epoch 77");
    EXPECT_EQ(boots_, std::vector<std::string>{"boot-a"});
    g = frames(guest_.get(), guest_reader_);
    ASSERT_EQ(g.size(), 1u);
    EXPECT_EQ(g[0].type, Type::Open) << "the held Open goes once the clone greeted";
}

TEST(AgentProtocol, RestoreInfoRoundTripsAndRefusesOddFields) {
    agent::RestoreInfo r;
    r.epoch = 123456789012345ull;
    r.hostname = "clone-2.example";
    r.mac = "52:54:00:0a:0b:0c";
    r.time_sec = 1800000000;
    r.time_nsec = 999999999;
    r.seed = std::string(64, 'e');
    r.machine_id = std::string(32, '9');
    agent::RestoreInfo back;
    ASSERT_EQ(back.parse(r.encode()), "");
    EXPECT_EQ(back.encode(), r.encode());
    auto with = [&](const std::string& key, const std::string& value) {
        std::string text = r.encode();
        size_t a = text.find(key + " ");
        size_t e = text.find('\n', a);
        text.replace(a, e - a, key + " " + value);
        agent::RestoreInfo x;
        return x.parse(text);
    };
    EXPECT_NE(with("hostname", "a b"), "");
    EXPECT_NE(with("hostname", "x;reboot"), "");
    EXPECT_NE(with("hostname", std::string(65, 'a')), "");
    EXPECT_NE(with("mac", "52:54:00:0a:0b"), "");
    EXPECT_NE(with("mac", "52-54-00-0a-0b-0c"), "");
    EXPECT_NE(with("seed", std::string(63, 'e')), "");
    EXPECT_NE(with("seed", std::string(64, 'E')), "");
    EXPECT_NE(with("machine-id", "../../etc/shadow0000000000000000"), "");
    EXPECT_NE(with("time", "-5.0"), "");
    EXPECT_NE(with("time", "5.1000000000"), "");
    EXPECT_NE(with("epoch", "0x10"), "");
    EXPECT_EQ(with("mac", ""), "") << "no network: no MAC";
    agent::RestoreInfo y;
    EXPECT_NE(y.parse("epoch 5\n"), "") << "fields missing";
    EXPECT_NE(y.parse(r.encode() + "color red\n"), "") << "an unknown field";
}

TEST_F(HubTest, OddBootIdsAreNotRecorded) {
    send(guest_.get(), 0, Type::Hello, "ocivm-agent 1 \xff\xfe\"{}");
    ASSERT_EQ(boots_, std::vector<std::string>{"invalid"});
}

TEST_F(HubTest, SessionLifeCycle) {
    UniqueFd c = client();
    open_session(c.get());
    EXPECT_TRUE(frames(guest_.get(), guest_reader_).empty()) << "nothing may reach the agent before its Hello";
    send(guest_.get(), 0, Type::Hello, "ocivm-agent 1 boot-a");
    ASSERT_EQ(boots_, std::vector<std::string>{"boot-a"});
    auto g = frames(guest_.get(), guest_reader_);
    ASSERT_EQ(g.size(), 1u);
    EXPECT_EQ(g[0].type, Type::Open);
    EXPECT_EQ(g[0].payload, "arg true\n");
    uint32_t id = g[0].session;
    EXPECT_NE(id, 0u);
    send(guest_.get(), id, Type::Ack);
    g = frames(guest_.get(), guest_reader_);
    ASSERT_EQ(g.size(), 1u);
    EXPECT_EQ(g[0].type, Type::Go);
    EXPECT_EQ(g[0].session, id);
    // A repeated Ack (the agent answering a re-sent Open) sends no second Go.
    send(guest_.get(), id, Type::Ack);
    EXPECT_TRUE(frames(guest_.get(), guest_reader_).empty());

    send(guest_.get(), id, Type::Stdout, "hello");
    send(guest_.get(), id, Type::Exit, "exit 3");
    agent::FrameReader cr;
    bool eof = false;
    auto cf = frames(c.get(), cr, &eof);
    ASSERT_EQ(cf.size(), 2u);
    EXPECT_EQ(cf[0].type, Type::Stdout);
    EXPECT_EQ(cf[0].payload, "hello");
    EXPECT_EQ(cf[1].type, Type::Exit);
    EXPECT_EQ(cf[1].payload, "exit 3");
    pump();
    frames(c.get(), cr, &eof);
    EXPECT_TRUE(eof) << "the hub closes a finished session's connection";
    EXPECT_EQ(hub_->sessions(), 0u);
}

TEST_F(HubTest, ClientThatLeavesClosesItsSession) {
    send(guest_.get(), 0, Type::Hello, "ocivm-agent 1 boot-a");
    UniqueFd c = client();
    uint32_t id = running_session(c.get());
    ASSERT_NE(id, 0u);
    c.reset();
    pump();
    auto g = frames(guest_.get(), guest_reader_);
    ASSERT_EQ(g.size(), 1u);
    EXPECT_EQ(g[0].type, Type::Close);
    EXPECT_EQ(g[0].session, id);
}

TEST_F(HubTest, AgentResetFailsRunningAndResendsUnacknowledged) {
    send(guest_.get(), 0, Type::Hello, "ocivm-agent 1 boot-a");
    UniqueFd running = client();
    uint32_t run_id = running_session(running.get());
    ASSERT_NE(run_id, 0u);

    UniqueFd pending = client();
    open_session(pending.get());
    auto g = frames(guest_.get(), guest_reader_);
    ASSERT_EQ(g.size(), 1u);
    uint32_t pend_id = g[0].session;
    ASSERT_NE(pend_id, run_id);

    send(guest_.get(), 0, Type::Hello, "ocivm-agent 1 boot-a");  // the agent restarted
    agent::FrameReader rr;
    auto rf = frames(running.get(), rr);
    ASSERT_EQ(rf.size(), 1u);
    EXPECT_EQ(rf[0].type, Type::Exit);
    std::string msg;
    EXPECT_EQ(agent::exit_status(rf[0].payload, &msg), 125);
    EXPECT_NE(msg.find("restarted"), std::string::npos);
    g = frames(guest_.get(), guest_reader_);
    ASSERT_EQ(g.size(), 2u) << "the lost session is closed, the unacknowledged Open sent again";
    EXPECT_EQ(g[0].type, Type::Close);
    EXPECT_EQ(g[0].session, run_id);
    EXPECT_EQ(g[1].type, Type::Open);
    EXPECT_EQ(g[1].session, pend_id);
}

TEST_F(HubTest, VmGoneFailsEverySession) {
    send(guest_.get(), 0, Type::Hello, "ocivm-agent 1 boot-a");
    UniqueFd c = client();
    open_session(c.get());
    guest_.reset();  // QEMU exited: the port reads end of file
    pump();
    agent::FrameReader cr;
    bool eof = false;
    auto cf = frames(c.get(), cr, &eof);
    ASSERT_EQ(cf.size(), 1u);
    EXPECT_EQ(cf[0].type, Type::Exit);
    std::string msg;
    EXPECT_EQ(agent::exit_status(cf[0].payload, &msg), 125);
    EXPECT_TRUE(eof);
}

}  // namespace
}  // namespace ocivm
