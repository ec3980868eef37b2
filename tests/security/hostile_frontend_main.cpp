// hostile_frontend: the mutation run of issue 14. Replays valid virtio-fs
// traffic (INIT, LOOKUP, GETATTR, OPEN, READ, WRITE, READDIR, CREATE, ...)
// on a temporary share through our own vhost-user front end against a real
// `ocivm fsd`, with seeded random mutations of the FUSE requests, the
// descriptor chains, the rings and the vhost-user messages. fsd is started
// again whenever it exits (or the run ends one on purpose). At the end it
// prints iterations, fsd crashes, hangs (a request, or a message, not
// answered within the bound) and peak RSS; it exits 1 if there was a crash
// or a hang.
//
//   hostile_frontend --ocivm PATH [--seconds N] [--seed S] [--hang-ms MS]
//                    [--fsd-arg ARG]... [--long-runs] [--verbose]
//
// --long-runs keeps one fsd for as long as it lives (no run ends on
// purpose, no stream-breaking mutation): growth over its lifetime shows in
// the peak RSS.
#include <fcntl.h>
#include <linux/fuse.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "security/frontend.h"

using namespace ocivm;
using namespace ocivm::security;

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t MiB = 1ull << 20;
std::atomic<bool> g_stop{false};

struct Args {
    std::string ocivm;
    double seconds = 20;
    uint64_t seed = 1;
    int hang_ms = 15000;
    bool verbose = false;
    bool long_runs = false;
    std::vector<std::string> fsd_args;  // more `ocivm fsd` options (e.g. --seccomp kill)
};

struct Stats {
    uint64_t iterations = 0, requests = 0, mutated_requests = 0, mutated_chains = 0,
             ring_mutations = 0, control_mutations = 0, stream_breaks = 0, repairs = 0;
    uint64_t runs = 0, ended_by_us = 0, exited_on_its_own = 0, crashes = 0, hangs = 0;
    uint64_t peak_anon_kib = 0, peak_rss_kib = 0, peak_hwm_kib = 0;
};

class Rng {
public:
    explicit Rng(uint64_t seed) : g_(seed) {}
    uint64_t u64() { return g_(); }
    uint64_t below(uint64_t n) { return n ? g_() % n : 0; }
    bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(g_) < p; }
    // Values that find off-by-one and overflow bugs.
    uint64_t boundary() {
        static const uint64_t v[] = {0, 1, 2, 7, 8, 15, 16, 255, 256, 4095, 4096, 4097, 65535, 65536,
                                     0x7fffffff, 0x80000000, 0xfffffff0, 0xffffffff, 0x100000000ull,
                                     0x7fffffffffffffffull, 0x8000000000000000ull, ~0ull - 15, ~0ull};
        return v[below(sizeof v / sizeof v[0])];
    }
    uint64_t any() { return chance(0.5) ? boundary() : u64() >> below(64); }

private:
    std::mt19937_64 g_;
};

// The last few things done, printed with a crash or a hang.
class History {
public:
    void add(std::string s) {
        if (log_.size() == 40) log_.pop_front();
        log_.push_back(std::move(s));
    }
    std::string dump() const {
        std::string out;
        for (auto& s : log_) out += "    " + s + "\n";
        return out;
    }
    void clear() { log_.clear(); }

private:
    std::deque<std::string> log_;
};

// A chain as the guest lays it out: readable pieces, then writable ones.
struct Piece {
    uint64_t gpa;
    uint32_t len;
    bool write;
};

class Mutator;

// One fsd run: a Session plus our model of the share (nodes, handles) and
// the descriptors and guest memory the run's chains use.
class Episode {
public:
    Episode(const Args& a, Rng& rng, Stats& st, History& h)
        : args_(a), rng_(rng), st_(st), hist_(h), s_(options(a)) {
        scratch_base_ = s_.ram.alloc(kScratch, 4096);
        scratch_next_ = scratch_base_;
        desc_next_ = s_.fuse->first_free_desc();
        nodes_.push_back(FUSE_ROOT_ID);
        make_fd_pool();
    }

    static Session::Options options(const Args& a) {
        Session::Options o;
        o.ocivm = a.ocivm;
        o.ram_size = 64 * MiB;
        o.queue_size = 256;
        o.share_tmpfs_mib = 64;
        o.log_level = "warn";
        o.fsd_args = a.fsd_args;
        return o;
    }

    Session& session() { return s_; }

    // One iteration: a few operations, then a probe on a clean device.
    // Returns false when the run is over (fsd gone, or ended on purpose).
    bool iterate();
    bool dead() const { return dead_; }
    bool hung() const { return hung_; }

private:
    static constexpr uint64_t kScratch = 24 * MiB;

    // ---- guest memory and descriptors for our chains
    uint64_t scratch(uint64_t len, uint64_t align = 16) {
        uint64_t p = (scratch_next_ + align - 1) & ~(align - 1);
        if (p + len > scratch_base_ + kScratch) p = scratch_base_;  // wrap: old chains are done
        scratch_next_ = p + len;
        return p;
    }
    uint16_t desc(unsigned n) {
        uint16_t num = s_.q.num();
        if (desc_next_ + n > num) desc_next_ = s_.fuse->first_free_desc();
        uint16_t d = desc_next_;
        desc_next_ = static_cast<uint16_t>(desc_next_ + n);
        return d;
    }

    // ---- FUSE requests of the model
    std::vector<std::byte> build_request(uint32_t* out_len, std::string* what);
    uint64_t node() { return rng_.chance(0.05) ? rng_.any() : nodes_[rng_.below(nodes_.size())]; }
    uint64_t file_fh() {
        if (files_.empty() || rng_.chance(0.05)) return rng_.any();
        return files_[rng_.below(files_.size())];
    }
    uint64_t dir_fh() {
        if (dirs_.empty() || rng_.chance(0.05)) return rng_.any();
        return dirs_[rng_.below(dirs_.size())];
    }
    std::string name();
    void learn(uint32_t opcode, const std::vector<std::byte>& reply);

    // ---- the chain: built, maybe mutated, published
    struct Sent {
        uint16_t head;
        uint32_t opcode;
        bool must_return;  // a well-formed chain always comes back
        std::vector<Piece> out;
    };
    Sent send_request(bool mutate_request, bool mutate_chain);
    bool collect(std::vector<Sent>& sent);

    // ---- the device
    void mutate_ring();
    bool mutate_control();  // false: the stream was broken on purpose
    bool sync(const char* after);
    bool repair();
    bool probe();
    void make_fd_pool();
    int random_fd();
    void hang(const std::string& what);
    void no_answer(const std::string& what);

    const Args& args_;
    Rng& rng_;
    Stats& st_;
    History& hist_;
    Session s_;
    uint64_t scratch_base_, scratch_next_;
    uint16_t desc_next_;
    std::vector<uint64_t> nodes_, files_, dirs_;
    uint64_t unique_ = 1000;
    bool dirty_ = false;  // ring or device state changed by a mutation
    bool dead_ = false;
    bool hung_ = false;  // counted and killed already
    std::vector<UniqueFd> fd_pool_;
    std::unique_ptr<GuestRam> small_ram_;
};

void Episode::make_fd_pool() {
    fd_pool_.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    fd_pool_.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    int p[2];
    if (::pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0) {
        fd_pool_.emplace_back(p[0]);
        fd_pool_.emplace_back(p[1]);
    }
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0) {
        fd_pool_.emplace_back(sv[0]);
        fd_pool_.emplace_back(sv[1]);
    }
    fd_pool_.emplace_back(::open("/dev/null", O_RDWR | O_CLOEXEC));
    fd_pool_.emplace_back(::open(s_.dir.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    fd_pool_.emplace_back(::memfd_create("tiny", MFD_CLOEXEC));
    if (fd_pool_.back()) (void)!::ftruncate(fd_pool_.back().get(), 4096);
    small_ram_ = std::make_unique<GuestRam>(1 * MiB, 0x900000000ull, 0x7f7700000000ull, "small-ram");
}

int Episode::random_fd() {
    switch (rng_.below(6)) {
        case 0: return s_.ram.fd();
        case 1: return small_ram_->fd();
        case 2: return s_.q.kick_fd();
        case 3: return s_.q.call_fd();
        default: return fd_pool_[rng_.below(fd_pool_.size())].get();
    }
}

std::string Episode::name() {
    static const char* const names[] = {"a", "b", "c", "dir1", "dir2", "file-x", "link", ".", "..",
                                        "", "x/y", "sub", "\xff\xfe", "a-rather-long-name-for-a-file"};
    if (rng_.chance(0.02)) return std::string(300, 'n');
    return names[rng_.below(sizeof names / sizeof names[0])];
}

template <typename T>
void put(std::vector<std::byte>& v, const T& x) {
    auto* p = reinterpret_cast<const std::byte*>(&x);
    v.insert(v.end(), p, p + sizeof x);
}
void put_str(std::vector<std::byte>& v, const std::string& s) {
    auto* p = reinterpret_cast<const std::byte*>(s.c_str());
    v.insert(v.end(), p, p + s.size() + 1);
}

std::vector<std::byte> Episode::build_request(uint32_t* out_len, std::string* what) {
    std::vector<std::byte> a;
    uint32_t op = 0;
    uint64_t nodeid = node();
    *out_len = 4096;
    switch (rng_.below(30)) {
        case 0: case 1: case 2: case 3:
            op = FUSE_LOOKUP;
            put_str(a, name());
            break;
        case 4: case 5: {
            op = FUSE_GETATTR;
            fuse_getattr_in g{};
            if (rng_.chance(0.3)) { g.getattr_flags = FUSE_GETATTR_FH; g.fh = file_fh(); }
            put(a, g);
            break;
        }
        case 6: {
            op = FUSE_OPEN;
            fuse_open_in o{};
            o.flags = rng_.chance(0.5) ? O_RDWR : O_RDONLY;
            if (rng_.chance(0.1)) o.flags |= O_TRUNC;
            put(a, o);
            break;
        }
        case 7: case 8: {
            op = FUSE_READ;
            fuse_read_in r{};
            r.fh = file_fh();
            r.offset = rng_.chance(0.8) ? rng_.below(4 * MiB) : rng_.any();
            r.size = static_cast<uint32_t>(rng_.chance(0.8) ? rng_.below(256 * 1024) : rng_.any());
            put(a, r);
            *out_len = static_cast<uint32_t>(std::min<uint64_t>(r.size + 16, 1 * MiB + 4096));
            break;
        }
        case 9: case 10: {
            op = FUSE_WRITE;
            fuse_write_in w{};
            w.fh = file_fh();
            w.offset = rng_.chance(0.9) ? rng_.below(2 * MiB) : rng_.any();
            uint32_t n = static_cast<uint32_t>(rng_.below(64 * 1024));
            w.size = n;
            put(a, w);
            size_t at = a.size();
            a.resize(at + n);
            for (uint32_t i = 0; i < n; i += 64) a[at + i] = static_cast<std::byte>(rng_.u64());
            break;
        }
        case 11: {
            op = rng_.chance(0.5) ? FUSE_RELEASE : FUSE_RELEASEDIR;
            fuse_release_in r{};
            r.fh = op == FUSE_RELEASE ? file_fh() : dir_fh();
            put(a, r);
            auto& v = op == FUSE_RELEASE ? files_ : dirs_;
            v.erase(std::remove(v.begin(), v.end(), r.fh), v.end());
            break;
        }
        case 12: {
            op = FUSE_OPENDIR;
            fuse_open_in o{};
            o.flags = O_RDONLY | O_DIRECTORY;
            put(a, o);
            break;
        }
        case 13: case 14: {
            op = rng_.chance(0.5) ? FUSE_READDIR : FUSE_READDIRPLUS;
            fuse_read_in r{};
            r.fh = dir_fh();
            r.offset = rng_.chance(0.7) ? 0 : rng_.any();
            r.size = static_cast<uint32_t>(rng_.chance(0.8) ? 4096 : rng_.any());
            put(a, r);
            *out_len = static_cast<uint32_t>(std::min<uint64_t>(r.size + 16, 256 * 1024));
            break;
        }
        case 15: {
            op = FUSE_CREATE;
            fuse_create_in c{};
            c.flags = O_RDWR | O_CREAT | (rng_.chance(0.2) ? O_EXCL : 0);
            c.mode = S_IFREG | 0644;
            put(a, c);
            put_str(a, name());
            break;
        }
        case 16: {
            op = FUSE_MKDIR;
            fuse_mkdir_in m{};
            m.mode = 0755;
            put(a, m);
            put_str(a, name());
            break;
        }
        case 17:
            op = rng_.chance(0.5) ? FUSE_UNLINK : FUSE_RMDIR;
            put_str(a, name());
            break;
        case 18: {
            op = FUSE_RENAME;
            fuse_rename_in r{};
            r.newdir = node();
            put(a, r);
            put_str(a, name());
            put_str(a, name());
            break;
        }
        case 19: {
            op = FUSE_SETATTR;
            fuse_setattr_in sa{};
            sa.valid = FATTR_SIZE | (rng_.chance(0.3) ? FATTR_MODE : 0);
            sa.size = rng_.below(1 * MiB);
            sa.mode = 0600;
            put(a, sa);
            break;
        }
        case 20: {
            op = FUSE_SETXATTR;
            std::string v(rng_.below(256), 'v');
            fuse_setxattr_in x{};
            x.size = static_cast<uint32_t>(v.size());
            put(a, x);
            put_str(a, rng_.chance(0.8) ? "user.fuzz" : name());
            a.insert(a.end(), reinterpret_cast<const std::byte*>(v.data()),
                     reinterpret_cast<const std::byte*>(v.data()) + v.size());
            break;
        }
        case 21: {
            op = rng_.chance(0.5) ? FUSE_GETXATTR : FUSE_LISTXATTR;
            fuse_getxattr_in g{};
            g.size = static_cast<uint32_t>(rng_.chance(0.7) ? rng_.below(4096) : rng_.any());
            put(a, g);
            if (op == FUSE_GETXATTR) put_str(a, rng_.chance(0.8) ? "user.fuzz" : name());
            break;
        }
        case 22:
            op = FUSE_STATFS;
            break;
        case 23: {
            op = FUSE_FORGET;
            fuse_forget_in f{};
            f.nlookup = rng_.chance(0.8) ? 1 : rng_.any();
            put(a, f);
            break;
        }
        case 24: {
            op = FUSE_BATCH_FORGET;
            uint32_t n = static_cast<uint32_t>(rng_.below(8));
            fuse_batch_forget_in b{};
            b.count = rng_.chance(0.9) ? n : static_cast<uint32_t>(rng_.any());
            put(a, b);
            for (uint32_t i = 0; i < n; ++i) put(a, fuse_forget_one{node(), 1});
            break;
        }
        case 25: {
            op = rng_.chance(0.5) ? FUSE_FLUSH : FUSE_FSYNC;
            fuse_fsync_in f{};
            f.fh = file_fh();
            put(a, f);
            if (op == FUSE_FLUSH) a.resize(sizeof(fuse_flush_in));
            break;
        }
        case 26: {
            op = FUSE_SYMLINK;
            put_str(a, name());
            put_str(a, rng_.chance(0.5) ? "target" : "/etc/passwd");
            break;
        }
        case 27:
            op = FUSE_READLINK;
            break;
        case 28: {
            op = FUSE_FALLOCATE;
            fuse_fallocate_in f{};
            f.fh = file_fh();
            f.offset = rng_.below(1 * MiB);
            f.length = rng_.below(1 * MiB) + 1;
            put(a, f);
            break;
        }
        default: {
            if (rng_.chance(0.5)) {
                op = FUSE_INIT;
                fuse_init_in i{};
                i.major = FUSE_KERNEL_VERSION;
                i.minor = FUSE_KERNEL_MINOR_VERSION;
                i.flags = static_cast<uint32_t>(rng_.u64());
                put(a, i);
            } else {
                op = rng_.chance(0.8) ? FUSE_ACCESS : FUSE_DESTROY;
                if (op == FUSE_ACCESS) put(a, fuse_access_in{static_cast<uint32_t>(rng_.below(8)), 0});
            }
        }
    }
    fuse_in_header h{};
    h.opcode = op;
    h.unique = ++unique_;
    h.nodeid = nodeid;
    h.uid = 0;
    h.gid = 0;
    h.pid = 1234;
    std::vector<std::byte> req(sizeof h + a.size());
    h.len = static_cast<uint32_t>(req.size());
    std::memcpy(req.data(), &h, sizeof h);
    if (!a.empty()) std::memcpy(req.data() + sizeof h, a.data(), a.size());
    *what = "op " + std::to_string(op) + " node " + std::to_string(nodeid) + " len " + std::to_string(req.size());
    return req;
}

void Episode::learn(uint32_t opcode, const std::vector<std::byte>& reply) {
    if (reply.size() < sizeof(fuse_out_header)) return;
    fuse_out_header oh;
    std::memcpy(&oh, reply.data(), sizeof oh);
    if (oh.error != 0) return;
    const std::byte* body = reply.data() + sizeof oh;
    size_t n = reply.size() - sizeof oh;
    auto add = [&](std::vector<uint64_t>& v, uint64_t x) {
        if (v.size() >= 64) v.erase(v.begin() + static_cast<long>(rng_.below(v.size())));
        v.push_back(x);
    };
    if ((opcode == FUSE_LOOKUP || opcode == FUSE_MKDIR || opcode == FUSE_SYMLINK || opcode == FUSE_CREATE) &&
        n >= sizeof(fuse_entry_out)) {
        fuse_entry_out e;
        std::memcpy(&e, body, sizeof e);
        if (e.nodeid) add(nodes_, e.nodeid);
        if (opcode == FUSE_CREATE && n >= sizeof(fuse_entry_out) + sizeof(fuse_open_out)) {
            fuse_open_out o;
            std::memcpy(&o, body + sizeof e, sizeof o);
            add(files_, o.fh);
        }
    }
    if ((opcode == FUSE_OPEN || opcode == FUSE_OPENDIR) && n >= sizeof(fuse_open_out)) {
        fuse_open_out o;
        std::memcpy(&o, body, sizeof o);
        add(opcode == FUSE_OPEN ? files_ : dirs_, o.fh);
    }
}

namespace {

void mutate_bytes(std::vector<std::byte>& r, Rng& rng, std::string& what) {
    auto set32 = [&](size_t off, uint32_t v) {
        if (r.size() >= off + 4) std::memcpy(r.data() + off, &v, 4);
    };
    auto set64 = [&](size_t off, uint64_t v) {
        if (r.size() >= off + 8) std::memcpy(r.data() + off, &v, 8);
    };
    switch (rng.below(8)) {
        case 0: {
            unsigned n = 1 + static_cast<unsigned>(rng.below(8));
            for (unsigned i = 0; i < n && !r.empty(); ++i)
                r[rng.below(r.size())] ^= static_cast<std::byte>(1u << rng.below(8));
            what += " [bits flipped]";
            break;
        }
        case 1: set32(0, static_cast<uint32_t>(rng.any())); what += " [len]"; break;
        case 2:
            set32(4, static_cast<uint32_t>(rng.chance(0.7) ? rng.below(64) : rng.any()));
            what += " [opcode]";
            break;
        case 3: set64(16, rng.any()); what += " [nodeid]"; break;
        case 4: r.resize(rng.below(r.size() + 1)); what += " [truncated to " + std::to_string(r.size()) + "]"; break;
        case 5: {
            size_t n = 1 + rng.below(256);
            for (size_t i = 0; i < n; ++i) r.push_back(static_cast<std::byte>(rng.u64()));
            what += " [bytes appended]";
            break;
        }
        case 6:
            if (r.size() > sizeof(fuse_in_header) + 4) {
                size_t off = sizeof(fuse_in_header) + rng.below(r.size() - sizeof(fuse_in_header) - 3);
                if (rng.chance(0.5)) set32(off, static_cast<uint32_t>(rng.boundary()));
                else set64(off, rng.boundary());
                what += " [argument at " + std::to_string(off) + "]";
            }
            break;
        default:
            set64(8, 0);
            if (r.size() >= 38) {
                uint16_t ext = static_cast<uint16_t>(rng.any());
                std::memcpy(r.data() + 36, &ext, 2);
            }
            what += " [unique 0, extlen]";
    }
}

}  // namespace

Episode::Sent Episode::send_request(bool mreq, bool mchain) {
    uint32_t out_len;
    std::string what;
    auto req = build_request(&out_len, &what);
    uint32_t opcode = 0;
    std::memcpy(&opcode, req.data() + 4, 4);
    if (mreq) {
        mutate_bytes(req, rng_, what);
        ++st_.mutated_requests;
    }
    ++st_.requests;
    Sent sent{0, opcode, true, {}};
    // Readable pieces: the request split at random points.
    std::vector<Piece> pieces;
    uint64_t in = scratch(req.size() + 1);
    if (!req.empty()) std::memcpy(s_.ram.at(in), req.data(), req.size());
    unsigned rsplit = 1 + static_cast<unsigned>(rng_.below(rng_.chance(0.7) ? 1 : 4));
    size_t pos = 0;
    for (unsigned i = 0; i < rsplit; ++i) {
        size_t left = req.size() - pos;
        size_t n = i + 1 == rsplit ? left : rng_.below(left + 1);
        pieces.push_back({in + pos, static_cast<uint32_t>(n), false});
        pos += n;
    }
    // Writable pieces: the reply buffer, split too.
    unsigned wsplit = 1 + static_cast<unsigned>(rng_.below(rng_.chance(0.7) ? 1 : 4));
    uint32_t left = out_len;
    for (unsigned i = 0; i < wsplit; ++i) {
        uint32_t n = i + 1 == wsplit ? left : static_cast<uint32_t>(rng_.below(left + 1ull));
        uint64_t buf = scratch(n + 1);
        pieces.push_back({buf, n, true});
        sent.out.push_back({buf, n, true});
        left -= n;
    }
    // Direct, or through an indirect table (sometimes after a direct prefix).
    bool indirect = rng_.chance(0.3);
    size_t prefix = indirect && rng_.chance(0.2) ? 1 : 0;
    if (prefix > pieces.size()) prefix = 0;
    std::vector<Desc*> descs;  // every descriptor of the chain, for the mutations
    uint16_t direct_n = static_cast<uint16_t>(indirect ? prefix + 1 : pieces.size());
    uint16_t head = desc(direct_n);
    Desc* table = s_.q.desc();
    Desc* itab = nullptr;
    uint64_t itab_gpa = 0;
    for (size_t i = 0; i < pieces.size(); ++i) {
        bool in_table = indirect && i >= prefix;
        Desc d{pieces[i].gpa, pieces[i].len, static_cast<uint16_t>(pieces[i].write ? kDescWrite : 0), 0};
        if (!in_table) {
            uint16_t idx = static_cast<uint16_t>(head + i);
            d.next = static_cast<uint16_t>(idx + 1);
            if (i + 1 < pieces.size() || indirect) d.flags |= kDescNext;
            table[idx] = d;
            descs.push_back(&table[idx]);
        } else {
            if (!itab) {
                itab_gpa = scratch(16 * (pieces.size() - prefix), 16);
                itab = reinterpret_cast<Desc*>(s_.ram.at(itab_gpa));
                uint16_t idx = static_cast<uint16_t>(head + prefix);
                table[idx] = {itab_gpa, static_cast<uint32_t>(16 * (pieces.size() - prefix)), kDescIndirect, 0};
                descs.push_back(&table[idx]);
            }
            size_t k = i - prefix;
            d.next = static_cast<uint16_t>(k + 1);
            if (i + 1 < pieces.size()) d.flags |= kDescNext;
            itab[k] = d;
            descs.push_back(&itab[k]);
        }
    }
    if (mchain) {
        ++st_.mutated_chains;
        unsigned n = 1 + static_cast<unsigned>(rng_.below(3));
        uint64_t ram_end = s_.ram.gpa() + s_.ram.size();
        for (unsigned k = 0; k < n; ++k) {
            Desc* d = descs[rng_.below(descs.size())];
            switch (rng_.below(8)) {
                case 0: d->len = static_cast<uint32_t>(rng_.chance(0.5) ? rng_.boundary() : rng_.u64()); what += " {len}"; break;
                case 1: {
                    static const int kinds = 6;
                    switch (rng_.below(kinds)) {
                        case 0: d->addr = 0; break;
                        case 1: d->addr = 0x1000; break;
                        case 2: d->addr = ram_end - 8; break;
                        case 3: d->addr = ~0ull - 16; break;
                        case 4: d->addr = ram_end; break;
                        default: d->addr = rng_.u64();
                    }
                    what += " {addr}";
                    break;
                }
                case 2: {
                    static const uint16_t bits[] = {kDescNext, kDescWrite, kDescIndirect};
                    d->flags ^= bits[rng_.below(3)];
                    what += " {flag}";
                    break;
                }
                case 3: d->next = static_cast<uint16_t>(rng_.u64()); what += " {next}"; break;
                case 4:
                    d->flags |= kDescNext;
                    d->next = itab && d >= itab ? 0 : head;
                    what += " {loop}";
                    break;
                case 5:
                    for (Desc* x : descs)
                        if (x->flags & kDescWrite) x->len = static_cast<uint32_t>(rng_.below(17));
                    what += " {tiny reply}";
                    break;
                case 6:
                    // Somewhere else in our scratch memory (aliasing other buffers).
                    d->addr = scratch_base_ + rng_.below(kScratch - 4096);
                    what += " {alias}";
                    break;
                default:
                    if (itab) {
                        descs[prefix]->len = static_cast<uint32_t>(rng_.boundary());
                        what += " {table len}";
                    } else {
                        d->len = 0;
                        what += " {len 0}";
                    }
            }
        }
    }
    sent.head = head;
    hist_.add(what + " head " + std::to_string(head) + (mchain ? " (chain mutated)" : ""));
    s_.q.publish(head);
    return sent;
}

bool Episode::collect(std::vector<Sent>& sent) {
    for (auto& x : sent) {
        if (!x.must_return) continue;
        uint32_t len = 0;
        // With the device changed under them (a stopped ring, a moved
        // table), chains may never come back: the repair resets the ring.
        int ms = dirty_ ? 0 : args_.hang_ms;
        if (!s_.fuse->wait_foreign(x.head, &len, ms)) {
            if (dirty_) return true;  // the device was changed under it: repaired next
            no_answer("descriptor chain at head " + std::to_string(x.head) + " not returned within " +
                      std::to_string(args_.hang_ms) + " ms");
            return false;
        }
        // A well-formed request's reply teaches us nodes and handles.
        if (len >= sizeof(fuse_out_header) && !x.out.empty()) {
            std::vector<std::byte> reply;
            for (auto& p : x.out) {
                size_t take = std::min<size_t>(p.len, 512 - reply.size());
                reply.insert(reply.end(), s_.ram.at(p.gpa), s_.ram.at(p.gpa) + take);
                if (reply.size() >= 512) break;
            }
            reply.resize(std::min<size_t>(reply.size(), len));
            learn(x.opcode, reply);
        }
    }
    return true;
}

void Episode::mutate_ring() {
    ++st_.ring_mutations;
    dirty_ = true;
    std::byte* avail = s_.ram.at(s_.q.avail_gpa());
    uint16_t num = s_.q.num();
    switch (rng_.below(5)) {
        case 0: {
            uint16_t by = static_cast<uint16_t>(1 + rng_.below(65535));
            s_.q.set_avail_idx(static_cast<uint16_t>(s_.q.avail_idx() + by));
            hist_.add("ring: avail idx += " + std::to_string(by));
            break;
        }
        case 1: {
            uint16_t h = static_cast<uint16_t>(rng_.chance(0.5) ? rng_.u64() : rng_.below(num));
            s_.q.publish(h);
            hist_.add("ring: head " + std::to_string(h) + " published");
            break;
        }
        case 2: {
            uint16_t e = static_cast<uint16_t>(rng_.u64());
            std::memcpy(avail + 4 + 2 * num, &e, 2);
            hist_.add("ring: used_event " + std::to_string(e));
            break;
        }
        case 3: {
            uint16_t f = static_cast<uint16_t>(rng_.u64());
            std::memcpy(avail, &f, 2);
            hist_.add("ring: avail flags " + std::to_string(f));
            break;
        }
        default: {
            Desc* d = s_.q.desc();
            uint16_t i = static_cast<uint16_t>(rng_.below(num));
            d[i] = {rng_.any(), static_cast<uint32_t>(rng_.any()), static_cast<uint16_t>(rng_.u64()),
                    static_cast<uint16_t>(rng_.u64())};
            s_.q.publish(i);
            hist_.add("ring: garbage descriptor " + std::to_string(i) + " published");
        }
    }
    s_.q.kick();
}

// No answer: fsd is on its way out (the socket closed as it exits, not
// reaped yet), or it hangs.
void Episode::no_answer(const std::string& what) {
    if (s_.fsd.wait_exit(args_.hang_ms)) {
        dead_ = true;
        return;
    }
    hang(what);
}

void Episode::hang(const std::string& what) {
    ++st_.hangs;
    std::fprintf(stderr, "\nHANG (seed %llu, iteration %llu): %s\nlast operations:\n%s%s\n",
                 static_cast<unsigned long long>(args_.seed), static_cast<unsigned long long>(st_.iterations),
                 what.c_str(), hist_.dump().c_str(), s_.report().c_str());
    s_.fsd.kill_and_reap();
    dead_ = true;
    hung_ = true;
}

// The device answers a round trip (GET_QUEUE_NUM always has a reply).
bool Episode::sync(const char* after) {
    if (s_.ch.send(kGetQueueNum, nullptr, 0) && s_.ch.recv_for(kGetQueueNum, args_.hang_ms)) return true;
    no_answer(std::string("no answer to GET_QUEUE_NUM after ") + after);
    return false;
}

bool Episode::mutate_control() {
    ++st_.control_mutations;
    dirty_ = true;
    auto flags = [&] {
        uint32_t f = kFlagVersion | (rng_.chance(0.5) ? kFlagNeedReply : 0);
        if (rng_.chance(0.05)) f |= static_cast<uint32_t>(rng_.u64());
        return f;
    };
    std::vector<int> fds;
    auto extra_fds = [&] {
        if (rng_.chance(0.2)) {
            unsigned n = static_cast<unsigned>(rng_.below(11));
            for (unsigned i = 0; i < n; ++i) fds.push_back(random_fd());
        }
    };
    std::vector<std::byte> p;
    uint32_t req = 0;
    std::string what;
    uint32_t queue = static_cast<uint32_t>(rng_.chance(0.8) ? rng_.below(2) : rng_.any());
    switch (rng_.below(12)) {
        case 0: {
            req = kSetMemTable;
            uint32_t n = static_cast<uint32_t>(rng_.chance(0.9) ? rng_.below(10) : rng_.any());
            put(p, n);
            put(p, uint32_t{0});
            unsigned sent_regions = std::min<uint32_t>(n, rng_.chance(0.9) ? n : static_cast<uint32_t>(rng_.below(12)));
            sent_regions = std::min(sent_regions, 120u);
            for (unsigned i = 0; i < sent_regions; ++i) {
                MemRegion r = rng_.chance(0.5) ? s_.ram.region() : small_ram_->region();
                if (rng_.chance(0.6)) {
                    switch (rng_.below(4)) {
                        case 0: r.gpa = rng_.any(); break;
                        case 1: r.size = rng_.any(); break;
                        case 2: r.uaddr = rng_.any(); break;
                        default: r.mmap_offset = rng_.any();
                    }
                }
                put(p, r);
                fds.push_back(rng_.chance(0.8) ? (r.size == small_ram_->size() ? small_ram_->fd() : s_.ram.fd())
                                               : random_fd());
            }
            if (fds.size() > 8 && rng_.chance(0.7)) fds.resize(8);
            what = "SET_MEM_TABLE of " + std::to_string(n) + " regions (" + std::to_string(sent_regions) + " sent)";
            break;
        }
        case 1: case 2: case 5: {
            static const uint32_t reqs[] = {kSetVringNum, kSetVringBase, kSetVringEnable};
            req = reqs[rng_.below(3)];
            uint32_t num = static_cast<uint32_t>(rng_.chance(0.5) ? rng_.boundary() : rng_.below(70000));
            put(p, queue);
            put(p, num);
            what = "vring state " + std::to_string(req) + " queue " + std::to_string(queue) + " = " + std::to_string(num);
            break;
        }
        case 3: {
            req = kSetVringAddr;
            VringAddr a = s_.q.addr();
            a.index = queue;
            switch (rng_.below(5)) {
                case 0: a.desc = rng_.any(); break;
                case 1: a.used = rng_.any(); break;
                case 2: a.avail = rng_.any(); break;
                case 3: a.desc += rng_.below(16); a.used += rng_.below(4); a.avail += rng_.below(2); break;
                default: a.flags = static_cast<uint32_t>(rng_.u64()); a.log = rng_.u64();
            }
            put(p, a);
            what = "SET_VRING_ADDR queue " + std::to_string(queue);
            break;
        }
        case 4: {
            static const uint32_t reqs[] = {kSetVringKick, kSetVringCall, kSetVringErr};
            req = reqs[rng_.below(3)];
            uint64_t v = queue & 0xff;
            if (rng_.chance(0.2)) v |= kVringNoFd;
            if (rng_.chance(0.1)) v = rng_.u64();
            put(p, v);
            if (rng_.chance(0.85)) fds.push_back(random_fd());
            what = "vring fd " + std::to_string(req) + " value " + std::to_string(v);
            break;
        }
        case 6: {
            req = kGetVringBase;
            put(p, queue);
            put(p, uint32_t{0});
            what = "GET_VRING_BASE queue " + std::to_string(queue);
            break;
        }
        case 7: {
            req = rng_.chance(0.5) ? kSetFeatures : kSetProtocolFeatures;
            uint64_t f = rng_.chance(0.5) ? rng_.u64() : (kFeatVersion1 | kFeatProtocol | (rng_.u64() & (kFeatEventIdx | kFeatIndirect)));
            put(p, f);
            what = "features " + std::to_string(req) + " = " + std::to_string(f);
            break;
        }
        case 8: {
            static const uint32_t reqs[] = {kResetOwner, kSetOwner, kSetLogBase, kSetLogFd, kGetQueueNum,
                                            kGetProtocolFeatures, kGetFeatures};
            req = reqs[rng_.below(7)];
            if (req == kSetLogBase || req == kSetLogFd) {
                put(p, rng_.u64());
                put(p, rng_.u64());
                fds.push_back(random_fd());
            }
            what = "request " + std::to_string(req);
            break;
        }
        case 9: case 10: {
            // Any request number (known ones too) with a payload of any
            // (truthful) size and random bytes.
            req = static_cast<uint32_t>(rng_.chance(0.5) ? 1 + rng_.below(60) : rng_.u64());
            size_t n = rng_.chance(0.8) ? rng_.below(64) : rng_.below(4097);
            for (size_t i = 0; i < n; ++i) p.push_back(static_cast<std::byte>(rng_.u64()));
            what = "request " + std::to_string(req) + " with " + std::to_string(n) + " random bytes";
            break;
        }
        default: {
            if (args_.long_runs || !rng_.chance(0.15)) {
                req = kSetMemTable;  // a valid table again, while requests may be in flight
                MemRegion r = s_.ram.region();
                put(p, uint32_t{1});
                put(p, uint32_t{0});
                put(p, r);
                fds.push_back(s_.ram.fd());
                what = "SET_MEM_TABLE (valid) under load";
                break;
            }
            // Break the stream on purpose: fsd must end cleanly.
            ++st_.stream_breaks;
            switch (rng_.below(3)) {
                case 0: {
                    uint32_t hdr[3] = {static_cast<uint32_t>(rng_.below(20)), kFlagVersion,
                                       static_cast<uint32_t>(4097 + rng_.below(1u << 30))};
                    s_.ch.send_bytes(hdr, sizeof hdr);
                    hist_.add("stream: oversized payload announced");
                    break;
                }
                case 1: {
                    uint32_t hdr[3] = {kSetVringAddr, kFlagVersion, 40};
                    std::byte b[12 + 10] = {};
                    std::memcpy(b, hdr, sizeof hdr);
                    s_.ch.send_bytes(b, sizeof b);
                    hist_.add("stream: 40 bytes announced, 10 sent");
                    break;
                }
                default: {
                    uint32_t half = kGetFeatures;
                    s_.ch.send_bytes(&half, 2);
                    hist_.add("stream: half a header");
                }
            }
            s_.ch.close();
            dead_ = true;
            return false;
        }
    }
    extra_fds();
    hist_.add("control: " + what + (fds.empty() ? "" : " +" + std::to_string(fds.size()) + " fds"));
    if (!s_.ch.send(req, p.data(), static_cast<uint32_t>(p.size()), fds, flags())) {
        dead_ = true;
        return false;
    }
    return sync(what.c_str());
}

bool Episode::repair() {
    ++st_.repairs;
    hist_.add("repair");
    uint64_t pf = kProtoReplyAck | kProtoMq;
    uint64_t f = kFeatVersion1 | kFeatEventIdx | kFeatIndirect | kFeatProtocol;
    if (!s_.ch.send(kSetProtocolFeatures, &pf, sizeof pf) || !s_.ch.send(kSetFeatures, &f, sizeof f) ||
        !sync("re-negotiation"))
        return false;
    // Every ring stopped (a mutation may have started queue 0 on any memory).
    auto nq = s_.ch.get_u64(kGetQueueNum, args_.hang_ms);
    if (!nq) return sync("GET_QUEUE_NUM");
    for (uint32_t i = 0; i < *nq && i < 16; ++i) {
        uint32_t st[2] = {i, 0};
        if (!s_.ch.send(kGetVringBase, st, sizeof st) || !s_.ch.recv_for(kGetVringBase, args_.hang_ms)) {
            no_answer("no answer to GET_VRING_BASE during repair");
            return false;
        }
    }
    uint16_t num = s_.q.num();
    std::memset(s_.ram.at(s_.q.desc_gpa()), 0, 16ull * num);
    std::memset(s_.ram.at(s_.q.avail_gpa()), 0, 6 + 2ull * num);
    std::memset(s_.ram.at(s_.q.used_gpa()), 0, 6 + 8ull * num);
    uint64_t v;
    (void)!::read(s_.q.call_fd(), &v, sizeof v);
    (void)!::read(s_.q.kick_fd(), &v, sizeof v);
    s_.fuse->reset();
    auto st = s_.dev.set_mem_table(s_.ram);
    if (!st || *st) {
        if (st) hang("a valid memory table was refused during repair");
        else no_answer("no answer to SET_MEM_TABLE during repair");
        return false;
    }
    try {
        s_.dev.start_queue(s_.q, 0);
    } catch (const std::exception& e) {
        no_answer(std::string("queue set-up during repair: ") + e.what());
        return false;
    }
    desc_next_ = s_.fuse->first_free_desc();
    scratch_next_ = scratch_base_;
    dirty_ = false;
    return true;
}

bool Episode::probe() {
    fuse_getattr_in g{};
    auto r = s_.fuse->call(FUSE_GETATTR, FUSE_ROOT_ID, std::as_bytes(std::span(&g, 1)), 0, args_.hang_ms);
    if (r.answered) return true;
    no_answer("GETATTR of the root not answered within " + std::to_string(args_.hang_ms) + " ms on a clean device");
    return false;
}

bool Episode::iterate() {
    std::vector<Sent> sent;
    unsigned ops = 1 + static_cast<unsigned>(rng_.below(6));
    for (unsigned i = 0; i < ops; ++i) {
        double x = static_cast<double>(rng_.below(1000)) / 1000;
        if (x < 0.85) {
            if (dirty_) continue;  // a stopped or moved ring: requests wait for the repair
            sent.push_back(send_request(rng_.chance(0.25), rng_.chance(0.2)));
        } else if (x < 0.92) {
            mutate_ring();
        } else {
            if (!mutate_control()) return false;
        }
    }
    s_.q.kick();
    if (!collect(sent)) {
        if (!dead_ && !s_.fsd.running()) dead_ = true;
        return false;
    }
    if (dirty_ && !repair()) return false;
    if (!probe()) return false;
    ++st_.iterations;
    ProcMemory m = s_.fsd.memory();
    st_.peak_anon_kib = std::max(st_.peak_anon_kib, m.anon);
    st_.peak_rss_kib = std::max(st_.peak_rss_kib, m.rss);
    st_.peak_hwm_kib = std::max(st_.peak_hwm_kib, m.hwm);
    return true;
}

void on_signal(int) { g_stop = true; }

bool parse(int argc, char** argv, Args& a) {
    for (int i = 1; i < argc; ++i) {
        std::string k = argv[i];
        auto val = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
        const char* v = nullptr;
        if (k == "--ocivm" && (v = val())) a.ocivm = v;
        else if (k == "--seconds" && (v = val())) a.seconds = std::atof(v);
        else if (k == "--seed" && (v = val())) a.seed = std::strtoull(v, nullptr, 0);
        else if (k == "--hang-ms" && (v = val())) a.hang_ms = std::atoi(v);
        else if (k == "--fsd-arg" && (v = val())) a.fsd_args.push_back(v);
        else if (k == "--long-runs") a.long_runs = true;
        else if (k == "--verbose") a.verbose = true;
        else return false;
    }
    return !a.ocivm.empty() && a.seconds > 0 && a.hang_ms > 0;
}

}  // namespace

int main(int argc, char** argv) {
    Args a;
    if (!parse(argc, argv, a)) {
        std::fprintf(stderr,
                     "usage: %s --ocivm PATH [--seconds N] [--seed S] [--hang-ms MS] [--fsd-arg ARG]... [--long-runs] "
                     "[--verbose]\n",
                     argv[0]);
        return 2;
    }
    if (::geteuid() != 0) {
        std::fprintf(stderr, "hostile_frontend: run as root (fsd's namespace sandbox and the share's tmpfs need it)\n");
        return 2;
    }
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    ::sigaction(SIGINT, &sa, nullptr);
    ::sigaction(SIGTERM, &sa, nullptr);
    ::signal(SIGPIPE, SIG_IGN);

    Rng rng(a.seed);
    Stats st;
    History hist;
    auto start = Clock::now();
    auto deadline = start + std::chrono::milliseconds(static_cast<long long>(a.seconds * 1000));
    int setup_failures = 0;
    while (Clock::now() < deadline && !g_stop) {
        std::unique_ptr<Episode> ep;
        hist.clear();
        try {
            ep = std::make_unique<Episode>(a, rng, st, hist);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "hostile_frontend: starting fsd: %s\n", e.what());
            if (++setup_failures >= 3) break;
            continue;
        }
        setup_failures = 0;
        ++st.runs;
        Session& s = ep->session();
        uint64_t len = a.long_runs ? ~0ull : 20 + rng.below(400);
        for (uint64_t i = 0; i < len && Clock::now() < deadline && !g_stop; ++i)
            if (!ep->iterate()) break;
        // The end of the run: whoever ends it, fsd must go cleanly.
        bool ended_by_us = !ep->dead() || !s.ch.connected();
        s.ch.close();
        if (ep->hung()) {
            // counted, reported and killed already
        } else if (!s.fsd.wait_exit(a.hang_ms)) {
            ++st.hangs;
            std::fprintf(stderr, "\nHANG (seed %llu): fsd did not exit within %d ms of the front end leaving\n%s\n",
                         static_cast<unsigned long long>(a.seed), a.hang_ms, s.report().c_str());
            s.fsd.kill_and_reap();
        } else if (s.fsd.crashed()) {
            ++st.crashes;
            std::fprintf(stderr, "\nCRASH (seed %llu, iteration %llu): %s\nlast operations:\n%s%s\n",
                         static_cast<unsigned long long>(a.seed), static_cast<unsigned long long>(st.iterations),
                         s.fsd.describe_exit().c_str(), hist.dump().c_str(), s.report().c_str());
        } else if (ended_by_us) {
            ++st.ended_by_us;
        } else {
            ++st.exited_on_its_own;
            if (a.verbose) std::fprintf(stderr, "fsd exited on its own: %s\n", s.report().c_str());
        }
        ProcMemory m = s.fsd.memory();  // gone by now; the peaks were sampled while it ran
        (void)m;
        if (a.verbose)
            std::fprintf(stderr, "run %llu: %llu iterations so far\n", static_cast<unsigned long long>(st.runs),
                         static_cast<unsigned long long>(st.iterations));
    }
    double secs = std::chrono::duration<double>(Clock::now() - start).count();
    std::printf("hostile_frontend: seed %llu, %.0f s: %llu iterations, %llu requests (%llu with mutated FUSE "
                "headers, %llu with mutated chains), %llu ring and %llu vhost-user mutations (%llu broke "
                "the stream), %llu repairs\n",
                static_cast<unsigned long long>(a.seed), secs, static_cast<unsigned long long>(st.iterations),
                static_cast<unsigned long long>(st.requests), static_cast<unsigned long long>(st.mutated_requests),
                static_cast<unsigned long long>(st.mutated_chains), static_cast<unsigned long long>(st.ring_mutations),
                static_cast<unsigned long long>(st.control_mutations), static_cast<unsigned long long>(st.stream_breaks),
                static_cast<unsigned long long>(st.repairs));
    std::printf("fsd runs: %llu (%llu ended by the front end, %llu exited on their own with an error logged)\n",
                static_cast<unsigned long long>(st.runs), static_cast<unsigned long long>(st.ended_by_us),
                static_cast<unsigned long long>(st.exited_on_its_own));
    std::printf("fsd crashes: %llu\nhangs: %llu\npeak RSS: %llu MiB (anonymous %llu MiB, high-water mark %llu MiB)\n",
                static_cast<unsigned long long>(st.crashes), static_cast<unsigned long long>(st.hangs),
                static_cast<unsigned long long>(st.peak_rss_kib / 1024),
                static_cast<unsigned long long>(st.peak_anon_kib / 1024),
                static_cast<unsigned long long>(st.peak_hwm_kib / 1024));
    if (setup_failures >= 3) {
        std::printf("FAILED: fsd could not be started (see above)\n");
        return 1;
    }
    if (st.iterations == 0) {
        std::printf("FAILED: not one iteration completed\n");
        return 1;
    }
    return st.crashes || st.hangs ? 1 : 0;
}
