// Share options against a hostile guest (issue 15, "Isolation boundary"):
// nodev, nosuid and the xattr policy, driven with raw FUSE requests against
// a Passthrough on a temporary directory. Root: device nodes, set-group-ID
// on files and the host's own security.*/trusted.* attributes need it.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include <cerrno>
#include <fstream>
#include <set>

#include "security/guest_util.h"

using namespace ocivm;
using namespace ocivm::test;

namespace {

std::unique_ptr<Harness> share_with(void (*set)(fs::PassthroughOptions&)) {
    fs::PassthroughOptions o;
    o.cache = fs::CacheMode::Never;
    set(o);
    auto h = std::make_unique<Harness>(o);
    EXPECT_EQ(h->init().error, 0);
    return h;
}

// Nothing at p: ENOENT, not any failure of lstat.
bool absent(const std::string& p) {
    struct stat st;
    return ::lstat(p.c_str(), &st) < 0 && errno == ENOENT;
}

mode_t host_mode(const std::string& p) {
    struct stat st {};
    EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
    return st.st_mode;
}

std::string host_xattr(const std::string& p, const char* name) {
    char buf[256];
    ssize_t n = ::lgetxattr(p.c_str(), name, buf, sizeof buf);
    return n < 0 ? "<" + std::string(std::strerror(errno)) + ">" : std::string(buf, static_cast<size_t>(n));
}

Reply setx(Harness& h, uint64_t node, const std::string& name, const std::string& value) {
    fuse_setxattr_in in{};
    in.size = static_cast<uint32_t>(value.size());
    // The compat layout (no FUSE_SETXATTR_EXT): size and flags only.
    return h.send(Request(FUSE_SETXATTR, node).raw(&in, 8).str(name).raw(value.data(), value.size()));
}

Reply getx(Harness& h, uint64_t node, const std::string& name, uint32_t size = 4096) {
    fuse_getxattr_in in{};
    in.size = size;
    return h.send(Request(FUSE_GETXATTR, node).arg(in).str(name));
}

Reply rmx(Harness& h, uint64_t node, const std::string& name) {
    return h.send(Request(FUSE_REMOVEXATTR, node).str(name));
}

std::set<std::string> listx(Harness& h, uint64_t node, int* err = nullptr) {
    fuse_getxattr_in in{};
    in.size = 4096;
    Reply r = h.send(Request(FUSE_LISTXATTR, node).arg(in));
    if (err) *err = r.error;
    std::set<std::string> names;
    std::string all = text_of(r);
    for (size_t pos = 0; pos < all.size();) {
        std::string n(all.c_str() + pos);
        names.insert(n);
        pos += n.size() + 1;
    }
    // The size query agrees with the list.
    in.size = 0;
    Reply q = h.send(Request(FUSE_LISTXATTR, node).arg(in));
    EXPECT_EQ(q.error, 0);
    EXPECT_EQ(q.as<fuse_getxattr_out>().size, all.size());
    return names;
}

// An extended POSIX ACL (a named user and a mask), so the host keeps it as
// an xattr instead of folding it into the mode.
std::string acl_blob() {
    struct Entry {
        uint16_t tag, perm;
        uint32_t id;
    };
    uint32_t version = 2;
    const Entry entries[] = {{0x01, 6, ~0u}, {0x02, 4, 1234}, {0x04, 4, ~0u}, {0x10, 4, ~0u},
                             {0x20, 4, ~0u}};
    std::string b(reinterpret_cast<const char*>(&version), sizeof version);
    b.append(reinterpret_cast<const char*>(entries), sizeof entries);
    return b;
}

}  // namespace

TEST(ShareOptions, NodevRefusesDeviceNodes) {
    OCIVM_REQUIRE_ROOT();
    fuse_mknod_in chr{S_IFCHR | 0600, static_cast<uint32_t>(makedev(1, 3)), 0, 0};
    fuse_mknod_in blk{S_IFBLK | 0600, static_cast<uint32_t>(makedev(7, 0)), 0, 0};
    fuse_mknod_in fifo{S_IFIFO | 0600, 0, 0, 0};
    fuse_mknod_in reg{S_IFREG | 0600, 0, 0, 0};
    {
        auto h = share_with([](fs::PassthroughOptions&) {});
        EXPECT_EQ(h->send(Request(FUSE_MKNOD, 1).arg(chr).str("chr")).error, 0)
            << "without nodev a guest makes device nodes";
    }
    auto h = share_with([](fs::PassthroughOptions& o) { o.nodev = true; });
    EXPECT_EQ(h->send(Request(FUSE_MKNOD, 1).arg(chr).str("chr")).error, -EPERM);
    EXPECT_EQ(h->send(Request(FUSE_MKNOD, 1).arg(blk).str("blk")).error, -EPERM);
    EXPECT_TRUE(absent(h->dir + "/chr"));
    EXPECT_TRUE(absent(h->dir + "/blk"));
    EXPECT_EQ(h->send(Request(FUSE_MKNOD, 1).arg(fifo).str("fifo")).error, 0);
    EXPECT_EQ(h->send(Request(FUSE_MKNOD, 1).arg(reg).str("reg")).error, 0);
}

TEST(ShareOptions, NosuidStripsSetIdBitsFromFiles) {
    OCIVM_REQUIRE_ROOT();
    fuse_create_in cr{static_cast<uint32_t>(O_RDWR | O_CREAT), 06755, 0, 0};
    {
        auto h = share_with([](fs::PassthroughOptions&) {});
        ASSERT_EQ(h->send(Request(FUSE_CREATE, 1).arg(cr).str("c")).error, 0);
        EXPECT_EQ(host_mode(h->dir + "/c") & 07777, 06755u) << "without nosuid the bits stay";
    }
    auto h = share_with([](fs::PassthroughOptions& o) { o.nosuid = true; });
    Reply c = h->send(Request(FUSE_CREATE, 1).arg(cr).str("c"));
    ASSERT_EQ(c.error, 0);
    EXPECT_EQ(host_mode(h->dir + "/c") & 07777, 0755u) << "CREATE";
    EXPECT_EQ(c.as<fuse_entry_out>().attr.mode & 07777, 0755u);

    fuse_mknod_in mk{S_IFREG | 06755, 0, 0, 0};
    ASSERT_EQ(h->send(Request(FUSE_MKNOD, 1).arg(mk).str("m")).error, 0);
    EXPECT_EQ(host_mode(h->dir + "/m") & 07777, 0755u) << "MKNOD";

    fuse_setattr_in sa{};
    sa.valid = FATTR_MODE;
    sa.mode = S_IFREG | 04755;
    Reply s = h->send(Request(FUSE_SETATTR, c.as<fuse_entry_out>().nodeid).arg(sa));
    ASSERT_EQ(s.error, 0);
    EXPECT_EQ(host_mode(h->dir + "/c") & 07777, 0755u) << "SETATTR (chmod)";
    EXPECT_EQ(s.as<fuse_attr_out>().attr.mode & 07777, 0755u);
    sa.mode = S_IFREG | 02711;
    ASSERT_EQ(h->send(Request(FUSE_SETATTR, c.as<fuse_entry_out>().nodeid).arg(sa)).error, 0);
    EXPECT_EQ(host_mode(h->dir + "/c") & 07777, 0711u);

    // Directories keep set-group-ID: it only passes the group on.
    uint64_t d = h->mkdir(1, "d");
    sa.mode = S_IFDIR | 02775;
    ASSERT_EQ(h->send(Request(FUSE_SETATTR, d).arg(sa)).error, 0);
    EXPECT_EQ(host_mode(h->dir + "/d") & 07777, 02775u);
}

TEST(ShareOptions, XattrRemapKeepsGuestSecurityAttributesOffTheHost) {
    OCIVM_REQUIRE_ROOT();
    auto h = share_with([](fs::PassthroughOptions& o) { o.xattr_policy = fs::XattrPolicy::Remap; });
    std::string f = h->dir + "/f";
    std::ofstream(f) << "x";
    // The host's own attributes, which the guest must neither see nor be
    // fooled by.
    ASSERT_EQ(::setxattr(f.c_str(), "security.hostonly", "h", 1, 0), 0)
        << "the test directory's file system must take security.* xattrs";
    ASSERT_EQ(::setxattr(f.c_str(), "trusted.hostonly", "h", 1, 0), 0);
    ASSERT_EQ(::setxattr(f.c_str(), "user.ocivm.private", "p", 1, 0), 0);
    uint64_t node = h->lookup(1, "f");

    EXPECT_EQ(setx(*h, node, "security.capability", "caps").error, 0);
    EXPECT_EQ(setx(*h, node, "trusted.overlay.opaque", "y").error, 0);
    EXPECT_EQ(setx(*h, node, "user.plain", "u").error, 0);
    EXPECT_EQ(host_xattr(f, "user.ocivm.security.capability"), "caps");
    EXPECT_EQ(host_xattr(f, "user.ocivm.trusted.overlay.opaque"), "y");
    EXPECT_EQ(host_xattr(f, "user.plain"), "u");
    EXPECT_EQ(host_xattr(f, "security.capability"), "<" + std::string(std::strerror(ENODATA)) + ">")
        << "the guest set a real file capability on the host";
    EXPECT_EQ(host_xattr(f, "trusted.overlay.opaque"), "<" + std::string(std::strerror(ENODATA)) + ">");

    EXPECT_EQ(text_of(getx(*h, node, "security.capability")), "caps");
    EXPECT_EQ(text_of(getx(*h, node, "trusted.overlay.opaque")), "y");
    Reply q = getx(*h, node, "security.capability", 0);
    EXPECT_EQ(q.as<fuse_getxattr_out>().size, 4u);
    EXPECT_EQ(getx(*h, node, "security.hostonly").error, -ENODATA);
    EXPECT_EQ(getx(*h, node, "trusted.hostonly").error, -ENODATA);

    // The stored names are out of the guest's reach: no forging, no peeking.
    EXPECT_EQ(setx(*h, node, "user.ocivm.security.capability", "forged").error, -EPERM);
    EXPECT_EQ(host_xattr(f, "user.ocivm.security.capability"), "caps");
    EXPECT_EQ(getx(*h, node, "user.ocivm.security.capability").error, -ENODATA);
    EXPECT_EQ(getx(*h, node, "user.ocivm.private").error, -ENODATA);
    EXPECT_EQ(rmx(*h, node, "user.ocivm.security.capability").error, -EPERM);

    EXPECT_EQ(listx(*h, node),
              (std::set<std::string>{"security.capability", "trusted.overlay.opaque", "user.plain"}));
    fuse_getxattr_in small{};
    small.size = 10;
    EXPECT_EQ(h->send(Request(FUSE_LISTXATTR, node).arg(small)).error, -ERANGE);

    EXPECT_EQ(rmx(*h, node, "security.capability").error, 0);
    EXPECT_EQ(host_xattr(f, "user.ocivm.security.capability"), "<" + std::string(std::strerror(ENODATA)) + ">");
    EXPECT_EQ(host_xattr(f, "security.hostonly"), "h") << "the host's own attribute is untouched";

    // POSIX ACLs are what they are on the host, in every policy.
    std::string acl = acl_blob();
    ASSERT_EQ(setx(*h, node, "system.posix_acl_access", acl).error, 0);
    EXPECT_EQ(host_xattr(f, "system.posix_acl_access"), acl);
    EXPECT_EQ(text_of(getx(*h, node, "system.posix_acl_access")), acl);
    EXPECT_TRUE(listx(*h, node).count("system.posix_acl_access"));
}

TEST(ShareOptions, XattrRefuseKeepsSecurityAttributesAwayFromTheGuest) {
    OCIVM_REQUIRE_ROOT();
    auto h = share_with([](fs::PassthroughOptions& o) { o.xattr_policy = fs::XattrPolicy::Refuse; });
    std::string f = h->dir + "/f";
    std::ofstream(f) << "x";
    ASSERT_EQ(::setxattr(f.c_str(), "security.hostonly", "h", 1, 0), 0);
    uint64_t node = h->lookup(1, "f");
    EXPECT_EQ(setx(*h, node, "security.capability", "caps").error, -EPERM);
    EXPECT_EQ(setx(*h, node, "trusted.x", "t").error, -EPERM);
    EXPECT_EQ(rmx(*h, node, "security.hostonly").error, -EPERM);
    EXPECT_EQ(getx(*h, node, "security.hostonly").error, -ENODATA);
    EXPECT_EQ(setx(*h, node, "user.plain", "u").error, 0);
    std::string acl = acl_blob();
    ASSERT_EQ(setx(*h, node, "system.posix_acl_access", acl).error, 0);
    EXPECT_EQ(listx(*h, node), (std::set<std::string>{"system.posix_acl_access", "user.plain"}));
    EXPECT_EQ(host_xattr(f, "security.hostonly"), "h");
    EXPECT_EQ(host_xattr(f, "security.capability"), "<" + std::string(std::strerror(ENODATA)) + ">");
}

TEST(ShareOptions, XattrPassthroughIsTheDefault) {
    OCIVM_REQUIRE_ROOT();
    auto h = share_with([](fs::PassthroughOptions&) {});
    std::string f = h->dir + "/f";
    std::ofstream(f) << "x";
    uint64_t node = h->lookup(1, "f");
    EXPECT_EQ(setx(*h, node, "trusted.x", "t").error, 0);
    EXPECT_EQ(host_xattr(f, "trusted.x"), "t");
    EXPECT_EQ(text_of(getx(*h, node, "trusted.x")), "t");
}
