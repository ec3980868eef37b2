// A hostile guest against fuse::Server + fs::Passthrough + trace::Recorder
// (issue 14): each test is one attack, sent as the raw FUSE requests a guest
// kernel of its own choosing can send over virtio-fs, against a Passthrough on
// a temporary directory configured as `ocivm run`/`ocivm fsd` configure a
// writable share. Memory is measured by the allocator's counters, never by
// time.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include <cerrno>
#include <fstream>
#include <set>
#include <thread>

#include "fuse/serve_config.h"
#include "security/guest_util.h"
#include "trace/recorder.h"
#include "util/unique_fd.h"

using namespace ocivm;
using namespace ocivm::test;

namespace {

// A writable share as the servers configure it for a cache mode.
std::unique_ptr<Harness> writable_share(fs::CacheMode mode) {
    auto cfg = fuse::serve_config("", mode, false, true, false);
    auto h = std::make_unique<Harness>(cfg.fs, cfg.protocol);
    EXPECT_EQ(h->init().error, 0);
    return h;
}

Reply create(Harness& h, uint64_t parent, const std::string& name, int flags,
             uint32_t mode = 0644) {
    fuse_create_in in{static_cast<uint32_t>(flags), mode, 022, 0};
    return h.send(Request(FUSE_CREATE, parent).arg(in).str(name));
}

uint64_t fh_of(const Reply& r) {
    fuse_open_out o{};
    if (r.error == 0 && r.payload.size() >= sizeof(fuse_entry_out) + sizeof o)
        std::memcpy(&o, r.payload.data() + sizeof(fuse_entry_out), sizeof o);
    return o.fh;
}

// Nothing at p: ENOENT, not any failure of lstat.
bool absent(const std::string& p) {
    struct stat st;
    return ::lstat(p.c_str(), &st) < 0 && errno == ENOENT;
}

const fs::CacheMode kModes[] = {fs::CacheMode::Never, fs::CacheMode::Metadata,
                                fs::CacheMode::Auto, fs::CacheMode::Always};

// Heap growth while fn runs on a thread of its own: per-thread scratch
// buffers a request leaves behind are counted before the thread ends.
template <typename F>
long long grown_in_thread(F fn) {
    long long grown = 0;
    std::thread t([&] {
        size_t before = heap_in_use();
        fn();
        grown = static_cast<long long>(heap_in_use()) - static_cast<long long>(before);
    });
    t.join();
    return grown;
}

}  // namespace

// Issue 14.1: a CREATE naming a device node opened the host's device: with a
// guest-made (1,5) READ returned the host's /dev/zero, with a host-made (1,3)
// WRITE landed in the host's /dev/null; cache=auto opened it too.
TEST(GuestAttack, DeviceNodesAreNeverOpenedOnTheHost) {
    OCIVM_REQUIRE_ROOT();
    for (fs::CacheMode mode : kModes) {
        SCOPED_TRACE(fs::cache_mode_name(mode));
        auto h = writable_share(mode);
        fuse_mknod_in mk{S_IFCHR | 0666, static_cast<uint32_t>(makedev(1, 5)), 022, 0};
        ASSERT_EQ(h->send(Request(FUSE_MKNOD, 1).arg(mk).str("zero")).error, 0)
            << "a guest may make device nodes on a share without nodev";
        ASSERT_EQ(::mknod((h->dir + "/null").c_str(), S_IFCHR | 0666, makedev(1, 3)), 0);
        for (const char* name : {"zero", "null"}) {
            SCOPED_TRACE(name);
            for (int flags : {O_RDWR | O_CREAT, O_RDONLY | O_CREAT, O_WRONLY | O_CREAT | O_TRUNC}) {
                Reply r = create(*h, 1, name, flags);
                EXPECT_EQ(r.error, -ENXIO) << "CREATE over a device node, flags " << std::oct << flags;
                uint64_t node = r.error == 0 ? r.as<fuse_entry_out>().nodeid : 1;
                fuse_read_in rd{};
                rd.fh = fh_of(r);
                rd.size = 16;
                Reply rr = h->send(Request(FUSE_READ, node).arg(rd));
                // The refused CREATE made no handle: the one the guest
                // names is none (EBADF), never a host device's.
                EXPECT_EQ(rr.error, -EBADF) << "READ through the CREATE handle returned "
                                       << rr.payload.size() << " bytes of a host device";
                fuse_write_in wr{};
                wr.fh = fh_of(r);
                wr.size = 4;
                Reply wrr = h->send(Request(FUSE_WRITE, node).arg(wr).raw("gone", 4));
                EXPECT_EQ(wrr.error, -EBADF) << "WRITE through the CREATE handle reached a host device";
            }
            // The device node itself stays what it is; OPEN is the guest
            // kernel's business and refused here.
            uint64_t dev = h->lookup(1, name);
            fuse_open_in op{static_cast<uint32_t>(O_RDWR), 0};
            EXPECT_EQ(h->send(Request(FUSE_OPEN, dev).arg(op)).error, -ENXIO);
        }
    }
}

// Issue 14.2: O_CREAT|O_EXCL|O_TRUNC over an existing file succeeded and
// truncated it.
TEST(GuestAttack, CreateWithExclNeverTouchesAnExistingFile) {
    for (fs::CacheMode mode : kModes) {
        SCOPED_TRACE(fs::cache_mode_name(mode));
        auto h = writable_share(mode);
        std::ofstream(h->dir + "/keep") << "precious";
        ::mkdir((h->dir + "/dir").c_str(), 0755);
        ::symlink("/etc/passwd", (h->dir + "/link").c_str());
        for (const char* name : {"keep", "dir", "link"}) {
            Reply r = create(*h, 1, name, O_RDWR | O_CREAT | O_EXCL | O_TRUNC);
            EXPECT_EQ(r.error, -EEXIST) << name;
        }
        EXPECT_EQ(slurp(h->dir + "/keep"), "precious");
        EXPECT_EQ(h->fs->node_count(), 1u) << "a refused CREATE leaves no lookup behind";

        // Without O_EXCL an existing regular file is opened (a name the guest
        // thought missing may have appeared on the host meanwhile): the same
        // node as a LOOKUP, truncated as asked, one lookup counted.
        Reply r = create(*h, 1, "keep", O_RDWR | O_CREAT | O_TRUNC);
        ASSERT_EQ(r.error, 0);
        uint64_t node = r.as<fuse_entry_out>().nodeid;
        EXPECT_EQ(h->lookup(1, "keep"), node);
        EXPECT_EQ(slurp(h->dir + "/keep"), "");
        fuse_forget_in fg{2};
        h->send(Request(FUSE_FORGET, node).arg(fg));
        EXPECT_EQ(h->fs->node_count(), 1u) << "CREATE + LOOKUP counted two lookups";
        // Existing non-files are refused as OPEN refuses them, without a
        // lookup left behind.
        EXPECT_EQ(create(*h, 1, "dir", O_RDWR | O_CREAT).error, -EISDIR);
        EXPECT_EQ(create(*h, 1, "link", O_RDWR | O_CREAT).error, -ELOOP);
        EXPECT_EQ(h->fs->node_count(), 1u);
        EXPECT_EQ(slurp("/etc/passwd").empty(), false);
    }
}

// Issue 14.3: CREATE over a FIFO (host- or guest-made) blocked the request
// thread forever in open(2).
TEST(GuestAttack, CreateOverAFifoNeverOpensIt) {
    for (fs::CacheMode mode : kModes) {
        SCOPED_TRACE(fs::cache_mode_name(mode));
        auto h = writable_share(mode);
        ASSERT_EQ(::mkfifo((h->dir + "/hostfifo").c_str(), 0666), 0);
        fuse_mknod_in mk{S_IFIFO | 0666, 0, 022, 0};
        ASSERT_EQ(h->send(Request(FUSE_MKNOD, 1).arg(mk).str("guestfifo")).error, 0);
        for (const char* name : {"hostfifo", "guestfifo"}) {
            SCOPED_TRACE(name);
            // Both ends are held here, so a server that opens the fifo gets it
            // at once and this check fails instead of hanging.
            UniqueFd hold(::open((h->dir + "/" + name).c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
            ASSERT_TRUE(hold);
            for (int flags : {O_RDONLY | O_CREAT, O_WRONLY | O_CREAT, O_RDWR | O_CREAT}) {
                Reply r = create(*h, 1, name, flags);
                EXPECT_EQ(r.error, -ENXIO) << "CREATE over a fifo, flags " << std::oct << flags;
            }
        }
        // No other end at all: the server must answer, not wait for a writer.
        EXPECT_EQ(create(*h, 1, "hostfifo", O_RDONLY | O_CREAT).error, -ENXIO);
        EXPECT_EQ(create(*h, 1, "guestfifo", O_WRONLY | O_CREAT).error, -ENXIO);
    }
}

// Issue 14.4: LOOKUP(root, ".") made the recorder rewrite the root's path as
// /./././... and keep every longer string: 16,384 lookups grew the process
// by ~550 MB (without --trace too).
TEST(GuestAttack, LookupOfDotAndDotDotKeepsPathsShort) {
    trace::Recorder rec("");
    Harness h;
    h.server = std::make_unique<fuse::Server>(*h.fs, fuse::ServerOptions{}, &rec);
    ASSERT_EQ(h.init().error, 0);
    uint64_t sub = h.mkdir(1, "sub");
    for (int i = 0; i < 64; ++i) h.lookup(1, ".");
    rec.flush();
    size_t before = heap_in_use();
    for (int i = 0; i < 4096; ++i) h.lookup(1, ".");
    for (int i = 0; i < 1024; ++i) {
        EXPECT_EQ(h.lookup(sub, "."), sub);
        EXPECT_EQ(h.lookup(sub, ".."), 1u);
    }
    rec.flush();
    long long grown = static_cast<long long>(heap_in_use()) - static_cast<long long>(before);
    EXPECT_EQ(rec.path_of(1), "/");
    EXPECT_EQ(rec.path_of(sub), "/sub");
    EXPECT_LT(grown, 1 << 20) << "the recorder grew by " << grown << " bytes";
}

// Issue 14.5: the recorder's node -> path map was never pruned; LOOKUP and
// FORGET cycles (a new node id each time under cache=never) grew it forever.
TEST(GuestAttack, LookupForgetCyclesKeepTheRecorderSmall) {
    trace::Recorder rec("");
    Harness h(fs::CacheMode::Never);
    h.server = std::make_unique<fuse::Server>(*h.fs, fuse::ServerOptions{}, &rec);
    ASSERT_EQ(h.init().error, 0);
    std::ofstream(h.dir + "/f") << "x";
    auto cycle = [&](bool batch) {
        uint64_t n = h.lookup(1, "f");
        if (batch) {
            fuse_batch_forget_in bf{1, 0};
            fuse_forget_one one{n, 1};
            h.send(Request(FUSE_BATCH_FORGET, 0).arg(bf).arg(one));
        } else {
            fuse_forget_in fg{1};
            h.send(Request(FUSE_FORGET, n).arg(fg));
        }
    };
    for (int i = 0; i < 256; ++i) cycle(i % 2);
    rec.flush();
    size_t before = heap_in_use();
    for (int i = 0; i < 10000; ++i) cycle(false);
    for (int i = 0; i < 10000; ++i) cycle(true);
    rec.flush();
    long long grown = static_cast<long long>(heap_in_use()) - static_cast<long long>(before);
    EXPECT_EQ(h.fs->node_count(), 1u);
    EXPECT_LT(grown, 512 << 10) << "20,000 lookup/forget cycles grew the server by " << grown
                                << " bytes";
}

// Issue 14.6: 20,000 OPENDIR + one READDIR each kept +629 MiB: a 32 KiB
// buffer per handle until RELEASEDIR.
TEST(GuestAttack, OpendirFloodKeepsNoBufferPerHandle) {
    constexpr int kHandles = 4000;
    struct rlimit rl;
    ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &rl), 0);
    rl.rlim_cur = rl.rlim_max;
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &rl), 0);
    ASSERT_GT(rl.rlim_cur, static_cast<rlim_t>(kHandles + 512))
        << "raise the hard RLIMIT_NOFILE (ulimit -Hn) above " << kHandles + 512;
    Harness h(fs::CacheMode::Never);
    ASSERT_EQ(h.init().error, 0);
    for (int i = 0; i < 200; ++i)
        std::ofstream(h.dir + "/a-rather-long-file-name-to-fill-the-buffer-" + std::to_string(i));
    {
        uint64_t fh = h.opendir(1);
        h.readdir(1, fh, false, 0, nullptr, 512);
        fuse_release_in rl_in{};
        rl_in.fh = fh;
        h.send(Request(FUSE_RELEASEDIR, 1).arg(rl_in));
    }
    size_t before = heap_in_use();
    std::vector<uint64_t> fhs, offs;
    fhs.reserve(kHandles);
    offs.reserve(kHandles);
    // The first and the last handle's first names, for the completeness check.
    std::set<std::string> first_names[2];
    for (int i = 0; i < kHandles; ++i) {
        uint64_t fh = h.opendir(1);
        ASSERT_NE(fh, 0u);
        uint64_t last = 0;
        auto part = h.readdir(1, fh, false, 0, &last, 512);
        ASSERT_FALSE(part.empty()) << "READDIR " << i;
        if (i == 0 || i == kHandles - 1)
            for (auto& [n, id] : part) first_names[i == 0 ? 0 : 1].insert(n);
        fhs.push_back(fh);
        offs.push_back(last);
    }
    long long grown = static_cast<long long>(heap_in_use()) - static_cast<long long>(before);
    EXPECT_LT(grown, 24ll << 20) << kHandles << " open directories hold " << grown << " bytes";

    // Handles over the buffer cap still list completely, continuing from
    // their cookies in small pieces.
    for (size_t i : {size_t{0}, fhs.size() - 1}) {
        std::set<std::string> names = first_names[i == 0 ? 0 : 1];
        uint64_t pos = offs[i];
        for (;;) {
            uint64_t last = pos;
            auto part = h.readdir(1, fhs[i], false, pos, &last, 700);
            if (part.empty()) break;
            for (auto& [n, id] : part) EXPECT_TRUE(names.insert(n).second) << "duplicate " << n;
            pos = last;
        }
        EXPECT_EQ(names.size(), 202u) << "handle " << i;
    }
    for (uint64_t fh : fhs) {
        fuse_release_in rl_in{};
        rl_in.fh = fh;
        EXPECT_EQ(h.send(Request(FUSE_RELEASEDIR, 1).arg(rl_in)).error, 0);
    }
    grown = static_cast<long long>(heap_in_use()) - static_cast<long long>(before);
    EXPECT_LT(grown, 2ll << 20) << "released directories still hold " << grown << " bytes";
}

// Issue 14.7: GETXATTR with size 0xfffffff0 grew the server by 256 MiB and
// kept it: the size was capped by the reply's capacity (a guest's buffers),
// not by the protocol's limits, and the scratch buffer was never shrunk.
TEST(GuestAttack, HugeReplySizesDoNotGrowTheServer) {
    Harness h;
    ASSERT_EQ(h.init().error, 0);
    std::ofstream(h.dir + "/x") << "x";
    std::string value(1000, 'v');
    ASSERT_EQ(::setxattr((h.dir + "/x").c_str(), "user.big", value.data(), value.size(), 0), 0)
        << "the temporary directory's file system needs user xattrs";
    for (int i = 0; i < 100; ++i) std::ofstream(h.dir + "/entry" + std::to_string(i));
    uint64_t x = h.lookup(1, "x");
    uint64_t dfh = h.opendir(1);
    constexpr size_t kGuestBuffers = 64u << 20;  // what a guest may offer for one reply

    fuse_getxattr_in gx{};
    gx.size = 0xfffffff0u;
    auto getx = Request(FUSE_GETXATTR, x).arg(gx).str("user.big").bytes();
    auto listx = Request(FUSE_LISTXATTR, x).arg(gx).bytes();
    fuse_read_in rd{};
    rd.fh = dfh;
    rd.size = 0xfffffff0u;
    auto readdir = Request(FUSE_READDIR, 1).arg(rd).bytes();
    auto readdirplus = Request(FUSE_READDIRPLUS, 1).arg(rd).bytes();

    struct Case {
        const char* what;
        std::vector<std::byte>* req;
    } cases[] = {{"GETXATTR", &getx}, {"LISTXATTR", &listx}, {"READDIR", &readdir},
                 {"READDIRPLUS", &readdirplus}};
    for (auto& c : cases) {
        SCOPED_TRACE(c.what);
        ScatterWriter w(kGuestBuffers);
        long long grown = grown_in_thread([&] {
            // twice: a kept scratch buffer shows up as growth, a reused one not twice
            for (int i = 0; i < 2; ++i) h.server->handle({c.req->data(), c.req->size()}, w);
        });
        EXPECT_EQ(w.error(), 0);
        if (c.req == &getx) {
            EXPECT_EQ(w.payload(), value);
        } else if (c.req == &listx) {
            EXPECT_NE(w.payload().find("user.big"), std::string::npos);
        } else if (c.req == &readdir) {
            EXPECT_GT(w.payload().size(), 100u * sizeof(fuse_dirent));
        }
        EXPECT_LT(grown, 256 << 10) << c.what << " left " << grown << " bytes behind";
    }
}

// The kernel drops O_CREAT|O_EXCL when O_PATH is set: a guest that added
// O_PATH to a CREATE got "success" for an existing fifo or symlink and a
// handle holding an O_PATH fd. The guest's O_PATH, O_TMPFILE and
// O_DIRECTORY never reach the host's open.
TEST(GuestAttack, CreateWithOPathStillNeverOpensAnExistingName) {
    for (fs::CacheMode mode : kModes) {
        SCOPED_TRACE(fs::cache_mode_name(mode));
        auto h = writable_share(mode);
        ASSERT_EQ(::mkfifo((h->dir + "/fifo").c_str(), 0644), 0);
        ASSERT_EQ(::symlink("/etc/shadow", (h->dir + "/link").c_str()), 0);
        std::ofstream(h->dir + "/file") << "keep";
        for (const char* name : {"fifo", "link", "file"}) {
            Reply r = create(*h, 1, name, O_RDWR | O_CREAT | O_EXCL | O_PATH);
            EXPECT_EQ(r.error, -EEXIST) << name;
        }
        EXPECT_EQ(slurp(h->dir + "/file"), "keep");
        EXPECT_EQ(h->fs->node_count(), 1u);
    }
}

// A user of the host who owns a file in the share and holds a read lease
// on it: a blocking open for write by the server waits up to
// lease-break-time (45 s) and stalls the queue. Non-blocking, it fails at
// once with EWOULDBLOCK (the guest may retry) and the lease is broken.
TEST(GuestAttack, AHostLeaseNeverStallsAnOpenForWrite) {
    auto h = writable_share(fs::CacheMode::Never);
    std::string f = h->dir + "/leased";
    std::ofstream(f) << "data";
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    pid_t holder = ::fork();
    if (holder == 0) {
        ::signal(SIGIO, SIG_IGN);  // ignores the break: the kernel waits it out
        int fd = ::open(f.c_str(), O_RDONLY);
        char ok = fd >= 0 && ::fcntl(fd, F_SETLEASE, F_RDLCK) == 0 ? 'y' : 'n';
        ssize_t w = ::write(ready[1], &ok, 1);
        (void)w;
        ::pause();
        ::_exit(0);
    }
    ::close(ready[1]);
    char ok = 0;
    ASSERT_EQ(::read(ready[0], &ok, 1), 1);
    ::close(ready[0]);
    struct Reap {
        pid_t p;
        ~Reap() { ::kill(p, SIGKILL); ::waitpid(p, nullptr, 0); }
    } reap{holder};
    ASSERT_EQ(ok, 'y') << "could not take a lease for the test";
    uint64_t node = h->lookup(1, "leased");
    fuse_open_in in{};
    in.flags = O_WRONLY;
    Reply r = h->send(Request(FUSE_OPEN, node).arg(in));
    EXPECT_EQ(r.error, -EWOULDBLOCK) << "the open waited for the lease instead of failing";
    fuse_setattr_in sa{};
    sa.valid = FATTR_SIZE;
    sa.size = 0;
    Reply t = h->send(Request(FUSE_SETATTR, node).arg(sa));
    EXPECT_EQ(t.error, -EWOULDBLOCK) << "the truncate waited for the lease instead of failing";
}

// A guest that offers room for less than the whole answer: the request
// used to run and only its reply became ERANGE, so CREATE made the file and
// kept a handle the guest never heard of (the handle table filled with
// them), and LOOKUP/MKDIR counted lookups nobody would FORGET. Now each is
// refused before it runs.
TEST(GuestAttack, ARequestWithoutRoomForItsReplyDoesNothing) {
    Harness h;
    ASSERT_EQ(h.init().error, 0);
    std::ofstream(h.dir + "/there") << "x";
    constexpr size_t kHdr = sizeof(fuse_out_header);
    fuse_create_in ci{O_RDWR | O_CREAT, 0644, 022, 0};
    auto create_req = Request(FUSE_CREATE, 1).arg(ci).str("made").bytes();
    fuse_mkdir_in mi{0755, 022};
    auto mkdir_req = Request(FUSE_MKDIR, 1).arg(mi).str("dir").bytes();
    auto lookup_req = Request(FUSE_LOOKUP, 1).str("there").bytes();
    struct Case {
        const char* what;
        std::vector<std::byte>* req;
        size_t room;
    } cases[] = {
        {"CREATE, room for the entry only", &create_req, kHdr + sizeof(fuse_entry_out)},
        {"CREATE, room for the header only", &create_req, kHdr},
        {"MKDIR", &mkdir_req, kHdr + sizeof(fuse_entry_out) - 1},
        {"LOOKUP", &lookup_req, kHdr + 8},
    };
    for (auto& c : cases) {
        SCOPED_TRACE(c.what);
        ScatterWriter w(c.room);
        h.server->handle({c.req->data(), c.req->size()}, w);
        EXPECT_EQ(w.error(), -ERANGE);
    }
    EXPECT_TRUE(absent(h.dir + "/made")) << "CREATE made the file anyway";
    EXPECT_TRUE(absent(h.dir + "/dir")) << "MKDIR made the directory anyway";
    EXPECT_EQ(h.fs->node_count(), 1u) << "a refused request left a lookup behind";
    EXPECT_EQ(h.fs->handle_count(), 0u) << "a refused CREATE left a handle behind";
    // With room, the same requests work.
    EXPECT_EQ(h.send(Request(FUSE_CREATE, 1).arg(ci).str("made")).error, 0);
    EXPECT_EQ(h.fs->handle_count(), 1u);
}

// INIT with room for less than its answer: the session was marked started
// before the reply turned into ERANGE, so the guest, which never saw the
// negotiated flags, could not INIT again (EPROTO) and every later request
// ran under flags it had not agreed to. A refused INIT leaves the session
// as it was.
TEST(GuestAttack, AnInitWithoutRoomForItsReplyStartsNoSession) {
    Harness h;
    constexpr size_t kHdr = sizeof(fuse_out_header);
    struct {
        uint32_t major, minor, max_readahead, flags, flags2, unused[11];
    } in{FUSE_KERNEL_VERSION, FUSE_KERNEL_MINOR_VERSION, 131072, 0xffffffffu, 0xffffffffu, {}};
    auto init_req = Request(FUSE_INIT, 0).arg(in).bytes();
    for (size_t room : {kHdr, kHdr + 8, kHdr + sizeof(fuse_init_out) - 1}) {
        SCOPED_TRACE(room);
        ScatterWriter w(room);
        EXPECT_EQ(h.server->handle({init_req.data(), init_req.size()}, w), fuse::Server::Result::Replied);
        EXPECT_EQ(w.error(), -ERANGE);
        EXPECT_FALSE(h.server->initialized()) << "a refused INIT started the session";
        EXPECT_EQ(h.send(Request(FUSE_GETATTR, 1).arg(fuse_getattr_in{})).error, -EIO)
            << "a request ran in a session the guest never saw start";
    }
    // The guest tries again with room, and the session starts.
    Reply r = h.init();
    EXPECT_EQ(r.error, 0) << "a guest whose INIT was refused cannot INIT again";
    EXPECT_TRUE(h.server->initialized());
    EXPECT_EQ(r.payload.size(), sizeof(fuse_init_out));
    EXPECT_EQ(h.send(Request(FUSE_GETATTR, 1).arg(fuse_getattr_in{})).error, 0);
}
