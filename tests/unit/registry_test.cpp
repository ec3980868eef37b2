// The registry client's parsers: references, registries.conf, WWW-Authenticate,
// auth files. Each is fed what a user or a hostile registry could write.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "util/bounded_json.h"
#include "util/printable.h"
#include "registry/auth.h"
#include "registry/client.h"
#include "registry/reference.h"
#include "registry/registries_conf.h"
#include "unit/test_util.h"
#include "util/error.h"

using namespace ocivm::registry;

namespace {

const std::string kDigest = "sha256:" + std::string(64, 'a');

TEST(Reference, DockerHubShortNames) {
    Reference r = parse_reference("alpine");
    EXPECT_FALSE(r.qualified());
    EXPECT_EQ(r.repository, "alpine");
    EXPECT_EQ(r.tag, "latest");
    Reference q = with_registry(r, "docker.io");
    EXPECT_EQ(q.str(), "docker.io/library/alpine:latest");
    EXPECT_EQ(parse_reference("docker.io/alpine:3.19").str(), "docker.io/library/alpine:3.19");
    EXPECT_EQ(parse_reference("index.docker.io/library/alpine").str(), "docker.io/library/alpine:latest");
    EXPECT_EQ(with_registry(parse_reference("bitnami/redis"), "docker.io").str(), "docker.io/bitnami/redis:latest");
}

TEST(Reference, RegistriesPortsTagsDigests) {
    Reference r = parse_reference("127.0.0.1:5000/test/busy:v1");
    EXPECT_EQ(r.registry, "127.0.0.1:5000");
    EXPECT_EQ(r.repository, "test/busy");
    EXPECT_EQ(r.tag, "v1");
    EXPECT_EQ(r.manifest_ref(), "v1");
    Reference d = parse_reference("localhost/x@" + kDigest);
    EXPECT_EQ(d.registry, "localhost");
    EXPECT_EQ(d.digest, kDigest);
    EXPECT_EQ(d.manifest_ref(), kDigest);
    EXPECT_EQ(d.str(), "localhost/x@" + kDigest);
    Reference both = parse_reference("quay.io/a/b:t@" + kDigest);
    EXPECT_EQ(both.tag, "t");
    EXPECT_EQ(both.digest, kDigest);
    // A port without a registry-looking host is a tag: "name:5000".
    Reference t = parse_reference("name:5000");
    EXPECT_FALSE(t.qualified());
    EXPECT_EQ(t.tag, "5000");
}

TEST(Reference, RefusesWhatCouldBecomeAPathOrTerminalOutput) {
    for (const std::string& bad : std::vector<std::string>{"", "Alpine", "a/../b", "a//b", "a/b:", "a@sha256:abc", "a@md5:" + std::string(32, '0'),
                            "a@sha256:" + std::string(64, 'A'), "a b", std::string("a\x1b[2J"), "a/.b", "-a", "a:-t",
                            std::string(300, 'a'), "example.com/", "exa mple.com/a", "a:" + std::string(129, 't')}) {
        EXPECT_THROW(parse_reference(bad), ocivm::Error) << bad;
    }
    EXPECT_NO_THROW(parse_reference("a__b/c-d.e_f"));
}

TEST(RegistriesConf, SearchRegistriesMirrorsAndBlocked) {
    RegistriesConf c;
    c.merge(R"(# comment
unqualified-search-registries = ["first.example", 'second.example:5000']  # trailing
short-name-mode = "enforcing"

[[registry]]
prefix = "example.com/foo"
location = "internal.example.com/bar"
insecure = true

[[registry.mirror]]
location = "mirror.example.com/m"

[[registry]]
location = "blocked.example"
blocked = true

[[registry]]
prefix = "*.wild.example"
insecure = true

[aliases]
"busy" = "docker.io/library/busybox"
)",
            "test.conf");
    ASSERT_EQ(c.search.size(), 2u);
    EXPECT_EQ(c.search[1], "second.example:5000");
    auto eps = endpoints_for(c, parse_reference("example.com/foo/img:1"));
    ASSERT_EQ(eps.size(), 2u);
    EXPECT_EQ(eps[0].host, "mirror.example.com");
    EXPECT_EQ(eps[0].repository, "m/img");
    EXPECT_TRUE(eps[0].mirror);
    EXPECT_EQ(eps[1].host, "internal.example.com");
    EXPECT_EQ(eps[1].repository, "bar/img");
    EXPECT_TRUE(eps[1].insecure);
    // "example.com/foobar" is not below the prefix "example.com/foo".
    auto other = endpoints_for(c, parse_reference("example.com/foobar/x"));
    ASSERT_EQ(other.size(), 1u);
    EXPECT_EQ(other[0].host, "example.com");
    EXPECT_THROW(endpoints_for(c, parse_reference("blocked.example/a")), ocivm::Error);
    auto wild = endpoints_for(c, parse_reference("reg.wild.example/a/b"));
    ASSERT_EQ(wild.size(), 1u);
    EXPECT_TRUE(wild[0].insecure);
    EXPECT_EQ(wild[0].host, "reg.wild.example");
    auto cands = candidates_for(c, parse_reference("img:2"));
    ASSERT_EQ(cands.size(), 2u);
    EXPECT_EQ(cands[0].str(), "first.example/img:2");
    EXPECT_EQ(cands[1].str(), "second.example:5000/img:2");
    auto alias = candidates_for(c, parse_reference("busy"));
    ASSERT_EQ(alias.size(), 1u);
    EXPECT_EQ(alias[0].str(), "docker.io/library/busybox:latest");
}

TEST(RegistriesConf, LaterFilesOverride) {
    RegistriesConf c;
    c.merge("unqualified-search-registries = [\"a.example\"]\n[[registry]]\nlocation = \"x.example\"\ninsecure = false\n", "1");
    c.merge("unqualified-search-registries = [\n  \"b.example\",\n]\n[[registry]]\nlocation = \"x.example\"\ninsecure = true\n", "2");
    ASSERT_EQ(c.search.size(), 1u);
    EXPECT_EQ(c.search[0], "b.example");
    ASSERT_EQ(c.registries.size(), 1u);
    EXPECT_TRUE(c.registries[0].insecure);
    // No file says anything: docker.io, as docker does.
    RegistriesConf empty;
    auto cands = candidates_for(empty, parse_reference("alpine"));
    ASSERT_EQ(cands.size(), 1u);
    EXPECT_EQ(cands[0].str(), "docker.io/library/alpine:latest");
    // An explicitly empty list: short names cannot be resolved.
    RegistriesConf none;
    none.merge("unqualified-search-registries = []\n", "3");
    EXPECT_THROW(candidates_for(none, parse_reference("alpine")), ocivm::Error);
}

TEST(RegistriesConf, MalformedFilesFailWithTheLine) {
    for (const char* bad : {"unqualified-search-registries = [\"a\"", "[[registry]\nlocation=\"a\"", "key value\n",
                            "[[registry.mirror]]\nlocation = \"m\"\n", "[[registry]]\ninsecure = \"yes\"\n",
                            "x = \"unterminated\n", "x = \"bad \\q escape\"\n", "[[registry]]\ninsecure = true\n",
                            "unqualified-search-registries = [1, 2]\n"}) {
        RegistriesConf c;
        try {
            c.merge(bad, "bad.conf");
            ADD_FAILURE() << "accepted: " << bad;
        } catch (const ocivm::Error& e) {
            EXPECT_NE(std::string(e.what()).find("bad.conf"), std::string::npos) << e.what();
        }
    }
    RegistriesConf big;
    EXPECT_THROW(big.merge(std::string(2 << 20, '#'), "big.conf"), ocivm::Error);
}

TEST(Challenge, BearerAndBasic) {
    auto c = parse_challenge(R"(Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull")");
    ASSERT_TRUE(c);
    EXPECT_EQ(c->scheme, "bearer");
    EXPECT_EQ(c->params["realm"], "https://auth.example/token");
    EXPECT_EQ(c->params["service"], "registry.example");
    EXPECT_EQ(c->params["scope"], "repository:a/b:pull");
    auto b = parse_challenge("Basic realm=\"Registry Realm\"");
    ASSERT_TRUE(b);
    EXPECT_EQ(b->scheme, "basic");
    EXPECT_EQ(b->params["realm"], "Registry Realm");
    auto q = parse_challenge(R"(bearer REALM="a\"b", error=insufficient_scope)");
    ASSERT_TRUE(q);
    EXPECT_EQ(q->params["realm"], "a\"b");
    EXPECT_EQ(q->params["error"], "insufficient_scope");
}

TEST(Challenge, HostileHeaders) {
    EXPECT_FALSE(parse_challenge(""));
    EXPECT_FALSE(parse_challenge("Bearer realm=\"unterminated"));
    EXPECT_FALSE(parse_challenge("Bearer realm=\"" + std::string(10000, 'a') + "\""));
    std::string many = "Bearer ";
    for (int i = 0; i < 40; ++i) many += "k" + std::to_string(i) + "=v,";
    EXPECT_FALSE(parse_challenge(many));
    EXPECT_FALSE(parse_challenge("Bearer =x"));
}

TEST(Auth, Base64RoundTrip) {
    for (const std::string& s : std::vector<std::string>{"", "a", "ab", "abc", "user:pa:ss", std::string("\0\xff\x10", 3)})
        EXPECT_EQ(base64_decode(base64_encode(s)), s);
    EXPECT_EQ(base64_encode("user:pass"), "dXNlcjpwYXNz");
    EXPECT_THROW(base64_decode("a*b"), ocivm::Error);
}

TEST(Auth, FilesMostSpecificKeyFirst) {
    // Under the test's own TMPDIR, and removed even when an assertion ends
    // the test early.
    struct Dir {
        std::string path = ocivm::test::make_temp_dir();
        ~Dir() { ocivm::test::remove_tree(path); }
    } tmp;
    const std::string& dir = tmp.path;
    std::string a = std::string(dir) + "/auth.json", d = std::string(dir) + "/config.json";
    std::ofstream(a) << R"({"auths":{"reg.example:5000":{"auth":")" << base64_encode("host:h") << R"("},
        "reg.example:5000/team/app":{"auth":")" << base64_encode("repo:r") << R"("}}})";
    std::ofstream(d) << R"({"auths":{"https://index.docker.io/v1/":{"auth":")" << base64_encode("hub:p:w") << R"("}}})";
    auto c = lookup_credentials({a, d}, "reg.example:5000", "team/app", false);
    ASSERT_TRUE(c);
    EXPECT_EQ(c->user, "repo");
    c = lookup_credentials({a, d}, "reg.example:5000", "team/other", false);
    ASSERT_TRUE(c);
    EXPECT_EQ(c->user, "host");
    c = lookup_credentials({std::string(dir) + "/missing.json", a, d}, "docker.io", "library/alpine", false);
    ASSERT_TRUE(c);
    EXPECT_EQ(c->user, "hub");
    EXPECT_EQ(c->password, "p:w");
    EXPECT_FALSE(lookup_credentials({a}, "other.example", "x", false));
    EXPECT_THROW(lookup_credentials({std::string(dir) + "/missing.json"}, "x", "y", true), ocivm::Error);
    std::ofstream(a) << "{not json";
    EXPECT_THROW(lookup_credentials({a}, "x", "y", false), ocivm::Error);
}

TEST(Auth, Creds) {
    auto c = parse_creds("u:p:q");
    EXPECT_EQ(c.user, "u");
    EXPECT_EQ(c.password, "p:q");
    EXPECT_THROW(parse_creds("nocolon"), ocivm::Error);
    EXPECT_THROW(parse_creds(":p"), ocivm::Error);
}

TEST(Platform, Parse) {
    auto p = parse_platform("linux/arm64/v8");
    EXPECT_EQ(p.os, "linux");
    EXPECT_EQ(p.architecture, "arm64");
    EXPECT_EQ(p.variant, "v8");
    for (const char* bad : {"linux", "linux/", "linux/amd64/v1/x", "Linux/AMD64", "linux/../x"})
        EXPECT_THROW(parse_platform(bad), ocivm::Error) << bad;
}

}  // namespace

#include "cli/args.h"
#include "cli/pull.h"

namespace {

// The hook `ocivm run` and `ocivm disk create` call before resolving IMAGE:
// what must never reach the network.
TEST(PullForRun, LocalThingsAreNotPulled) {
    ocivm::cli::PullRequest req;
    EXPECT_THROW(ocivm::cli::pull_for_run("alpine", "sometimes", req), ocivm::cli::UsageError);
    // A directory (a root file system or a layout) and a transport source stay as they are.
    EXPECT_EQ(ocivm::cli::pull_for_run("/", "always", req), "/");
    EXPECT_EQ(ocivm::cli::pull_for_run("oci:/nonexistent/layout", "always", req), "oci:/nonexistent/layout");
    // never: whatever it is, resolve_image judges it.
    EXPECT_EQ(ocivm::cli::pull_for_run("docker.io/library/alpine", "never", req), "docker.io/library/alpine");
    // Not a reference (a digest prefix of a stored image, say): as it is.
    EXPECT_EQ(ocivm::cli::pull_for_run("Not A Reference", "missing", req), "Not A Reference");
}

}  // namespace

// nlohmann's message quotes the bytes it stopped at; an image's or a
// registry's escape sequences must not reach the terminal through it.
TEST(BoundedJson, ParseErrorsCarryNoRawBytes) {
    const std::string hostile = std::string("{\"a\": \x7f\xff\x1b]0;owned\x07") + "}";
    try {
        (void)ocivm::parse_bounded_json(hostile, "the image config");
        FAIL() << "invalid JSON parsed";
    } catch (const ocivm::Error& e) {
        std::string m = e.what();
        EXPECT_NE(m.find("the image config is not valid JSON"), std::string::npos) << m;
        for (unsigned char c : m) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << "raw byte " << int(c) << " in: " << m;
    }
}

// Hosts from registries.conf become URLs and lines on the terminal: a
// location with escape sequences or URL syntax (@ # ?) is refused when the
// file is read, and shown escaped.
TEST(RegistriesConf, LocationsMustBeHostsAndPaths) {
    using ocivm::registry::RegistriesConf;
    const std::vector<std::string> bad = {
        "[[registry]]\nlocation = \"evil\x1b]0;PWNED\x07.example.com\"\n",
        "[[registry]]\nprefix = \"example.com\"\nlocation = \"user:pw@evil.example.com\"\n",
        "[[registry]]\nlocation = \"example.com/a?b\"\n",
        "[[registry]]\nlocation = \"example.com\"\n[[registry.mirror]]\nlocation = \"mirror.example.com#x\"\n",
        "unqualified-search-registries = [\"docker.io\", \"\x1b[2Jevil.io\"]\n",
        "unqualified-search-registries = [\"docker.io/library\"]\n",
    };
    for (const auto& text : bad) {
        RegistriesConf c;
        try {
            c.merge(text, "test.conf");
            ADD_FAILURE() << "accepted: " << ocivm::printable(text);
        } catch (const ocivm::Error& e) {
            std::string m = e.what();
            for (unsigned char ch : m) EXPECT_TRUE(ch >= 0x20 && ch < 0x7f) << "raw byte in: " << m;
            EXPECT_NE(m.find("fix that line"), std::string::npos) << m;
        }
    }
    RegistriesConf ok;
    ok.merge("unqualified-search-registries = [\"docker.io\", \"localhost:5000\"]\n"
             "[[registry]]\nprefix = \"*.example.com\"\nlocation = \"mirror.example.com:443/team/sub-path\"\n",
             "test.conf");
    EXPECT_EQ(ok.search.size(), 2u);
}
