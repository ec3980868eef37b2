// The host/guest configuration format and the image-side user lookup.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "guest/protocol.h"
#include "image/resolve.h"
#include "unit/test_util.h"
#include "util/error.h"

using namespace ocivm;

TEST(GuestConfig, RoundTripsAwkwardValues) {
    guest::GuestConfig c;
    c.argv = {"sh", "-c", "echo 'a\tb'\nprintf '%s\\n' x", "", "back\\slash"};
    c.env = {"A=1", "MULTI=line1\nline2", "EMPTY="};
    c.cwd = "/srv/with space";
    c.hostname = "h";
    c.uid = 1000;
    c.gid = 100;
    c.groups = {100, 10};
    c.tty = true;
    c.stdin_open = true;
    c.rows = 45;
    c.cols = 123;
    c.volumes = {{"ocivm-vol0", "/data\twith tab", false}, {"ocivm-vol1", "/ro", true},
                 {"ocivm.fs.2", "/streamed", false, true, true, false, true}};
    guest::GuestConfig d;
    ASSERT_EQ(guest::decode(guest::encode(c), d), "");
    EXPECT_EQ(d.argv, c.argv);
    EXPECT_EQ(d.env, c.env);
    EXPECT_EQ(d.cwd, c.cwd);
    EXPECT_EQ(d.uid, 1000u);
    EXPECT_EQ(d.gid, 100u);
    EXPECT_EQ(d.groups, c.groups);
    EXPECT_TRUE(d.tty);
    EXPECT_TRUE(d.stdin_open);
    EXPECT_FALSE(d.systemd);
    EXPECT_EQ(d.rows, 45u);
    EXPECT_EQ(d.cols, 123u);
    ASSERT_EQ(d.volumes.size(), 3u);
    EXPECT_EQ(d.volumes[0].path, "/data\twith tab");
    EXPECT_FALSE(d.volumes[0].readonly);
    EXPECT_TRUE(d.volumes[1].readonly);
    EXPECT_FALSE(d.volumes[1].stream);
    EXPECT_TRUE(d.volumes[2].stream) << "a stream share is relayed by ocivm-init, not mounted as virtiofs";
    EXPECT_EQ(d.volumes[2].tag, "ocivm.fs.2");
    EXPECT_TRUE(d.volumes[2].nodev && d.volumes[2].nosuid);
}

TEST(GuestConfig, RejectsGarbage) {
    guest::GuestConfig d;
    EXPECT_NE(guest::decode("cwd /\n", d), "");             // no command
    EXPECT_NE(guest::decode("arg sh\nbogus 1\n", d), "");   // unknown key
    EXPECT_NE(guest::decode("arg sh\nnovalue\n", d), "");   // no value
    EXPECT_NE(guest::decode("arg sh\nvolume x\n", d), "");  // short volume
}

namespace {
std::string make_root() {
    std::string root = test::make_temp_dir();
    ::mkdir((root + "/etc").c_str(), 0755);
    std::ofstream(root + "/etc/passwd") << "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n";
    std::ofstream(root + "/etc/group") << "root:x:0:\nwheel:x:10:user,other\nuser:x:1000:\nstaff:x:50:\n";
    return root;
}
}  // namespace

TEST(ImageUser, NamesNumbersAndGroups) {
    std::string root = make_root();
    auto u = image::resolve_user(root, "user");
    EXPECT_EQ(u.uid, 1000u);
    EXPECT_EQ(u.gid, 1000u);
    EXPECT_EQ(u.home, "/home/user");
    EXPECT_EQ(u.groups, (std::vector<uint32_t>{1000, 10}));
    u = image::resolve_user(root, "user:staff");
    EXPECT_EQ(u.gid, 50u);
    u = image::resolve_user(root, "4321:77");  // numeric ids need not exist (podman)
    EXPECT_EQ(u.uid, 4321u);
    EXPECT_EQ(u.gid, 77u);
    u = image::resolve_user(root, "");
    EXPECT_EQ(u.uid, 0u);
    EXPECT_EQ(u.home, "/root");
    EXPECT_THROW(image::resolve_user(root, "nobody-here"), Error);
    EXPECT_THROW(image::resolve_user(root, "user:nogroup"), Error);
    test::remove_tree(root);
}

TEST(ImageResolve, ErrorsSayWhatToDo) {
    // None of these is an OCI layout: nothing is imported.
    auto no_import = [](const std::string& source) -> std::string {
        ADD_FAILURE() << "unexpected import of " << source;
        throw Error("unexpected import");
    };
    try {
        image::resolve_image("/nonexistent/ocivm-image", no_import);
        FAIL() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
    }
    try {
        image::resolve_image("some-name", no_import);
        FAIL() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("no image named 'some-name'"), std::string::npos) << e.what();
    }
    auto r = image::resolve_image("/", no_import);
    EXPECT_EQ(r.rootfs, "/");
}
