// Snapshot helpers (vm/snapshot.h): the RAM copies keep holes and zero
// pages as holes and every written byte where it was; snapshot names;
// snapshot.json round trips and refuses what a clone could not run with;
// restore_refusal names the mismatch.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "test_util.h"
#include "util/error.h"
#include "util/unique_fd.h"
#include "vm/snapshot.h"

namespace ocivm {
namespace {

constexpr size_t kPage = 4096;

uint64_t allocated(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_blocks) * 512 : ~0ull;
}

class SnapshotFiles : public ::testing::Test {
protected:
    void SetUp() override { dir_ = test::make_temp_dir(); }
    void TearDown() override { test::remove_tree(dir_); }
    std::string dir_;
};

TEST_F(SnapshotFiles, SparseCopyKeepsDataAndLeavesHolesAndZeroPages) {
    // A memfd like QEMU's: 64 pages, three written (one of them with zeros).
    UniqueFd mem(::memfd_create("ram", MFD_CLOEXEC));
    ASSERT_TRUE(mem);
    const size_t size = 64 * kPage;
    ASSERT_EQ(::ftruncate(mem.get(), static_cast<off_t>(size)), 0);
    std::string a(kPage, 'a'), b(100, 'b'), zero(kPage, '\0');
    ASSERT_EQ(::pwrite(mem.get(), a.data(), a.size(), 3 * kPage), static_cast<ssize_t>(a.size()));
    ASSERT_EQ(::pwrite(mem.get(), b.data(), b.size(), 40 * kPage + 7), static_cast<ssize_t>(b.size()));
    ASSERT_EQ(::pwrite(mem.get(), zero.data(), zero.size(), 50 * kPage), static_cast<ssize_t>(zero.size()));
    std::string out = dir_ + "/ram";
    uint64_t copied = vm::sparse_copy(mem.get(), out, size);
    EXPECT_EQ(copied, 2 * kPage) << "two pages hold data; the zero page stays a hole";
    std::string expect(size, '\0');
    expect.replace(3 * kPage, a.size(), a);
    expect.replace(40 * kPage + 7, b.size(), b);
    EXPECT_TRUE(ocivm::test::slurp(out) == expect) << "the copy reads as the memory did";
    EXPECT_LE(allocated(out), 4 * kPage) << "holes stay holes";
    EXPECT_THROW(vm::sparse_copy(mem.get(), out, size), Error) << "an existing file is never overwritten";
}

TEST_F(SnapshotFiles, MappedRamIsReadWithTheProcessesOwnWrites) {
    // A clone's RAM: a file mapped privately; pages it wrote differ from
    // the file, and only the mapping has them.
    std::string file = dir_ + "/template";
    const size_t size = 16 * kPage;
    {
        UniqueFd f(::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
        ASSERT_TRUE(f);
        ASSERT_EQ(::ftruncate(f.get(), static_cast<off_t>(size)), 0);
        std::string t(kPage, 't');
        ASSERT_EQ(::pwrite(f.get(), t.data(), t.size(), 2 * kPage), static_cast<ssize_t>(t.size()));
        ASSERT_EQ(::pwrite(f.get(), t.data(), t.size(), 9 * kPage), static_cast<ssize_t>(t.size()));
    }
    UniqueFd f(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, f.get(), 0);
    ASSERT_NE(p, MAP_FAILED);
    auto* bytes = static_cast<char*>(p);
    std::memset(bytes + 9 * kPage, 'w', kPage);  // a page the "clone" wrote over the template's
    std::memset(bytes + 12 * kPage, 'n', 10);    // one it wrote where the template had nothing
    std::string out = dir_ + "/copy";
    uint64_t copied = vm::copy_mapped_ram(::getpid(), file, out, size);
    std::string expect(size, '\0');
    expect.replace(2 * kPage, kPage, std::string(kPage, 't'));
    expect.replace(9 * kPage, kPage, std::string(kPage, 'w'));
    expect.replace(12 * kPage, 10, std::string(10, 'n'));
    ::munmap(p, size);
    EXPECT_EQ(copied, 3 * kPage);
    EXPECT_TRUE(ocivm::test::slurp(out) == expect) << "the copy is the mapping, not the file";
    EXPECT_EQ(ocivm::test::slurp(file).substr(9 * kPage, 1), "t") << "the template file is unchanged";
}

TEST_F(SnapshotFiles, MappedRamNotMappedIsAnError) {
    std::string file = dir_ + "/not-mapped";
    UniqueFd f(::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    ASSERT_EQ(::ftruncate(f.get(), 8 * kPage), 0);
    EXPECT_THROW(vm::copy_mapped_ram(::getpid(), file, dir_ + "/out", 8 * kPage), Error);
}

TEST(SnapshotNames, OnlyPlainNames) {
    for (const char* ok : {"a", "web-1", "v1.2_final", "A9"}) EXPECT_EQ(vm::snapshot_name_problem(ok), "") << ok;
    for (const char* bad : {"", ".", "..", ".hidden", "-x", "a/b", "a b", "x\n", "../etc"})
        EXPECT_NE(vm::snapshot_name_problem(bad), "") << bad;
    EXPECT_NE(vm::snapshot_name_problem(std::string(129, 'a')), "");
}

vm::SnapshotInfo sample() {
    vm::SnapshotInfo s;
    s.name = "s1";
    s.created = "2026-12-01T10:00:00Z";
    s.source = "vm1";
    s.image = "demo";
    s.command = {"sh", "-c", "sleep 1"};
    s.env = {"A=1"};
    s.qemu = vm::local_qemu();
    s.qemu.version = "7.2";
    s.machine = "microvm";
    s.accel = "tcg";
    s.memory = "512M";
    s.cpus = 2;
    s.append = "console=ttyS0";
    s.network = "user";
    s.ram_bytes = 123;
    return s;
}

TEST(SnapshotRecord, RoundTrips) {
    vm::SnapshotInfo s = sample();
    vm::SnapshotInfo back = vm::SnapshotInfo::from_json(s.to_json(), "/x");
    EXPECT_EQ(back.to_json(), s.to_json());
    EXPECT_EQ(back.dir, "/x");
}

TEST(SnapshotRecord, BrokenRecordsAreErrors) {
    EXPECT_THROW(vm::SnapshotInfo::from_json("not json", "/x"), Error);
    EXPECT_THROW(vm::SnapshotInfo::from_json("{}", "/x"), Error) << "no machine, QEMU, memory";
    std::string j = sample().to_json();
    std::string m = j;
    m.replace(m.find("\"microvm\""), 9, "\"pc-i440fx\"");
    EXPECT_THROW(vm::SnapshotInfo::from_json(m, "/x"), Error) << "an unknown machine";
    std::string n = j;
    n.replace(n.find("\"user\""), 6, "\"bridge\"");
    EXPECT_THROW(vm::SnapshotInfo::from_json(n, "/x"), Error) << "a network a clone cannot have";
}

TEST(SnapshotRecord, RestoreRefusalNamesTheMismatch) {
    vm::SnapshotInfo s = sample();
    if (s.qemu.path.empty()) GTEST_FAIL() << "qemu-system-x86_64 missing: apt-get install qemu-system-x86";
    EXPECT_EQ(vm::restore_refusal(s, "microvm", false), "");
    EXPECT_EQ(vm::restore_refusal(s, "", false), "");
    EXPECT_NE(vm::restore_refusal(s, "q35", false).find("microvm machine, not q35"), std::string::npos);
    vm::SnapshotInfo other = s;
    other.qemu.size += 1;
    EXPECT_NE(vm::restore_refusal(other, "microvm", false).find("another QEMU binary"), std::string::npos);
    other = s;
    other.qemu.mtime_ns += 1;
    EXPECT_NE(vm::restore_refusal(other, "microvm", false).find("another QEMU binary"), std::string::npos);
    vm::SnapshotInfo kvm = s;
    kvm.accel = "kvm";
    EXPECT_NE(vm::restore_refusal(kvm, "microvm", false).find("KVM"), std::string::npos);
    EXPECT_EQ(vm::restore_refusal(kvm, "microvm", true), "");
}

}  // namespace
}  // namespace ocivm

using namespace ocivm;
using namespace ocivm::test;

// A clone serves the directory its snapshot recorded, reached without a
// symbolic link; a path that leads elsewhere since is refused.
TEST(SnapshotShares, AShareRootReplacedSinceTheSnapshotIsRefused) {
    std::string top = make_temp_dir();
    struct Rm {
        std::string d;
        ~Rm() { remove_tree(d); }
    } rm{top};
    std::string share = top + "/share", other = top + "/other";
    ASSERT_EQ(::mkdir(share.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir(other.c_str(), 0755), 0);
    vm::SnapshotShare sh;
    sh.host = share;
    sh.guest = "/data";
    vm::record_share_root(sh);
    EXPECT_NE(sh.root_ino, 0u);
    EXPECT_TRUE(vm::open_share_root(sh, "s"));
    auto back = vm::SnapshotInfo::from_json([&] {
        vm::SnapshotInfo i;
        i.name = "n", i.machine = "microvm", i.accel = "tcg", i.memory = "512M", i.append = "x";
        i.shares = {sh};
        return i.to_json();
    }(), "/x");
    ASSERT_EQ(back.shares.size(), 1u);
    EXPECT_EQ(back.shares[0].root_dev, sh.root_dev);
    EXPECT_EQ(back.shares[0].root_ino, sh.root_ino);
    auto refusal = [&](const vm::SnapshotShare& x) {
        try {
            vm::open_share_root(x, "s");
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string();
    };
    // The share replaced by a symbolic link to another directory.
    ASSERT_EQ(::rename(share.c_str(), (top + "/moved").c_str()), 0);
    ASSERT_EQ(::symlink(other.c_str(), share.c_str()), 0);
    EXPECT_NE(refusal(sh).find("symbolic link"), std::string::npos) << refusal(sh);
    // ... even to the very directory (the link could change any time).
    ASSERT_EQ(::unlink(share.c_str()), 0);
    ASSERT_EQ(::symlink((top + "/moved").c_str(), share.c_str()), 0);
    EXPECT_NE(refusal(sh).find("symbolic link"), std::string::npos) << refusal(sh);
    // A parent replaced by a link.
    ASSERT_EQ(::unlink(share.c_str()), 0);
    ASSERT_EQ(::mkdir((top + "/p").c_str(), 0755), 0);
    ASSERT_EQ(::rename((top + "/moved").c_str(), (top + "/p/share").c_str()), 0);
    vm::SnapshotShare deep = sh;
    deep.host = top + "/q/share";
    ASSERT_EQ(::symlink((top + "/p").c_str(), (top + "/q").c_str()), 0);
    EXPECT_NE(refusal(deep).find("symbolic link"), std::string::npos) << refusal(deep);
    // Another directory by that name.
    ASSERT_EQ(::mkdir(share.c_str(), 0755), 0);
    EXPECT_NE(refusal(sh).find("another directory now"), std::string::npos) << refusal(sh);
    // Gone.
    ASSERT_EQ(::rmdir(share.c_str()), 0);
    EXPECT_NE(refusal(sh).find("no longer a directory"), std::string::npos) << refusal(sh);
}

// A clone keeps the source's server options.
TEST(SnapshotShares, CacheModeAndTrustedXattrsAreRecorded) {
    vm::SnapshotInfo s;
    s.name = "n", s.machine = "microvm", s.accel = "tcg", s.memory = "512M", s.append = "x";
    vm::SnapshotShare sh;
    sh.host = "/srv/a";
    sh.guest = "/data";
    sh.cache = "never";
    sh.trusted_xattrs = true;
    s.shares = {sh};
    auto back = vm::SnapshotInfo::from_json(s.to_json(), "/x");
    ASSERT_EQ(back.shares.size(), 1u);
    EXPECT_EQ(back.shares[0].cache, "never");
    EXPECT_TRUE(back.shares[0].trusted_xattrs);
}
