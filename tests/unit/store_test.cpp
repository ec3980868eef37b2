// image::Store::list, what `ocivm image ls` prints and bash completion
// offers: only names `image import --name` would take, whatever a damaged
// store (or another program's) holds in names.json.
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "image/store.h"
#include "unit/test_util.h"
#include "util/error.h"
#include "util/log.h"

using namespace ocivm;

namespace {

// The logger's lines while it lives; the previous logger back after.
class CaptureLog {
public:
    CaptureLog() : old_(spdlog::default_logger()) {
        auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
        auto l = std::make_shared<spdlog::logger>("capture", sink);
        l->set_level(spdlog::level::info);
        spdlog::set_default_logger(l);
    }
    ~CaptureLog() { spdlog::set_default_logger(old_); }
    std::string text() const { return out_.str(); }

private:
    std::ostringstream out_;
    std::shared_ptr<spdlog::logger> old_;
};

// A store with one image's manifest and config blobs and names.json as
// given; every name points at that image.
class StoreListTest : public ::testing::Test {
protected:
    void SetUp() override {
        home_ = test::make_temp_dir();
        ASSERT_EQ(::mkdir((home_ + "/blobs").c_str(), 0700), 0);
        ASSERT_EQ(::mkdir((home_ + "/blobs/sha256").c_str(), 0700), 0);
        std::ofstream(home_ + "/blobs/sha256/" + kConfigHex) << R"({"rootfs": {"type": "layers", "diff_ids": []}})";
        std::ofstream(home_ + "/blobs/sha256/" + kManifestHex)
            << R"({"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.image.config.v1+json", )"
            << R"("digest": "sha256:)" << kConfigHex << R"(", "size": 46}, "layers": []})";
    }
    void TearDown() override { test::remove_tree(home_); }

    // names.json from (JSON-escaped name, JSON-escaped created) pairs.
    void names(const std::vector<std::pair<std::string, std::string>>& entries) {
        std::string j = R"({"images": {)";
        for (size_t i = 0; i < entries.size(); ++i) {
            if (i) j += ", ";
            j += "\"" + entries[i].first + R"(": {"manifest": "sha256:)" + kManifestHex + R"(", "created": ")" +
                 entries[i].second + "\"}";
        }
        std::ofstream(home_ + "/names.json") << j << "}}\n";
    }

    static inline const std::string kManifestHex = std::string(64, 'a');
    static inline const std::string kConfigHex = std::string(64, 'b');
    std::string home_;
};

}  // namespace

TEST_F(StoreListTest, ValidNamesAreListed) {
    names({{"debian:12", "2024-05-01T10:00:00Z"}, {"registry.example:5000/team/app:v1.2_rc-3", "2024-05-02T10:00:00Z"}});
    auto images = image::Store(home_).list();
    ASSERT_EQ(images.size(), 2u);
    EXPECT_EQ(images[0].name, "debian:12");
    EXPECT_EQ(images[0].manifest_digest, "sha256:" + kManifestHex);
    EXPECT_EQ(images[0].created, "2024-05-01T10:00:00Z");
    EXPECT_EQ(images[1].name, "registry.example:5000/team/app:v1.2_rc-3");
}

// Each of these used to come back as it was, and `image ls` printed it
// raw: a terminal escape that retitles the window or clears the screen, a
// line of its own, words and substitutions bash completion would offer.
TEST_F(StoreListTest, NamesImportWouldRefuseAreLeftOutWithAWarning) {
    names({{"good:latest", "2024-05-01T10:00:00Z"},
           {"evil\\u001b]0;owned\\u0007:latest", "2024-05-01T10:00:00Z"},
           {"two\\nlines:latest", "2024-05-01T10:00:00Z"},
           {"with blank:latest", "2024-05-01T10:00:00Z"},
           {"$(touch x):latest", "2024-05-01T10:00:00Z"},
           {"a;b|c&d:latest", "2024-05-01T10:00:00Z"},
           {"-leading-dash:latest", "2024-05-01T10:00:00Z"},
           {"", "2024-05-01T10:00:00Z"}});
    CaptureLog log;
    auto images = image::Store(home_).list();
    ASSERT_EQ(images.size(), 1u);
    EXPECT_EQ(images[0].name, "good:latest");
    std::string warned = log.text();
    EXPECT_NE(warned.find("'evil\\x1b]0;owned\\x07:latest', which is not a valid image name"), std::string::npos)
        << warned;
    EXPECT_NE(warned.find("'two\\x0alines:latest'"), std::string::npos) << warned;
    EXPECT_NE(warned.find("'with blank:latest'"), std::string::npos) << warned;
    EXPECT_NE(warned.find("'$(touch x):latest'"), std::string::npos) << warned;
    EXPECT_EQ(warned.find('\x1b'), std::string::npos) << "the warning carried the escape itself";
    EXPECT_EQ(warned.find("two\nlines"), std::string::npos) << "the warning carried the newline itself";
}

// The import date is printed beside the name: control characters in it
// come back escaped.
TEST_F(StoreListTest, TheImportDateComesBackPrintable) {
    names({{"good:latest", "2024-05-01\\u001b[2J\\r"}});
    auto images = image::Store(home_).list();
    ASSERT_EQ(images.size(), 1u);
    EXPECT_EQ(images[0].created, "2024-05-01\\x1b[2J\\x0d");
}

// The parts of an import SOURCE (what the confined importer's root must
// show): oci:DIR:TAG is a tag unless the whole of it is a directory.
TEST(SplitSource, TransportPathAndTag) {
    std::string d = test::make_temp_dir();
    auto a = image::split_source("oci:" + d + "/layout:v1");
    EXPECT_EQ(a.transport, "oci");
    EXPECT_EQ(a.path, d + "/layout");
    EXPECT_EQ(a.tag, "v1");
    EXPECT_EQ(a.str(), "oci:" + d + "/layout:v1");
    ASSERT_EQ(::mkdir((d + "/a:b").c_str(), 0755), 0);
    auto b = image::split_source("oci:" + d + "/a:b");
    EXPECT_EQ(b.path, d + "/a:b");
    EXPECT_EQ(b.tag, "");
    auto c = image::split_source("docker-archive:/x/y.tar");
    EXPECT_EQ(c.transport, "docker-archive");
    EXPECT_EQ(c.path, "/x/y.tar");
    EXPECT_EQ(c.str(), "docker-archive:/x/y.tar");
    auto p = image::split_source("containers-storage:localhost/app:1");
    EXPECT_EQ(p.path, "") << "podman's image comes as an fd, not a host path";
    EXPECT_EQ(p.tag, "localhost/app:1");
    EXPECT_EQ(p.str(), "containers-storage:localhost/app:1");
    try {
        image::split_source("/no/transport");
        ADD_FAILURE() << "a source without a transport was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("names no transport"), std::string::npos) << e.what();
    }
    test::remove_tree(d);
}
