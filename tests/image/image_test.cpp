// Image store tests (label fs: they run as root to create device nodes and
// set owners). Every image is built here: layers written with libarchive,
// OCI layouts, OCI and docker archives. Run as: image_tests --ocivm PATH
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <signal.h>
#include <unistd.h>

#include <clocale>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "fs/passthrough.h"
#include "image/image_fixture.h"
#include "image/store.h"
#include "image/unpack.h"
#include "util/error.h"
#include "util/hash.h"
#include "util/paths.h"

using namespace ocivm;
using namespace ocivm::imagetest;
using json = nlohmann::json;
namespace stdfs = std::filesystem;

namespace {

class ImageTest : public ::testing::Test {
protected:
    void SetUp() override {
        auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        dir = g_work + "/" + info->name();
        make_dirs(dir);
        home = dir + "/store";
    }
    std::string dir, home;
};

// The main multi-layer image and the tree it must give.
std::vector<std::vector<Entry>> rich_layers() {
    std::vector<Entry> l1 = {
        {"etc", 'd', 0755},
        {"etc/config", 'f', 0640, 0, 42, "first\n"},
        {"etc/gone", 'f', 0644, 0, 0, "whited out later\n"},
        {"opaque", 'd', 0755},
        {"opaque/old1", 'f', 0644, 0, 0, "hidden by the opaque dir\n"},
        {"opaque/sub", 'd', 0700},
        {"data", 'd', 0750, 1000, 1000, "", 0, 0, {{"user.dir", "a directory's xattr"}}},
        {"data/file", 'f', 0600, 1000, 1000, "payload"},
        {"data/same", 'h', 0600, 1000, 1000, "data/file"},
        {"data/link", 'l', 0777, 0, 0, "file"},
        {"data/abs", 'l', 0777, 0, 0, "/etc/config"},
        {"dev", 'd', 0755},
        {"dev/null", 'c', 0666, 0, 0, "", makedev(1, 3)},
        {"dev/loop9", 'b', 0660, 0, 6, "", makedev(7, 9)},
        {"dev/fifo", 'p', 0600},
        {"bin", 'd', 0755},
        {"bin/ping", 'f', 04755, 0, 0, "#!/bin/sh\n"},
        {"bin/cap", 'f', 0755, 0, 0, "cap", 0, 0, {{"security.capability", std::string("\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 20)}}},
        {"bin/x", 'f', 0644, 0, 0, "x", 0, 0, {{"user.note", "hello"}, {"trusted.t", "v"}}},
        {"big", 'f', 0644, 0, 0, "the end", 0, (5ll << 30) + 7},  // > 4 GiB, sparse
        {"replaced", 'f', 0644, 0, 0, "file first"},
    };
    std::string deep;
    for (int i = 0; i < 60; ++i) {
        deep += (i ? "/" : "") + std::string("d") + std::to_string(i);
        l1.push_back({deep, 'd', 0755});
    }
    l1.push_back({deep + "/leaf", 'f', 0644, 0, 0, "deep"});
    std::vector<Entry> l2 = {
        {"etc/.wh.gone", 'f', 0644},
        {"etc/config", 'f', 0600, 0, 0, "second\n"},
        {"opaque", 'd', 0755},
        {"opaque/.wh..wh..opq", 'f', 0644},
        {"opaque/new", 'f', 0644, 0, 0, "new"},
        {"data/cross", 'h', 0600, 1000, 1000, "data/file"},  // hard link to a lower layer's file
        {"replaced", 'd', 0711},
        {"replaced/inside", 'f', 0644, 0, 0, "now a dir"},
    };
    std::vector<Entry> l3 = {{"data/.wh.link", 'f', 0644}, {"data/link", 'l', 0777, 0, 0, "same"}};
    return {l1, l2, l3};
}

}  // namespace

TEST_F(ImageTest, MultiLayerImportGivesTheExpectedTree) {
    auto l = make_layout(dir + "/layout", rich_layers(), {{"Cmd", {"/bin/sh"}}, {"Env", {"A=1"}}, {"WorkingDir", "/data"}, {"User", "1000"}});
    image::Store store(home);
    auto rep = store.import("oci:" + l.dir + ":v1", "rich");
    EXPECT_EQ(rep.layers_unpacked, 3u);
    EXPECT_TRUE(rep.root_assembled);
    std::string root = home + "/roots/" + l.manifest_digest.substr(7);
    // The expected tree, built by hand on the same file system.
    std::string want = dir + "/want";
    make_dirs(want + "/etc");
    auto file = [&](const std::string& p, const std::string& d, mode_t m, uid_t u = 0, gid_t g = 0) {
        std::ofstream(want + "/" + p) << d;
        ::chown((want + "/" + p).c_str(), u, g);
        ::chmod((want + "/" + p).c_str(), m);
    };
    auto mkd = [&](const std::string& p, mode_t m, uid_t u = 0, gid_t g = 0) {
        ::mkdir((want + "/" + p).c_str(), m);
        ::chown((want + "/" + p).c_str(), u, g);
        ::chmod((want + "/" + p).c_str(), m);
    };
    ::chmod(want.c_str(), 0755);
    mkd("etc", 0755);
    file("etc/config", "second\n", 0600);
    mkd("opaque", 0755);
    file("opaque/new", "new", 0644);
    mkd("data", 0750, 1000, 1000);
    ::lsetxattr((want + "/data").c_str(), "user.dir", "a directory's xattr", 19, 0);
    file("data/file", "payload", 0600, 1000, 1000);
    ::link((want + "/data/file").c_str(), (want + "/data/same").c_str());
    ::link((want + "/data/file").c_str(), (want + "/data/cross").c_str());
    ::symlink("same", (want + "/data/link").c_str());
    ::symlink("/etc/config", (want + "/data/abs").c_str());
    mkd("dev", 0755);
    ::mknod((want + "/dev/null").c_str(), S_IFCHR | 0666, makedev(1, 3));
    ::chmod((want + "/dev/null").c_str(), 0666);
    ::mknod((want + "/dev/loop9").c_str(), S_IFBLK | 0660, makedev(7, 9));
    ::chmod((want + "/dev/loop9").c_str(), 0660);
    ::chown((want + "/dev/loop9").c_str(), 0, 6);
    ::mknod((want + "/dev/fifo").c_str(), S_IFIFO | 0600, 0);
    mkd("bin", 0755);
    file("bin/ping", "#!/bin/sh\n", 04755);
    file("bin/cap", "cap", 0755);
    std::string cap("\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 20);
    ::lsetxattr((want + "/bin/cap").c_str(), "security.capability", cap.data(), cap.size(), 0);
    file("bin/x", "x", 0644);
    ::lsetxattr((want + "/bin/x").c_str(), "user.note", "hello", 5, 0);
    ::lsetxattr((want + "/bin/x").c_str(), "trusted.t", "v", 1, 0);
    {
        int fd = ::open((want + "/big").c_str(), O_WRONLY | O_CREAT, 0644);
        ASSERT_EQ(::pwrite(fd, "the end", 7, 5ll << 30), 7);
        ::close(fd);
    }
    mkd("replaced", 0711);
    file("replaced/inside", "now a dir", 0644);
    std::string deep = "";
    for (int i = 0; i < 60; ++i) {
        deep += (i ? "/" : "") + std::string("d") + std::to_string(i);
        mkd(deep, 0755);
    }
    file(deep + "/leaf", "deep", 0644);
    EXPECT_EQ(describe_tree(root), describe_tree(want));
    // The > 4 GiB file is sparse in the store, not 5 GiB of zeros.
    struct stat st;
    ASSERT_EQ(::stat((root + "/big").c_str(), &st), 0);
    EXPECT_EQ(st.st_size, (5ll << 30) + 7);
    EXPECT_LT(st.st_blocks * 512, 1ll << 20);
    // The config is what ocivm run uses.
    auto r = store.resolve("rich");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->rootfs, root);
    EXPECT_EQ(r->config.cmd, std::vector<std::string>{"/bin/sh"});
    EXPECT_EQ(r->config.workdir, "/data");
    EXPECT_EQ(r->config.user, "1000");
    // A second import reuses everything.
    auto again = store.import("oci:" + l.dir, "rich2");
    EXPECT_EQ(again.blobs_written, 0u);
    EXPECT_EQ(again.layers_unpacked, 0u);
    EXPECT_FALSE(again.root_assembled);
}

TEST_F(ImageTest, DockerAndOciArchivesGiveTheSameRoot) {
    auto layers = rich_layers();
    // No 5 GiB file and no deep tree: the archives are copied around.
    std::erase_if(layers[0], [](const Entry& e) { return e.path == "big" || e.path.rfind("d0", 0) == 0; });
    auto l = make_layout(dir + "/layout", layers);
    // oci-archive: a tar of the layout
    {
        std::string cmd = "tar -C " + l.dir + " -cf " + dir + "/oci.tar oci-layout index.json blobs";
        ASSERT_EQ(std::system(cmd.c_str()), 0);
    }
    // docker-archive: uncompressed layer tars, config, manifest.json
    {
        std::string d = dir + "/docker";
        make_dirs(d);
        json m = json::array({{{"Config", "config.json"}, {"RepoTags", {"docker.io/library/rich:v2"}}, {"Layers", json::array()}}});
        json manifest = json::parse(read_file(l.dir + "/blobs/sha256/" + l.manifest_digest.substr(7)));
        std::string cfg = read_file(l.dir + "/blobs/sha256/" + manifest["config"]["digest"].get<std::string>().substr(7));
        std::ofstream(d + "/config.json") << cfg;
        for (size_t i = 0; i < l.layer_files.size(); ++i) {
            std::string name = "l" + std::to_string(i) + "/layer.tar";
            make_dirs(d + "/l" + std::to_string(i));
            std::string cmd = "gzip -dc " + l.layer_files[i] + " > " + d + "/" + name;
            ASSERT_EQ(std::system(cmd.c_str()), 0);
            m[0]["Layers"].push_back(name);
        }
        std::ofstream(d + "/manifest.json") << m.dump();
        std::string cmd = "tar -C " + d + " -cf " + dir + "/docker.tar .";
        ASSERT_EQ(std::system(cmd.c_str()), 0);
    }
    image::Store a(home + "-oci"), b(home + "-docker");
    auto ra = a.import("oci-archive:" + dir + "/oci.tar", "");
    auto rb = b.import("docker-archive:" + dir + "/docker.tar", "");
    EXPECT_EQ(ra.image.name, "v1:latest");  // the layout's ref.name annotation
    EXPECT_EQ(rb.image.name, "docker.io/library/rich:v2");
    EXPECT_EQ(describe_tree(a.home() + "/roots/" + ra.image.manifest_digest.substr(7)),
              describe_tree(b.home() + "/roots/" + rb.image.manifest_digest.substr(7)));
}

TEST_F(ImageTest, CorruptBlobsAndBadSourcesLeaveTheStoreAsItWas) {
    auto good = make_layout(dir + "/good", {{{"a", 'f', 0644, 0, 0, "a"}}});
    image::Store store(home);
    store.import("oci:" + good.dir, "good");
    std::string before = store_listing(home);
    // A layer blob whose bytes no longer match its digest.
    auto bad = make_layout(dir + "/bad", {{{"b", 'f', 0644, 0, 0, std::string(100000, 'b')}}});
    {
        std::fstream f(bad.layer_files[0], std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(100);
        f.put('X');
    }
    auto r = run_ocivm({"image", "import", "oci:" + bad.dir, "--name", "bad"}, home);
    EXPECT_EQ(r.status, 125);
    EXPECT_NE(r.err.find("is corrupt"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(store_listing(home), before);
    // A diff_id that does not match the layer's content.
    auto lie = make_layout(dir + "/lie", {{{"c", 'f', 0644, 0, 0, "c"}}});
    {
        json m = json::parse(read_file(lie.dir + "/blobs/sha256/" + lie.manifest_digest.substr(7)));
        std::string cd = m["config"]["digest"];
        json cfg = json::parse(read_file(lie.dir + "/blobs/sha256/" + cd.substr(7)));
        cfg["rootfs"]["diff_ids"][0] = sha("something else");
        std::string c = cfg.dump();
        put_blob(lie.dir, sha(c), c);
        m["config"]["digest"] = sha(c);
        m["config"]["size"] = c.size();
        set_manifest(lie, m);
    }
    r = run_ocivm({"image", "import", "oci:" + lie.dir}, home);
    EXPECT_EQ(r.status, 125);
    EXPECT_NE(r.err.find("does not match its diff_id"), std::string::npos) << r.err;
    std::string after_blobs = store_listing(home);
    EXPECT_EQ(after_blobs.find("layers/" + sha("something else").substr(7)), std::string::npos);
    // A gzip layer damaged before it was digested: the digest holds, the
    // decompressor (ISA-L) finds the damage, truncated or in the middle.
    for (int cut : {0, 1}) {
        auto dmg = make_layout(dir + "/dmg" + std::to_string(cut), {{{"d", 'f', 0644, 0, 0, std::string(200000, 'd') + "tail"}}});
        std::string blob = read_file(dmg.layer_files[0]);
        if (cut) blob.resize(blob.size() / 2);
        else for (size_t i = 0; i < 8; ++i) blob[blob.size() / 2 + i] = static_cast<char>(~blob[blob.size() / 2 + i]);
        put_blob(dmg.dir, sha(blob), blob);
        json m = json::parse(read_file(dmg.dir + "/blobs/sha256/" + dmg.manifest_digest.substr(7)));
        m["layers"][0]["digest"] = sha(blob);
        m["layers"][0]["size"] = blob.size();
        set_manifest(dmg, m);
        r = run_ocivm({"image", "import", "oci:" + dmg.dir}, home);
        EXPECT_EQ(r.status, 125) << r.err;
        EXPECT_NE(r.err.find("is corrupt"), std::string::npos) << r.err;
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    }
    // Bad sources: missing file, wrong format, unknown transport, corrupt archive.
    std::ofstream(dir + "/notes.txt") << "not an archive\n";
    {
        std::string cmd = "head -c 3000 " + bad.layer_files[0] + " > " + dir + "/truncated.tar.gz";
        ASSERT_EQ(std::system(cmd.c_str()), 0);
    }
    for (auto src : {"docker-archive:" + dir + "/missing.tar", "docker-archive:" + dir + "/notes.txt",
                     "ftp:" + dir + "/x", "oci-archive:" + dir + "/truncated.tar.gz", "oci:" + dir + "/nothing",
                     std::string("no-transport")}) {
        r = run_ocivm({"image", "import", src}, home);
        EXPECT_EQ(r.status, 125) << src << ": " << r.err;
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << src << ": " << r.err;
        EXPECT_EQ(r.err.rfind("ocivm: error: ", 0), 0u) << src << ": " << r.err;
    }
    std::string after = store_listing(home);
    // Only what the good image put there (the diff_id liar's layer blob is
    // verified and kept as content, but no layer, root or name came of it).
    // (Names, not the listing's text: a hex digest may well contain "bad".)
    auto names = store.list();
    ASSERT_EQ(names.size(), 1u) << after;
    EXPECT_EQ(names[0].name, "good:latest") << after;
}

TEST_F(ImageTest, MaliciousLayersNeverWriteOutsideTheStore) {
    std::string outside = dir + "/outside";  // what each attack aims at
    make_dirs(outside);
    std::ofstream(outside + "/victim") << "original";
    std::string rel_escape = "../../../../../../../../../../../.." + outside;
    struct Attack {
        const char* what;
        std::vector<std::vector<Entry>> layers;
    };
    std::vector<Attack> attacks = {
        {"absolute path", {{{outside + "/abs", 'f', 0644, 0, 0, "pwned"}}}},
        {"dot-dot path", {{{"../../../../../../../../.." + outside + "/dotdot", 'f', 0644, 0, 0, "pwned"}}}},
        {"dot-dot inside", {{{"a/../../../../../../../../../.." + outside + "/inner", 'f', 0644, 0, 0, "pwned"}}}},
        {"write through an absolute symlink", {{{"lnk", 'l', 0777, 0, 0, outside}, {"lnk/through", 'f', 0644, 0, 0, "pwned"}}}},
        {"write through a relative symlink", {{{"lnk", 'l', 0777, 0, 0, rel_escape}, {"lnk/through", 'f', 0644, 0, 0, "pwned"}}}},
        {"symlink in a lower layer, write in an upper one", {{{"lnk", 'l', 0777, 0, 0, outside}}, {{"lnk/upper", 'f', 0644, 0, 0, "pwned"}}}},
        {"overwrite a symlink to a victim", {{{"v", 'l', 0777, 0, 0, outside + "/victim"}, {"v", 'f', 0644, 0, 0, "pwned"}}}},
        {"symlink chain", {{{"a", 'l', 0777, 0, 0, "b"}, {"b", 'l', 0777, 0, 0, outside}, {"a/chain", 'f', 0644, 0, 0, "pwned"}}}},
        {"hard link to an absolute target", {{{"hl", 'h', 0644, 0, 0, outside + "/victim"}}}},
        {"hard link with dot-dot", {{{"hl", 'h', 0644, 0, 0, rel_escape + "/victim"}}}},
        {"hard link through a symlink", {{{"s", 'l', 0777, 0, 0, outside}, {"hl", 'h', 0644, 0, 0, "s/victim"}}}},
        {"whiteout of dot-dot", {{{"d", 'd', 0755}}, {{"d/.wh...", 'f', 0644}}}},
        {"whiteout through a symlink", {{{"s", 'l', 0777, 0, 0, outside}}, {{"s/.wh.victim", 'f', 0644}}}},
        {"name longer than NAME_MAX", {{{std::string(300, 'n'), 'f', 0644, 0, 0, "long"}}}},
        {"device node at an absolute path", {{{outside + "/dev", 'c', 0666, 0, 0, "", makedev(1, 3)}}}},
        {"directory replaced by a symlink, then written", {{{"d", 'd', 0755}, {"d", 'l', 0777, 0, 0, outside}, {"d/late", 'f', 0644, 0, 0, "pwned"}}}},
    };
    image::Store store(home);
    for (size_t i = 0; i < attacks.size(); ++i) {
        auto& a = attacks[i];
        auto l = make_layout(dir + "/attack" + std::to_string(i), a.layers);
        try {
            store.import("oci:" + l.dir, "attack" + std::to_string(i));
        } catch (const Error&) {
            // refusing is fine; confining is fine; escaping is not
        }
        std::vector<std::string> names;
        for (auto& e : stdfs::directory_iterator(outside)) names.push_back(e.path().filename());
        EXPECT_EQ(names, std::vector<std::string>{"victim"}) << a.what << ": something appeared outside the store";
        EXPECT_EQ(read_file(outside + "/victim"), "original") << a.what;
        struct stat st;
        ASSERT_EQ(::stat((outside + "/victim").c_str(), &st), 0);
        EXPECT_EQ(st.st_nlink, 1u) << a.what << ": the victim was hard-linked into the store";
    }
}

TEST_F(ImageTest, ConcurrentImportsOfOneImageSucceedOnce) {
    auto l = make_layout(dir + "/layout", {{{"x", 'f', 0644, 0, 0, std::string(2 << 20, 'x')}}, {{"y", 'f', 0644, 0, 0, "y"}}});
    std::vector<pid_t> pids;
    for (int i = 0; i < 3; ++i) {
        pid_t p = ::fork();
        if (p == 0) {
            ::setenv("OCIVM_HOME", home.c_str(), 1);
            std::string log = dir + "/import" + std::to_string(i) + ".log";
            int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            ::dup2(fd, 1);
            ::dup2(fd, 2);
            ::execl(g_ocivm.c_str(), g_ocivm.c_str(), "image", "import", ("oci:" + l.dir).c_str(), "--name", "same",
                    "--log-level", "info", static_cast<char*>(nullptr));
            ::_exit(127);
        }
        pids.push_back(p);
    }
    int unpacked = 0;
    for (size_t i = 0; i < pids.size(); ++i) {
        int st;
        ::waitpid(pids[i], &st, 0);
        EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << read_file(dir + "/import" + std::to_string(i) + ".log");
        std::string log = read_file(dir + "/import" + std::to_string(i) + ".log");
        size_t p = log.find(" layers unpacked");
        ASSERT_NE(p, std::string::npos) << log;
        size_t s = log.rfind(' ', p - 1);
        unpacked += std::stoi(log.substr(s + 1, p - s - 1));
    }
    EXPECT_EQ(unpacked, 2);  // each layer once in all
    image::Store store(home);
    EXPECT_EQ(store.list().size(), 1u);
}

TEST_F(ImageTest, MultiArchIndexPicksLinuxAmd64) {
    auto amd = make_layout(dir + "/multi", {{{"arch", 'f', 0644, 0, 0, "amd64"}}});
    auto arm = make_layout(dir + "/arm", {{{"arch", 'f', 0644, 0, 0, "arm64"}}});
    for (auto& e : stdfs::directory_iterator(arm.dir + "/blobs/sha256"))
        stdfs::copy_file(e.path(), amd.dir + "/blobs/sha256/" + e.path().filename().string(), stdfs::copy_options::skip_existing);
    auto entry = [&](const Layout& l, const char* arch) {
        std::string m = read_file(l.dir + "/blobs/sha256/" + l.manifest_digest.substr(7));
        return json{{"mediaType", "application/vnd.oci.image.manifest.v1+json"}, {"digest", l.manifest_digest},
                    {"size", m.size()}, {"platform", {{"os", "linux"}, {"architecture", arch}}}};
    };
    json inner = {{"schemaVersion", 2}, {"mediaType", "application/vnd.oci.image.index.v1+json"},
                  {"manifests", {entry(arm, "arm64"), entry(amd, "amd64")}}};
    std::string in = inner.dump();
    put_blob(amd.dir, sha(in), in);
    json index = {{"schemaVersion", 2},
                  {"manifests", {{{"mediaType", "application/vnd.oci.image.index.v1+json"}, {"digest", sha(in)}, {"size", in.size()},
                                  {"annotations", {{"org.opencontainers.image.ref.name", "multi"}}}}}}};
    std::ofstream(amd.dir + "/index.json") << index.dump();
    image::Store store(home);
    auto rep = store.import("oci:" + amd.dir + ":multi", "");
    EXPECT_EQ(rep.image.manifest_digest, amd.manifest_digest);
    auto r = store.resolve("multi");
    ASSERT_TRUE(r);
    EXPECT_EQ(read_file(r->rootfs + "/arch"), "amd64");
}

TEST_F(ImageTest, AnInterruptedImportLeavesTheStoreConsistent) {
    std::string big;
    for (int i = 0; i < (24 << 20) / 64; ++i) big += sha(std::to_string(i));  // 24 MiB that gzip cannot shrink much
    auto l = make_layout(dir + "/layout", {{{"big", 'f', 0644, 0, 0, big}}, {{"small", 'f', 0644, 0, 0, "s"}}});
    for (int delay_ms : {5, 40, 150}) {
        pid_t p = ::fork();
        if (p == 0) {
            ::setenv("OCIVM_HOME", home.c_str(), 1);
            int null = ::open("/dev/null", O_WRONLY);
            ::dup2(null, 1);
            ::dup2(null, 2);
            ::execl(g_ocivm.c_str(), g_ocivm.c_str(), "image", "import", ("oci:" + l.dir).c_str(), "--name", "big",
                    static_cast<char*>(nullptr));
            ::_exit(127);
        }
        ::usleep(static_cast<useconds_t>(delay_ms) * 1000);
        ::kill(p, SIGKILL);
        ::waitpid(p, nullptr, 0);
        // Either the whole image is there or none of it is named.
        image::Store store(home);
        auto found = store.find("big");
        if (found) {
            EXPECT_TRUE(store.resolve("big")) << "named but incomplete after a kill at " << delay_ms << " ms";
        }
    }
    image::Store store(home);
    auto rep = store.import("oci:" + l.dir, "big");  // the next import finishes the job
    auto r = store.resolve("big");
    ASSERT_TRUE(r);
    EXPECT_EQ(read_file(r->rootfs + "/big"), big);
    EXPECT_EQ(read_file(r->rootfs + "/small"), "s");
    EXPECT_FALSE(stdfs::exists(home + "/tmp") && !stdfs::is_empty(home + "/tmp"));
}

// Rootless: owners and devices a non-root import cannot apply are kept in
// user.containers.override_stat and served from it.
TEST_F(ImageTest, RootlessUnpackKeepsOwnersAndDevicesInTheOverrideXattr) {
    std::string blob = write_layer(dir + "/layer.tar.gz", {{"etc", 'd', 0755},
                                                          {"etc/shadow", 'f', 0640, 0, 42, "secret"},
                                                          {"home", 'd', 0755, 1000, 1000},
                                                          {"dev", 'd', 0755},
                                                          {"dev/null", 'c', 0666, 0, 0, "", makedev(1, 3)},
                                                          {"bin", 'd', 0755},
                                                          {"bin/su", 'f', 04755, 0, 0, "su"}});
    std::string out = dir + "/nobody";
    make_dirs(out);
    ASSERT_EQ(::chown(out.c_str(), 65534, 65534), 0);
    ::chmod(dir.c_str(), 0755);
    ::chmod(g_work.c_str(), 0755);
    ::chmod(blob.c_str(), 0644);
    pid_t p = ::fork();
    if (p == 0) {
        if (::setgid(65534) < 0 || ::setuid(65534) < 0) ::_exit(3);
        try {
            image::unpack_layer(blob, out + "/layer", "");
        } catch (const std::exception& e) {
            std::fprintf(stderr, "rootless unpack: %s\n", e.what());
            ::_exit(1);
        }
        ::_exit(0);
    }
    int st = 0;
    ::waitpid(p, &st, 0);
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "the rootless unpack failed";
    auto xattr = [](const std::string& path) {
        char v[128];
        ssize_t n = ::lgetxattr(path.c_str(), "user.containers.override_stat", v, sizeof v);
        return n < 0 ? std::string("<none>") : std::string(v, static_cast<size_t>(n));
    };
    std::string l = out + "/layer";
    EXPECT_EQ(xattr(l + "/etc/shadow"), "0:42:0640:file");
    EXPECT_EQ(xattr(l + "/home"), "1000:1000:0755:dir");
    EXPECT_EQ(xattr(l + "/dev/null"), "0:0:0666:char-1-3");
    EXPECT_EQ(xattr(l + "/bin/su"), "0:0:4755:file");
    struct stat dn;
    ASSERT_EQ(::lstat((l + "/dev/null").c_str(), &dn), 0);
    EXPECT_TRUE(S_ISREG(dn.st_mode)) << "a rootless import cannot create device nodes";
    EXPECT_EQ(dn.st_uid, 65534u);
    // The passthrough serves the override: what the guest sees is the image's.
    fs::PassthroughOptions po;
    po.source = l;
    po.override_stat = true;
    fs::Passthrough pt(po);
    fs::Context ctx;
    fs::Entry dev, null, shadow;
    ASSERT_EQ(pt.lookup(ctx, 1, "dev", dev), 0);
    ASSERT_EQ(pt.lookup(ctx, dev.nodeid, "null", null), 0);
    EXPECT_TRUE(S_ISCHR(null.attr.st_mode));
    EXPECT_EQ(null.attr.st_mode & 07777, 0666u);
    EXPECT_EQ(null.attr.st_rdev, makedev(1, 3));
    EXPECT_EQ(null.attr.st_uid, 0u);
    fs::Entry etc;
    ASSERT_EQ(pt.lookup(ctx, 1, "etc", etc), 0);
    ASSERT_EQ(pt.lookup(ctx, etc.nodeid, "shadow", shadow), 0);
    fs::Attr a;
    ASSERT_EQ(pt.getattr(ctx, shadow.nodeid, nullptr, a), 0);
    EXPECT_EQ(a.st.st_gid, 42u);
    EXPECT_EQ(a.st.st_mode & 07777, 0640u);
    // Without the option the host's truth is served.
    po.override_stat = false;
    fs::Passthrough plain(po);
    fs::Entry dev2, null2;
    ASSERT_EQ(plain.lookup(ctx, 1, "dev", dev2), 0);
    ASSERT_EQ(plain.lookup(ctx, dev2.nodeid, "null", null2), 0);
    EXPECT_TRUE(S_ISREG(null2.attr.st_mode));
    struct stat bad {};
    EXPECT_FALSE(fs::parse_override_stat("garbage", bad));
    EXPECT_FALSE(fs::parse_override_stat("0:0:0644:weird-type", bad));
}

// A store an older ocivm filled: its layer directories hold their records
// (".ocivm-implicit", ".ocivm-links") and have no HEX.json beside them.
// Such a layer is unpacked again when an import needs it, and the old
// records never reach a root.
TEST_F(ImageTest, LayersOfAnOlderOcivmAreUnpackedAgain) {
    auto l = make_layout(dir + "/layout", {{{"etc", 'd', 0700, 7, 7}, {"base", 'f', 0644, 0, 0, "b"}},
                                           {{"etc/x", 'f', 0644, 0, 0, "x"}, {"hl", 'h', 0644, 0, 0, "base"}}});
    image::Store store(home);
    ASSERT_EQ(store.import("oci:" + l.dir, "old").layers_unpacked, 2u);
    // Turn the store into what the older ocivm left.
    store.remove("old");
    store.prune();
    ASSERT_EQ(store.import("oci:" + l.dir, "old").layers_unpacked, 2u);
    std::string upper;
    for (auto& e : stdfs::directory_iterator(home + "/layers"))
        if (e.is_directory() && stdfs::exists(e.path() / "hl") == false && stdfs::exists(e.path() / "etc/x")) upper = e.path();
    ASSERT_FALSE(upper.empty());
    stdfs::remove(upper + ".json");
    std::ofstream(upper + "/.ocivm-implicit") << "etc\n";
    std::ofstream(upper + "/.ocivm-links") << "hl\tbase\n";
    stdfs::remove_all(home + "/roots/" + l.manifest_digest.substr(7));
    auto rep = store.import("oci:" + l.dir, "old");
    EXPECT_EQ(rep.layers_unpacked, 1u);
    EXPECT_TRUE(stdfs::exists(upper + ".json"));
    EXPECT_FALSE(stdfs::exists(upper + "/.ocivm-implicit"));
    auto r = store.resolve("old");
    ASSERT_TRUE(r);
    EXPECT_FALSE(stdfs::exists(r->rootfs + "/.ocivm-implicit"));
    EXPECT_FALSE(stdfs::exists(r->rootfs + "/.ocivm-links"));
    struct stat st, base;
    ASSERT_EQ(::stat((r->rootfs + "/etc").c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, 7u);
    ASSERT_EQ(::stat((r->rootfs + "/hl").c_str(), &st), 0);
    ASSERT_EQ(::stat((r->rootfs + "/base").c_str(), &base), 0);
    EXPECT_EQ(st.st_ino, base.st_ino);
}

TEST_F(ImageTest, RmAndPrune) {
    auto a = make_layout(dir + "/a", {{{"shared", 'f', 0644, 0, 0, "base"}}, {{"only-a", 'f', 0644, 0, 0, "a"}}});
    auto b = make_layout(dir + "/b", {{{"shared", 'f', 0644, 0, 0, "base"}}, {{"only-b", 'f', 0644, 0, 0, "b"}}});
    image::Store store(home);
    store.import("oci:" + a.dir, "a");
    auto rb = store.import("oci:" + b.dir, "b");
    EXPECT_EQ(rb.layers_unpacked, 1u);  // the base layer is shared
    store.remove("a");
    EXPECT_THROW(store.remove("a"), Error);
    auto gone = store.prune();
    EXPECT_FALSE(gone.empty());
    EXPECT_FALSE(store.find("a"));
    auto r = store.resolve("b");
    ASSERT_TRUE(r);
    EXPECT_EQ(read_file(r->rootfs + "/shared"), "base");
    EXPECT_EQ(read_file(r->rootfs + "/only-b"), "b");
    EXPECT_TRUE(store.prune().empty());
}

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    std::setlocale(LC_CTYPE, "C.UTF-8");
    for (int i = 1; i + 1 < argc; ++i)
        if (std::string(argv[i]) == "--ocivm") g_ocivm = argv[i + 1];
    if (g_ocivm.empty()) {
        std::fprintf(stderr, "usage: image_tests --ocivm PATH\n");
        return 2;
    }
    if (::geteuid() != 0) {
        std::fprintf(stderr, "image_tests: run as root (device nodes, owners, trusted xattrs)\n");
        return 1;
    }
    char tmpl[] = "/var/tmp/ocivm-imagetest-XXXXXX";
    g_work = ::mkdtemp(tmpl);
    int rc = RUN_ALL_TESTS();
    if (!std::getenv("KEEP")) stdfs::remove_all(g_work);
    return rc;
}
