// The EROFS root's cache key (image/erofs.h): the same tree gives the same
// key, and any change a guest could see (content size, mode, owner, time,
// a link's target, a new or renamed entry) gives a new one; links are not
// followed out of the tree.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "image/erofs.h"

namespace ocivm {
namespace {

class TreeKey : public ::testing::Test {
protected:
    void SetUp() override {
        static int n = 0;
        root_ = (std::filesystem::temp_directory_path() /
                 ("ocivm-erofs-key-" + std::to_string(::getpid()) + "-" + std::to_string(n++)))
                    .string();
        std::filesystem::create_directories(root_ + "/etc");
        write("etc/motd", "hello\n");
        ASSERT_EQ(::symlink("motd", (root_ + "/etc/link").c_str()), 0);
        key_ = image::tree_key(root_);
    }
    void TearDown() override { std::filesystem::remove_all(root_); }
    void write(const std::string& rel, const std::string& text) { std::ofstream(root_ + "/" + rel) << text; }
    std::string root_, key_;
};

TEST_F(TreeKey, SameTreeSameKey) { EXPECT_EQ(image::tree_key(root_), key_); }

TEST_F(TreeKey, ContentSize) {
    write("etc/motd", "hello, world\n");
    EXPECT_NE(image::tree_key(root_), key_);
}

TEST_F(TreeKey, Mode) {
    ASSERT_EQ(::chmod((root_ + "/etc/motd").c_str(), 0600), 0);
    EXPECT_NE(image::tree_key(root_), key_);
}

TEST_F(TreeKey, Owner) {
    ASSERT_EQ(::lchown((root_ + "/etc/motd").c_str(), 4242, 4242), 0);
    EXPECT_NE(image::tree_key(root_), key_);
}

TEST_F(TreeKey, MtimeAlone) {
    struct timespec t[2] = {{0, UTIME_OMIT}, {12345, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, (root_ + "/etc/motd").c_str(), t, 0), 0);
    EXPECT_NE(image::tree_key(root_), key_);
}

TEST_F(TreeKey, LinkTargetNotFollowed) {
    ASSERT_EQ(::unlink((root_ + "/etc/link").c_str()), 0);
    ASSERT_EQ(::symlink("/etc/passwd", (root_ + "/etc/link").c_str()), 0);
    std::string k = image::tree_key(root_);
    EXPECT_NE(k, key_);
    // The host's /etc/passwd changing does not change the tree's key.
    EXPECT_EQ(image::tree_key(root_), k);
}

TEST_F(TreeKey, Rename) {
    std::filesystem::rename(root_ + "/etc/motd", root_ + "/etc/motd2");
    EXPECT_NE(image::tree_key(root_), key_);
}

TEST_F(TreeKey, MissingRootIsAnError) {
    EXPECT_THROW(image::tree_key(root_ + "/nope"), std::exception);
}

}  // namespace
}  // namespace ocivm
