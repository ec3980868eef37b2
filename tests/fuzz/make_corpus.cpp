// Writes the seed corpus of every fuzz target (the input formats are
// described at the top of each target's source):
//
//   fuzz_make_corpus DIR     -> DIR/TARGET/NAME for each seed
//
// Seeds are valid, typical inputs (a kernel's FUSE requests, a QEMU-like
// vhost-user set-up, real-looking OCI layouts, small layers) plus a few
// malformed ones the code must refuse; the fuzzer starts from them. The
// output is deterministic: regenerating changes nothing unless this file
// changed (`make fuzz-corpus`).
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

using Bytes = std::vector<uint8_t>;
std::string g_out;

void put(const std::string& target, const std::string& name, const Bytes& b) {
    std::string dir = g_out + "/" + target;
    std::filesystem::create_directories(dir);
    std::ofstream(dir + "/" + name, std::ios::binary).write(reinterpret_cast<const char*>(b.data()),
                                                            static_cast<std::streamsize>(b.size()));
}

template <typename T>
void append(Bytes& b, const T& v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof v);
}
void append_bytes(Bytes& b, const void* p, size_t n) {
    const auto* q = static_cast<const uint8_t*>(p);
    b.insert(b.end(), q, q + n);
}
void append_str(Bytes& b, const std::string& s) { append_bytes(b, s.data(), s.size()); }
void le16(Bytes& b, uint16_t v) { append(b, v); }
void le32(Bytes& b, uint32_t v) { append(b, v); }
void le64(Bytes& b, uint64_t v) { append(b, v); }

// ---------------------------------------------------------------- FUSE

struct Req {
    Bytes b;
    Req(uint32_t op, uint64_t node) {
        static uint64_t unique = 2;
        fuse_in_header h{};
        h.opcode = op;
        h.nodeid = node;
        h.unique = unique += 2;
        h.uid = 0;
        h.gid = 0;
        h.pid = 4242;
        append(b, h);
    }
    template <typename T>
    Req& arg(const T& v) {
        append(b, v);
        return *this;
    }
    Req& str(const std::string& s) {
        append_bytes(b, s.c_str(), s.size() + 1);
        return *this;
    }
    Req& raw(const std::string& s) {
        append_str(b, s);
        return *this;
    }
    Bytes bytes() const {
        Bytes r = b;
        uint32_t len = static_cast<uint32_t>(r.size());
        std::memcpy(r.data(), &len, sizeof len);
        return r;
    }
};

// A FUSE input: session and writer bytes, then length-prefixed requests.
struct FuseSeq {
    Bytes out;
    FuseSeq(uint8_t session, uint8_t writer) {
        out.push_back(session);
        out.push_back(writer);
    }
    FuseSeq& add(const Req& r, bool raw = false) {
        Bytes b = r.bytes();
        le16(out, static_cast<uint16_t>(b.size() | (raw ? 0x8000 : 0)));
        out.insert(out.end(), b.begin(), b.end());
        return *this;
    }
    FuseSeq& add_bytes(const Bytes& b) {
        le16(out, static_cast<uint16_t>(b.size() | 0x8000));
        out.insert(out.end(), b.begin(), b.end());
        return *this;
    }
};

constexpr uint8_t kInit = 0x80, kMetadata = 1, kNever = 0, kAuto = 2, kAlways = 3;

Req init_req(uint32_t minor, uint32_t flags) {
    struct {
        uint32_t major, minor, max_readahead, flags, flags2, unused[11];
    } in{7, minor, 131072, flags, 0xffffffffu, {}};
    return Req(FUSE_INIT, 0).arg(in);
}
Req lookup(uint64_t parent, const std::string& name) { return Req(FUSE_LOOKUP, parent).str(name); }
Req create(uint64_t parent, const std::string& name, uint32_t flags = O_RDWR | O_CREAT) {
    fuse_create_in in{flags, 0644, 022, 0};
    return Req(FUSE_CREATE, parent).arg(in).str(name);
}
Req mkdir_req(uint64_t parent, const std::string& name) {
    fuse_mkdir_in in{0755, 022};
    return Req(FUSE_MKDIR, parent).arg(in).str(name);
}
Req write_req(uint64_t node, uint64_t fh, uint64_t off, const std::string& data) {
    fuse_write_in in{};
    in.fh = fh;
    in.offset = off;
    in.size = static_cast<uint32_t>(data.size());
    return Req(FUSE_WRITE, node).arg(in).raw(data);
}
Req read_req(uint32_t op, uint64_t node, uint64_t fh, uint64_t off, uint32_t size) {
    fuse_read_in in{};
    in.fh = fh;
    in.offset = off;
    in.size = size;
    return Req(op, node).arg(in);
}
Req open_req(uint32_t op, uint64_t node, uint32_t flags) {
    fuse_open_in in{flags, 0};
    return Req(op, node).arg(in);
}
Req release(uint32_t op, uint64_t node, uint64_t fh) {
    fuse_release_in in{};
    in.fh = fh;
    return Req(op, node).arg(in);
}
Req getattr(uint64_t node, uint64_t fh = 0) {
    fuse_getattr_in in{};
    if (fh) {
        in.getattr_flags = FUSE_GETATTR_FH;
        in.fh = fh;
    }
    return Req(FUSE_GETATTR, node).arg(in);
}

void fuse_seeds() {
    const char* t = "fuse_server_fuzz";
    put(t, "root_lookup_statfs",
        FuseSeq(kInit | kMetadata, 0)
            .add(lookup(1, "."))
            .add(getattr(1))
            .add(Req(FUSE_STATFS, 1))
            .add(Req(FUSE_ACCESS, 1).arg(fuse_access_in{R_OK | X_OK, 0}))
            .add(lookup(1, "missing"))
            .out);

    // fh: the handle CREATE returns (0 in no-open mode, cache auto/always).
    auto create_write_read = [&](uint8_t session, uint8_t writer, uint64_t fh = 1) {
        fuse_setattr_in sa{};
        sa.valid = FATTR_MODE | FATTR_SIZE | FATTR_ATIME | FATTR_MTIME | FATTR_FH;
        sa.fh = fh;
        sa.size = 3;
        sa.mode = 0600;
        sa.atime = 1700000000;
        sa.mtime = 1700000001;
        fuse_fallocate_in fa{fh, 0, 8192, 0, 0};
        fuse_lseek_in ls{fh, 0, SEEK_DATA, 0};
        return FuseSeq(session, writer)
            .add(create(1, "file"))
            .add(write_req(2, fh, 0, "hello, world\n"))
            .add(write_req(2, fh, 100000, "far"))
            .add(read_req(FUSE_READ, 2, fh, 0, 4096))
            .add(read_req(FUSE_READ, 2, fh, 99990, 64))
            .add(getattr(2, fh))
            .add(Req(FUSE_SETATTR, 2).arg(sa))
            .add(Req(FUSE_FALLOCATE, 2).arg(fa))
            .add(Req(FUSE_LSEEK, 2).arg(ls))
            .add(Req(FUSE_FLUSH, 2).arg(fuse_flush_in{fh, 0, 0, 0}))
            .add(Req(FUSE_FSYNC, 2).arg(fuse_fsync_in{fh, FUSE_FSYNC_FDATASYNC, 0}))
            .add(release(FUSE_RELEASE, 2, fh))
            .add(open_req(FUSE_OPEN, 2, O_RDONLY))
            .add(read_req(FUSE_READ, 2, fh ? 2 : 0, 0, 16))
            .add(release(FUSE_RELEASE, 2, fh ? 2 : 0))
            .out;
    };
    put(t, "create_write_read", create_write_read(kInit | kMetadata, 0));
    put(t, "create_write_read_scattered", create_write_read(kInit | kMetadata, 2 | (3 << 2)));
    put(t, "create_write_read_small_segments", create_write_read(kInit | kNever, 3 | (1 << 2)));
    put(t, "create_write_read_97_bytes", create_write_read(kInit | kMetadata, 1 | (1 << 2)));
    put(t, "create_write_read_auto_noopen", create_write_read(kInit | kAuto, 0, 0));
    put(t, "create_write_read_always_trace", create_write_read(kInit | kAlways | 64, 0, 0));
    put(t, "create_write_read_readonly", create_write_read(kInit | kMetadata | 4, 0));

    auto dirs = [&](uint8_t session, uint8_t writer) {
        return FuseSeq(session, writer)
            .add(mkdir_req(1, "d"))
            .add(mkdir_req(2, "e"))
            .add(create(2, "x"))
            .add(release(FUSE_RELEASE, 4, 1))
            .add(open_req(FUSE_OPENDIR, 2, O_RDONLY))
            .add(read_req(FUSE_READDIR, 2, 2, 0, 4096))
            .add(read_req(FUSE_READDIRPLUS, 2, 2, 0, 4096))
            .add(read_req(FUSE_READDIR, 2, 2, 1, 80))
            .add(Req(FUSE_FSYNCDIR, 2).arg(fuse_fsync_in{2, 0, 0}))
            .add(release(FUSE_RELEASEDIR, 2, 2))
            .add(Req(FUSE_RMDIR, 2).str("e"))
            .add(lookup(2, ".."))
            .add(lookup(1, ".."))
            .out;
    };
    put(t, "mkdir_readdir", dirs(kInit | kMetadata, 0));
    put(t, "mkdir_readdir_scattered", dirs(kInit | kMetadata | 64, 2 | (0 << 2)));
    put(t, "mkdir_readdir_never", dirs(kInit | kNever, 0));

    fuse_link_in li{3};
    fuse_rename_in rn{1};
    fuse_rename2_in rn2{1, 1 /* RENAME_NOREPLACE */, 0};
    fuse_rename2_in rnx{1, 2 /* RENAME_EXCHANGE */, 0};
    fuse_forget_in fg{1};
    Bytes bf;
    {
        Req r(FUSE_BATCH_FORGET, 0);
        r.arg(fuse_batch_forget_in{2, 0}).arg(fuse_forget_one{2, 1}).arg(fuse_forget_one{3, 1});
        bf = r.bytes();
    }
    put(t, "symlink_link_rename",
        FuseSeq(kInit | kMetadata, 0)
            .add(Req(FUSE_SYMLINK, 1).str("s").str("some/target"))
            .add(Req(FUSE_READLINK, 2))
            .add(create(1, "f"))
            .add(release(FUSE_RELEASE, 3, 1))
            .add(Req(FUSE_LINK, 1).arg(li).str("g"))
            .add(Req(FUSE_RENAME, 1).arg(rn).str("g").str("h"))
            .add(Req(FUSE_RENAME2, 1).arg(rn2).str("h").str("f"))
            .add(Req(FUSE_RENAME2, 1).arg(rnx).str("h").str("s"))
            .add(Req(FUSE_UNLINK, 1).str("h"))
            .add(Req(FUSE_FORGET, 3).arg(fg))
            .add_bytes(bf)
            .add(lookup(1, "f"))
            .out);

    fuse_getxattr_in gx0{0, 0}, gx{64, 0}, lx{256, 0};
    Bytes sx;
    {
        Req r(FUSE_SETXATTR, 2);
        struct {
            uint32_t size, flags;
        } in{5, 0};
        r.arg(in).str("user.fuzz").raw("value");
        sx = r.bytes();
    }
    put(t, "xattrs",
        FuseSeq(kInit | kMetadata, 0)
            .add(create(1, "f"))
            .add_bytes(sx)
            .add(Req(FUSE_GETXATTR, 2).arg(gx0).str("user.fuzz"))
            .add(Req(FUSE_GETXATTR, 2).arg(gx).str("user.fuzz"))
            .add(Req(FUSE_LISTXATTR, 2).arg(gx0))
            .add(Req(FUSE_LISTXATTR, 2).arg(lx))
            .add(Req(FUSE_REMOVEXATTR, 2).str("user.fuzz"))
            .add(Req(FUSE_GETXATTR, 2).arg(gx).str("user.fuzz"))
            .out);
    put(t, "xattrs_override_stat",
        FuseSeq(kInit | kMetadata | 16, 0)
            .add(create(1, "f"))
            .add_bytes(sx)
            .add(getattr(2))
            .add(Req(FUSE_LISTXATTR, 2).arg(lx))
            .out);

    fuse_mknod_in fifo{S_IFIFO | 0644, 0, 022, 0};
    fuse_mknod_in sock{S_IFSOCK | 0644, 0, 022, 0};
    fuse_mknod_in chr{S_IFCHR | 0644, static_cast<uint32_t>(makedev(1, 3)), 022, 0};
    put(t, "mknod_special",
        FuseSeq(kInit | kMetadata, 0)
            .add(Req(FUSE_MKNOD, 1).arg(fifo).str("p"))
            .add(open_req(FUSE_OPEN, 2, O_RDONLY))
            .add(Req(FUSE_MKNOD, 1).arg(sock).str("s"))
            .add(Req(FUSE_MKNOD, 1).arg(chr).str("c"))
            .add(lookup(1, "p"))
            .add(getattr(2))
            .out);

    fuse_copy_file_range_in cfr{1, 0, 3, 2, 0, 5, 0};
    put(t, "copy_file_range",
        FuseSeq(kInit | kMetadata, 0)
            .add(create(1, "a"))
            .add(write_req(2, 1, 0, "abcdefgh"))
            .add(create(1, "b"))
            .add(Req(FUSE_COPY_FILE_RANGE, 2).arg(cfr))
            .add(read_req(FUSE_READ, 3, 2, 0, 64))
            .add(Req(FUSE_LSEEK, 2).arg(fuse_lseek_in{1, 0, SEEK_HOLE, 0}))
            .out);

    put(t, "init_in_stream_then_destroy",
        FuseSeq(kMetadata, 0)
            .add(lookup(1, "."))
            .add(init_req(FUSE_KERNEL_MINOR_VERSION, FUSE_INIT_EXT | FUSE_DO_READDIRPLUS | FUSE_ASYNC_READ))
            .add(init_req(FUSE_KERNEL_MINOR_VERSION, 0))
            .add(Req(FUSE_SYNCFS, 1).arg(uint64_t{0}))
            .add(Req(FUSE_INTERRUPT, 0).arg(fuse_interrupt_in{4}))
            .add(Req(FUSE_DESTROY, 0))
            .add(lookup(1, "."))
            .out);
    put(t, "init_old_minor", FuseSeq(kMetadata, 0).add(init_req(26, 0)).add(init_req(31, 0)).add(lookup(1, ".")).out);
    struct {
        uint32_t major, minor, max_readahead, flags;
    } major8{8, 0, 0, 0};
    put(t, "init_major_8", FuseSeq(kMetadata, 0).add(Req(FUSE_INIT, 0).arg(major8)).add(init_req(38, 0)).out);

    Bytes bad_len = lookup(1, "x").bytes();
    bad_len[0] = 0;  // a header saying 0 bytes
    put(t, "malformed",
        FuseSeq(kInit | kMetadata, 0)
            .add_bytes(Bytes(10, 0))
            .add_bytes(bad_len)
            .add(Req(9999, 1))
            .add(Req(FUSE_GETLK, 1))
            .add(Req(FUSE_LOOKUP, 1).raw("no-nul"))
            .add(Req(FUSE_WRITE, 1).arg(fuse_write_in{0, 0, 1 << 30, 0, 0, 0, 0}))
            .out);
}

// ---------------------------------------------------------------- virtqueue

struct Desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
};
constexpr uint16_t F_NEXT = 1, F_WRITE = 2, F_INDIRECT = 4;

Bytes fuse_lookup_request(uint64_t unique, const std::string& name) {
    fuse_in_header h{};
    h.opcode = FUSE_LOOKUP;
    h.unique = unique;
    h.nodeid = 1;
    h.len = static_cast<uint32_t>(sizeof h + name.size() + 1);
    Bytes b;
    append(b, h);
    append_bytes(b, name.c_str(), name.size() + 1);
    return b;
}
Bytes fuse_init_request(uint64_t unique) {
    Req r = init_req(FUSE_KERNEL_MINOR_VERSION, 0xffffffffu);
    Bytes b = r.bytes();
    fuse_in_header h;
    std::memcpy(&h, b.data(), sizeof h);
    h.unique = unique;
    std::memcpy(b.data(), &h, sizeof h);
    return b;
}

// flags, log2 size, base, one region at gpa 0x10000 of `region` bytes,
// descriptor table and available ring, then ops.
Bytes vq_input(uint8_t flags, uint8_t log2n, const Bytes& region, const std::vector<Desc>& table,
               const std::vector<uint16_t>& avail_ring, uint16_t avail_idx, const Bytes& ops) {
    Bytes b;
    b.push_back(flags);
    b.push_back(log2n);
    le16(b, 0);
    b.push_back(0);  // one region
    le64(b, 0x10000);
    le16(b, static_cast<uint16_t>(region.size() - 1));
    b.insert(b.end(), region.begin(), region.end());
    size_t n = 1u << log2n;
    for (size_t i = 0; i < n; ++i) {
        Desc d = i < table.size() ? table[i] : Desc{0, 0, 0, 0};
        le64(b, d.addr);
        le32(b, d.len);
        le16(b, d.flags);
        le16(b, d.next);
    }
    le16(b, 0);  // avail flags
    le16(b, avail_idx);
    for (size_t i = 0; i < n; ++i) le16(b, i < avail_ring.size() ? avail_ring[i] : 0);
    le16(b, 0);  // used_event
    b.insert(b.end(), ops.begin(), ops.end());
    return b;
}

void virtqueue_seeds() {
    const char* t = "virtqueue_fuzz";
    const uint64_t g = 0x10000;
    Bytes region(0x2000, 0);
    Bytes look = fuse_lookup_request(7, ".");
    std::copy(look.begin(), look.end(), region.begin() + 0x100);
    Bytes ops_pop = {0, 5, 0, 6, 7};  // pop, need_notify, pop (empty), enable_notify, guest_behind

    std::vector<Desc> direct = {{g + 0x100, static_cast<uint32_t>(look.size()), F_NEXT, 1},
                                {g + 0x1000, 0x1000, F_WRITE, 0}};
    put(t, "direct_chain", vq_input(0, 4, region, direct, {0}, 1, ops_pop));
    put(t, "direct_chain_event_idx", vq_input(2, 4, region, direct, {0}, 1, ops_pop));
    put(t, "direct_chain_served_no_init", vq_input(4 | (1 << 4), 4, region, direct, {0}, 1, ops_pop));
    put(t, "direct_chain_served", vq_input(2 | 4 | 8 | (1 << 4), 4, region, direct, {0}, 1, ops_pop));

    // Head 0 points at an indirect table of three descriptors at 0x800.
    Bytes ind_region = region;
    Desc ind[3] = {{g + 0x100, static_cast<uint32_t>(look.size()), F_NEXT, 1},
                   {g + 0x1000, 16, F_NEXT | F_WRITE, 2},
                   {g + 0x1010, 0x800, F_WRITE, 0}};
    std::memcpy(ind_region.data() + 0x800, ind, sizeof ind);
    put(t, "indirect_chain_served",
        vq_input(1 | 2 | 4 | 8 | (1 << 4), 4, ind_region, {{g + 0x800, sizeof ind, F_INDIRECT, 0}}, {0}, 1, ops_pop));

    // INIT then LOOKUP in two chains.
    Bytes two = region;
    Bytes init = fuse_init_request(5);
    std::copy(init.begin(), init.end(), two.begin() + 0x400);
    std::vector<Desc> chains = {{g + 0x400, static_cast<uint32_t>(init.size()), F_NEXT, 1},
                                {g + 0x1000, 0x200, F_WRITE, 0},
                                {g + 0x100, static_cast<uint32_t>(look.size()), F_NEXT, 3},
                                {g + 0x1200, 0x200, F_WRITE, 0}};
    put(t, "init_then_lookup", vq_input(2 | 4 | (1 << 4), 3, two, chains, {0, 2}, 2, Bytes{0, 0, 5, 0, 6}));

    // Malformed chains, each a Bad pop.
    put(t, "loop", vq_input(0, 2, region, {{g, 16, F_NEXT, 0}}, {0}, 1, Bytes{0, 0}));
    put(t, "next_out_of_range", vq_input(0, 2, region, {{g, 16, F_NEXT, 9}}, {0}, 1, Bytes{0}));
    put(t, "head_out_of_range", vq_input(0, 2, region, {}, {7}, 1, Bytes{0}));
    put(t, "avail_jump", vq_input(0, 2, region, direct, {0}, 100, Bytes{0, 0}));
    put(t, "readable_after_writable",
        vq_input(0, 2, region, {{g, 16, F_NEXT | F_WRITE, 1}, {g + 64, 16, 0, 0}}, {0}, 1, Bytes{0}));
    put(t, "outside_memory", vq_input(0, 2, region, {{g + 0x1f00, 0x200, 0, 0}}, {0}, 1, Bytes{0}));
    Bytes nested = region;
    Desc inner[1] = {{g + 0x900, 16, F_INDIRECT, 0}};
    std::memcpy(nested.data() + 0x800, inner, sizeof inner);
    put(t, "nested_indirect", vq_input(1, 2, nested, {{g + 0x800, 16, F_INDIRECT, 0}}, {0}, 1, Bytes{0}));
    put(t, "indirect_without_feature", vq_input(0, 2, nested, {{g + 0x800, 16, F_INDIRECT, 0}}, {0}, 1, Bytes{0}));

    // Guest writes between pops: a descriptor, the ring, the index, memory.
    Bytes prog = {0};
    prog.push_back(2);  // write descriptor 2
    le16(prog, 2);
    Bytes d2;
    le64(d2, g + 0x100);
    le32(d2, static_cast<uint32_t>(look.size()));
    le16(d2, 0);
    le16(d2, 0);
    prog.insert(prog.end(), d2.begin(), d2.end());
    prog.push_back(3);  // avail ring slot 1 = 2
    le16(prog, 1);
    le16(prog, 2);
    prog.push_back(1);  // avail idx = 2
    le16(prog, 2);
    prog.push_back(4);  // 4 bytes of region memory at 0x200
    prog.push_back(0);
    le16(prog, 0x200);
    prog.push_back(4);
    append_str(prog, "abcd");
    prog.push_back(0);
    prog.push_back(8);  // set_base(0)
    le16(prog, 0);
    prog.push_back(0);
    put(t, "guest_writes", vq_input(2, 4, region, direct, {0}, 1, prog));
}

// ---------------------------------------------------------------- vhost-user

struct VuMsg {
    uint8_t fds = 0;
    uint32_t request = 0, flags = 0x1;
    Bytes payload;
};

Bytes vu_input(uint8_t flags, uint8_t size0, uint8_t size1, const Bytes& mem0, const std::vector<VuMsg>& msgs) {
    Bytes b;
    b.push_back(flags);
    b.push_back(size0);
    b.push_back(size1);
    le16(b, static_cast<uint16_t>(mem0.size()));
    b.insert(b.end(), mem0.begin(), mem0.end());
    le16(b, 0);  // memfd 1 stays zero
    for (auto& m : msgs) {
        b.push_back(m.fds);
        le32(b, m.request);
        le32(b, m.flags);
        le16(b, static_cast<uint16_t>(m.payload.size()));
        b.insert(b.end(), m.payload.begin(), m.payload.end());
    }
    return b;
}

VuMsg vu(uint32_t req, Bytes payload = {}, uint8_t fds = 0, uint32_t flags = 0x1) {
    return VuMsg{fds, req, flags, std::move(payload)};
}
Bytes u64b(uint64_t v) {
    Bytes b;
    le64(b, v);
    return b;
}
Bytes state(uint32_t index, uint32_t num) {
    Bytes b;
    le32(b, index);
    le32(b, num);
    return b;
}

void vhost_seeds() {
    const char* t = "vhost_user_fuzz";
    const uint64_t gpa = 0x100000, uaddr = 0x7f0000000000ull;
    const uint32_t num = 8;
    // memfd 0 (64 KiB): descriptors at 0, available ring at 0x100, used ring
    // at 0x200, a LOOKUP at 0x400, its reply buffer at 0x800.
    Bytes mem(0x480, 0);
    Bytes look = fuse_lookup_request(9, ".");
    std::copy(look.begin(), look.end(), mem.begin() + 0x400);
    Desc d[2] = {{gpa + 0x400, static_cast<uint32_t>(look.size()), F_NEXT, 1}, {gpa + 0x800, 0x800, F_WRITE, 0}};
    std::memcpy(mem.data(), d, sizeof d);
    uint16_t avail[3] = {0, 1, 0};  // flags, idx, ring[0]
    std::memcpy(mem.data() + 0x100, avail, sizeof avail);

    Bytes table;
    le32(table, 1);
    le32(table, 0);
    le64(table, gpa);
    le64(table, 0x10000);
    le64(table, uaddr);
    le64(table, 0);
    Bytes addr;
    le32(addr, 1);
    le32(addr, 0);
    le64(addr, uaddr);          // desc
    le64(addr, uaddr + 0x200);  // used
    le64(addr, uaddr + 0x100);  // avail
    le64(addr, 0);
    const uint64_t version1 = 1ull << 32, event_idx = 1ull << 29, indirect = 1ull << 28, proto = 1ull << 30;

    auto setup = [&](uint64_t features, uint8_t kick_fd_bit) {
        std::vector<VuMsg> m = {vu(1), vu(3), vu(2, u64b(features))};
        if (features & proto) {
            m.push_back(vu(15));
            m.push_back(vu(16, u64b(1 | 8)));  // MQ, REPLY_ACK
            m.push_back(vu(17));
        }
        m.push_back(vu(5, table, 1, 0x9));  // SET_MEM_TABLE, memfd 0, NEED_REPLY
        m.push_back(vu(8, state(1, num)));
        m.push_back(vu(9, addr));
        m.push_back(vu(10, state(1, 0)));
        m.push_back(vu(13, u64b(1), 1u << 2));       // call: eventfd A
        m.push_back(vu(12, u64b(1), kick_fd_bit));  // kick
        if (features & proto) m.push_back(vu(18, state(1, 1)));
        return m;
    };
    auto with_stop = [&](std::vector<VuMsg> m) {
        m.push_back(vu(11, state(1, 0)));  // GET_VRING_BASE stops the queue
        return m;
    };
    put(t, "qemu_setup_lookup", vu_input(64 | (1 << 2), 4, 0, mem, with_stop(setup(version1 | event_idx, 1u << 3))));
    put(t, "qemu_setup_protocol_features",
        vu_input(64 | (1 << 2), 4, 0, mem, with_stop(setup(version1 | event_idx | indirect | proto, 1u << 3))));
    put(t, "qemu_setup_hot_kick", vu_input(64 | 1 | (1 << 2), 4, 0, mem, with_stop(setup(version1 | event_idx, 1u << 4))));
    put(t, "qemu_setup_no_init", vu_input(2 | (1 << 2), 4, 0, mem, with_stop(setup(version1, 1u << 3))));

    // Memory replaced, call fd swapped and queue reset while running.
    auto busy = setup(version1 | event_idx | proto, 1u << 4);
    Bytes table1 = table;
    busy.push_back(vu(5, table1, 2));  // SET_MEM_TABLE again, memfd 1
    busy.push_back(vu(13, u64b(1), 1u << 5));
    busy.push_back(vu(13, u64b(1 | 0x100)));  // no fd
    busy.push_back(vu(14, u64b(1), 1u << 2));  // SET_VRING_ERR
    busy.push_back(vu(9, addr));
    busy.push_back(vu(18, state(1, 0)));
    busy.push_back(vu(18, state(1, 1)));
    busy.push_back(vu(4));  // RESET_OWNER
    busy.push_back(vu(6, u64b(0)));
    busy.push_back(vu(7, {}, 1u << 2));
    busy.push_back(vu(99));
    put(t, "reconfigure_while_running", vu_input(64 | 2 | (1 << 2), 4, 4, mem, busy));
    // The same two with a worker pool (flags bit 7): chains in the pool's
    // hands while the memory table changes and queues stop.
    put(t, "pool_hot_kick", vu_input(128 | 64 | 1 | (1 << 2), 4, 0, mem, with_stop(setup(version1 | event_idx, 1u << 4))));
    put(t, "pool_reconfigure_while_running", vu_input(128 | 64 | 2 | (1 << 2), 4, 4, mem, busy));

    // Malformed: short payloads, bad queue index, bad sizes, missing fds.
    put(t, "malformed",
        vu_input(0, 0, 0, {},
                 {vu(2, {1, 2}), vu(8, state(7, 8)), vu(8, state(1, 3)), vu(8, state(1, 65536)), vu(5, table),
                  vu(5, table, 3), vu(12, u64b(1)), vu(12, u64b(9 | 0x100)), vu(10, {1}), vu(9, {1, 2, 3}),
                  vu(11, state(5, 0))}));
    Bytes oversize = vu_input(0, 0, 0, {}, {vu(1)});
    oversize.push_back(64);  // a header claiming 5000 bytes of payload
    le32(oversize, 1);
    le32(oversize, 1);
    le32(oversize, 5000);
    le16(oversize, 0);
    put(t, "oversized_payload", oversize);
}

// ---------------------------------------------------------------- OCI

Bytes oci_input(uint8_t mode, const std::vector<std::string>& parts) {
    Bytes b;
    b.push_back(mode);
    for (size_t i = 0; i < parts.size(); ++i) {
        if (i) b.push_back(0);
        append_str(b, parts[i]);
    }
    return b;
}

void oci_seeds() {
    const char* t = "oci_parse_fuzz";
    const std::string manifest_mt = "application/vnd.oci.image.manifest.v1+json";
    const std::string index =
        R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":")" +
        manifest_mt +
        R"(","digest":"@1","size":#1,"annotations":{"org.opencontainers.image.ref.name":"latest"},"platform":{"architecture":"amd64","os":"linux"}}]})";
    const std::string manifest = R"({"schemaVersion":2,"mediaType":")" + manifest_mt +
                                 R"(","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"@2","size":#2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"@L2","size":#L2}]})";
    const std::string config =
        R"({"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00Z","config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["PATH=/usr/bin:/bin","HOME=/home/app"],"WorkingDir":"/home/app","User":"app:staff"},"rootfs":{"type":"layers","diff_ids":["%L2"]},"history":[{"created_by":"fuzz"}]})";
    const std::string passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n";
    const std::string group = "root:x:0:\nstaff:x:50:app\nwheel:x:10:app,root\n";
    std::vector<std::string> basic = {index, manifest, config, "", "", "", "", "", passwd, group};
    put(t, "oci_dir", oci_input(0, basic));
    put(t, "oci_dir_tag", oci_input(1, basic));
    put(t, "oci_archive", oci_input(2, basic));
    put(t, "oci_dir_named", oci_input(4, basic));

    // A nested index and two uncompressed layers.
    const std::string outer =
        R"({"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"@1","size":#1}]})";
    const std::string inner =
        R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"@3","platform":{"architecture":"arm64","os":"linux"}},{"digest":"@2","size":#2,"platform":{"architecture":"amd64","os":"linux","variant":"v3"}}]})";
    const std::string two_layers = R"({"schemaVersion":2,"config":{"digest":"@4","size":#4},"layers":[{"digest":"@L0","size":#L0},{"digest":"@L1","size":#L1}]})";
    const std::string arm = R"({"schemaVersion":2,"config":{"digest":"@4"},"layers":[]})";
    const std::string config2 = R"({"os":"linux","config":{"Cmd":["/bin/true"],"User":"1000:50"},"rootfs":{"diff_ids":["%L0","%L1"]}})";
    put(t, "nested_index_two_layers", oci_input(0, {outer, inner, two_layers, arm, config2, "", "", "", passwd, group}));

    // A Docker manifest list and schema 2 manifest.
    const std::string list =
        R"({"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"@1","size":#1,"platform":{"architecture":"amd64","os":"linux"}}]})";
    const std::string docker_manifest =
        R"({"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"@2","size":#2},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"@L2","size":#L2}]})";
    put(t, "docker_manifest_list", oci_input(0, {list, docker_manifest, config, "", "", "", "", "", passwd, group}));

    // docker-archive: manifest.json names files.
    const std::string docker_archive = R"([{"Config":"2.json","RepoTags":["fuzz/app:1.0"],"Layers":["L1.tar"]}])";
    const std::string config_l1 = R"({"os":"linux","config":{"Entrypoint":["/bin/sh"],"User":"app"},"rootfs":{"type":"layers","diff_ids":["%L1"]}})";
    put(t, "docker_archive", oci_input(3, {docker_archive, "", config_l1, "", "", "", "", "", passwd, group}));

    // Refusals: bad digests, counts, platforms, JSON.
    put(t, "wrong_os", oci_input(0, {index, manifest, R"({"os":"windows","rootfs":{"diff_ids":["%L2"]}})"}));
    put(t, "diff_id_count", oci_input(0, {index, manifest, R"({"os":"linux","rootfs":{"diff_ids":[]}})"}));
    put(t, "bad_digest", oci_input(0, {R"({"manifests":[{"digest":"sha256:1234"}]})"}));
    put(t, "no_manifests", oci_input(0, {R"({"schemaVersion":2,"manifests":[]})"}));
    put(t, "not_json", oci_input(0, {"{\"manifests\":[", "", "", "", "", "", "", "", "root::0:0::/:\n", "::\n"}));
    put(t, "missing_tag", oci_input(1, {R"({"manifests":[{"digest":"@1","annotations":{"org.opencontainers.image.ref.name":"other"}}]})", manifest, config}));
}

// ---------------------------------------------------------------- layers

struct Entry {
    std::string path;
    unsigned type = AE_IFREG;
    std::string data;        // file contents or symlink target
    std::string hardlink;    // non-empty: a hard link to this path
    unsigned mode = 0644;
    dev_t rdev = 0;
    std::vector<std::pair<std::string, std::string>> xattrs;
};

std::string write_tar(const std::vector<Entry>& entries, int format, int filter = ARCHIVE_FILTER_NONE) {
    archive* a = archive_write_new();
    archive_write_set_format(a, format);
    if (filter != ARCHIVE_FILTER_NONE) archive_write_add_filter(a, filter);
    if (filter == ARCHIVE_FILTER_GZIP) archive_write_set_filter_option(a, "gzip", "timestamp", nullptr);  // reproducible
    archive_write_set_bytes_in_last_block(a, 1);
    std::string buf(1 << 20, '\0');
    size_t used = 0;
    archive_write_open_memory(a, buf.data(), buf.size(), &used);
    for (auto& e : entries) {
        archive_entry* ae = archive_entry_new();
        archive_entry_set_pathname(ae, e.path.c_str());
        archive_entry_set_mtime(ae, 1700000000, 0);
        archive_entry_set_uid(ae, e.path.find("owned") != std::string::npos ? 1000 : 0);
        archive_entry_set_gid(ae, 0);
        if (!e.hardlink.empty()) {
            archive_entry_set_hardlink(ae, e.hardlink.c_str());
            archive_entry_set_filetype(ae, AE_IFREG);
            archive_entry_set_perm(ae, e.mode);
            archive_entry_set_size(ae, 0);
        } else {
            archive_entry_set_filetype(ae, e.type);
            archive_entry_set_perm(ae, e.mode);
            if (e.type == AE_IFLNK) archive_entry_set_symlink(ae, e.data.c_str());
            if (e.type == AE_IFCHR || e.type == AE_IFBLK) archive_entry_set_rdev(ae, e.rdev);
            archive_entry_set_size(ae, e.type == AE_IFREG ? static_cast<la_int64_t>(e.data.size()) : 0);
        }
        for (auto& [k, v] : e.xattrs) archive_entry_xattr_add_entry(ae, k.c_str(), v.data(), v.size());
        archive_write_header(a, ae);
        if (e.type == AE_IFREG && e.hardlink.empty() && !e.data.empty())
            archive_write_data(a, e.data.data(), e.data.size());
        archive_entry_free(ae);
    }
    archive_write_close(a);
    archive_write_free(a);
    buf.resize(used);
    return buf;
}

Bytes tar_input(uint8_t flags, const std::string& first, const std::string& second = {}) {
    Bytes b;
    b.push_back(flags);
    if (flags & 8) {
        le16(b, static_cast<uint16_t>(first.size()));
        append_str(b, first);
        append_str(b, second);
    } else {
        append_str(b, first);
    }
    return b;
}

void tar_seeds() {
    const char* t = "tar_unpack_fuzz";
    const int pax = ARCHIVE_FORMAT_TAR_PAX_RESTRICTED;
    std::vector<Entry> base = {
        {"etc/", AE_IFDIR, "", "", 0755},
        {"etc/passwd", AE_IFREG, "root:x:0:0:root:/root:/bin/sh\n"},
        {"etc/hostname", AE_IFREG, "fuzz\n", "", 0600, 0, {{"user.note", "kept"}}},
        {"bin/", AE_IFDIR, "", "", 0755},
        {"bin/busybox", AE_IFREG, "\x7f" "ELF fake binary", "", 04755},
        {"bin/sh", AE_IFLNK, "busybox", "", 0777},
        {"bin/ash", AE_IFREG, "", "bin/busybox"},
        {"dev/", AE_IFDIR, "", "", 0755},
        {"dev/null", AE_IFCHR, "", "", 0666, makedev(1, 3)},
        {"run/fifo", AE_IFIFO, "", "", 0600},
        {"home/owned/", AE_IFDIR, "", "", 0700},
        {"./tmp/", AE_IFDIR, "", "", 01777},
        {"/abs/file", AE_IFREG, "absolute paths stay inside\n"},
        {"implicit/parent/file", AE_IFREG, "parents without entries\n"},
    };
    std::string base_tar = write_tar(base, pax);
    put(t, "basic_pax", tar_input(0, base_tar));
    put(t, "basic_pax_diff_id", tar_input(2, base_tar));
    put(t, "basic_pax_wrong_diff_id", tar_input(4, base_tar));
    put(t, "basic_pax_gzipped_by_harness", tar_input(1 | 2, base_tar));
    put(t, "basic_gnutar", tar_input(0, write_tar(base, ARCHIVE_FORMAT_TAR_GNUTAR)));
    put(t, "basic_ustar", tar_input(0, write_tar(base, ARCHIVE_FORMAT_TAR_USTAR)));
    put(t, "basic_gzip", tar_input(0, write_tar(base, pax, ARCHIVE_FILTER_GZIP)));
    put(t, "basic_zstd", tar_input(0, write_tar(base, pax, ARCHIVE_FILTER_ZSTD)));
    put(t, "basic_xz", tar_input(0, write_tar(base, pax, ARCHIVE_FILTER_XZ)));

    std::string long_name(150, 'n');
    std::vector<Entry> longs = {{"deep/" + long_name + "/" + long_name, AE_IFREG, "long\n"},
                                {"deep/link-" + long_name, AE_IFLNK, "../" + long_name}};
    put(t, "long_names_pax", tar_input(0, write_tar(longs, pax)));
    put(t, "long_names_gnutar", tar_input(0, write_tar(longs, ARCHIVE_FORMAT_TAR_GNUTAR)));

    std::vector<Entry> lower = {{"keep/", AE_IFDIR, "", "", 0755},
                                {"keep/a", AE_IFREG, "a\n"},
                                {"gone", AE_IFREG, "gone\n"},
                                {"opaque/", AE_IFDIR, "", "", 0755},
                                {"opaque/hidden", AE_IFREG, "hidden\n"},
                                {"shared", AE_IFREG, "linked across layers\n"}};
    std::vector<Entry> upper = {{".wh.gone", AE_IFREG, ""},
                                {"opaque/", AE_IFDIR, "", "", 0750},
                                {"opaque/.wh..wh..opq", AE_IFREG, ""},
                                {"opaque/new", AE_IFREG, "new\n"},
                                {"keep/b", AE_IFREG, "b\n"},
                                {"link-to-lower", AE_IFREG, "", "shared"},
                                {"keep/a", AE_IFLNK, "b"}};
    std::string lt = write_tar(lower, pax), ut = write_tar(upper, pax);
    put(t, "two_layers_whiteouts", tar_input(8 | 2, lt, ut));
    put(t, "two_layers_gzipped", tar_input(8 | 1, lt, ut));
    put(t, "whiteouts_alone", tar_input(0, ut));

    // Refusals.
    put(t, "dotdot", tar_input(0, write_tar({{"a/../../escape", AE_IFREG, "x"}}, pax)));
    put(t, "hardlink_dotdot", tar_input(0, write_tar({{"x", AE_IFREG, "", "../outside"}}, pax)));
    put(t, "symlink_then_through",
        tar_input(0, write_tar({{"up", AE_IFLNK, "../../.."}, {"up/escaped", AE_IFREG, "x"}}, pax)));
    put(t, "whiteout_of_dotdot", tar_input(0, write_tar({{".wh...", AE_IFREG, ""}}, pax)));
    put(t, "truncated", tar_input(0, base_tar.substr(0, 700)));
    put(t, "empty", tar_input(0, ""));
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
        return 2;
    }
    g_out = argv[1];
    fuse_seeds();
    virtqueue_seeds();
    vhost_seeds();
    oci_seeds();
    tar_seeds();
    return 0;
}
