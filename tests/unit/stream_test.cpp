// The stream transport (issue 12 item 4): its framing, the host's
// StreamSession over a socketpair (hello, attach after leftovers, oversize
// frames, quiesce), and the guest relay's translation: a handle opened
// before a restore reads the same file through the clone's new server.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fuse.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <future>
#include <random>
#include <thread>

#include "guest/fuse_relay.h"
#include "guest/stream_protocol.h"
#include "transport/stream.h"
#include "unit/test_util.h"
#include "util/error.h"
#include "util/io.h"
#include "vm/snapshot.h"

using namespace ocivm;
using namespace ocivm::test;
using guest::Bytes;
using Status = stream::FrameReader::Status;

namespace {

Bytes frame(const Bytes& payload) {
    Bytes f(4 + payload.size());
    stream::put_u32(f.data(), static_cast<uint32_t>(payload.size()));
    if (!payload.empty()) std::memcpy(f.data() + 4, payload.data(), payload.size());
    return f;
}

Bytes control(uint64_t session) {
    Bytes f(stream::kControlFrameBytes);
    stream::control_frame(session, f.data());
    return f;
}

Bytes control_of(uint32_t marker, uint64_t v) {
    Bytes f(stream::kControlFrameBytes);
    stream::control_frame(v, f.data(), marker);
    return f;
}

}  // namespace

TEST(StreamFraming, FramesSurviveAnySplit) {
    Bytes wire;
    Bytes a = {'a', 'b', 'c'}, b(70000, 'x'), empty;
    for (auto* p : {&a, &b, &empty}) {
        Bytes f = frame(*p);
        wire.insert(wire.end(), f.begin(), f.end());
    }
    Bytes c = control(0x1122334455667788ull);
    wire.insert(wire.end(), c.begin(), c.end());
    for (size_t step : {size_t{1}, size_t{3}, size_t{4096}, wire.size()}) {
        stream::FrameReader r;
        std::vector<Bytes> got;
        uint64_t session = 0;
        int controls = 0;
        for (size_t off = 0; off < wire.size(); off += step) {
            r.feed(wire.data() + off, std::min(step, wire.size() - off));
            for (;;) {
                const unsigned char* d = nullptr;
                size_t n = 0;
                auto st = r.next(&d, &n, &session);
                if (st == Status::NeedMore) break;
                ASSERT_NE(st, Status::TooLong);
                if (st == Status::Control) ++controls;
                else got.emplace_back(d, d + n);
            }
        }
        ASSERT_EQ(got.size(), 3u) << "step " << step;
        EXPECT_EQ(got[0], a);
        EXPECT_EQ(got[1], b);
        EXPECT_TRUE(got[2].empty());
        EXPECT_EQ(controls, 1);
        EXPECT_EQ(session, 0x1122334455667788ull);
    }
}

TEST(StreamFraming, TooLongIsRefusedBeforeItsBytesArrive) {
    stream::FrameReader r;
    unsigned char len[4];
    stream::put_u32(len, stream::kMaxFrame + 1);
    r.feed(len, 4);
    const unsigned char* d = nullptr;
    size_t n = 0;
    uint64_t s;
    EXPECT_EQ(r.next(&d, &n, &s), Status::TooLong);
    EXPECT_EQ(r.buffered(), 4u);
    stream::FrameReader ok;
    stream::put_u32(len, stream::kMaxFrame);
    ok.feed(len, 4);
    EXPECT_EQ(ok.next(&d, &n, &s), Status::NeedMore) << "kMaxFrame itself is allowed";
}

TEST(StreamFraming, SeekControlSkipsAnEarlierSessionsLeftovers) {
    // A half-sent request of the snapshot's session, another session's
    // attach, then ours: only ours and what follows it count.
    Bytes wire = {0x40, 0, 0, 0, 1, 2, 3};
    Bytes other = control(7), ours = control(42), req = frame({9, 9});
    for (auto* p : {&other, &ours, &req}) wire.insert(wire.end(), p->begin(), p->end());
    stream::FrameReader r;
    r.feed(wire.data(), 10);
    EXPECT_FALSE(r.seek_control(42));
    EXPECT_LT(r.buffered(), stream::kControlFrameBytes) << "only what could start the marker is kept";
    r.feed(wire.data() + 10, wire.size() - 10);
    ASSERT_TRUE(r.seek_control(42));
    const unsigned char* d = nullptr;
    size_t n = 0;
    uint64_t s = 0;
    ASSERT_EQ(r.next(&d, &n, &s), Status::Control);
    EXPECT_EQ(s, 42u);
    ASSERT_EQ(r.next(&d, &n, &s), Status::Data);
    EXPECT_EQ(Bytes(d, d + n), (Bytes{9, 9}));
}

// ---- the host side: StreamSession on a socketpair

namespace {

struct SessionRig {
    Harness h;  // its server serves
    int sv[2] = {-1, -1};
    transport::StreamSession session{*h.server, 0xabcdef0123456789ull};
    std::future<int> served;
    SessionRig() {
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) throw std::runtime_error("socketpair");
        served = std::async(std::launch::async, [this] { return session.serve(sv[0]); });
    }
    ~SessionRig() {
        if (sv[1] >= 0) ::close(sv[1]);
        if (served.valid()) served.wait();
        ::close(sv[0]);
    }
    void put(const Bytes& b) { ASSERT_TRUE(write_all(sv[1], b.data(), b.size())); }
    // The next frame from the server (payload; session for a control frame).
    Bytes get(bool* is_control = nullptr, uint64_t* session_id = nullptr, uint32_t* marker = nullptr) {
        unsigned char len[4];
        if (!read_exact(4, len)) return {};
        uint32_t n = stream::get_u32(len);
        if (stream::is_control(n)) {
            unsigned char s[8];
            read_exact(8, s);
            if (is_control) *is_control = true;
            if (marker) *marker = n;
            if (session_id) *session_id = stream::get_u64(s);
            return {};
        }
        if (is_control) *is_control = false;
        Bytes b(n);
        read_exact(n, b.data());
        return b;
    }
    bool read_exact(size_t n, unsigned char* p) {
        for (size_t got = 0; got < n;) {
            ssize_t r = ::read(sv[1], p + got, n - got);
            if (r <= 0) return false;
            got += static_cast<size_t>(r);
        }
        return true;
    }
};

Bytes as_bytes(const std::vector<std::byte>& v) {
    const auto* p = reinterpret_cast<const unsigned char*>(v.data());
    return Bytes(p, p + v.size());
}

Bytes init_request() {
    struct {
        uint32_t major, minor, max_readahead, flags, flags2, unused[11];
    } in{7, 36, 131072, 0xffffffffu, 0, {}};
    return as_bytes(Request(FUSE_INIT, 0).arg(in).bytes());
}

}  // namespace

TEST(StreamSession, HelloFirstThenServesOnlyAfterTheAttach) {
    SessionRig rig;
    bool is_control = false;
    uint64_t session = 0;
    rig.get(&is_control, &session);
    ASSERT_TRUE(is_control) << "the server greets first";
    EXPECT_EQ(session, 0xabcdef0123456789ull);
    // Leftovers of the snapshot's session: a request cut in half, and a
    // whole one. Neither may be answered.
    Bytes stale = frame(as_bytes(Request(FUSE_GETATTR, 1).bytes()));
    Bytes junk(stale.begin() + 5, stale.end());
    rig.put(junk);
    rig.put(stale);
    rig.put(control(session));
    Bytes init = init_request();
    rig.put(frame(init));
    Bytes reply = rig.get(&is_control);
    ASSERT_FALSE(is_control);
    ASSERT_GE(reply.size(), sizeof(fuse_out_header));
    fuse_out_header o;
    std::memcpy(&o, reply.data(), sizeof o);
    fuse_in_header ih;
    std::memcpy(&ih, init.data(), sizeof ih);
    EXPECT_EQ(o.unique, ih.unique) << "the first answer is the INIT's: nothing before the attach was served";
    EXPECT_EQ(o.error, 0);
    EXPECT_EQ(o.len, reply.size());
    ::close(rig.sv[1]);
    rig.sv[1] = -1;
    EXPECT_EQ(rig.served.get(), 0) << "EOF ends the session cleanly";
    EXPECT_EQ(rig.session.stats().requests.load(), 1u);
    EXPECT_EQ(rig.session.stats().discarded_bytes.load(), junk.size() + stale.size());
}

TEST(StreamSession, AnOversizeFrameDropsTheChannel) {
    SessionRig rig;
    uint64_t session = 0;
    rig.get(nullptr, &session);
    rig.put(control(session));
    unsigned char len[4];
    stream::put_u32(len, 0x7fffffff);
    rig.put(Bytes(len, len + 4));
    EXPECT_EQ(rig.served.get(), -EPROTO);
}

// A snapshot must see nothing in flight: the server asks the guest to
// pause, serves what the guest sent before it saw the pause, and is quiet
// only once the guest says every request has its reply. (Parking between
// two requests is not enough: the guest goes on sending until QEMU stops
// it, and what waits in the socket would be served for the source after
// the resume and sent again by every clone.)
TEST(StreamSession, QuiesceAsksTheGuestToPauseAndWaitsForIt) {
    SessionRig rig;
    uint64_t session = 0;
    rig.get(nullptr, &session);
    rig.put(control(session));
    rig.put(frame(init_request()));
    rig.get();
    auto quiet = std::async(std::launch::async, [&] { return rig.session.quiesce(5000); });
    bool is_control = false;
    uint64_t seq = 0;
    uint32_t marker = 0;
    rig.get(&is_control, &seq, &marker);
    ASSERT_TRUE(is_control);
    ASSERT_EQ(marker, stream::kPause) << "the guest is asked to pause";
    // Sent by the guest before it saw the pause: served, the pause waits.
    Bytes getattr = as_bytes(Request(FUSE_GETATTR, 1).arg(fuse_getattr_in{}).bytes());
    rig.put(frame(getattr));
    Bytes reply = rig.get(&is_control);
    ASSERT_FALSE(is_control);
    fuse_out_header o;
    ASSERT_GE(reply.size(), sizeof o);
    std::memcpy(&o, reply.data(), sizeof o);
    EXPECT_EQ(o.error, 0);
    EXPECT_EQ(quiet.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout)
        << "not quiet before the guest says it has paused";
    rig.put(control_of(stream::kPaused, seq ^ 1));
    EXPECT_EQ(quiet.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout)
        << "a paused for another pause is not this one's";
    rig.put(control_of(stream::kPaused, seq));
    ASSERT_TRUE(quiet.get());
    EXPECT_EQ(rig.session.stats().pauses.load(), 1u);
    rig.session.resume();
    uint64_t rseq = 0;
    rig.get(&is_control, &rseq, &marker);
    ASSERT_TRUE(is_control);
    EXPECT_EQ(marker, stream::kResume);
    EXPECT_EQ(rseq, seq);
    // Serving again.
    rig.put(frame(getattr));
    reply = rig.get(&is_control);
    EXPECT_FALSE(is_control);
    EXPECT_EQ(rig.session.stats().requests.load(), 3u);
}

TEST(StreamSession, AGuestThatDoesNotPauseIsToldToResume) {
    SessionRig rig;
    uint64_t session = 0;
    rig.get(nullptr, &session);
    rig.put(control(session));
    EXPECT_FALSE(rig.session.quiesce(300)) << "no paused within the time: not quiet";
    bool is_control = false;
    uint64_t seq = 0, rseq = 0;
    uint32_t marker = 0;
    rig.get(&is_control, &seq, &marker);
    EXPECT_EQ(marker, stream::kPause);
    rig.get(&is_control, &rseq, &marker);
    EXPECT_EQ(marker, stream::kResume) << "the guest is not left paused";
    EXPECT_EQ(rseq, seq);
    // A late paused of that pause stops nothing.
    rig.put(control_of(stream::kPaused, seq));
    rig.put(frame(init_request()));
    Bytes reply = rig.get(&is_control);
    EXPECT_FALSE(is_control);
    EXPECT_FALSE(reply.empty());
}

// A hostile guest: another session's attach serves nothing; garbage
// frames after the attach are answered (or not) and the server carries on;
// it never crashes and ends at EOF.
TEST(StreamSession, AHostileGuestGetsNothingButErrors) {
    SessionRig rig;
    uint64_t session = 0;
    rig.get(nullptr, &session);
    rig.put(control(session ^ 1));
    rig.put(frame(init_request()));
    ::usleep(100000);
    EXPECT_EQ(rig.session.stats().requests.load(), 0u) << "a wrong session id attaches nothing";
    rig.put(control(session));
    // Drain the server's replies meanwhile, so it never blocks on them.
    std::thread drain([fd = rig.sv[1]] {
        char buf[65536];
        while (::read(fd, buf, sizeof buf) > 0) {
        }
    });
    std::mt19937 rng(12);
    for (int i = 0; i < 3000; ++i) {
        Bytes f(rng() % 600);
        for (auto& b : f) b = static_cast<unsigned char>(rng());
        if (f.size() >= sizeof(fuse_in_header) && i % 2) {
            fuse_in_header h{};
            h.len = static_cast<uint32_t>(f.size());
            h.opcode = rng() % 52;
            h.nodeid = rng() % 4;
            h.unique = static_cast<uint64_t>(i) * 2;
            std::memcpy(f.data(), &h, sizeof h);
        }
        rig.put(frame(f));
    }
    ::shutdown(rig.sv[1], SHUT_WR);
    EXPECT_EQ(rig.served.get(), 0);
    EXPECT_EQ(rig.session.stats().requests.load(), 3000u);
    ::shutdown(rig.sv[0], SHUT_WR);  // the drain reads its end of file
    drain.join();
}

// ---- the guest relay's translation, against real servers

namespace {

// One server generation on a directory: what a VM's share server is; a
// clone's is a second one on the same directory.
struct HostServer {
    std::unique_ptr<fs::Passthrough> fs;
    std::unique_ptr<fuse::Server> server;
    std::vector<std::byte> out = std::vector<std::byte>((1u << 20) + 4096);
    explicit HostServer(const std::string& dir, bool no_open = false) {
        fs::PassthroughOptions o;
        o.source = dir;
        o.no_open = no_open;
        o.switch_credentials = fs::prepare_server_process();
        fs = std::make_unique<fs::Passthrough>(o);
        server = std::make_unique<fuse::Server>(*fs, fuse::ServerOptions{});
    }
};

class RawWriter final : public fuse::BufferReplyWriter {
public:
    RawWriter(std::byte* b, size_t cap, Bytes& got) : BufferReplyWriter(b, cap), got_(got) {}
    int commit(size_t len) override {
        const auto* p = reinterpret_cast<const unsigned char*>(buf_);
        got_.assign(p, p + len);
        return 0;
    }

private:
    Bytes& got_;
};

struct KernelReply {
    int error = 0;
    uint64_t unique = 0;
    Bytes payload;
    template <typename T>
    T as() const {
        T v{};
        std::memcpy(&v, payload.data(), std::min(sizeof v, payload.size()));
        return v;
    }
};

struct RelayRig {
    std::string dir = make_temp_dir();
    guest::RelayCore core;
    std::map<uint64_t, KernelReply> replies;  // what the kernel got, by unique
    uint64_t requests_to_host = 0;
    ~RelayRig() { remove_tree(dir); }

    // Moves the relay's requests through srv (and its replies back) until
    // nothing is left; drop: requests lost on the way (a server that went).
    void pump(HostServer* srv) {
        for (;;) {
            auto reqs = core.take_to_host();
            if (reqs.empty()) break;
            for (auto& r : reqs) {
                ++requests_to_host;
                if (!srv) continue;
                Bytes got;
                RawWriter w(srv->out.data(), srv->out.size(), got);
                auto res = srv->server->handle({reinterpret_cast<const std::byte*>(r.data()), r.size()}, w);
                if (res != fuse::Server::Result::NoReply) core.on_host_reply(got.data(), got.size());
            }
        }
        for (auto& k : core.take_to_kernel()) {
            fuse_out_header o;
            std::memcpy(&o, k.data(), sizeof o);
            EXPECT_EQ(o.len, k.size());
            replies[o.unique] = KernelReply{o.error, o.unique, Bytes(k.begin() + sizeof o, k.end())};
        }
    }
    // The kernel sends r; returns its unique.
    uint64_t kernel(const Request& r) {
        auto b = as_bytes(r.bytes());
        fuse_in_header h;
        std::memcpy(&h, b.data(), sizeof h);
        core.on_kernel_request(b.data(), b.size());
        return h.unique;
    }
    KernelReply call(const Request& r, HostServer& srv) {
        uint64_t u = kernel(r);
        pump(&srv);
        auto it = replies.find(u);
        if (it == replies.end()) return KernelReply{-ETIMEDOUT, u, {}};
        return it->second;
    }
    uint64_t lookup(uint64_t parent, const std::string& name, HostServer& srv) {
        auto r = call(Request(FUSE_LOOKUP, parent).str(name), srv);
        EXPECT_EQ(r.error, 0) << name;
        return r.as<fuse_entry_out>().nodeid;
    }
    uint64_t open(uint64_t node, uint32_t flags, HostServer& srv, bool dir = false) {
        fuse_open_in in{};
        in.flags = flags;
        auto r = call(Request(dir ? FUSE_OPENDIR : FUSE_OPEN, node).arg(in), srv);
        EXPECT_EQ(r.error, 0);
        return r.as<fuse_open_out>().fh;
    }
    std::string read(uint64_t node, uint64_t fh, HostServer& srv, int* err = nullptr) {
        return text_of(call(read_request(node, fh), srv), err);
    }
    static Request read_request(uint64_t node, uint64_t fh) {
        fuse_read_in in{};
        in.fh = fh;
        in.size = 4096;
        return std::move(Request(FUSE_READ, node).arg(in));
    }
    static std::string text_of(const KernelReply& r, int* err) {
        if (err) *err = r.error;
        return std::string(r.payload.begin(), r.payload.end());
    }
    void write_host(const std::string& rel, const std::string& data) {
        std::ofstream(dir + "/" + rel) << data;
    }
    void start(HostServer& a) {
        uint64_t u = kernel(Request(FUSE_INIT, 0).raw(init_request().data() + sizeof(fuse_in_header),
                                                      init_request().size() - sizeof(fuse_in_header)));
        pump(&a);
        EXPECT_EQ(replies.count(u), 0u) << "the kernel's INIT waits for a server's hello";
        EXPECT_TRUE(core.on_hello(1111));
        pump(&a);
        ASSERT_EQ(replies.count(u), 1u);
        EXPECT_EQ(replies[u].error, 0);
        EXPECT_LE(replies[u].as<fuse_init_out>().max_write, stream::kMaxData);
        EXPECT_TRUE(core.ready());
    }
};

}  // namespace

TEST(FuseRelay, AHandleOpenAcrossARestoreReadsTheSameFile) {
    RelayRig rig;
    ::mkdir((rig.dir + "/sub").c_str(), 0755);
    rig.write_host("sub/held", "held-content\n");
    rig.write_host("other", "other-content\n");
    HostServer a(rig.dir);
    rig.start(a);
    uint64_t sub = rig.lookup(FUSE_ROOT_ID, "sub", a);
    uint64_t held = rig.lookup(sub, "held", a);
    uint64_t other = rig.lookup(FUSE_ROOT_ID, "other", a);
    uint64_t fh = rig.open(held, O_RDONLY, a);
    uint64_t dfh = rig.open(sub, O_RDONLY | O_DIRECTORY, a, true);
    EXPECT_EQ(rig.read(held, fh, a), "held-content\n");
    // The snapshot: a READ is on its way and the server never answers it
    // (it lives on in the source VM; the clone gets a new one).
    uint64_t in_flight = rig.kernel(RelayRig::read_request(held, fh));
    rig.pump(nullptr);
    EXPECT_EQ(rig.replies.count(in_flight), 0u);

    // The clone's server: a new Passthrough that has never seen these ids.
    // Make its node ids and handles differ from the old ones, as they
    // would (a relay that passed the kernel's ids through unchanged would
    // otherwise go unnoticed).
    HostServer b(rig.dir);
    {
        Bytes got;
        RawWriter w(b.out.data(), b.out.size(), got);
        auto send = [&](const Bytes& r) {
            b.server->handle({reinterpret_cast<const std::byte*>(r.data()), r.size()}, w);
        };
        send(init_request());
        send(as_bytes(Request(FUSE_LOOKUP, FUSE_ROOT_ID).str("other").bytes()));
        fuse_entry_out e{};
        ASSERT_GE(got.size(), sizeof(fuse_out_header) + sizeof e);
        std::memcpy(&e, got.data() + sizeof(fuse_out_header), sizeof e);
        fuse_open_in oi{};
        oi.flags = O_RDONLY;
        for (int i = 0; i < 5; ++i) send(as_bytes(Request(FUSE_OPEN, e.nodeid).arg(oi).bytes()));
        fuse_open_out oo{};
        std::memcpy(&oo, got.data() + sizeof(fuse_out_header), sizeof oo);
        EXPECT_GT(oo.fh, fh + 2) << "the second server's handles are not the first's";
        send(as_bytes(Request(FUSE_DESTROY, 0).bytes()));
    }
    EXPECT_TRUE(rig.core.on_hello(2222));
    EXPECT_FALSE(rig.core.ready()) << "rebuilding";
    rig.pump(&b);
    EXPECT_TRUE(rig.core.ready());
    ASSERT_EQ(rig.replies.count(in_flight), 1u) << "the READ in flight was sent again to the new server";
    EXPECT_EQ(rig.replies[in_flight].error, 0);
    EXPECT_EQ(RelayRig::text_of(rig.replies[in_flight], nullptr), "held-content\n");
    // The kernel's ids and handle work unchanged.
    EXPECT_EQ(rig.read(held, fh, b), "held-content\n");
    EXPECT_EQ(rig.call(Request(FUSE_GETATTR, other).arg(fuse_getattr_in{}), b).error, 0);
    fuse_read_in rd{};
    rd.fh = dfh;
    rd.size = 65536;
    auto listing = rig.call(Request(FUSE_READDIR, sub).arg(rd), b);
    EXPECT_EQ(listing.error, 0);
    EXPECT_NE(RelayRig::text_of(listing, nullptr).find("held"), std::string::npos);
    auto c = rig.core.counters();
    EXPECT_EQ(c.rebuilds, 1u);
    EXPECT_EQ(c.relookups, 3u);
    EXPECT_EQ(c.reopened, 2u);
    EXPECT_EQ(c.replayed, 1u);
    EXPECT_EQ(c.stale_nodes, 0u);
    // Writes go to the host's file through a handle of before.
    uint64_t wfh = rig.open(other, O_WRONLY, b);
    (void)wfh;
    fuse_release_in rel{};
    rel.fh = fh;
    EXPECT_EQ(rig.call(Request(FUSE_RELEASE, held).arg(rel), b).error, 0);
    EXPECT_EQ(rig.core.handles(), 2u) << "dir handle and the new write handle remain";
}

TEST(FuseRelay, NodesGoneOrReplacedOnTheHostAreStaleNotWrong) {
    RelayRig rig;
    rig.write_host("gone", "1");
    rig.write_host("swapped", "old");
    rig.write_host("kept", "k");
    HostServer a(rig.dir);
    rig.start(a);
    uint64_t gone = rig.lookup(FUSE_ROOT_ID, "gone", a);
    uint64_t swapped = rig.lookup(FUSE_ROOT_ID, "swapped", a);
    uint64_t kept = rig.lookup(FUSE_ROOT_ID, "kept", a);
    uint64_t fh = rig.open(gone, O_RDONLY, a);
    // Changed on the host between the snapshot and the clone.
    ASSERT_EQ(::unlink((rig.dir + "/gone").c_str()), 0);
    rig.write_host("new-swapped", "new");
    ASSERT_EQ(::rename((rig.dir + "/new-swapped").c_str(), (rig.dir + "/swapped").c_str()), 0);
    HostServer b(rig.dir);
    rig.core.on_hello(3333);
    rig.pump(&b);
    ASSERT_TRUE(rig.core.ready());
    EXPECT_EQ(rig.call(Request(FUSE_GETATTR, gone).arg(fuse_getattr_in{}), b).error, -ESTALE);
    EXPECT_EQ(rig.call(Request(FUSE_GETATTR, swapped).arg(fuse_getattr_in{}), b).error, -ESTALE)
        << "another file by the old name is not the file the kernel holds";
    EXPECT_EQ(rig.call(Request(FUSE_GETATTR, kept).arg(fuse_getattr_in{}), b).error, 0);
    int err = 0;
    rig.read(gone, fh, b, &err);
    EXPECT_EQ(err, -ESTALE);
    // A fresh lookup of the new file works, with an id of its own.
    uint64_t fresh = rig.lookup(FUSE_ROOT_ID, "swapped", b);
    EXPECT_NE(fresh, swapped);
    EXPECT_EQ(rig.core.counters().stale_nodes, 2u);
}

// A clone of a clone: what one rebuild could not find is looked for again
// by the next (the same files, back under their names).
TEST(FuseRelay, StaleNodesAreLookedForAgainAtTheNextRestore) {
    RelayRig rig;
    ::mkdir((rig.dir + "/d").c_str(), 0755);
    rig.write_host("d/f", "back");
    HostServer a(rig.dir);
    rig.start(a);
    uint64_t d = rig.lookup(FUSE_ROOT_ID, "d", a);
    uint64_t f = rig.lookup(d, "f", a);
    ASSERT_EQ(::rename((rig.dir + "/d").c_str(), (rig.dir + "/away").c_str()), 0);
    HostServer b(rig.dir);
    rig.core.on_hello(9001);
    rig.pump(&b);
    EXPECT_EQ(rig.call(Request(FUSE_GETATTR, f).arg(fuse_getattr_in{}), b).error, -ESTALE);
    ASSERT_EQ(::rename((rig.dir + "/away").c_str(), (rig.dir + "/d").c_str()), 0);
    HostServer c(rig.dir);
    rig.core.on_hello(9002);
    rig.pump(&c);
    uint64_t fh = rig.open(f, O_RDONLY, c);
    EXPECT_EQ(rig.read(f, fh, c), "back");
}

TEST(FuseRelay, RenamedNodesAreFoundUnderTheirNewName) {
    RelayRig rig;
    ::mkdir((rig.dir + "/d1").c_str(), 0755);
    ::mkdir((rig.dir + "/d2").c_str(), 0755);
    rig.write_host("d1/f", "moved");
    HostServer a(rig.dir);
    rig.start(a);
    uint64_t d1 = rig.lookup(FUSE_ROOT_ID, "d1", a);
    uint64_t d2 = rig.lookup(FUSE_ROOT_ID, "d2", a);
    uint64_t f = rig.lookup(d1, "f", a);
    fuse_rename_in rn{};
    rn.newdir = d2;
    auto r = rig.call(Request(FUSE_RENAME, d1).arg(rn).str("f").str("g"), a);
    ASSERT_EQ(r.error, 0);
    HostServer b(rig.dir);
    rig.core.on_hello(4444);
    rig.pump(&b);
    uint64_t fh = rig.open(f, O_RDONLY, b);
    EXPECT_EQ(rig.read(f, fh, b), "moved");
    EXPECT_EQ(rig.core.counters().stale_nodes, 0u);
}

TEST(FuseRelay, CreatedFilesAndReaddirplusEntriesAreTranslated) {
    RelayRig rig;
    ::mkdir((rig.dir + "/d").c_str(), 0755);
    rig.write_host("d/a", "A");
    HostServer a(rig.dir);
    rig.start(a);
    uint64_t d = rig.lookup(FUSE_ROOT_ID, "d", a);
    fuse_create_in cr{};
    cr.flags = O_WRONLY | O_CREAT | O_EXCL;
    cr.mode = S_IFREG | 0644;
    auto c = rig.call(Request(FUSE_CREATE, d).arg(cr).str("new"), a);
    ASSERT_EQ(c.error, 0);
    uint64_t node = c.as<fuse_entry_out>().nodeid;
    fuse_open_out oo;
    std::memcpy(&oo, c.payload.data() + sizeof(fuse_entry_out), sizeof oo);
    // READDIRPLUS: entries carry the relay's ids, and count as lookups.
    uint64_t dfh = rig.open(d, O_RDONLY | O_DIRECTORY, a, true);
    fuse_read_in rd{};
    rd.fh = dfh;
    rd.size = 65536;
    auto plus = rig.call(Request(FUSE_READDIRPLUS, d).arg(rd), a);
    ASSERT_EQ(plus.error, 0);
    std::map<std::string, uint64_t> ids;
    for (size_t off = 0; off + FUSE_NAME_OFFSET_DIRENTPLUS <= plus.payload.size();) {
        fuse_direntplus e;
        std::memcpy(&e, plus.payload.data() + off, FUSE_NAME_OFFSET_DIRENTPLUS);
        ids[std::string(reinterpret_cast<const char*>(plus.payload.data() + off + FUSE_NAME_OFFSET_DIRENTPLUS),
                        e.dirent.namelen)] = e.entry_out.nodeid;
        off += FUSE_DIRENTPLUS_SIZE(&e);
    }
    EXPECT_EQ(ids["new"], node) << "the same relay id as CREATE gave";
    ASSERT_NE(ids["a"], 0u);
    // Across a restore, the created file's handle writes to the host file,
    // and was not created (nor truncated) again.
    HostServer b(rig.dir);
    rig.core.on_hello(5555);
    rig.pump(&b);
    fuse_write_in w{};
    w.fh = oo.fh;
    w.size = 5;
    auto wr = rig.call(Request(FUSE_WRITE, node).arg(w).raw("after", 5), b);
    EXPECT_EQ(wr.error, 0);
    EXPECT_EQ(slurp(rig.dir + "/d/new"), "after");
    uint64_t afh = rig.open(ids["a"], O_RDONLY, b);
    EXPECT_EQ(rig.read(ids["a"], afh, b), "A");
}

TEST(FuseRelay, ForgetsReachTheHostWithItsOwnCounts) {
    RelayRig rig;
    rig.write_host("f", "x");
    HostServer a(rig.dir);
    rig.start(a);
    uint64_t f = 0;
    for (int i = 0; i < 3; ++i) f = rig.lookup(FUSE_ROOT_ID, "f", a);
    HostServer b(rig.dir);
    rig.core.on_hello(6666);
    rig.pump(&b);
    size_t before = rig.core.nodes();
    // The kernel forgets its 3 lookups; the new server counted 1.
    fuse_forget_in fg{};
    fg.nlookup = 2;
    rig.kernel(Request(FUSE_FORGET, f).arg(fg));
    EXPECT_TRUE(rig.core.take_to_host().empty()) << "the kernel still holds it";
    fg.nlookup = 1;
    rig.kernel(Request(FUSE_FORGET, f).arg(fg));
    auto sent = rig.core.take_to_host();
    ASSERT_EQ(sent.size(), 1u);
    fuse_in_header h;
    fuse_forget_in out;
    std::memcpy(&h, sent[0].data(), sizeof h);
    std::memcpy(&out, sent[0].data() + sizeof h, sizeof out);
    EXPECT_EQ(h.opcode, static_cast<uint32_t>(FUSE_FORGET));
    EXPECT_EQ(out.nlookup, 1u);
    EXPECT_EQ(rig.core.nodes(), before - 1);
}

namespace {
Request append_request(uint64_t node, uint64_t fh, const std::string& line, uint64_t offset = 0) {
    fuse_write_in w{};
    w.fh = fh;
    w.offset = offset;  // what the kernel computes (a no-open server writes there)
    w.size = static_cast<uint32_t>(line.size());
    return std::move(Request(FUSE_WRITE, node).arg(w).raw(line.data(), line.size()));
}
}  // namespace

// Around a snapshot the relay pauses: what it forwarded gets its reply
// before it says "paused", what the kernel sends meanwhile waits in the
// relay (in guest memory, which the snapshot carries). The source sends it
// on resume, a clone on its new server's hello: every append lands once
// per VM that made it, none twice.
TEST(FuseRelay, APauseHoldsNewRequestsAndNothingIsSentTwice) {
    RelayRig rig;
    rig.write_host("log", "");
    HostServer a(rig.dir);
    rig.start(a);
    uint64_t log = rig.lookup(FUSE_ROOT_ID, "log", a);
    uint64_t fh = rig.open(log, O_WRONLY | O_APPEND, a);
    EXPECT_EQ(rig.call(append_request(log, fh, "1\n"), a).error, 0);
    // "2" is on its way to the host when the pause comes.
    uint64_t two = rig.kernel(append_request(log, fh, "2\n"));
    rig.core.on_pause(7);
    uint64_t seq = 0;
    EXPECT_FALSE(rig.core.take_paused(&seq)) << "not paused while a request it sent has no reply";
    rig.pump(&a);
    ASSERT_EQ(rig.replies.count(two), 1u);
    ASSERT_TRUE(rig.core.take_paused(&seq));
    EXPECT_EQ(seq, 7u);
    EXPECT_FALSE(rig.core.take_paused(&seq)) << "said once";
    // Paused: "3" and a LOOKUP wait in the relay.
    uint64_t three = rig.kernel(append_request(log, fh, "3\n"));
    rig.kernel(Request(FUSE_LOOKUP, FUSE_ROOT_ID).str("log"));
    EXPECT_TRUE(rig.core.take_to_host().empty()) << "nothing goes to the host while paused";
    EXPECT_EQ(slurp(rig.dir + "/log"), "1\n2\n");

    // The snapshot: the clone's relay is this one, copied.
    RelayRig clone;
    clone.core = rig.core;

    // The source resumes: "3" goes once.
    rig.core.on_resume(6);
    EXPECT_TRUE(rig.core.take_to_host().empty()) << "a resume of another pause is not this one's";
    rig.core.on_resume(7);
    rig.pump(&a);
    ASSERT_EQ(rig.replies.count(three), 1u);
    EXPECT_EQ(rig.replies[three].error, 0);
    EXPECT_EQ(slurp(rig.dir + "/log"), "1\n2\n3\n");

    // The clone's new server greets: it resumes by itself, rebuilds, and
    // sends what it held (its own "3"), never "2" again.
    HostServer b(rig.dir);
    EXPECT_TRUE(clone.core.on_hello(5555));
    clone.pump(&b);
    EXPECT_TRUE(clone.core.ready());
    EXPECT_FALSE(clone.core.paused());
    ASSERT_EQ(clone.replies.count(three), 1u);
    EXPECT_EQ(clone.replies[three].error, 0);
    EXPECT_EQ(slurp(rig.dir + "/log"), "1\n2\n3\n3\n");
    EXPECT_EQ(clone.core.counters().replayed, 0u) << "nothing was in flight at the snapshot";
    EXPECT_EQ(clone.core.counters().held_over_pause, 2u);
}

namespace {
// One request through srv, its reply back to the relay.
void serve_one(guest::RelayCore& core, HostServer& srv, const Bytes& r) {
    Bytes got;
    RawWriter w(srv.out.data(), srv.out.size(), got);
    auto res = srv.server->handle({reinterpret_cast<const std::byte*>(r.data()), r.size()}, w);
    if (res != fuse::Server::Result::NoReply) core.on_host_reply(got.data(), got.size());
}
}  // namespace

// The kernel forgets a node while the rebuild's LOOKUP of it is on its
// way: the relay must not bring the node back, and the host's new lookup
// is forgotten, not leaked.
TEST(FuseRelay, AForgetDuringTheRebuildForgetsTheHostsLookup) {
    RelayRig rig;
    rig.write_host("f", "x");
    HostServer a(rig.dir);
    rig.start(a);
    uint64_t f = rig.lookup(FUSE_ROOT_ID, "f", a);
    HostServer b(rig.dir);
    ASSERT_TRUE(rig.core.on_hello(7777));
    auto init = rig.core.take_to_host();
    ASSERT_EQ(init.size(), 1u);
    serve_one(rig.core, b, init[0]);
    auto lookup = rig.core.take_to_host();
    ASSERT_EQ(lookup.size(), 1u);
    fuse_in_header h;
    std::memcpy(&h, lookup[0].data(), sizeof h);
    ASSERT_EQ(h.opcode, static_cast<uint32_t>(FUSE_LOOKUP));
    fuse_forget_in fg{};
    fg.nlookup = 1;
    rig.kernel(Request(FUSE_FORGET, f).arg(fg));
    EXPECT_TRUE(rig.core.take_to_host().empty()) << "the new server has counted nothing yet";
    serve_one(rig.core, b, lookup[0]);
    auto sent = rig.core.take_to_host();
    ASSERT_EQ(sent.size(), 1u) << "the host's lookup of the forgotten node is forgotten";
    fuse_forget_in out{};
    std::memcpy(&h, sent[0].data(), sizeof h);
    std::memcpy(&out, sent[0].data() + sizeof h, sizeof out);
    EXPECT_EQ(h.opcode, static_cast<uint32_t>(FUSE_FORGET));
    EXPECT_NE(h.nodeid, 0u);
    EXPECT_EQ(out.nlookup, 1u);
    EXPECT_TRUE(rig.core.ready());
    EXPECT_EQ(rig.core.nodes(), 1u) << "only the root: the forgotten node is not brought back";
    EXPECT_EQ(rig.core.counters().relookups, 0u);
}

// The new server's INIT after a restore: refused, the share is down (EIO,
// said on the console), never silently serving stale ids; different from
// the first, a console note.
TEST(FuseRelay, ARebuildsInitErrorIsDownAndADifferentInitIsNoted) {
    RelayRig rig;
    rig.write_host("f", "x");
    HostServer a(rig.dir);
    rig.start(a);
    uint64_t f = rig.lookup(FUSE_ROOT_ID, "f", a);
    ASSERT_TRUE(rig.core.on_hello(8001));
    auto init = rig.core.take_to_host();
    ASSERT_EQ(init.size(), 1u);
    fuse_in_header ih;
    std::memcpy(&ih, init[0].data(), sizeof ih);
    fuse_out_header refused{};
    refused.len = sizeof refused;
    refused.error = -EPROTO;
    refused.unique = ih.unique;
    rig.core.on_host_reply(reinterpret_cast<const unsigned char*>(&refused), sizeof refused);
    EXPECT_TRUE(rig.core.down());
    auto notes = rig.core.take_notes();
    ASSERT_EQ(notes.size(), 1u);
    EXPECT_NE(notes[0].find("refused INIT"), std::string::npos) << notes[0];
    EXPECT_EQ(rig.call(Request(FUSE_GETATTR, f).arg(fuse_getattr_in{}), a).error, -EIO);

    // Another server greets: its INIT reply differs (max_write).
    HostServer b(rig.dir);
    ASSERT_TRUE(rig.core.on_hello(8002));
    init = rig.core.take_to_host();
    ASSERT_EQ(init.size(), 1u);
    Bytes got;
    RawWriter w(b.out.data(), b.out.size(), got);
    b.server->handle({reinterpret_cast<const std::byte*>(init[0].data()), init[0].size()}, w);
    fuse_init_out io;
    std::memcpy(&io, got.data() + sizeof(fuse_out_header), sizeof io);
    io.max_write /= 2;
    std::memcpy(got.data() + sizeof(fuse_out_header), &io, sizeof io);
    rig.core.on_host_reply(got.data(), got.size());
    rig.pump(&b);
    EXPECT_TRUE(rig.core.ready());
    EXPECT_EQ(rig.core.counters().init_changed, 1u);
    notes = rig.core.take_notes();
    ASSERT_EQ(notes.size(), 1u);
    EXPECT_NE(notes[0].find("INIT differs"), std::string::npos) << notes[0];
    EXPECT_EQ(rig.call(Request(FUSE_GETATTR, f).arg(fuse_getattr_in{}), b).error, 0);
}

TEST(FuseRelay, AGoneServerFailsRequestsWithEioAndNeverHangs) {
    RelayRig rig;
    rig.write_host("f", "x");
    HostServer a(rig.dir);
    rig.start(a);
    uint64_t f = rig.lookup(FUSE_ROOT_ID, "f", a);
    uint64_t in_flight = rig.kernel(Request(FUSE_GETATTR, f).arg(fuse_getattr_in{}));
    rig.pump(nullptr);  // sent; the server dies before it answers
    rig.core.on_disconnect();
    rig.pump(nullptr);
    ASSERT_EQ(rig.replies.count(in_flight), 1u);
    EXPECT_EQ(rig.replies[in_flight].error, -EIO);
    uint64_t later = rig.kernel(Request(FUSE_LOOKUP, FUSE_ROOT_ID).str("f"));
    rig.pump(nullptr);
    ASSERT_EQ(rig.replies.count(later), 1u) << "answered at once, not held";
    EXPECT_EQ(rig.replies[later].error, -EIO);
    // A server that greets again brings the share back.
    HostServer b(rig.dir);
    EXPECT_TRUE(rig.core.on_hello(7777));
    rig.pump(&b);
    EXPECT_EQ(rig.call(Request(FUSE_GETATTR, f).arg(fuse_getattr_in{}), b).error, 0);
}

// A server that declines OPEN (ENOSYS: the kernel then sends handle 0 and
// the server goes by the node), as ocivm's shares do in no-open mode.
TEST(FuseRelay, NoOpenServersGetHandleZeroBeforeAndAfterARestore) {
    RelayRig rig;
    rig.write_host("f", "no-open");
    HostServer a(rig.dir, true);
    rig.start(a);
    uint64_t f = rig.lookup(FUSE_ROOT_ID, "f", a);
    fuse_open_in in{};
    auto o = rig.call(Request(FUSE_OPEN, f).arg(in), a);
    ASSERT_EQ(o.error, -ENOSYS);
    EXPECT_EQ(rig.read(f, 0, a), "no-open");
    HostServer b(rig.dir, true);
    rig.core.on_hello(8888);
    rig.pump(&b);
    EXPECT_EQ(rig.read(f, 0, b), "no-open");
}

// An opcode whose ids the relay does not know how to map is answered
// ENOSYS by the relay itself, never passed on half-translated.
TEST(FuseRelay, UntranslatableOpcodesAreNotSupported) {
    RelayRig rig;
    HostServer a(rig.dir);
    rig.start(a);
    uint64_t before = rig.requests_to_host;
    fuse_create_in in{};
    in.mode = S_IFREG | 0600;
    in.flags = O_RDWR;
    auto r = rig.call(Request(FUSE_TMPFILE, FUSE_ROOT_ID).arg(in).str("tmp"), a);
    EXPECT_EQ(r.error, -ENOSYS);
    EXPECT_EQ(rig.requests_to_host, before);
}

// ---- the snapshot record: shares kept for the clones, and the layout


TEST(SnapshotShares, RecordedAndReadBack) {
    vm::SnapshotInfo s;
    s.name = "n";
    s.machine = "microvm";
    s.accel = "tcg";
    s.memory = "512M";
    s.append = "console=ttyS0";
    s.layout = vm::kSnapshotLayout;
    vm::SnapshotShare a, b;
    a.host = "/srv/a", a.guest = "/data";
    b.host = "/srv/b", b.guest = "/ro", b.readonly = true, b.nodev = false, b.nosuid = false, b.noexec = true;
    s.shares = {a, b};
    auto back = vm::SnapshotInfo::from_json(s.to_json(), "/x");
    ASSERT_EQ(back.shares.size(), 2u);
    EXPECT_EQ(back.shares[0].host, "/srv/a");
    EXPECT_EQ(back.shares[0].guest, "/data");
    EXPECT_TRUE(back.shares[0].nodev);
    EXPECT_TRUE(back.shares[1].readonly);
    EXPECT_TRUE(back.shares[1].noexec);
    EXPECT_FALSE(back.shares[1].nodev);
    EXPECT_EQ(back.layout, vm::kSnapshotLayout);
    std::string relative = s.to_json();
    relative.replace(relative.find("\"/srv/a\""), 8, "\"srv/a\"");
    EXPECT_THROW(vm::SnapshotInfo::from_json(relative, "/x"), Error) << "a share's host path must be absolute";
}

TEST(SnapshotShares, SnapshotsOfAnOlderDeviceSetAreRefused) {
    vm::SnapshotInfo s;
    s.name = "old";
    s.machine = "microvm";
    s.accel = "tcg";
    s.qemu = vm::local_qemu();
    s.layout = 0;  // before stream shares: a virtio-serial device of 8 ports
    EXPECT_NE(vm::restore_refusal(s, "", false).find("taken by an older ocivm"), std::string::npos);
    s.layout = vm::kSnapshotLayout;
    EXPECT_EQ(vm::restore_refusal(s, "", false).find("ocivm"), std::string::npos);
}

// A server that opens nothing (no-open mode: CREATE answers handle 0, OPEN
// ENOSYS): a file created before the snapshot is written on in the clone,
// not failed as stale because the new server declines to open it again.
TEST(FuseRelay, AHandleOfANoOpenServerWritesOnAfterARestore) {
    RelayRig rig;
    HostServer a(rig.dir, /*no_open=*/true);
    rig.start(a);
    fuse_create_in c{};
    c.flags = O_WRONLY | O_CREAT | O_APPEND | 0x8000;  // as the kernel sends them (O_LARGEFILE)
    c.mode = S_IFREG | 0644;
    c.umask = 022;
    auto r = rig.call(Request(FUSE_CREATE, FUSE_ROOT_ID).arg(c).str("log"), a);
    ASSERT_EQ(r.error, 0);
    fuse_entry_out e;
    fuse_open_out oo;
    std::memcpy(&e, r.payload.data(), sizeof e);
    std::memcpy(&oo, r.payload.data() + sizeof e, sizeof oo);
    EXPECT_EQ(rig.call(append_request(e.nodeid, oo.fh, "1\n"), a).error, 0);
    HostServer b(rig.dir, true);
    rig.core.on_hello(42);
    rig.pump(&b);
    EXPECT_EQ(rig.core.counters().stale_handles, 0u);
    EXPECT_EQ(rig.call(append_request(e.nodeid, oo.fh, "2\n", 2), b).error, 0);
    EXPECT_EQ(slurp(rig.dir + "/log"), "1\n2\n");
}
