// Red-team tests of issue 15 ("no image and no guest may reach the host"),
// image side: hostile layers, layouts, archives, JSON, kernels and
// /etc/passwd against `ocivm image import`, the root assembly, `--kernel
// image` and `-u NAME`. Every test keeps a canary directory outside the
// store (a victim file, a subdirectory, files an attack would like ocivm to
// read) and checks after each attack that nothing there, nor /etc/shadow,
// changed; failed imports must leave the store as it was. Section 8 checks
// from outside that whoever imports (image import, run LAYOUT, disk create
// LAYOUT, containers-storage:) parses in a confined process below the CLI.
//
// Label fs (root: device nodes, owners). Run as:
//   image_security_tests --ocivm PATH
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <clocale>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "guest/initramfs.h"
#include "image/image_fixture.h"
#include "image/resolve.h"
#include "image/store.h"
#include "image/unpack.h"
#include "util/error.h"
#include "util/paths.h"
#include "util/subprocess.h"
#include "vm/kernel.h"

using namespace ocivm;
using namespace ocivm::imagetest;
namespace stdfs = std::filesystem;

namespace {

std::string slurp(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

// What must never change: the canary directory, the host's shadow and
// passwd, and the names in /etc (an attack that creates /etc/blobs/...).
std::string host_state(const std::string& outside) {
    std::string s = describe_tree(outside);
    s += "shadow " + file_sha("/etc/shadow") + "\npasswd " + file_sha("/etc/passwd") + "\n";
    std::vector<std::string> etc;
    for (auto& e : stdfs::directory_iterator("/etc")) etc.push_back(e.path().filename());
    std::sort(etc.begin(), etc.end());
    for (auto& n : etc) s += "/etc/" + n + "\n";
    return s;
}

// The store as a tree (tmp/ must be empty between imports).
std::string store_state(const std::string& home) { return stdfs::exists(home) ? describe_tree(home) : std::string(); }

// A failure the CLI reports as a user would want it: exit 125, one line,
// "ocivm: error: ...", no library exception text, no terminal escapes.
void expect_clean_error(const RunResult& r, const std::string& what, const std::string& needle = "") {
    EXPECT_EQ(r.status, 125) << what << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << what << ": " << r.err;
    EXPECT_EQ(r.err.rfind("ocivm: error: ", 0), 0u) << what << ": " << r.err;
    EXPECT_EQ(r.err.find("json.exception"), std::string::npos) << what << ": " << r.err;
    EXPECT_EQ(r.err.find('\x1b'), std::string::npos) << what << ": an escape sequence reached the terminal";
    if (!needle.empty()) {
        EXPECT_NE(r.err.find(needle), std::string::npos) << what << ": " << r.err;
    }
}

class Redteam : public ::testing::Test {
protected:
    void SetUp() override {
        auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        dir = g_work + "/" + info->name();
        make_dirs(dir);
        home = dir + "/store";
        outside = dir + "/outside";
        make_dirs(outside + "/sub");
        std::ofstream(outside + "/victim") << "original";
        std::ofstream(outside + "/sub/inner") << "inner";
        before = host_state(outside);
    }
    void TearDown() override { EXPECT_EQ(host_state(outside), before) << "something outside the store changed"; }

    // `ocivm image import` in the canary directory, so /proc/self/cwd is it.
    RunResult import(const std::string& source, const std::string& name, unsigned timeout_s = 300) {
        std::vector<std::string> args{"image", "import", source};
        if (!name.empty()) args.insert(args.end(), {"--name", name});
        RunResult r = run_ocivm(args, home, outside, timeout_s);
        EXPECT_NE(r.status, 128 + SIGALRM) << source << ": the import hung";
        EXPECT_NE(r.status, 128 + SIGSEGV) << source << ": the import crashed";
        EXPECT_NE(r.status, 128 + SIGABRT) << source << ": the import aborted";
        return r;
    }
    void expect_outside_untouched(const std::string& what) {
        EXPECT_EQ(host_state(outside), before) << what << ": something outside the store changed";
    }
    std::string root_of(const Layout& l) { return home + "/roots/" + l.manifest_digest.substr(7); }

    std::string dir, home, outside, before;
};

// ---------------------------------------------------------------------------
// 1. The importer's bookkeeping names. An older importer wrote
// ".ocivm-implicit" and ".ocivm-links" by path into the layer directory and
// read them back: a layer shipping a symlink under one of those names made
// the import write a root-owned file where the layer chose.

TEST_F(Redteam, BookkeepingNamesAsSymlinksWriteNothingOutside) {
    struct Case {
        const char* what;
        std::vector<std::vector<Entry>> layers;
        std::string planted;  // a path the attack wants created
    };
    std::string rel_escape = "../../../../../../../../../../../../.." + outside;
    std::vector<Case> cases = {
        {"implicit list through an absolute symlink",
         {{{".ocivm-implicit", 'l', 0777, 0, 0, outside + "/planted"}, {"deep/er/file", 'f', 0644, 0, 0, "x"}}},
         outside + "/planted"},
        {"implicit list through a relative symlink",
         {{{".ocivm-implicit", 'l', 0777, 0, 0, rel_escape + "/planted-rel"}, {"deep/file", 'f', 0644, 0, 0, "x"}}},
         outside + "/planted-rel"},
        {"implicit list through /proc/self/cwd",
         {{{".ocivm-implicit", 'l', 0777, 0, 0, "/proc/self/cwd/planted-cwd"}, {"deep/file", 'f', 0644, 0, 0, "x"}}},
         outside + "/planted-cwd"},
        {"implicit list over the victim",
         {{{".ocivm-implicit", 'l', 0777, 0, 0, outside + "/victim"}, {"deep/file", 'f', 0644, 0, 0, "x"}}}, ""},
        {"hard-link list through an absolute symlink",
         {{{"base", 'f', 0644, 0, 0, "base"}},
          {{".ocivm-links", 'l', 0777, 0, 0, outside + "/planted-links"}, {"hl", 'h', 0644, 0, 0, "base"}}},
         outside + "/planted-links"},
        {"hard-link list through /proc/self/root",
         {{{"base", 'f', 0644, 0, 0, "base"}},
          {{".ocivm-links", 'l', 0777, 0, 0, "/proc/self/root" + outside + "/planted-root"}, {"hl", 'h', 0644, 0, 0, "base"}}},
         outside + "/planted-root"},
    };
    for (size_t i = 0; i < cases.size(); ++i) {
        auto& c = cases[i];
        auto l = make_layout(dir + "/case" + std::to_string(i), c.layers);
        auto r = import("oci:" + l.dir, "case" + std::to_string(i));
        if (!c.planted.empty()) {
            EXPECT_FALSE(stdfs::exists(c.planted)) << c.what << ": the import wrote a host file";
        }
        expect_outside_untouched(c.what);
        // The names are the image's own: kept, as the symlinks they are.
        ASSERT_EQ(r.status, 0) << c.what << ": " << r.err;
        std::string root = root_of(l);
        std::string name = c.layers.back()[0].path;
        ASSERT_TRUE(stdfs::is_symlink(root + "/" + name)) << c.what;
        EXPECT_EQ(stdfs::read_symlink(root + "/" + name).string(), c.layers.back()[0].data) << c.what;
        if (c.layers.size() == 2) {
            struct stat a, b;
            ASSERT_EQ(::lstat((root + "/hl").c_str(), &a), 0) << c.what;
            ASSERT_EQ(::lstat((root + "/base").c_str(), &b), 0) << c.what;
            EXPECT_EQ(a.st_ino, b.st_ino) << c.what << ": the hard link into the lower layer is missing";
        }
    }
}

TEST_F(Redteam, BookkeepingNamesAsFilesAndDirectoriesAreTheImagesOwn) {
    // Layer 1 ships both names as files whose content looks like records;
    // layer 2 has an implied directory and a hard link into layer 1 (what
    // made the old importer write its records); layer 3 ships one name as a
    // directory and links again.
    std::vector<Entry> l1 = {{".ocivm-implicit", 'f', 0644, 0, 0, "etc\n"},
                             {".ocivm-links", 'f', 0600, 0, 0, "evil\tbase\n"},
                             {"etc", 'd', 0700, 1234, 1234},
                             {"base", 'f', 0644, 0, 0, "base"}};
    std::vector<Entry> l2 = {{"etc/new", 'f', 0644, 0, 0, "new"}, {"hl", 'h', 0644, 0, 0, "base"}};
    std::vector<Entry> l3 = {{".ocivm-implicit", 'd', 0755}, {".ocivm-implicit/inside", 'f', 0644, 0, 0, "in"},
                             {"sub/hl2", 'h', 0644, 0, 0, "base"}};
    auto l = make_layout(dir + "/layout", {l1, l2, l3});
    auto r = import("oci:" + l.dir, "names");
    ASSERT_EQ(r.status, 0) << r.err;
    std::string root = root_of(l);
    EXPECT_EQ(slurp(root + "/.ocivm-links"), "evil\tbase\n") << "an image file named .ocivm-links was dropped";
    EXPECT_TRUE(stdfs::is_directory(root + "/.ocivm-implicit"));
    EXPECT_EQ(slurp(root + "/.ocivm-implicit/inside"), "in");
    EXPECT_FALSE(stdfs::exists(root + "/evil")) << "the image's file was read as ocivm's hard-link records";
    // etc is implied in layer 2: layer 1's owner and mode stay.
    struct stat st;
    ASSERT_EQ(::stat((root + "/etc").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0700u);
    EXPECT_EQ(st.st_uid, 1234u);
    EXPECT_EQ(slurp(root + "/etc/new"), "new");
    struct stat base, hl, hl2;
    ASSERT_EQ(::stat((root + "/base").c_str(), &base), 0);
    ASSERT_EQ(::stat((root + "/hl").c_str(), &hl), 0) << "the hard link of layer 2 is missing";
    ASSERT_EQ(::stat((root + "/sub/hl2").c_str(), &hl2), 0) << "the hard link of layer 3 is missing";
    EXPECT_EQ(hl.st_ino, base.st_ino);
    EXPECT_EQ(hl2.st_ino, base.st_ino);
    EXPECT_EQ(base.st_nlink, 3u);
    // A one-layer image with the names: its root is the layer, names and all.
    auto one = make_layout(dir + "/one", {l1});
    ASSERT_EQ(import("oci:" + one.dir, "one").status, 0);
    EXPECT_EQ(slurp(root_of(one) + "/.ocivm-implicit"), "etc\n");
    EXPECT_EQ(slurp(root_of(one) + "/.ocivm-links"), "evil\tbase\n");
    // Nothing but layer directories and their records in layers/.
    for (auto& e : stdfs::directory_iterator(home + "/layers")) {
        std::string n = e.path().filename();
        EXPECT_TRUE(e.is_directory() || n.size() == 64 + 5) << n;
        if (e.is_directory()) {
            EXPECT_TRUE(stdfs::exists(e.path().string() + ".json")) << n << " has no records";
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Symlinks planted where the importer goes afterwards.

TEST_F(Redteam, PlantedSymlinksAreNeverFollowed) {
    // A bystander image: it must come through every attack unchanged.
    auto good = make_layout(dir + "/good", {{{"etc", 'd', 0755}, {"etc/keep", 'f', 0644, 0, 0, "keep"}},
                                            {{"etc/more", 'f', 0644, 0, 0, "more"}}});
    ASSERT_EQ(import("oci:" + good.dir, "good").status, 0);
    std::string good_tree = describe_tree(root_of(good));
    std::string good_layer;  // one of its layer directories, by name
    for (auto& e : stdfs::directory_iterator(home + "/layers"))
        if (e.is_directory()) good_layer = e.path().filename();
    std::string cwd_link = "/proc/self/cwd";
    std::string root_link = "/proc/self/root" + outside;
    std::string rel = "../../../../../../../../../../../../.." + outside;
    struct Attack {
        std::string what;
        std::vector<std::vector<Entry>> layers;
    };
    std::vector<Attack> attacks;
    for (auto& [kind, target] : std::vector<std::pair<std::string, std::string>>{
             {"absolute", outside}, {"relative", rel}, {"/proc/self/cwd", cwd_link}, {"/proc/self/root", root_link}}) {
        attacks.push_back({"lower " + kind + " symlink, upper file below it (parent with no entry)",
                           {{{"s", 'l', 0777, 0, 0, target}}, {{"s/planted", 'f', 0644, 0, 0, "pwned"}}}});
        attacks.push_back({"lower " + kind + " symlink, upper directory below it",
                           {{{"s", 'l', 0777, 0, 0, target}}, {{"s/newdir", 'd', 0755}, {"s/newdir/f", 'f', 0644, 0, 0, "x"}}}});
        attacks.push_back({"lower " + kind + " symlink, whiteout below it",
                           {{{"s", 'l', 0777, 0, 0, target}}, {{"s/.wh.victim", 'f', 0644}}}});
        attacks.push_back({"lower " + kind + " symlink, whiteout of a directory below it",
                           {{{"s", 'l', 0777, 0, 0, target}}, {{"s/.wh.sub", 'f', 0644}}}});
        attacks.push_back({"lower " + kind + " symlink, opaque directory below it",
                           {{{"s", 'l', 0777, 0, 0, target}}, {{"s/.wh..wh..opq", 'f', 0644}, {"s/new", 'f', 0644, 0, 0, "n"}}}});
        attacks.push_back({"lower " + kind + " symlink, opaque marker of a deeper directory below it",
                           {{{"s", 'l', 0777, 0, 0, target}}, {{"s/sub/.wh..wh..opq", 'f', 0644}}}});
        attacks.push_back({"lower " + kind + " symlink, hard link to a victim below it",
                           {{{"s", 'l', 0777, 0, 0, target}}, {{"hl", 'h', 0644, 0, 0, "s/victim"}}}});
        attacks.push_back({"lower " + kind + " symlink, hard link placed below it",
                           {{{"s", 'l', 0777, 0, 0, target}, {"f", 'f', 0644, 0, 0, "f"}}, {{"s/hl", 'h', 0644, 0, 0, "f"}}}});
        attacks.push_back({"same-layer " + kind + " symlink, file below it",
                           {{{"s", 'l', 0777, 0, 0, target}, {"s/planted", 'f', 0644, 0, 0, "pwned"}}}});
        attacks.push_back({"same-layer " + kind + " symlink, whiteout and opaque marker below it",
                           {{{"s", 'l', 0777, 0, 0, target}, {"s/.wh.victim", 'f', 0644}, {"s/sub/.wh..wh..opq", 'f', 0644}}}});
        attacks.push_back({"same-layer " + kind + " symlink, hard link to a victim below it",
                           {{{"s", 'l', 0777, 0, 0, target}, {"hl", 'h', 0644, 0, 0, "s/victim"}}}});
        attacks.push_back({"the layer root as a " + kind + " symlink", {{{".", 'l', 0777, 0, 0, target}, {"f", 'f', 0644, 0, 0, "f"}}}});
        attacks.push_back({"the whiteout of the " + kind + " symlink itself",
                           {{{"s", 'l', 0777, 0, 0, target}}, {{".wh.s", 'f', 0644}, {"s", 'd', 0755}, {"s/victim", 'f', 0644, 0, 0, "mine"}}}});
    }
    // The store's own directories as targets.
    for (auto& [kind, target] : std::vector<std::pair<std::string, std::string>>{
             {"the store", home}, {"its layers", home + "/layers"}, {"its roots", home + "/roots"}, {"its blobs", home + "/blobs/sha256"}}) {
        attacks.push_back({"whiteouts through a symlink to " + kind,
                           {{{"st", 'l', 0777, 0, 0, target}},
                            {{"st/.wh.names.json", 'f', 0644}, {"st/.wh." + good_layer, 'f', 0644}, {"st/.wh.layers", 'f', 0644}}}});
        attacks.push_back({"opaque directory through a symlink to " + kind,
                           {{{"st", 'l', 0777, 0, 0, target}}, {{"st/.wh..wh..opq", 'f', 0644}}}});
        attacks.push_back({"files through a symlink to " + kind,
                           {{{"st", 'l', 0777, 0, 0, target}}, {{"st/names.json", 'f', 0644, 0, 0, "{}"}, {"st/" + good_layer + "/x", 'f', 0644, 0, 0, "x"}}}});
        attacks.push_back({"same-layer whiteouts through a symlink to " + kind,
                           {{{"st", 'l', 0777, 0, 0, target}, {"st/.wh.names.json", 'f', 0644}, {"st/.wh." + good_layer, 'f', 0644}}}});
    }
    for (size_t i = 0; i < attacks.size(); ++i) {
        auto& a = attacks[i];
        auto l = make_layout(dir + "/attack" + std::to_string(i), a.layers);
        auto r = import("oci:" + l.dir, "attack" + std::to_string(i));
        // Refusing is fine, confining is fine; reaching out is not.
        expect_outside_untouched(a.what);
        EXPECT_EQ(describe_tree(root_of(good)), good_tree) << a.what << ": the bystander image changed";
        EXPECT_TRUE(stdfs::exists(home + "/names.json")) << a.what;
        EXPECT_TRUE(image::Store(home).find("good")) << a.what;
        if (r.status != 0) {
            expect_clean_error(r, a.what);
            continue;
        }
        // Imported: what came below a lower symlink replaced that symlink.
        std::string root = root_of(l);
        struct stat st;
        if (::lstat((root + "/s").c_str(), &st) == 0 && a.layers.size() == 2 && a.layers[1][0].path.rfind("s/", 0) == 0) {
            EXPECT_TRUE(S_ISDIR(st.st_mode)) << a.what << ": the lower symlink is still there";
        }
        if (stdfs::exists(root + "/hl")) {
            EXPECT_NE(slurp(root + "/hl"), "original") << a.what;
        }
    }
}

TEST_F(Redteam, AFailedImportLeavesTheStoreAsItWas) {
    auto good = make_layout(dir + "/good", {{{"a", 'f', 0644, 0, 0, "a"}}, {{"b", 'f', 0644, 0, 0, "b"}}});
    ASSERT_EQ(import("oci:" + good.dir, "good").status, 0);
    std::string state = store_state(home);
    struct Failure {
        const char* what;
        std::vector<std::vector<Entry>> layers;
    };
    std::vector<Failure> failures = {
        {"an unsafe third layer after two new good ones",
         {{{"one", 'f', 0644, 0, 0, "1"}}, {{"two", 'f', 0644, 0, 0, "2"}}, {{"../../escape", 'f', 0644, 0, 0, "x"}}}},
        {"a hard link into the lower layers with no target (fails at assembly)",
         {{{"one", 'f', 0644, 0, 0, "1"}}, {{"hl", 'h', 0644, 0, 0, "missing"}}}},
        {"a write below its own symlink", {{{"x", 'f', 0644, 0, 0, "x"}}, {{"l", 'l', 0777, 0, 0, "/etc"}, {"l/passwd", 'f', 0644, 0, 0, "p"}}}},
    };
    for (size_t i = 0; i < failures.size(); ++i) {
        auto l = make_layout(dir + "/fail" + std::to_string(i), failures[i].layers);
        auto r = import("oci:" + l.dir, "fail" + std::to_string(i));
        EXPECT_NE(r.status, 0) << failures[i].what;
        expect_clean_error(r, failures[i].what);
        EXPECT_EQ(store_state(home), state) << failures[i].what << ": the store changed";
    }
    // A layer whose diff_id lies, behind a good new layer.
    auto liar = make_layout(dir + "/liar", {{{"ok", 'f', 0644, 0, 0, "ok"}}, {{"lie", 'f', 0644, 0, 0, "lie"}}});
    json m = json::parse(slurp(liar.dir + "/blobs/sha256/" + liar.manifest_digest.substr(7)));
    std::string cfg_digest = m["config"]["digest"];
    json cfg = json::parse(slurp(liar.dir + "/blobs/sha256/" + cfg_digest.substr(7)));
    cfg["rootfs"]["diff_ids"][1] = sha("not this layer");
    std::string cs = cfg.dump();
    put_blob(liar.dir, sha(cs), cs);
    m["config"]["digest"] = sha(cs);
    m["config"]["size"] = cs.size();
    set_manifest(liar, m);
    auto r = import("oci:" + liar.dir, "liar");
    expect_clean_error(r, "diff_id liar", "diff_id");
    EXPECT_EQ(store_state(home), state) << "diff_id liar: the store changed";
}

// ---------------------------------------------------------------------------
// 3. Device nodes, fifos and sockets.

TEST_F(Redteam, DeviceNodesAndFifosAreKeptAndNeverOpened) {
    // As root, device nodes and fifos are kept as what they are (the guest
    // opens them, on its own devices); the importer creates, links, removes
    // and chowns them but never opens one. A fifo the importer opened would
    // hang it; a device it read would be the host's.
    std::vector<Entry> l1 = {{"dev", 'd', 0755},
                             {"dev/null", 'c', 0666, 0, 0, "", makedev(1, 3)},
                             {"dev/mem", 'c', 0600, 0, 0, "", makedev(1, 1)},
                             {"dev/sda", 'b', 0660, 0, 6, "", makedev(8, 0)},
                             {"run", 'd', 0755},
                             {"run/fifo", 'p', 0600},
                             {"run/fifo2", 'p', 0644},
                             {"run/hlfifo", 'h', 0600, 0, 0, "run/fifo"}};
    std::vector<Entry> l2 = {{"dev/null2", 'h', 0666, 0, 0, "dev/null"},   // hard link to a lower device
                             {"run/fifo2", 'f', 0644, 0, 0, "replaced"},  // a file where a fifo was
                             {"run/.wh.fifo", 'f', 0644},
                             {"dev/mem", 'f', 0600, 0, 0, "not memory"},
                             {"more", 'p', 0600}};
    auto l = make_layout(dir + "/layout", {l1, l2});
    auto r = import("oci:" + l.dir, "devices", 120);
    ASSERT_EQ(r.status, 0) << r.err;
    std::string root = root_of(l);
    struct stat st;
    ASSERT_EQ(::lstat((root + "/dev/null").c_str(), &st), 0);
    EXPECT_TRUE(S_ISCHR(st.st_mode));
    EXPECT_EQ(st.st_rdev, makedev(1, 3));
    ASSERT_EQ(::lstat((root + "/dev/null2").c_str(), &st), 0);
    EXPECT_TRUE(S_ISCHR(st.st_mode));
    ASSERT_EQ(::lstat((root + "/dev/sda").c_str(), &st), 0);
    EXPECT_TRUE(S_ISBLK(st.st_mode));
    EXPECT_EQ(st.st_rdev, makedev(8, 0));
    EXPECT_EQ(st.st_gid, 6u);
    ASSERT_EQ(::lstat((root + "/run/fifo2").c_str(), &st), 0);
    EXPECT_TRUE(S_ISREG(st.st_mode));
    EXPECT_FALSE(stdfs::exists(root + "/run/fifo")) << "the whiteout of a fifo";
    ASSERT_EQ(::lstat((root + "/run/hlfifo").c_str(), &st), 0);
    EXPECT_TRUE(S_ISFIFO(st.st_mode));
    EXPECT_EQ(slurp(root + "/dev/mem"), "not memory");
    ASSERT_EQ(::lstat((root + "/more").c_str(), &st), 0);
    EXPECT_TRUE(S_ISFIFO(st.st_mode));
    // Setuid files and device nodes in the store are for root only.
    for (auto* d : {"/layers", "/roots", "/tmp", "/blobs"}) {
        ASSERT_EQ(::stat((home + d).c_str(), &st), 0) << d;
        EXPECT_EQ(st.st_mode & 07777, 0700u) << d;
    }
}

TEST_F(Redteam, StoreDirectoriesAreMadePrivate) {
    // A store whose directories were created open (by hand, an older
    // tool, a umask of 0): the import closes them, since they will hold
    // the image's setuid files and device nodes.
    for (auto* d : {"/layers", "/roots", "/tmp", "/blobs", "/blobs/sha256"}) {
        make_dirs(home + d, 0755);
        ::chmod((home + d).c_str(), 0755);
    }
    auto l = make_layout(dir + "/layout", {{{"bin", 'd', 0755}, {"bin/su", 'f', 04755, 0, 0, "su"},
                                            {"dev", 'd', 0755}, {"dev/sda", 'b', 0666, 0, 0, "", makedev(8, 0)}}});
    ASSERT_EQ(import("oci:" + l.dir, "private").status, 0);
    for (auto* d : {"/layers", "/roots", "/tmp", "/blobs", "/blobs/sha256"}) {
        struct stat st;
        ASSERT_EQ(::stat((home + d).c_str(), &st), 0) << d;
        EXPECT_EQ(st.st_mode & 077, 0u) << d << " is open to other users: the image's setuid su and sda are reachable";
    }
}

// ---------------------------------------------------------------------------
// 4. Huge entry counts and deep nesting.

TEST_F(Redteam, DeepNestingHasALimit) {
    std::string deep;
    for (int i = 0; i < 256; ++i) deep += (i ? "/" : "") + std::string("d");
    auto ok = make_layout(dir + "/ok", {{{deep + "/leaf", 'f', 0644, 0, 0, "leaf"}}});
    EXPECT_NE(import("oci:" + ok.dir, "").status, 0) << "257 components (256 directories and a file)";
    auto fine = make_layout(dir + "/fine", {{{deep.substr(0, deep.size() - 2) + "/leaf", 'f', 0644, 0, 0, "leaf"}},
                                            {{deep.substr(0, deep.size() - 2) + "/leaf2", 'f', 0644, 0, 0, "leaf2"}}});
    auto r = import("oci:" + fine.dir, "fine");
    ASSERT_EQ(r.status, 0) << "256 components are allowed: " << r.err;
    EXPECT_EQ(slurp(root_of(fine) + "/" + deep.substr(0, deep.size() - 2) + "/leaf2"), "leaf2");
    std::string state = store_state(home);
    auto too = make_layout(dir + "/too", {{{deep + "/leaf", 'f', 0644, 0, 0, "leaf"}}});
    r = import("oci:" + too.dir, "too");
    expect_clean_error(r, "257 components", "deeper than 256");
    // Longer than PATH_MAX in few components.
    std::string longp;
    for (int i = 0; i < 20; ++i) longp += (i ? "/" : "") + std::string(250, static_cast<char>('a' + i));
    auto lp = make_layout(dir + "/long", {{{longp, 'f', 0644, 0, 0, "x"}}});
    r = import("oci:" + lp.dir, "long");
    expect_clean_error(r, "a path longer than PATH_MAX", "PATH_MAX");
    // A hard link to a target deeper than the limit.
    auto hl = make_layout(dir + "/hl", {{{"x", 'h', 0644, 0, 0, deep + "/t"}}});
    r = import("oci:" + hl.dir, "hl");
    expect_clean_error(r, "a deep hard-link target", "deeper than 256");
    EXPECT_EQ(store_state(home), state);
}

TEST_F(Redteam, EntryCountAndBookkeepingHaveLimits) {
    // The limits themselves (4M entries, 64 MiB of bookkeeping by default)
    // are too large to reach here in reasonable time; the same code with
    // smaller limits shows the error, and a layer of 20k entries and 10k
    // implied directories imports with the default ones.
    std::vector<Entry> many;
    for (int i = 0; i < 1001; ++i) many.push_back({"f" + std::to_string(i), 'f', 0644, 0, 0, ""});
    std::string blob = write_layer(dir + "/many.tar.gz", many);
    image::UnpackLimits small;
    small.max_entries = 1000;
    try {
        image::unpack_layer(blob, dir + "/many", "", {}, small);
        ADD_FAILURE() << "1001 entries passed a limit of 1000";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("more than 1000 entries"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(stdfs::exists(dir + "/many")) << "a failed unpack leaves its directory";
    std::vector<Entry> wh;
    for (int i = 0; i < 2000; ++i) wh.push_back({"d/.wh.gone" + std::to_string(i), 'f', 0644});
    blob = write_layer(dir + "/wh.tar.gz", wh);
    small = {};
    small.max_record_bytes = 8192;
    try {
        image::unpack_layer(blob, dir + "/wh", "", {}, small);
        ADD_FAILURE() << "2000 whiteouts passed an 8 KiB bookkeeping limit";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("bookkeeping"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(stdfs::exists(dir + "/wh"));
    std::vector<Entry> big;
    for (int i = 0; i < 10000; ++i) {
        big.push_back({"dir" + std::to_string(i) + "/f", 'f', 0644, 0, 0, ""});
        big.push_back({"g" + std::to_string(i), 'f', 0644, 0, 0, ""});
    }
    auto l = make_layout(dir + "/big", {{{"base", 'f', 0644, 0, 0, "b"}}, big});
    auto r = import("oci:" + l.dir, "big", 600);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_TRUE(stdfs::exists(root_of(l) + "/dir9999/f"));
    EXPECT_TRUE(stdfs::exists(root_of(l) + "/g9999"));
}

// ---------------------------------------------------------------------------
// 5. --kernel image: the image's kernel and modules, read beneath its root.

class KernelImage : public Redteam {
protected:
    void SetUp() override {
        Redteam::SetUp();
        root = dir + "/image";
        cache = dir + "/cache";
        moddir = root + "/usr/lib/modules/9.9.9-test";
        make_dirs(moddir + "/kernel");
        make_dirs(cache);
        std::ofstream(moddir + "/vmlinuz") << "the image's own kernel";
        // Everything but virtiofs built in: one module file to attack.
        std::ofstream(moddir + "/modules.builtin") << "kernel/drivers/virtio/virtio_mmio.ko\nkernel/drivers/virtio/virtio_pci.ko\n"
                                                       "kernel/drivers/char/virtio_console.ko\nkernel/fs/overlayfs/overlay.ko\n";
        std::ofstream(moddir + "/modules.dep") << "kernel/virtiofs.ko:\n";
        std::ofstream(outside + "/secret.ko") << secret;
        std::ofstream(outside + "/virtiofs.ko") << secret;
        std::ofstream(outside + "/modules.dep") << "kernel/virtiofs.ko:\n";
        // A host module tree the attacks point at.
        make_dirs(outside + "/modules/9.9.9-host/kernel");
        std::ofstream(outside + "/modules/9.9.9-host/vmlinuz") << secret;
        std::ofstream(outside + "/modules/9.9.9-host/modules.dep") << "kernel/virtiofs.ko:\n";
        stdfs::copy_file(moddir + "/modules.builtin", outside + "/modules/9.9.9-host/modules.builtin");
        std::ofstream(outside + "/modules/9.9.9-host/kernel/virtiofs.ko") << secret;
        before = host_state(outside);
    }
    // Resolves the image's kernel and builds its initramfs in a child (a
    // fifo read by mistake would block: the child is killed after 60 s).
    // Returns "" when ocivm refused with an Error, else what the guest
    // would get: the kernel QEMU boots and the initramfs, concatenated.
    std::string build(bool* hung = nullptr) {
        std::string out = dir + "/built-" + std::to_string(++builds);
        pid_t p = ::fork();
        if (p == 0) {
            ::alarm(60);
            if (::chdir(dir.c_str()) < 0) ::_exit(4);  // /proc/self/cwd/outside is the canary
            try {
                auto k = vm::resolve_kernel("image", root, cache);
                std::string cpio = guest::base_initramfs(k.modules_dir, cache);
                std::ofstream(out) << slurp(k.boot_path) << slurp(cpio) << "\nmodules_dir=" << k.modules_dir
                                   << "\nboot_path=" << k.boot_path;
                ::_exit(0);
            } catch (const Error& e) {
                std::ofstream(out + ".err") << e.what();
                ::_exit(3);
            }
        }
        int st = 0;
        ::waitpid(p, &st, 0);
        if (hung) *hung = WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM;
        if (WIFSIGNALED(st)) {
            ADD_FAILURE() << "building the initramfs died of signal " << WTERMSIG(st);
            return "";
        }
        if (WEXITSTATUS(st) == 3) {
            last_error = slurp(out + ".err");
            return "";
        }
        return slurp(out);
    }
    void expect_no_secret(const std::string& what) {
        bool hung = false;
        std::string got = build(&hung);
        EXPECT_FALSE(hung) << what << ": ocivm opened a fifo";
        EXPECT_EQ(got.find(secret), std::string::npos) << what << ": a host file went into the guest";
        EXPECT_EQ(got.find("modules_dir=" + outside), std::string::npos) << what;
        expect_outside_untouched(what);
    }
    void module(const std::function<void(const std::string&)>& make) {
        std::string m = moddir + "/kernel/virtiofs.ko";
        ::unlink(m.c_str());
        make(m);
    }
    std::string root, cache, moddir, last_error;
    const std::string secret = "HOST-SECRET-b9f1c0de";
    int builds = 0;
};

TEST_F(KernelImage, ARegularModuleTreeWorks) {
    module([](const std::string& m) { std::ofstream(m) << "the image's virtiofs module"; });
    std::string got = build();
    ASSERT_FALSE(got.empty()) << last_error;
    EXPECT_NE(got.find("the image's virtiofs module"), std::string::npos);
    EXPECT_NE(got.find("the image's own kernel"), std::string::npos);
    // QEMU is given a copy in the cache, never a path inside the image.
    EXPECT_NE(got.find("boot_path=" + cache + "/"), std::string::npos) << got.substr(got.rfind("boot_path="));
    // A symlink that stays inside the image is the image's business.
    ::unlink((moddir + "/vmlinuz").c_str());
    make_dirs(root + "/boot");
    std::ofstream(root + "/boot/vmlinuz-9.9.9-test") << "kernel behind an in-image symlink";
    ASSERT_EQ(::symlink("/boot/vmlinuz-9.9.9-test", (moddir + "/vmlinuz").c_str()), 0);
    got = build();
    ASSERT_FALSE(got.empty()) << last_error;
    EXPECT_NE(got.find("kernel behind an in-image symlink"), std::string::npos);
}

TEST_F(KernelImage, ModuleSymlinksToHostFilesAreNotRead) {
    std::string rel = "../../../../../../../../../../../../../../../.." + outside + "/secret.ko";
    module([&](const std::string& m) { ASSERT_EQ(::symlink((outside + "/secret.ko").c_str(), m.c_str()), 0); });
    expect_no_secret("module -> absolute host path");
    module([&](const std::string& m) { ASSERT_EQ(::symlink(rel.c_str(), m.c_str()), 0); });
    expect_no_secret("module -> relative path out of the image");
    module([&](const std::string& m) { ASSERT_EQ(::symlink(("/proc/self/root" + outside + "/secret.ko").c_str(), m.c_str()), 0); });
    expect_no_secret("module -> /proc/self/root/...");
    // modules.dep naming files out of the tree.
    module([](const std::string& m) { std::ofstream(m) << "the image's module"; });
    // (the module's name is its file's: the host file must be a virtiofs.ko)
    std::ofstream(moddir + "/modules.dep") << "../../../../../../../../../../../../../.." << outside << "/virtiofs.ko:\n";
    expect_no_secret("modules.dep with a .. path");
    std::ofstream(moddir + "/modules.dep") << outside << "/virtiofs.ko:\n";
    expect_no_secret("modules.dep with an absolute path");
    // modules.dep itself a symlink to the host's.
    ::unlink((moddir + "/modules.dep").c_str());
    ASSERT_EQ(::symlink((outside + "/modules.dep").c_str(), (moddir + "/modules.dep").c_str()), 0);
    EXPECT_TRUE(build().empty()) << "modules.dep -> a host file was read";
    ::unlink((moddir + "/modules.dep").c_str());
    std::ofstream(moddir + "/modules.dep") << "kernel/virtiofs.ko:\n";
    // modules.builtin too.
    ::unlink((moddir + "/modules.builtin").c_str());
    ASSERT_EQ(::symlink((outside + "/victim").c_str(), (moddir + "/modules.builtin").c_str()), 0);
    EXPECT_TRUE(build().empty()) << "modules.builtin -> a host file was read";
}

TEST_F(KernelImage, KernelAndModuleDirectorySymlinksStayInTheImage) {
    module([](const std::string& m) { std::ofstream(m) << "the image's module"; });
    ::unlink((moddir + "/vmlinuz").c_str());
    ASSERT_EQ(::symlink((outside + "/modules/9.9.9-host/vmlinuz").c_str(), (moddir + "/vmlinuz").c_str()), 0);
    expect_no_secret("vmlinuz -> a host kernel");
    ::unlink((moddir + "/vmlinuz").c_str());
    ASSERT_EQ(::symlink(("/proc/self/root" + outside + "/modules/9.9.9-host/vmlinuz").c_str(), (moddir + "/vmlinuz").c_str()), 0);
    expect_no_secret("vmlinuz -> /proc/self/root/...");
    // The module directories elsewhere on the host.
    stdfs::remove_all(root + "/usr/lib/modules");
    ASSERT_EQ(::symlink((outside + "/modules").c_str(), (root + "/usr/lib/modules").c_str()), 0);
    expect_no_secret("usr/lib/modules -> a host directory");
    ::unlink((root + "/usr/lib/modules").c_str());
    make_dirs(root + "/usr/lib/modules");
    ASSERT_EQ(::symlink((outside + "/modules/9.9.9-host").c_str(), (root + "/usr/lib/modules/9.9.9-host").c_str()), 0);
    expect_no_secret("usr/lib/modules/RELEASE -> a host directory");
    stdfs::remove_all(root + "/usr");
    ASSERT_EQ(::symlink(outside.c_str(), (root + "/lib").c_str()), 0);
    expect_no_secret("lib -> a host directory holding modules/");
    ::unlink((root + "/lib").c_str());
    ASSERT_EQ(::symlink("/proc/self/cwd/outside", (root + "/lib").c_str()), 0);
    expect_no_secret("lib -> /proc/self/cwd/...");
}

TEST_F(KernelImage, DeviceNodesAndFifosAreNeverOpened) {
    module([](const std::string& m) { ASSERT_EQ(::mknod(m.c_str(), S_IFCHR | 0644, makedev(1, 3)), 0); });
    EXPECT_TRUE(build().empty()) << "a module that is /dev/null's device was read";
    EXPECT_NE(last_error.find("not a regular file"), std::string::npos) << last_error;
    module([](const std::string& m) { ASSERT_EQ(::mkfifo(m.c_str(), 0644), 0); });
    bool hung = false;
    EXPECT_TRUE(build(&hung).empty());
    EXPECT_FALSE(hung) << "a module that is a fifo was opened";
    module([](const std::string& m) { std::ofstream(m) << "module"; });
    ::unlink((moddir + "/vmlinuz").c_str());
    ASSERT_EQ(::mkfifo((moddir + "/vmlinuz").c_str(), 0644), 0);
    EXPECT_TRUE(build(&hung).empty());
    EXPECT_FALSE(hung) << "a vmlinuz that is a fifo was opened";
    ::unlink((moddir + "/vmlinuz").c_str());
    ASSERT_EQ(::mknod((moddir + "/vmlinuz").c_str(), S_IFCHR | 0644, makedev(1, 3)), 0);
    EXPECT_TRUE(build().empty()) << "a vmlinuz that is /dev/null's device was read";
    ::unlink((moddir + "/modules.dep").c_str());
    ASSERT_EQ(::mkfifo((moddir + "/modules.dep").c_str(), 0644), 0);
    ::unlink((moddir + "/vmlinuz").c_str());
    std::ofstream(moddir + "/vmlinuz") << "kernel";
    EXPECT_TRUE(build(&hung).empty());
    EXPECT_FALSE(hung) << "a modules.dep that is a fifo was opened";
}

TEST_F(KernelImage, AKernelThatDecompressesWithoutBoundIsRefused) {
    // A bzImage whose gzip payload is 300 MiB of zeros (300 KiB packed):
    // decompressing it whole would take 300 MiB of memory, more for more.
    module([](const std::string& m) { std::ofstream(m) << "module"; });
    std::string gz = dir + "/payload.gz";
    ASSERT_EQ(std::system(("head -c 314572800 /dev/zero | gzip -1 > " + gz).c_str()), 0) << "needs gzip (apt-get install gzip)";
    std::string payload = slurp(gz);
    std::string bz(1024, '\0');
    bz[0x1f1] = 1;  // one setup sector: the payload starts at 1024
    bz.replace(0x202, 4, "HdrS");
    uint32_t off = 0, len = static_cast<uint32_t>(payload.size());
    bz.replace(0x248, 4, reinterpret_cast<const char*>(&off), 4);
    bz.replace(0x24c, 4, reinterpret_cast<const char*>(&len), 4);
    std::ofstream(moddir + "/vmlinuz", std::ios::binary) << bz << payload;
    EXPECT_TRUE(build().empty()) << "a kernel decompressing to 300 MiB was decompressed";
    EXPECT_NE(last_error.find("decompresses to more than"), std::string::npos) << last_error;
}

// ---------------------------------------------------------------------------
// 6. -u NAME: the image's /etc/passwd and /etc/group, read beneath its root.

class PasswdImage : public Redteam {
protected:
    void SetUp() override {
        Redteam::SetUp();
        root = dir + "/image";
        make_dirs(root + "/etc");
        make_dirs(root + "/usr/share");
        std::ofstream(outside + "/passwd") << "hostonly:x:4242:4243::/hosthome:/bin/sh\nroot:x:0:0::/root:/bin/sh\n";
        std::ofstream(outside + "/group") << "hostgrp:x:777:hostonly,root\n";
        before = host_state(outside);
    }
    // resolve_user in a child (a fifo opened by mistake blocks: killed after
    // 60 s); "" when ocivm refused with an Error, else "uid:gid:groups".
    std::string resolve(const std::string& spec, bool* hung = nullptr) {
        std::string out = dir + "/user-" + std::to_string(++runs);
        pid_t p = ::fork();
        if (p == 0) {
            ::alarm(60);
            if (::chdir(outside.c_str()) < 0) ::_exit(4);
            try {
                auto u = image::resolve_user(root, spec);
                {
                    std::ofstream o(out);
                    o << u.uid << ":" << u.gid << ":";
                    for (auto g : u.groups) o << g << ",";
                }
                ::_exit(0);
            } catch (const Error&) {
                ::_exit(3);
            }
        }
        int st = 0;
        ::waitpid(p, &st, 0);
        if (hung) *hung = WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return "";
        return slurp(out);
    }
    void link(const std::string& name, const std::string& target) {
        ::unlink((root + "/etc/" + name).c_str());
        ASSERT_EQ(::symlink(target.c_str(), (root + "/etc/" + name).c_str()), 0);
    }
    std::string root;
    int runs = 0;
};

TEST_F(PasswdImage, PasswdAndGroupSymlinksNeverReachTheHost) {
    std::string rel = "../../../../../../../../../../../../../../../.." + outside;
    for (auto& [what, target] : std::vector<std::pair<std::string, std::string>>{
             {"absolute", outside + "/passwd"},
             {"relative", rel + "/passwd"},
             {"/proc/self/root", "/proc/self/root" + outside + "/passwd"},
             {"/proc/self/cwd", "/proc/self/cwd/passwd"}}) {
        link("passwd", target);
        std::string got = resolve("hostonly");
        EXPECT_EQ(got.find("4242"), std::string::npos) << "/etc/passwd -> " << what << ": read the host's file";
    }
    std::ofstream(root + "/etc/passwd.real") << "root:x:0:0::/root:/bin/sh\n";
    link("passwd", "passwd.real");
    for (auto& [what, target] : std::vector<std::pair<std::string, std::string>>{
             {"absolute", outside + "/group"}, {"relative", rel + "/group"}, {"/proc/self/cwd", "/proc/self/cwd/group"}}) {
        link("group", target);
        std::string got = resolve("root:hostgrp");
        EXPECT_EQ(got.find("777"), std::string::npos) << "/etc/group -> " << what << ": read the host's file";
        got = resolve("root");
        EXPECT_EQ(got.find("777"), std::string::npos) << "/etc/group -> " << what << ": supplementary groups from the host";
    }
    // The whole /etc elsewhere.
    stdfs::remove_all(root + "/etc");
    ASSERT_EQ(::symlink(outside.c_str(), (root + "/etc").c_str()), 0);
    EXPECT_EQ(resolve("hostonly").find("4242"), std::string::npos) << "/etc -> a host directory";
    expect_outside_untouched("passwd symlinks");
}

TEST_F(PasswdImage, SymlinksInsideTheImageAndSpecialFiles) {
    // A symlink that stays in the image resolves in it (RESOLVE_IN_ROOT):
    // an absolute target names the image's own file.
    std::ofstream(root + "/usr/share/passwd") << "app:x:1500:1501::/app:/bin/sh\n";
    link("passwd", "/usr/share/passwd");
    EXPECT_EQ(resolve("app"), "1500:1501:1501,");
    link("passwd", "../usr/share/passwd");
    EXPECT_EQ(resolve("app"), "1500:1501:1501,");
    // A fifo or a device is never opened: an error, not a hang.
    ::unlink((root + "/etc/passwd").c_str());
    ASSERT_EQ(::mkfifo((root + "/etc/passwd").c_str(), 0644), 0);
    bool hung = false;
    EXPECT_EQ(resolve("app", &hung), "");
    EXPECT_FALSE(hung) << "/etc/passwd as a fifo was opened";
    ::unlink((root + "/etc/passwd").c_str());
    ASSERT_EQ(::mknod((root + "/etc/passwd").c_str(), S_IFCHR | 0644, makedev(1, 3)), 0);
    EXPECT_EQ(resolve("app"), "") << "/etc/passwd as a device was read";
    // Numeric users need no /etc/passwd at all.
    ::unlink((root + "/etc/passwd").c_str());
    EXPECT_EQ(resolve("123:456"), "123:456:456,");
}

// ---------------------------------------------------------------------------
// 7. The image's JSON, digests, sizes, media types and names; archives.

// Rewrites the layout's config (and the manifest pointing at it).
void set_config(const Layout& l, const std::function<void(json&)>& edit) {
    json m = json::parse(slurp(l.dir + "/blobs/sha256/" + l.manifest_digest.substr(7)));
    std::string cd = m["config"]["digest"];
    json cfg = json::parse(slurp(l.dir + "/blobs/sha256/" + cd.substr(7)));
    edit(cfg);
    std::string cs = cfg.dump();
    put_blob(l.dir, sha(cs), cs);
    m["config"]["digest"] = sha(cs);
    m["config"]["size"] = cs.size();
    set_manifest(l, m);
}
json manifest_of(const Layout& l) {
    json index = json::parse(slurp(l.dir + "/index.json"));
    std::string d = index["manifests"][0]["digest"];
    return json::parse(slurp(l.dir + "/blobs/sha256/" + d.substr(7)));
}

TEST_F(Redteam, HostileManifestsConfigsAndIndexes) {
    // Each with a layer of its own, so that nothing is found in the store already.
    auto fresh = [&](const std::string& name) {
        return make_layout(dir + "/" + name, {{{"f", 'f', 0644, 0, 0, name}}});
    };
    struct Case {
        std::string what;
        std::function<void(const Layout&)> spoil;
        std::string needle;
    };
    std::vector<Case> cases = {
        {"a manifest over 8 MiB",
         [](const Layout& l) {
             json m = manifest_of(l);
             m["annotations"] = {{"pad", std::string(9 << 20, 'x')}};
             set_manifest(l, m);
         },
         "bytes"},
        {"a config nested 100000 deep",
         [](const Layout& l) {
             set_config(l, [](json& c) { c["history"] = json::array(); });
             json m = manifest_of(l);
             std::string cd = m["config"]["digest"];
             std::string cs = slurp(l.dir + "/blobs/sha256/" + cd.substr(7));
             cs.replace(cs.find("\"history\":[]"), 12, "\"history\":" + std::string(100000, '[') + std::string(100000, ']'));
             put_blob(l.dir, sha(cs), cs);
             m["config"]["digest"] = sha(cs);
             m["config"]["size"] = cs.size();
             set_manifest(l, m);
         },
         "deeper"},
        {"300 layers",
         [](const Layout& l) {
             json m = manifest_of(l);
             json layer = m["layers"][0];
             std::string cd = m["config"]["digest"];
             json cfg = json::parse(slurp(l.dir + "/blobs/sha256/" + cd.substr(7)));
             json id = cfg["rootfs"]["diff_ids"][0];
             for (int i = 1; i < 300; ++i) {
                 m["layers"].push_back(layer);
                 cfg["rootfs"]["diff_ids"].push_back(id);
             }
             std::string cs = cfg.dump();
             put_blob(l.dir, sha(cs), cs);
             m["config"]["digest"] = sha(cs);
             m["config"]["size"] = cs.size();
             set_manifest(l, m);
         },
         "at most 256"},
        {"a layer size that is not the blob's",
         [](const Layout& l) {
             json m = manifest_of(l);
             m["layers"][0]["size"] = m["layers"][0]["size"].get<uint64_t>() - 1;
             set_manifest(l, m);
         },
         "descriptor says"},
        {"a config size that is not the blob's",
         [](const Layout& l) {
             json m = manifest_of(l);
             m["config"]["size"] = 3;
             set_manifest(l, m);
         },
         "descriptor says"},
        {"a negative size",
         [](const Layout& l) {
             json m = manifest_of(l);
             m["layers"][0]["size"] = -1;
             set_manifest(l, m);
         },
         "size"},
        {"a helm chart (artifact config)",
         [](const Layout& l) {
             json m = manifest_of(l);
             m["config"]["mediaType"] = "application/vnd.cncf.helm.config.v1+json";
             set_manifest(l, m);
         },
         "not a container image"},
        {"an encrypted layer",
         [](const Layout& l) {
             json m = manifest_of(l);
             m["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted";
             set_manifest(l, m);
         },
         "media type"},
        {"a digest that is a number",
         [](const Layout& l) {
             json m = manifest_of(l);
             m["layers"][0]["digest"] = 42;
             set_manifest(l, m);
         },
         "digest"},
        {"a sha512 digest",
         [](const Layout& l) {
             json m = manifest_of(l);
             m["layers"][0]["digest"] = "sha512:" + std::string(128, 'a');
             set_manifest(l, m);
         },
         "sha256"},
        {"layers as an object",
         [](const Layout& l) {
             json m = manifest_of(l);
             m["layers"] = {{"a", 1}};
             set_manifest(l, m);
         },
         "layers"},
        {"a config that is a string",
         [](const Layout& l) {
             json m = manifest_of(l);
             m["config"] = "sha256:" + std::string(64, 'a');
             set_manifest(l, m);
         },
         "config"},
        {"diff_ids holding numbers",
         [](const Layout& l) { set_config(l, [](json& c) { c["rootfs"]["diff_ids"] = {1}; }); }, "diff_id"},
        {"an os that is a number", [](const Layout& l) { set_config(l, [](json& c) { c["os"] = 7; }); }, "os"},
        {"a config that is an array", [](const Layout& l) { set_config(l, [](json& c) { c = json::array({1, 2}); }); }, "config"},
        {"an index entry that is a string",
         [](const Layout& l) {
             json index = json::parse(slurp(l.dir + "/index.json"));
             index["manifests"] = {"sha256:" + std::string(64, 'a')};
             std::ofstream(l.dir + "/index.json") << index.dump();
         },
         "index.json"},
        {"annotations that are an array",
         [](const Layout& l) {
             json index = json::parse(slurp(l.dir + "/index.json"));
             index["manifests"][0]["annotations"] = {1, 2};
             std::ofstream(l.dir + "/index.json") << index.dump();
         },
         ""},
        {"a platform that is a string",
         [](const Layout& l) {
             json index = json::parse(slurp(l.dir + "/index.json"));
             index["manifests"][0]["platform"] = "linux/amd64";
             std::ofstream(l.dir + "/index.json") << index.dump();
         },
         ""},
        {"index.json over 8 MiB",
         [](const Layout& l) {
             json index = json::parse(slurp(l.dir + "/index.json"));
             index["annotations"] = {{"pad", std::string(9 << 20, 'x')}};
             std::ofstream(l.dir + "/index.json") << index.dump();
         },
         "bytes"},
        {"indexes nested 6 deep",
         [](const Layout& l) {
             json index = json::parse(slurp(l.dir + "/index.json"));
             json entry = index["manifests"][0];
             for (int i = 0; i < 6; ++i) {
                 json inner = {{"schemaVersion", 2}, {"mediaType", "application/vnd.oci.image.index.v1+json"}, {"manifests", {entry}}};
                 std::string s = inner.dump();
                 put_blob(l.dir, sha(s), s);
                 entry = {{"mediaType", "application/vnd.oci.image.index.v1+json"}, {"digest", sha(s)}, {"size", s.size()}};
             }
             index["manifests"] = {entry};
             std::ofstream(l.dir + "/index.json") << index.dump();
         },
         "nested"},
        {"a name with terminal escapes",
         [](const Layout& l) {
             json index = json::parse(slurp(l.dir + "/index.json"));
             index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] = "evil\x1b]0;owned\x07\x1b[2Jname";
             std::ofstream(l.dir + "/index.json") << index.dump();
         },
         "not a valid image name"},
        {"a layer blob that is a fifo",
         [](const Layout& l) {
             json m = manifest_of(l);
             std::string d = m["layers"][0]["digest"];
             std::string p = l.dir + "/blobs/sha256/" + d.substr(7);
             ::unlink(p.c_str());
             ASSERT_EQ(::mkfifo(p.c_str(), 0644), 0);
         },
         "not a regular file"},
        {"a config blob that is a symlink to a host file",
         [this](const Layout& l) {
             std::string text = R"({"os":"linux","rootfs":{"type":"layers","diff_ids":[]}})";
             std::ofstream(outside + "/config.json") << text;
             before = host_state(outside);
             json m = manifest_of(l);
             m["layers"] = json::array();
             m["config"] = {{"mediaType", "application/vnd.oci.image.config.v1+json"}, {"digest", sha(text)}, {"size", text.size()}};
             ::symlink((outside + "/config.json").c_str(), (l.dir + "/blobs/sha256/" + sha(text).substr(7)).c_str());
             set_manifest(l, m);
         },
         ""},
    };
    auto good = fresh("good");
    ASSERT_EQ(import("oci:" + good.dir, "good").status, 0);
    std::string state = store_state(home);
    for (size_t i = 0; i < cases.size(); ++i) {
        auto l = fresh("case" + std::to_string(i));
        cases[i].spoil(l);
        auto r = import("oci:" + l.dir, "", 60);
        expect_clean_error(r, cases[i].what, cases[i].needle);
        EXPECT_EQ(store_state(home), state) << cases[i].what << ": the store changed";
    }
    // The escape-laden name is ignored when the user names the image.
    auto named = fresh("named");
    for (auto& c : cases)
        if (c.what == "a name with terminal escapes") c.spoil(named);
    EXPECT_EQ(import("oci:" + named.dir, "mine").status, 0);
}

TEST_F(Redteam, AnImageCannotBorrowAnotherImagesLayerByItsDiffId) {
    std::vector<Entry> priv = {{"private", 'f', 0600, 0, 0, "another image's secret"}};
    auto a = make_layout(dir + "/a", {priv});
    ASSERT_EQ(import("oci:" + a.dir, "a").status, 0);
    std::string state = store_state(home);
    // B's layer blob is its own, but its config claims A's diff_id: the
    // layer directory of that diff_id is in the store already.
    auto b = make_layout(dir + "/b", {{{"evil", 'f', 0644, 0, 0, "mine"}}});
    set_config(b, [&](json& c) { c["rootfs"]["diff_ids"][0] = uncompressed_sha(a.layer_files[0]); });
    auto r = import("oci:" + b.dir, "b");
    expect_clean_error(r, "a diff_id borrowed from another image", "diff_id");
    EXPECT_FALSE(image::Store(home).find("b")) << "the image got another image's files";
    EXPECT_EQ(store_state(home), state);
    // The same layer compressed otherwise (plain tar here) is the same layer.
    auto c = make_layout(dir + "/c", {priv});
    std::string plain = write_layer(dir + "/plain.tar", priv, false);
    std::string pd = file_sha(plain);
    put_blob(c.dir, pd, slurp(plain));
    json cm = manifest_of(c);
    cm["layers"][0] = {{"mediaType", "application/vnd.oci.image.layer.v1.tar"}, {"digest", pd}, {"size", stdfs::file_size(plain)}};
    set_manifest(c, cm);
    r = import("oci:" + c.dir, "c");
    ASSERT_EQ(r.status, 0) << r.err;
    auto found = image::Store(home).resolve("c");
    ASSERT_TRUE(found);
    EXPECT_EQ(slurp(found->rootfs + "/private"), "another image's secret");
}

// A tar of ENTRIES (plain) at path: an archive source.
std::string write_archive(const std::string& path, const std::vector<Entry>& entries) { return write_layer(path, entries, false); }

TEST_F(Redteam, ArchivesNeverReadOrWriteHostFiles) {
    // A docker archive is any tar: its manifest.json names files anywhere in it.
    auto inner = make_layout(dir + "/inner", {{{"f", 'f', 0644, 0, 0, "image file"}}});
    json m = manifest_of(inner);
    std::string cfg = slurp(inner.dir + "/blobs/sha256/" + m["config"]["digest"].get<std::string>().substr(7));
    std::string layer = slurp(inner.layer_files[0]);
    // The host has what the attack wants ocivm to take for its own.
    std::ofstream(outside + "/config.json") << cfg;
    std::ofstream(outside + "/layer.tar.gz") << layer;
    before = host_state(outside);
    json dm = json::array({{{"Config", "lnk/config.json"}, {"RepoTags", {"fromhost:1"}}, {"Layers", {"lnk/layer.tar.gz"}}}});
    write_archive(dir + "/docker-host.tar", {{"lnk", 'l', 0777, 0, 0, outside}, {"manifest.json", 'f', 0644, 0, 0, dm.dump()}});
    auto r = import("docker-archive:" + dir + "/docker-host.tar", "");
    EXPECT_NE(r.status, 0) << "a docker archive's files were taken from the host";
    EXPECT_FALSE(image::Store(home).find("fromhost:1"));
    struct stat st;
    ASSERT_EQ(::stat((outside + "/config.json").c_str(), &st), 0);
    EXPECT_EQ(st.st_nlink, 1u);
    // The old importer converted in place, inside the extracted archive:
    // ".oci -> outside" made it create directories and write a manifest there.
    json ok = json::array({{{"Config", "config.json"}, {"RepoTags", {"dock:1"}}, {"Layers", {"layer.tar.gz"}}}});
    write_archive(dir + "/docker-oci.tar", {{".oci", 'l', 0777, 0, 0, outside},
                                            {"manifest.json", 'f', 0644, 0, 0, ok.dump()},
                                            {"config.json", 'f', 0644, 0, 0, cfg},
                                            {"layer.tar.gz", 'f', 0644, 0, 0, layer}});
    r = import("docker-archive:" + dir + "/docker-oci.tar", "");
    EXPECT_EQ(r.status, 0) << r.err;
    expect_outside_untouched("docker archive with .oci -> outside");
    auto found = image::Store(home).resolve("dock:1");
    ASSERT_TRUE(found);
    EXPECT_EQ(slurp(found->rootfs + "/f"), "image file");
    // manifest.json itself, and a config as a fifo.
    write_archive(dir + "/docker-mj.tar", {{"manifest.json", 'l', 0777, 0, 0, outside + "/victim"}});
    expect_clean_error(import("docker-archive:" + dir + "/docker-mj.tar", ""), "manifest.json -> a host file");
    json fifo = json::array({{{"Config", "cfg"}, {"Layers", json::array()}}});
    write_archive(dir + "/docker-fifo.tar", {{"manifest.json", 'f', 0644, 0, 0, fifo.dump()}, {"cfg", 'p', 0644}});
    expect_clean_error(import("docker-archive:" + dir + "/docker-fifo.tar", "", 60), "a config that is a fifo",
                       "not a regular file");

    // An OCI archive whose index.json is the host's.
    std::string mdigest = inner.manifest_digest;
    std::string mtext = slurp(inner.dir + "/blobs/sha256/" + mdigest.substr(7));
    json hostindex = {{"schemaVersion", 2},
                      {"manifests", {{{"mediaType", "application/vnd.oci.image.manifest.v1+json"}, {"digest", mdigest},
                                      {"size", mtext.size()}, {"annotations", {{"org.opencontainers.image.ref.name", "hostchosen"}}}}}}};
    std::ofstream(outside + "/index.json") << hostindex.dump();
    make_dirs(outside + "/blobs/sha256");
    for (auto& e : stdfs::directory_iterator(inner.dir + "/blobs/sha256"))
        stdfs::copy_file(e.path(), outside + "/blobs/sha256/" + e.path().filename().string());
    before = host_state(outside);
    std::vector<Entry> archive = {{"oci-layout", 'f', 0644, 0, 0, R"({"imageLayoutVersion":"1.0.0"})"},
                                  {"index.json", 'l', 0777, 0, 0, outside + "/index.json"},
                                  {"blobs", 'd', 0755},
                                  {"blobs/sha256", 'd', 0755}};
    for (auto& e : stdfs::directory_iterator(inner.dir + "/blobs/sha256"))
        archive.push_back({"blobs/sha256/" + e.path().filename().string(), 'f', 0644, 0, 0, slurp(e.path())});
    write_archive(dir + "/oci-index.tar", archive);
    r = import("oci-archive:" + dir + "/oci-index.tar", "");
    EXPECT_NE(r.status, 0) << "an OCI archive's index.json was taken from the host";
    EXPECT_FALSE(image::Store(home).find("hostchosen"));
    // ... and one whose blobs are the host's.
    json own_index = hostindex;
    own_index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] = "hostblobs";
    write_archive(dir + "/oci-blobs.tar", {{"oci-layout", 'f', 0644, 0, 0, R"({"imageLayoutVersion":"1.0.0"})"},
                                           {"index.json", 'f', 0644, 0, 0, own_index.dump()},
                                           {"blobs", 'l', 0777, 0, 0, outside + "/blobs"}});
    r = import("oci-archive:" + dir + "/oci-blobs.tar", "");
    EXPECT_NE(r.status, 0) << "an OCI archive's blobs were taken from the host";
    EXPECT_FALSE(image::Store(home).find("hostblobs"));
}

// ---------------------------------------------------------------------------
// 8. Who parses an image. Every import (`ocivm image import`, the implicit
// one of `ocivm run LAYOUT` and of `ocivm disk create LAYOUT`, and the parse
// of podman's export for containers-storage:) runs below the CLI in a
// process that has confined itself: PID 1 of its own PID namespace (its
// parent a keeper without capabilities, the CLI's child), other network,
// IPC and mount namespaces, a root that shows only the store and the source
// (read-only, nodev, nosuid but the store), only the capabilities unpacking
// needs, no_new_privs, a seccomp filter; the CLI itself keeps what it has
// for QEMU, mounts and disks. Seen from outside: the test holds the store's
// lock, which Store::import takes first, so the importer, whichever process
// it is, stops there; /proc/locks names it, and its /proc entries say what
// it may do. The disk writer of `disk create` is seen the same way,
// stopped in a mkfs.ext4 of the test's.

// ocivm ARGS in the background (OCIVM_HOME=home, its runtime directory
// below it), stdout and stderr in
// files; killed and reaped if the test leaves early.
class Started {
public:
    Started(const std::vector<std::string>& args, const std::string& home, const std::string& dir) {
        static int counter = 0;
        std::string tag = std::to_string(::getpid()) + "-" + std::to_string(++counter);
        out_ = dir + "/started-" + tag + ".out";
        err_ = dir + "/started-" + tag + ".err";
        pid_ = ::fork();
        if (pid_ == 0) {
            ::setenv("OCIVM_HOME", home.c_str(), 1);
            // A `run` records its VM: in the test's directory, not the host's /run/ocivm.
            ::setenv("OCIVM_RUNTIME_DIR", (home + "/run").c_str(), 1);
            int in = ::open("/dev/null", O_RDONLY);
            int fo = ::open(out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            int fe = ::open(err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            ::dup2(in, 0);
            ::dup2(fo, 1);
            ::dup2(fe, 2);
            std::vector<char*> argv{const_cast<char*>(g_ocivm.c_str())};
            for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
            argv.push_back(nullptr);
            ::alarm(300);  // a hang guard that survives exec; the importer dies with ocivm
            ::execv(g_ocivm.c_str(), argv.data());
            ::_exit(127);
        }
    }
    ~Started() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
    }
    Started(const Started&) = delete;
    Started& operator=(const Started&) = delete;

    pid_t pid() const { return pid_; }
    // Non-blocking: true once ocivm has exited.
    bool exited() {
        int st = 0;
        if (pid_ <= 0) return true;
        if (::waitpid(pid_, &st, WNOHANG) != pid_) return false;
        pid_ = -1;
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return true;
    }
    RunResult wait() {
        if (pid_ > 0) {
            int st = 0;
            ::waitpid(pid_, &st, 0);
            pid_ = -1;
            status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        return {status_, slurp(out_), slurp(err_)};
    }
    std::string err() const { return slurp(err_); }

private:
    pid_t pid_ = -1;
    int status_ = -1;
    std::string out_, err_;
};

// The store's lock (home/lock), held until release().
class HeldStoreLock {
public:
    explicit HeldStoreLock(const std::string& home) {
        make_dirs(home, 0700);
        fd_ = ::open((home + "/lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        EXPECT_GE(fd_, 0) << home << "/lock: " << std::strerror(errno);
        EXPECT_EQ(::flock(fd_, LOCK_EX), 0) << std::strerror(errno);
        struct stat st;
        EXPECT_EQ(::fstat(fd_, &st), 0);
        ino_ = st.st_ino;
    }
    ~HeldStoreLock() { release(); }
    HeldStoreLock(const HeldStoreLock&) = delete;
    HeldStoreLock& operator=(const HeldStoreLock&) = delete;
    void release() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }
    ino_t ino() const { return ino_; }

private:
    int fd_ = -1;
    ino_t ino_ = 0;
};

// The process blocked on a flock of inode `ino` ("N: -> FLOCK ADVISORY
// WRITE PID MAJ:MIN:INO ..." in /proc/locks), or 0.
pid_t flock_waiter(ino_t ino) {
    std::istringstream in(slurp("/proc/locks"));
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ls(line);
        std::vector<std::string> t;
        for (std::string w; ls >> w;) t.push_back(w);
        if (t.size() < 7 || t[1] != "->" || t[2] != "FLOCK") continue;
        const std::string& dev_ino = t[6];
        if (dev_ino.substr(dev_ino.rfind(':') + 1) == std::to_string(ino)) return static_cast<pid_t>(std::stol(t[5]));
    }
    return 0;
}

std::map<std::string, std::string> proc_status(pid_t pid) {
    std::map<std::string, std::string> f;
    std::istringstream in(slurp("/proc/" + std::to_string(pid) + "/status"));
    std::string line;
    while (std::getline(in, line)) {
        size_t c = line.find(':');
        if (c == std::string::npos) continue;
        size_t v = line.find_first_not_of(" \t", c + 1);
        f[line.substr(0, c)] = v == std::string::npos ? "" : line.substr(v);
    }
    return f;
}

std::string ns_of(pid_t pid, const char* ns) {
    std::error_code ec;
    auto target = stdfs::read_symlink("/proc/" + std::to_string(pid) + "/ns/" + ns, ec);
    return ec ? "unreadable: " + ec.message() : target.string();
}

// Waits (no time limit but ocivm's own hang guard) until some process
// waits for the store's lock; fails when ocivm ends first.
pid_t wait_for_importer(Started& cli, const HeldStoreLock& lock) {
    for (;;) {
        if (pid_t w = flock_waiter(lock.ino())) return w;
        if (cli.exited()) {
            ADD_FAILURE() << "ocivm ended before anything waited for the store's lock: " << cli.wait().err;
            return 0;
        }
        ::usleep(20000);
    }
}

// A process's mount table as its mountinfo says: mount point, options
// (rw/ro, nodev, ...), propagation tags.
struct MountLine {
    std::string point, options, tags;
};
std::vector<MountLine> mounts_of(pid_t pid) {
    std::vector<MountLine> v;
    std::istringstream in(slurp("/proc/" + std::to_string(pid) + "/mountinfo"));
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ls(line);
        std::vector<std::string> t;
        for (std::string w; ls >> w;) t.push_back(w);
        if (t.size() < 7) continue;
        MountLine m{t[4], "," + t[5] + ",", ""};
        for (size_t i = 6; i < t.size() && t[i] != "-"; ++i) m.tags += t[i] + " ";
        v.push_back(m);
    }
    return v;
}

// The mounts of a confined tool's root: its own mount namespace, private
// (no shared: peer group with the host's), every mount read-only, nodev and
// nosuid but `writable` (read-write, nodev, nosuid, noexec) and the five
// harmless devices (read-only mounts, devices allowed).
void expect_tool_mounts(pid_t pid, const std::string& writable, const std::string& what) {
    EXPECT_NE(ns_of(pid, "mnt"), ns_of(::getpid(), "mnt")) << what << ": the host's mount namespace";
    std::string real = stdfs::canonical(writable).string();
    const std::set<std::string> devices = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"};
    auto has = [](const MountLine& m, const char* o) {
        return m.options.find("," + std::string(o) + ",") != std::string::npos;
    };
    std::vector<std::string> rw, shared, dev, suid;
    bool found = false;
    for (auto& m : mounts_of(pid)) {
        if (m.tags.find("shared:") != std::string::npos) shared.push_back(m.point);
        if (has(m, "rw")) rw.push_back(m.point);
        if (m.point == real) {
            found = true;
            EXPECT_TRUE(has(m, "noexec")) << what << ": programs could run from " << real << " (" << m.options << ")";
        }
        if (devices.count(m.point)) continue;
        if (!has(m, "nodev")) dev.push_back(m.point);
        if (!has(m, "nosuid")) suid.push_back(m.point);
    }
    EXPECT_TRUE(found) << what << ": no copy of " << real << " in its mount table";
    EXPECT_EQ(rw, std::vector<std::string>{real}) << what << ": the mounts it may write";
    EXPECT_TRUE(shared.empty()) << what << ": mounts that propagate to or from the host: "
                                << ::testing::PrintToString(shared);
    EXPECT_TRUE(dev.empty()) << what << ": mounts on which it may open devices: " << ::testing::PrintToString(dev);
    EXPECT_TRUE(suid.empty()) << what << ": mounts without nosuid: " << ::testing::PrintToString(suid);
}

// The first child of pid's main thread, or 0.
pid_t first_child(pid_t pid) {
    std::istringstream kids(slurp("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children"));
    pid_t child = 0;
    kids >> child;
    return child;
}

// A confined tool is PID 1 of a PID namespace of its own, and its root
// shows none of the host's files but those it was given: no /etc/shadow
// (which main() checks the host has), no /home, /root or /var.
void expect_own_pid_namespace_and_root(pid_t pid, const std::string& what) {
    auto st = proc_status(pid);
    EXPECT_NE(ns_of(pid, "pid"), ns_of(::getpid(), "pid")) << what << ": the host's PID namespace";
    std::istringstream nspid(st["NSpid"]);
    std::vector<std::string> ids;
    for (std::string w; nspid >> w;) ids.push_back(w);
    EXPECT_TRUE(ids.size() == 2 && ids[1] == "1") << what << ": NSpid " << st["NSpid"];
    const std::string root = "/proc/" + std::to_string(pid) + "/root";
    for (const char* host : {"/etc/shadow", "/etc/passwd", "/root", "/home", "/var/lib", "/boot"}) {
        struct stat sb;
        EXPECT_NE(::lstat((root + host).c_str(), &sb), 0) << what << ": its root shows the host's " << host;
    }
    EXPECT_EQ(::access((root + "/proc/1/status").c_str(), F_OK), 0) << what << ": no /proc of its own";
}

// What the process waiting for the store's lock may do, and what its parent
// (the CLI) still may.
void expect_confined_importer(pid_t importer, pid_t cli, const std::string& what, const std::string& home) {
    ASSERT_GT(importer, 0) << what;
    auto st = proc_status(importer), cli_st = proc_status(cli), self = proc_status(::getpid());
    // chown, dac_override, dac_read_search, fowner, fsetid, mknod, setfcap
    // (0x8800001f), of those this test has (a container may lack some)
    char caps[32];
    std::snprintf(caps, sizeof caps, "%016llx", 0x8800001fULL & std::stoull(self["CapEff"], nullptr, 16));
    const std::string kImportCapEff = caps;
    EXPECT_NE(importer, cli) << what << ": the image is parsed by the CLI process itself (CapEff " << st["CapEff"] << ")";
    // The CLI's child is the importer's keeper, outside its PID namespace;
    // the importer is PID 1 of its own.
    pid_t keeper = static_cast<pid_t>(std::stol(st["PPid"]));
    EXPECT_EQ(proc_status(keeper)["PPid"], std::to_string(cli)) << what << ": the importer's keeper is not the CLI's child";
    EXPECT_EQ(proc_status(keeper)["CapEff"], "0000000000000000") << what << ": the keeper kept capabilities";
    expect_own_pid_namespace_and_root(importer, what);
    EXPECT_EQ(st["NoNewPrivs"], "1") << what;
    EXPECT_EQ(st["CapEff"], kImportCapEff) << what;
    EXPECT_EQ(st["CapPrm"], kImportCapEff) << what;
    EXPECT_EQ(st["CapBnd"], kImportCapEff) << what << ": an exec could regain more";
    EXPECT_EQ(st["CapAmb"], "0000000000000000") << what;
    EXPECT_NE(ns_of(importer, "net"), ns_of(::getpid(), "net")) << what << ": the importer has the host's network";
    EXPECT_NE(ns_of(importer, "ipc"), ns_of(::getpid(), "ipc")) << what;
    EXPECT_EQ(st["Seccomp"], "2") << what << ": no seccomp filter";
    expect_tool_mounts(importer, home, what);
    // The CLI goes on unconfined: QEMU, mounts and disks are its work.
    EXPECT_EQ(cli_st["CapEff"], self["CapEff"]) << what << ": the CLI lost capabilities it needs";
    EXPECT_EQ(cli_st["NoNewPrivs"], "0") << what;
    EXPECT_EQ(cli_st["Seccomp"], "0") << what;
    EXPECT_EQ(ns_of(cli, "net"), ns_of(::getpid(), "net")) << what;
    EXPECT_EQ(ns_of(cli, "mnt"), ns_of(::getpid(), "mnt")) << what;
}

// The store's tmp/ holds nothing once an import is over, whatever its end.
void expect_tmp_empty(const std::string& home, const std::string& what) {
    std::string tmp = home + "/tmp";
    if (!stdfs::exists(tmp)) return;
    std::vector<std::string> left;
    for (auto& e : stdfs::directory_iterator(tmp)) left.push_back(e.path().filename());
    EXPECT_TRUE(left.empty()) << what << ": left in tmp/: " << ::testing::PrintToString(left);
}

TEST_F(Redteam, ImageImportParsesInAConfinedChild) {
    auto l = make_layout(dir + "/layout", {{{"f", 'f', 0644, 0, 0, "imported"}}});
    HeldStoreLock lock(home);
    Started cli({"image", "import", "oci:" + l.dir, "--name", "conf:1"}, home, dir);
    expect_confined_importer(wait_for_importer(cli, lock), cli.pid(), "ocivm image import", home);
    lock.release();
    auto r = cli.wait();
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, "conf:1 " + l.manifest_digest + "\n");
    auto found = image::Store(home).resolve("conf:1");
    ASSERT_TRUE(found);
    EXPECT_EQ(slurp(found->rootfs + "/f"), "imported");
    expect_tmp_empty(home, "image import");
}

TEST_F(Redteam, RunLayoutImportsInAConfinedChild) {
    auto l = make_layout(dir + "/layout", {{{"f", 'f', 0644, 0, 0, "run me"}}});
    HeldStoreLock lock(home);
    // The import comes before anything of the VM: a kernel that does not
    // exist stops `run` right after it, and no VM boots.
    Started cli({"run", "--kernel", dir + "/no-such-kernel", l.dir, "--", "true"}, home, dir);
    expect_confined_importer(wait_for_importer(cli, lock), cli.pid(), "ocivm run LAYOUT", home);
    lock.release();
    auto r = cli.wait();
    expect_clean_error(r, "run LAYOUT --kernel missing", "no-such-kernel");
    auto found = image::Store(home).resolve(l.manifest_digest);
    ASSERT_TRUE(found) << "the layout was not imported";
    EXPECT_EQ(slurp(found->rootfs + "/f"), "run me");
    expect_tmp_empty(home, "run LAYOUT");
}

TEST_F(Redteam, DiskCreateLayoutImportsInAConfinedChild) {
    ASSERT_TRUE(have_program("sfdisk") && have_program("mkfs.ext4")) << "apt-get install fdisk e2fsprogs";
    auto l = make_layout(dir + "/layout", {{{"f", 'f', 0644, 0, 0, "on disk"}}});
    HeldStoreLock lock(home);
    std::string disk = dir + "/disk.raw";
    Started cli({"disk", "create", l.dir, disk}, home, dir);
    expect_confined_importer(wait_for_importer(cli, lock), cli.pid(), "ocivm disk create LAYOUT", home);
    lock.release();
    auto r = cli.wait();
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out.size(), 37u) << "a PARTUUID and a newline: " << r.out;
    EXPECT_TRUE(image::Store(home).resolve(l.manifest_digest)) << "the layout was not imported";
    expect_tmp_empty(home, "disk create LAYOUT");
    ::unlink(disk.c_str());
}

TEST_F(Redteam, TheImportersErrorsReachTheUserAsOneLine) {
    // A layer that is not what its digest says, through `run LAYOUT`: the
    // importer's own message, once, exit 125.
    auto l = make_layout(dir + "/layout", {{{"f", 'f', 0644, 0, 0, "x"}}});
    std::ofstream(l.layer_files[0], std::ios::app) << "tampered";
    Started run({"run", "--kernel", dir + "/no-such-kernel", l.dir, "--", "true"}, home, dir);
    expect_clean_error(run.wait(), "run LAYOUT with a corrupt layer", "but its descriptor says");
    Started disk({"disk", "create", l.dir, dir + "/disk.raw"}, home, dir);
    expect_clean_error(disk.wait(), "disk create LAYOUT with a corrupt layer");
    EXPECT_FALSE(stdfs::exists(dir + "/disk.raw"));
    expect_tmp_empty(home, "corrupt layer");

    // An importer that dies (here killed while it waits): said so, exit 125,
    // and the CLI does not go on.
    auto good = make_layout(dir + "/good", {{{"f", 'f', 0644, 0, 0, "good"}}});
    HeldStoreLock lock(home);
    Started killed({"run", "--kernel", dir + "/no-such-kernel", good.dir, "--", "true"}, home, dir);
    pid_t importer = wait_for_importer(killed, lock);
    ASSERT_GT(importer, 0);
    ASSERT_NE(importer, killed.pid()) << "the import runs in the CLI process itself";
    ASSERT_EQ(::kill(importer, SIGKILL), 0);
    auto r = killed.wait();
    expect_clean_error(r, "run LAYOUT whose importer was killed", "killed by signal 9");
    EXPECT_EQ(r.err.find("no-such-kernel"), std::string::npos) << "run went on without its image: " << r.err;
}
// An environment variable for the test's scope (ocivm and podman inherit it).
class ScopedEnv {
public:
    ScopedEnv(const char* name, const std::string& value) : name_(name) { ::setenv(name, value.c_str(), 1); }
    ~ScopedEnv() { ::unsetenv(name_); }
    ScopedEnv(const ScopedEnv&) = delete;
    ScopedEnv& operator=(const ScopedEnv&) = delete;

private:
    const char* name_;
};

TEST_F(Redteam, ContainersStorageParsesPodmansExportInAConfinedChild) {
    ASSERT_TRUE(have_program("podman")) << "podman is missing: apt-get install podman (scripts/install-deps.sh)";
    // A podman store of the test's own (vfs, below dir): the host's podman
    // images are neither read nor changed, and the image is made offline.
    std::string pm = dir + "/podman";
    make_dirs(pm);
    std::ofstream(pm + "/storage.conf") << "[storage]\ndriver = \"vfs\"\ngraphroot = \"" << pm << "/graph\"\nrunroot = \""
                                        << pm << "/run\"\n";
    std::ofstream(pm + "/containers.conf") << "[engine]\ntmp_dir = \"" << pm << "/libpod\"\nevents_logger = \"none\"\n";
    ScopedEnv storage("CONTAINERS_STORAGE_CONF", pm + "/storage.conf"), conf("CONTAINERS_CONF", pm + "/containers.conf");
    std::string tar = write_layer(pm + "/rootfs.tar", {{"f", 'f', 0644, 0, 0, "from podman"}}, false);
    std::string name = "localhost/ocivm-redteam-" + std::to_string(::getpid()) + ":v1";
    auto made = run_command({"podman", "import", "--quiet", tar, name});
    ASSERT_TRUE(made.ok()) << "podman import: " << made.why("podman");
    struct Rmi {
        std::string name;
        ~Rmi() { run_command({"podman", "rmi", "--force", name}); }
    } rmi{name};

    HeldStoreLock lock(home);
    Started cli({"image", "import", "containers-storage:" + name, "--name", "frompodman:1"}, home, dir);
    pid_t importer = wait_for_importer(cli, lock);
    expect_confined_importer(importer, cli.pid(), "containers-storage:", home);
    // podman's export is done and the importer holds it, under no name:
    // nothing in tmp/ (or anywhere) to be left behind.
    expect_tmp_empty(home, "podman's export while the importer waits");
    std::error_code ec;
    std::string archive = stdfs::read_symlink("/proc/" + std::to_string(importer) + "/fd/4", ec).string();
    EXPECT_NE(archive.find("(deleted)"), std::string::npos) << "the importer's fd 4: " << archive;
    lock.release();
    auto r = cli.wait();
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out.rfind("frompodman:1 sha256:", 0), 0u) << r.out;
    auto found = image::Store(home).resolve("frompodman:1");
    ASSERT_TRUE(found);
    EXPECT_EQ(slurp(found->rootfs + "/f"), "from podman");
    expect_tmp_empty(home, "containers-storage: import");

    // A name podman does not have: podman's words, one line, nothing left.
    auto bad = import("containers-storage:localhost/ocivm-redteam-none-" + std::to_string(::getpid()), "");
    expect_clean_error(bad, "containers-storage: of an unknown image", "podman image save");
    expect_tmp_empty(home, "a failed podman export");
}

// The disk writer of `disk create` (ext4: a child of the CLI, once the
// image is resolved) confines itself as the importer does: its own PID,
// network, IPC and mount namespaces, a root that shows only the tree it
// copies, /usr and OUTPUT's directory (the one writable), no_new_privs, a seccomp filter, and capabilities cut to
// reading what it copies (sys_admin only for a root file system directory,
// whose trusted.* xattrs it keeps; a stored image has none). The programs
// it runs inherit all of it. Seen while a mkfs.ext4 of the test's, first on
// PATH, waits: it also tries to write the canary, which TearDown checks.
void expect_confined_disk_writer(const std::string& dir, const std::string& home, const std::string& outside,
                                 const std::string& image, unsigned long long want_caps, const std::string& what) {
    std::string real_mkfs;
    for (const char* d : {"/usr/sbin", "/sbin", "/usr/bin", "/bin"})
        if (::access((std::string(d) + "/mkfs.ext4").c_str(), X_OK) == 0) {
            real_mkfs = std::string(d) + "/mkfs.ext4";
            break;
        }
    ASSERT_FALSE(real_mkfs.empty()) << "mkfs.ext4 is missing: apt-get install e2fsprogs";
    std::string bin = dir + "/bin", out = dir + "/out";
    make_dirs(bin);
    make_dirs(out);
    {
        std::ofstream sh(bin + "/mkfs.ext4");
        sh << "#!/bin/sh\n"
           << "{ true > '" << outside << "/victim'; } 2>/dev/null\n"  // never: the host is read-only here
           << ": > '" << out << "/mkfs-ready'\n"
           << "while [ ! -e '" << out << "/mkfs-go' ]; do sleep 0.05; done\n"
           << "exec '" << real_mkfs << "' \"$@\"\n";
    }
    ASSERT_EQ(::chmod((bin + "/mkfs.ext4").c_str(), 0755), 0);
    const char* old_path = std::getenv("PATH");
    std::string saved = old_path ? old_path : "";
    ::setenv("PATH", (bin + ":" + saved).c_str(), 1);
    Started cli({"disk", "create", image, out + "/disk.raw"}, home, dir);
    ::setenv("PATH", saved.c_str(), 1);
    while (!stdfs::exists(out + "/mkfs-ready")) {
        if (cli.exited()) {
            ADD_FAILURE() << what << ": ocivm ended before its mkfs.ext4 ran: " << cli.wait().err;
            return;
        }
        ::usleep(20000);
    }
    // The CLI is the writer's keeper, outside its PID namespace.
    pid_t writer = first_child(cli.pid());
    ASSERT_GT(writer, 0) << what << ": the CLI has no child (the writer)";
    EXPECT_EQ(proc_status(cli.pid())["CapEff"], "0000000000000000") << what << ": the keeper kept capabilities";
    expect_own_pid_namespace_and_root(writer, what);
    // Nothing it inherited leads out of its root: no directory fd.
    {
        std::error_code ec;
        for (auto& e : stdfs::directory_iterator("/proc/" + std::to_string(writer) + "/fd", ec)) {
            struct stat sb;
            if (::stat(e.path().c_str(), &sb) == 0 && S_ISDIR(sb.st_mode))
                ADD_FAILURE() << what << ": the writer holds a directory fd " << e.path().filename() << " -> "
                              << stdfs::read_symlink(e.path(), ec);
        }
    }
    auto st = proc_status(writer), self = proc_status(::getpid());
    char caps[32];
    std::snprintf(caps, sizeof caps, "%016llx", want_caps & std::stoull(self["CapEff"], nullptr, 16));
    EXPECT_EQ(st["CapEff"], caps) << what;
    EXPECT_EQ(st["CapBnd"], caps) << what << ": an exec could regain more";
    EXPECT_EQ(st["NoNewPrivs"], "1") << what;
    EXPECT_EQ(st["Seccomp"], "2") << what << ": no seccomp filter";
    EXPECT_NE(ns_of(writer, "net"), ns_of(::getpid(), "net")) << what << ": the writer has the host's network";
    EXPECT_NE(ns_of(writer, "ipc"), ns_of(::getpid(), "ipc")) << what;
    expect_tool_mounts(writer, out, what);
    // Its programs: the same filter and no_new_privs (the script is mkfs.ext4's shell).
    pid_t mkfs = first_child(writer);
    ASSERT_GT(mkfs, 0) << what << ": no child of the writer";
    auto ms = proc_status(mkfs);
    EXPECT_EQ(ms["Seccomp"], "2") << what << ": mkfs.ext4 runs without the filter";
    EXPECT_EQ(ms["NoNewPrivs"], "1") << what;
    EXPECT_EQ(ms["CapEff"], "0000000000000000") << what;
    std::ofstream(out + "/mkfs-go") << "";
    auto r = cli.wait();
    EXPECT_EQ(r.status, 0) << what << ": " << r.err;
    EXPECT_EQ(r.out.size(), 37u) << what << ": a PARTUUID and a newline: " << r.out;
    stdfs::remove_all(out);
}

TEST_F(Redteam, DiskCreateWritesInAConfinedWriter) {
    ASSERT_TRUE(have_program("sfdisk") && have_program("mkfs.ext4")) << "apt-get install fdisk e2fsprogs";
    auto l = make_layout(dir + "/layout", {{{"f", 'f', 0644, 0, 0, "on disk"}}});
    // dac_override, dac_read_search, fowner: 0xe; a stored image has no trusted.*
    expect_confined_disk_writer(dir, home, outside, l.dir, 0xeULL, "disk create LAYOUT");
    // a root file system directory of the user's: + sys_admin (trusted.* kept)
    make_dirs(dir + "/rootfs/etc");
    std::ofstream(dir + "/rootfs/etc/hostname") << "tree\n";
    expect_confined_disk_writer(dir, home, outside, dir + "/rootfs", 0x20000eULL, "disk create DIR");
}

}  // namespace

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    std::setlocale(LC_CTYPE, "C.UTF-8");
    for (int i = 1; i + 1 < argc; ++i)
        if (std::string(argv[i]) == "--ocivm") g_ocivm = argv[i + 1];
    if (g_ocivm.empty()) {
        std::fprintf(stderr, "usage: image_security_tests --ocivm PATH\n");
        return 2;
    }
    if (::geteuid() != 0) {
        std::fprintf(stderr, "image_security_tests: run as root (device nodes, owners, a store like root's)\n");
        return 1;
    }
    if (::access("/etc/shadow", R_OK) != 0) {
        std::fprintf(stderr, "image_security_tests: /etc/shadow is missing (install the passwd package)\n");
        return 1;
    }
    char tmpl[] = "/var/tmp/ocivm-imageredteam-XXXXXX";
    g_work = ::mkdtemp(tmpl);
    int rc = RUN_ALL_TESTS();
    if (!std::getenv("KEEP")) stdfs::remove_all(g_work);
    return rc;
}
