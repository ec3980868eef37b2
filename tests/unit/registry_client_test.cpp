// The registry client against a scripted hostile registry (registry_server.h):
// what a registry can do to a pull besides serving it honestly. Each case
// says which review finding it guards (issue 13: "No pulled byte is used
// before its digest is verified; every failure above leaves the store as
// it was"; a registry is hostile input).
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <optional>
#include <stdexcept>
#include <thread>

#include "registry/client.h"
#include "registry/http.h"
#include "unit/registry_server.h"
#include "unit/test_util.h"
#include "util/error.h"
#include "util/printable.h"

using namespace ocivm::registry;
using ocivm::regtest::Conn;
using ocivm::regtest::HttpRequest;
using ocivm::regtest::RegistryServer;
using ocivm::regtest::TestImage;

namespace {

// A staging root of its own, removed afterwards.
struct Staging {
    std::string dir = ocivm::test::make_temp_dir();
    ~Staging() { ocivm::test::remove_tree(dir); }
    std::string partial(const std::string& digest) const { return dir + "/partial/" + digest.substr(7); }
    void put_partial(const std::string& digest, const std::string& bytes) const {
        std::filesystem::create_directories(dir + "/partial");
        std::ofstream(partial(digest), std::ios::binary) << bytes;
    }
};

bool exists(const std::string& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0;
}

struct PullSetup {
    bool insecure = false;  // in registries.conf (else HTTPS, --tls-verify=false)
    unsigned jobs = 4;
    std::optional<Credentials> creds;
    std::function<std::string(const std::string&)> stored_blob;
};
PullSetup insecure() {
    PullSetup s;
    s.insecure = true;
    return s;
}

StagedImage pull(const RegistryServer& srv, const Staging& st, const PullSetup& s = {}, const std::string& repo = "test/img") {
    http_global_init();
    RegistriesConf conf;
    if (s.insecure) conf.merge("[[registry]]\nlocation = \"" + srv.host() + "\"\ninsecure = true\n", "test.conf");
    PullOptions opts;
    opts.tls_verify = s.insecure;  // an insecure registry is never verified; a secure one here has a self-signed certificate
    opts.jobs = s.jobs;
    opts.creds = s.creds;
    opts.stored_blob = s.stored_blob;
    return fetch_image(parse_reference(srv.host() + "/" + repo + ":1"), conf, opts, st.dir, {});
}

// The message of the Error fetch throws ("" when it succeeds).
std::string pull_error(const RegistryServer& srv, const Staging& st, const PullSetup& s = {}) {
    try {
        pull(srv, st, s);
    } catch (const ocivm::Error& e) {
        return e.what();
    }
    return "";
}

bool printable_ascii(const std::string& s) {
    for (unsigned char c : s)
        if (c < 0x20 || c >= 0x7f) return false;
    return true;
}

std::string bytes_of(size_t n, char seed) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i * 7 + i / 251);
    return s;
}

// --- 1: the scheme of an insecure registry is decided once, never downgraded

// The first request whose path holds `part` gets a connection reset;
// `seen` counts every such request.
void reset_first_fetch_of(RegistryServer& srv, const std::string& part, std::atomic<int>& seen) {
    srv.set_hook([part, &seen](const HttpRequest& r, Conn& c) {
        if (r.path.find(part) == std::string::npos || seen++ != 0) return false;
        c.reset();
        return true;
    });
}

// An insecure registry that speaks HTTPS: one connection reset on a blob
// (attempt 0) must be retried over HTTPS, not move the pull to plain HTTP.
TEST(RegistryClient, InsecureHttpsRegistryStaysOnHttpsAfterAReset) {
    TestImage img = TestImage::make({bytes_of(5000, 'a'), bytes_of(7000, 'b')});
    std::atomic<int> resets{0};
    RegistryServer srv(true);
    srv.serve(img);
    reset_first_fetch_of(srv, "/blobs/" + img.layer_digests[0], resets);
    Staging st;
    StagedImage out = pull(srv, st, insecure());
    EXPECT_EQ(out.manifest_digest, img.manifest_digest);
    EXPECT_EQ(resets.load(), 2);  // the reset one and its retry
    EXPECT_EQ(srv.failed_handshakes(), 0) << "a request went out in plain HTTP";
    for (auto& r : srv.requests()) EXPECT_TRUE(r.tls) << r.path;
}

// A reset of the very first request (the ping) must not make plain HTTP win
// either: the HTTPS port answers plain HTTP with 400, not a registry's answer.
TEST(RegistryClient, InsecureHttpsRegistryResetAtFirstRequest) {
    TestImage img = TestImage::make({bytes_of(3000, 'c')});
    std::atomic<int> seen{0};
    RegistryServer srv(true);
    srv.serve(img);
    srv.set_hook([&](const HttpRequest&, Conn& c) {
        if (seen++ == 0) {
            c.reset();
            return true;
        }
        return false;
    });
    Staging st;
    StagedImage out = pull(srv, st, insecure());
    EXPECT_EQ(out.manifest_digest, img.manifest_digest);
    auto reqs = srv.requests();
    ASSERT_FALSE(reqs.empty());
    EXPECT_TRUE(reqs.back().tls);
    for (auto& r : reqs) EXPECT_TRUE(r.tls || r.path == "/v2/") << r.path << " went out in plain HTTP";
}

// An insecure registry that speaks only plain HTTP still works (the ping
// finds it), and a reset there is retried there.
TEST(RegistryClient, InsecurePlainHttpRegistry) {
    TestImage img = TestImage::make({bytes_of(4000, 'd')});
    std::atomic<int> resets{0};
    RegistryServer srv(false);
    srv.serve(img);
    reset_first_fetch_of(srv, "/blobs/" + img.layer_digests[0], resets);
    Staging st;
    StagedImage out = pull(srv, st, insecure());
    EXPECT_EQ(out.manifest_digest, img.manifest_digest);
    EXPECT_EQ(resets.load(), 2);
}

// --- 2: per-transfer state. One blob found too long must not make another
// blob's interrupted transfer read as "too long" too: that one is kept for
// the next pull, as any transfer that broke off.
TEST(RegistryClient, OverlongBlobDoesNotPoisonOtherTransfers) {
    const std::string big = bytes_of(1 << 20, 'e'), small = bytes_of(1000, 'f');
    TestImage img = TestImage::make({big, small});
    const std::string bd = img.layer_digests[0], sd = img.layer_digests[1];
    std::atomic<bool> small_sent{false};
    RegistryServer srv(true);
    srv.serve(img);
    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path.find("/blobs/" + sd) != std::string::npos) {
            // Only once the big blob's transfer is under way.
            srv.wait_for([&] { return srv.count("/blobs/" + bd) > 0; });
            c.respond(200, small + "and more than the manifest said");
            small_sent = true;
            return true;
        }
        if (r.path.find("/blobs/" + bd) != std::string::npos) {
            // Half the big blob, then a byte at a time until the client,
            // cancelled by the other blob's failure, hangs up.
            c.send("HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(big.size()) + "\r\n\r\n" + big.substr(0, big.size() / 2));
            srv.wait_for([&] { return small_sent.load(); });
            for (size_t k = big.size() / 2; k + 1 < big.size() && c.send(big.substr(k, 1)); ++k)
                std::this_thread::sleep_for(std::chrono::milliseconds(20));
            c.close();
            return true;
        }
        return false;
    });
    Staging st;
    PullSetup two_jobs;
    two_jobs.jobs = 2;
    std::string err = pull_error(srv, st, two_jobs);
    EXPECT_NE(err.find("blob " + sd), std::string::npos) << err;
    EXPECT_NE(err.find("is longer than the 1000 bytes its manifest says"), std::string::npos) << err;
    EXPECT_TRUE(exists(st.partial(bd))) << "the big blob's transfer broke off and should be kept for the next pull";
    EXPECT_FALSE(exists(st.partial(sd))) << "an over-long blob must be discarded";
}

// --- 3: redirects

// An HTTPS registry that redirects a blob to plain HTTP: refused.
TEST(RegistryClient, HttpsRedirectToPlainHttpIsRefused) {
    TestImage img = TestImage::make({bytes_of(2000, 'g')});
    const std::string blob = "/blobs/" + img.layer_digests[0];
    RegistryServer srv(true), plain(false);
    srv.serve(img);
    plain.serve(img);
    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path.find(blob) == std::string::npos) return false;
        return c.respond(307, "", {{"Location", "http://" + plain.host() + r.path}});
    });
    Staging st;
    std::string err = pull_error(srv, st);
    EXPECT_NE(err.find("redirected an HTTPS request to http://" + plain.host()), std::string::npos) << err;
    EXPECT_NE(err.find("insecure in registries.conf"), std::string::npos) << err;
    EXPECT_EQ(plain.count(blob), 0) << "the redirect to plain HTTP was followed";
}

// ... unless the registry is insecure in registries.conf (it may speak plain HTTP).
TEST(RegistryClient, InsecureRegistryMayRedirectToPlainHttp) {
    TestImage img = TestImage::make({bytes_of(2000, 'h')});
    const std::string blob = "/blobs/" + img.layer_digests[0];
    RegistryServer srv(true), plain(false);
    srv.serve(img);
    plain.serve(img);
    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path.find(blob) == std::string::npos) return false;
        return c.respond(307, "", {{"Location", "http://" + plain.host() + r.path}});
    });
    Staging st;
    EXPECT_EQ(pull(srv, st, insecure()).manifest_digest, img.manifest_digest);
    EXPECT_EQ(plain.count(blob), 1);
}

// The Authorization header ocivm adds stays with the registry: a redirect
// to another host (here another port, as a blob CDN) gets no credentials.
// libcurl does this on its own (CURLOPT_UNRESTRICTED_AUTH off); this case
// keeps it so.
TEST(RegistryClient, CredentialsStayWithTheRegistryOnRedirect) {
    TestImage img = TestImage::make({bytes_of(2000, 'i')});
    const std::string blob = "/blobs/" + img.layer_digests[0];
    RegistryServer srv(true), cdn(true);
    srv.serve(img);
    cdn.serve(img);
    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path == "/v2/") return false;
        if (r.header("authorization").empty()) return c.respond(401, "{}", {{"WWW-Authenticate", "Basic realm=\"test\""}});
        if (r.path.find(blob) != std::string::npos) return c.respond(307, "", {{"Location", "https://" + cdn.host() + r.path}});
        return false;
    });
    Staging st;
    PullSetup with_creds;
    with_creds.creds = Credentials{"user", "secret", "--creds"};
    EXPECT_EQ(pull(srv, st, with_creds).manifest_digest, img.manifest_digest);
    ASSERT_EQ(cdn.count(blob), 1);
    for (auto& r : cdn.requests()) EXPECT_EQ(r.header("authorization"), "") << "credentials sent to the redirect target";
    bool sent = false;
    for (auto& r : srv.requests()) sent |= !r.header("authorization").empty();
    EXPECT_TRUE(sent);
}

// A redirect target's challenge gets no credentials: the registry sends the
// manifest request to another host, which answers 401 naming a token
// service of its own. Sending --creds there would hand them to whoever the
// registry (or its attacker) redirected to.
TEST(RegistryClient, RedirectTargetsChallengeGetsNoCredentials) {
    TestImage img = TestImage::make({bytes_of(500, 'R')});
    RegistryServer srv(true), other(true);
    srv.serve(img);
    other.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path.rfind("/token", 0) == 0) return c.respond(200, R"({"token":"stolen"})");
        return c.respond(401, "{}", {{"WWW-Authenticate", "Bearer realm=\"https://" + other.host() + "/token\",service=\"x\""}});
    });
    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path.find("/manifests/") == std::string::npos) return false;
        return c.respond(307, "", {{"Location", "https://" + other.host() + r.path}});
    });
    Staging st;
    PullSetup with_creds;
    with_creds.creds = Credentials{"user", "secret", "--creds"};
    std::string err = pull_error(srv, st, with_creds);
    EXPECT_NE(err.find(other.host() + ", where " + srv.host() + " redirected, asks for credentials"), std::string::npos) << err;
    EXPECT_NE(err.find("only to the registry and its token service"), std::string::npos) << err;
    EXPECT_EQ(other.count("/token"), 0) << "the redirect target's token service was asked";
    for (auto& r : other.requests()) EXPECT_EQ(r.header("authorization"), "") << r.path << " got credentials";
}

// ... while a token service on another host that the registry itself names
// still gets them (as with Docker Hub's auth.docker.io).
TEST(RegistryClient, RegistrysOwnChallengeMayNameATokenServiceElsewhere) {
    TestImage img = TestImage::make({bytes_of(500, 'T')});
    const std::string basic = "Basic dXNlcjpzZWNyZXQ=";  // user:secret
    RegistryServer tok(true), srv(true);
    srv.serve(img);
    tok.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.header("authorization") != basic) return c.respond(401, "{}");
        return c.respond(200, R"({"token":"good"})");
    });
    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path == "/v2/" || r.header("authorization") == "Bearer good") return false;
        return c.respond(401, "{}", {{"WWW-Authenticate", "Bearer realm=\"https://" + tok.host() + "/token\",service=\"reg\""}});
    });
    Staging st;
    PullSetup with_creds;
    with_creds.creds = Credentials{"user", "secret", "--creds"};
    EXPECT_EQ(pull(srv, st, with_creds).manifest_digest, img.manifest_digest);
    EXPECT_GE(tok.count("/token"), 1);
}

// --- 4: what the registry writes reaches the terminal only sanitised

TEST(Printable, EscapesControlBytesAndCaps) {
    EXPECT_EQ(ocivm::printable("linux/amd64"), "linux/amd64");
    EXPECT_EQ(ocivm::printable("a\x1b[2Jb\x07\n"), "a\\x1b[2Jb\\x07\\x0a");
    EXPECT_EQ(ocivm::printable("back\\slash"), "back\\x5cslash");  // an escape in the output is always ours
    EXPECT_EQ(ocivm::printable(std::string("\x7f\x80\xff\0", 4)), "\\x7f\\x80\\xff\\x00");
    std::string cut = ocivm::printable(std::string(1000, 'x'));
    EXPECT_EQ(cut, std::string(ocivm::kPrintableMax, 'x') + "...");
    EXPECT_EQ(ocivm::printable(std::string(50, '\x1b'), 10).size(), 12u + 3u);  // whole escapes, then the mark
}

TEST(RegistryClient, ConfigPlatformIsSanitised) {
    TestImage img = TestImage::make({bytes_of(100, 'j')}, R"(,"variant":"v8\u001b]0;owned\u0007\u001b[2J")");
    RegistryServer srv(true);
    srv.serve(img);
    Staging st;
    StagedImage out = pull(srv, st);
    EXPECT_TRUE(printable_ascii(out.platform)) << out.platform;
    EXPECT_NE(out.platform.find("linux/amd64/v8\\x1b]0;owned"), std::string::npos) << out.platform;
}

TEST(RegistryClient, IndexPlatformInErrorsIsSanitised) {
    const std::string inner = R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]})";
    const std::string inner_digest = ocivm::regtest::sha256_digest(inner);
    const std::string index =
        R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":")" +
        inner_digest + R"(","size":)" + std::to_string(inner.size()) +
        R"(,"platform":{"os":"linux","architecture":"amd64","variant":"\u001b[31mred\u001b]8;;http://evil/\u0007"}}]})";
    RegistryServer srv(true);
    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path.find("/manifests/" + inner_digest) != std::string::npos) return c.respond(200, inner);
        if (r.path.find("/manifests/") != std::string::npos) return c.respond(200, index);
        return false;
    });
    Staging st;
    std::string err = pull_error(srv, st);
    EXPECT_NE(err.find("points at another index"), std::string::npos) << err;
    EXPECT_TRUE(printable_ascii(err)) << err;
}

TEST(RegistryClient, ErrorBodiesAreSanitised) {
    TestImage img = TestImage::make({bytes_of(100, 'k')});
    RegistryServer srv(true);
    srv.serve(img);
    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path.find("/blobs/" + img.layer_digests[0]) == std::string::npos) return false;
        return c.respond(404, R"({"errors":[{"code":"BLOB_UNKNOWN","message":"gone\u001b[2J\r\n"}]})");
    });
    Staging st;
    std::string err = pull_error(srv, st);
    EXPECT_NE(err.find("BLOB_UNKNOWN: gone\\x1b[2J"), std::string::npos) << err;
    EXPECT_TRUE(printable_ascii(err)) << err;
}

// --- 5: sizes. A Content-Length beyond the manifest's size is refused at
// once: nothing is streamed, nothing retried.
TEST(RegistryClient, HugeContentLengthIsRefusedAtOnce) {
    TestImage img = TestImage::make({bytes_of(3000, 'l')});
    const std::string blob = "/blobs/" + img.layer_digests[0];
    RegistryServer srv(true);
    srv.serve(img);
    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path.find(blob) == std::string::npos) return false;
        c.send("HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000000\r\n\r\n" + img.blobs[img.layer_digests[0]].substr(0, 100));
        c.close();
        return true;
    });
    Staging st;
    std::string err = pull_error(srv, st);
    EXPECT_NE(err.find("is longer than the 3000 bytes its manifest says"), std::string::npos) << err;
    EXPECT_EQ(srv.count(blob), 1);
    EXPECT_FALSE(exists(st.partial(img.layer_digests[0])));
}

// The same for a document collected in memory (a manifest): refused at its
// first bytes, not retried.
TEST(RegistryClient, HugeContentLengthOnAManifestIsRefusedAtOnce) {
    TestImage img = TestImage::make({bytes_of(100, 'L')});
    RegistryServer srv(true);
    srv.serve(img);
    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path.find("/manifests/") == std::string::npos) return false;
        c.send("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999\r\n\r\n{\"schemaVersion\":2");
        c.close();
        return true;
    });
    Staging st;
    std::string err = pull_error(srv, st);
    EXPECT_NE(err.find("larger than the " + std::to_string(kMaxManifestBytes) + " bytes ocivm accepts"), std::string::npos) << err;
    EXPECT_EQ(srv.count("/manifests/"), 1);
}

// A registry that sends more than the manifest says, without announcing it
// (no Content-Length): cut at the declared size, discarded.
TEST(RegistryClient, UnannouncedExtraBytesAreRefused) {
    TestImage img = TestImage::make({bytes_of(3000, 'm')});
    const std::string blob = "/blobs/" + img.layer_digests[0];
    RegistryServer srv(true);
    srv.serve(img);
    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path.find(blob) == std::string::npos) return false;
        c.send("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + img.blobs[img.layer_digests[0]] + std::string(5000, 'z'));
        c.close();
        return true;
    });
    Staging st;
    std::string err = pull_error(srv, st);
    EXPECT_NE(err.find("is longer than the 3000 bytes its manifest says"), std::string::npos) << err;
    EXPECT_FALSE(exists(st.partial(img.layer_digests[0])));
}

// --- 6: a kept partial is not trusted beyond its digest check: a resumed
// transfer that ends wrong is fetched once more from byte 0.
TEST(RegistryClient, PoisonedPartialIsDiscardedAndFetchedAgain) {
    TestImage img = TestImage::make({bytes_of(100000, 'n')});
    const std::string d = img.layer_digests[0], blob = "/blobs/" + d;
    RegistryServer srv(true);
    srv.serve(img);
    Staging st;
    st.put_partial(d, std::string(40000, 'P'));  // what another registry (or anyone) left there
    StagedImage out = pull(srv, st);
    EXPECT_EQ(out.manifest_digest, img.manifest_digest);
    auto reqs = srv.requests();
    std::vector<std::string> ranges;
    for (auto& r : reqs)
        if (r.path.find(blob) != std::string::npos) ranges.push_back(r.header("range"));
    ASSERT_EQ(ranges.size(), 2u);
    EXPECT_EQ(ranges[0], "bytes=40000-");
    EXPECT_EQ(ranges[1], "") << "the second fetch must start at byte 0";
    EXPECT_FALSE(exists(st.partial(d)));
}

// When the whole blob is wrong too, the error names both digests, and no
// partial is left to poison the next pull.
TEST(RegistryClient, CorruptBlobNamesBothDigests) {
    TestImage img = TestImage::make({bytes_of(5000, 'o')});
    const std::string d = img.layer_digests[0], blob = "/blobs/" + d;
    const std::string wrong = bytes_of(5000, 'p');
    RegistryServer srv(true);
    srv.serve(img);
    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path.find(blob) == std::string::npos) return false;
        std::string range = r.header("range");
        if (range.empty()) return c.respond(200, wrong);
        size_t from = std::stoul(range.substr(6));
        return c.respond(206, wrong.substr(from), {{"Content-Range", "bytes " + std::to_string(from) + "-4999/5000"}});
    });
    Staging st;
    st.put_partial(d, std::string(1000, 'P'));
    std::string err = pull_error(srv, st);
    EXPECT_NE(err.find("blob " + d), std::string::npos) << err;
    EXPECT_NE(err.find("have the digest " + ocivm::regtest::sha256_digest(wrong)), std::string::npos) << err;
    EXPECT_EQ(srv.count(blob), 2);
    EXPECT_FALSE(exists(st.partial(d)));
}

// --- 6b: what a registry can make ocivm hold: time, memory, disk

// A body collected in memory has a deadline: bytes dripped faster than the
// stall floor do not keep it alive. (Small limits here; the defaults are
// the same mechanism.)
TEST(Http, CollectedBodyHasADeadline) {
    http_global_init();
    std::atomic<bool> hung_up{false};
    RegistryServer srv(false);
    srv.set_hook([&](const HttpRequest&, Conn& c) {
        // 2 KiB every 100 ms for at most 20 s: above the floor, past the deadline.
        if (!c.send("HTTP/1.1 200 OK\r\nContent-Length: 409600\r\n\r\n")) return true;
        for (int k = 0; k < 200; ++k) {
            if (!c.send(std::string(2048, 'x'))) {
                hung_up = true;
                return true;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        c.close();
        return true;
    });
    HttpLimits limits;
    limits.collected_seconds = 2;
    limits.stall_bytes_per_second = 1024;
    limits.stall_seconds = 5;
    Http http(limits);
    try {
        http.get("http://" + srv.host() + "/v2/x/manifests/1", {}, TlsSettings{}, 1 << 20);
        ADD_FAILURE() << "a dripped body was collected whole";
    } catch (const TransportError& e) {
        EXPECT_NE(e.reason().find("imed out"), std::string::npos) << e.what();
    }
    // A stream to a sink (a blob) has no such deadline: only the floor.
    hung_up = false;
    size_t got = 0;
    Http::Sink sink = [&](const HttpResponse&, const char*, size_t n) {
        got += n;
        return true;
    };
    HttpLimits floor_only = limits;
    floor_only.collected_seconds = 1;
    Http stream(floor_only);
    srv.set_hook([&](const HttpRequest&, Conn& c) {
        // 40 KiB over 4 s: longer than collected_seconds, above the floor.
        if (!c.send("HTTP/1.1 200 OK\r\nContent-Length: 40960\r\n\r\n")) return true;
        for (int k = 0; k < 20 && c.send(std::string(2048, 'y')); ++k) std::this_thread::sleep_for(std::chrono::milliseconds(200));
        return true;
    });
    HttpResponse r = stream.get("http://" + srv.host() + "/v2/x/blobs/1", {}, TlsSettings{}, 0, sink);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(got, 40960u);
}

// Below the stall floor, a stream ends too.
TEST(Http, StreamBelowTheStallFloorEnds) {
    http_global_init();
    RegistryServer srv(false);
    srv.set_hook([&](const HttpRequest&, Conn& c) {
        // 100 bytes every 200 ms (500 B/s) for at most 30 s.
        if (!c.send("HTTP/1.1 200 OK\r\nContent-Length: 15000\r\n\r\n")) return true;
        for (int k = 0; k < 150 && c.send(std::string(100, 'z')); ++k) std::this_thread::sleep_for(std::chrono::milliseconds(200));
        return true;
    });
    HttpLimits limits;
    limits.stall_seconds = 2;
    EXPECT_GE(limits.stall_bytes_per_second, 1024) << "the default floor";
    Http http(limits);
    Http::Sink sink = [](const HttpResponse&, const char*, size_t) { return true; };
    try {
        http.get("http://" + srv.host() + "/v2/x/blobs/1", {}, TlsSettings{}, 0, sink);
        ADD_FAILURE() << "a transfer below the floor went on";
    } catch (const TransportError& e) {
        EXPECT_TRUE(e.transient()) << e.what();
    }
}

// The /v2/ ping of an insecure registry is read up to a small cap, not to
// wherever the registry stops.
TEST(RegistryClient, PingBodyIsCapped) {
    TestImage img = TestImage::make({bytes_of(100, 'P')});
    std::atomic<bool> whole_sent{false};
    RegistryServer srv(true);
    srv.serve(img);
    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path != "/v2/") return false;
        if (!c.send("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")) return true;
        const std::string chunk(64 * 1024, 'p');
        for (int k = 0; k < 256; ++k)  // 16 MiB
            if (!c.send(chunk)) return true;
        whole_sent = true;
        c.close();
        return true;
    });
    Staging st;
    std::string err = pull_error(srv, st, insecure());
    EXPECT_FALSE(whole_sent.load()) << "16 MiB of ping read";
    EXPECT_NE(err.find("larger than the"), std::string::npos) << err;
}

uint64_t bytes_read_by_process() {
    std::ifstream io("/proc/self/io");
    std::string key;
    uint64_t v = 0;
    while (io >> key >> v)
        if (key == "rchar:") return v;
    throw std::runtime_error("/proc/self/io has no rchar (a kernel without task I/O accounting?)");
}

// A manifest whose config names a large blob the store holds: its size
// differs, so it is not read (only a config's few KiB may be).
TEST(RegistryClient, StoredBlobOfAnotherSizeIsNotReadAsTheConfig) {
    TestImage img = TestImage::make({bytes_of(100, 'S')});
    RegistryServer srv(true);
    srv.serve(img);
    Staging st, store;
    const std::string big = store.dir + "/big";
    std::ofstream(big).close();
    std::filesystem::resize_file(big, 256u << 20);  // sparse
    PullSetup s;
    s.stored_blob = [&](const std::string& d) { return d == img.config_digest ? big : std::string(); };
    const uint64_t before = bytes_read_by_process();
    EXPECT_EQ(pull(srv, st, s).manifest_digest, img.manifest_digest);
    const uint64_t read = bytes_read_by_process() - before;
    EXPECT_LT(read, 64u << 20) << "the stored blob was read";
    EXPECT_EQ(srv.count("/blobs/" + img.config_digest), 1) << "the config should come from the registry";
}

// Layer sizes the file system cannot hold are refused before a byte is
// fetched; their sum saturates (two 2^63 layers are not 0 bytes).
TEST(RegistryClient, LayersLargerThanTheFreeSpaceAreRefused) {
    const std::string a = bytes_of(100, 'D'), b = bytes_of(100, 'E');
    TestImage img = TestImage::make({a, b}, "",
                                    {{ocivm::regtest::sha256_digest(a), 1ull << 63}, {ocivm::regtest::sha256_digest(b), 1ull << 63}});
    RegistryServer srv(true);
    srv.serve(img);
    Staging st;
    std::string err = pull_error(srv, st);
    EXPECT_NE(err.find("the layers to fetch take 18446744073709551615 bytes"), std::string::npos) << err;
    EXPECT_NE(err.find("bytes free"), std::string::npos) << err;
    EXPECT_EQ(srv.count("/blobs/" + img.layer_digests[0]), 0);
    EXPECT_EQ(srv.count("/blobs/" + img.layer_digests[1]), 0);
}

// Partial downloads are kept for the next pull only while they stay under
// kMaxKeptPartials together.
TEST(RegistryClient, KeptPartialsAreCapped) {
    const std::string layer = bytes_of(200000, 'K');
    TestImage img = TestImage::make({layer});
    const std::string d = img.layer_digests[0];
    RegistryServer srv(true);
    srv.serve(img);
    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path.find("/blobs/" + d) == std::string::npos) return false;
        if (r.header("range").empty())
            c.send("HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(layer.size()) + "\r\n\r\n" + layer.substr(0, layer.size() / 2));
        c.reset();
        return true;
    });
    Staging st;
    const std::string other = "sha256:" + std::string(64, 'a');
    st.put_partial(other, "");
    std::filesystem::resize_file(st.partial(other), kMaxKeptPartials);  // sparse: what earlier pulls left
    std::string err = pull_error(srv, st);
    EXPECT_NE(err.find("cannot fetch"), std::string::npos) << err;
    EXPECT_FALSE(exists(st.partial(d))) << "kept beyond kMaxKeptPartials";
    EXPECT_TRUE(exists(st.partial(other)));

    // Below the cap it is kept (so the cap is what discarded it).
    std::filesystem::remove(st.partial(other));
    err = pull_error(srv, st);
    EXPECT_TRUE(exists(st.partial(d))) << err;
}

// Peak RSS since `reset_peak_rss` (Linux: /proc/self/clear_refs 5 resets VmHWM).
void reset_peak_rss() {
    std::ofstream f("/proc/self/clear_refs");
    f << "5";
    f.close();
    if (!f) throw std::runtime_error("cannot write /proc/self/clear_refs (a Linux kernel >= 4.0 is needed)");
}
uint64_t status_kib(const char* key) {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind(key, 0) == 0) return std::stoull(line.substr(std::strlen(key)));
    throw std::runtime_error(std::string("/proc/self/status has no ") + key);
}

// An error body of 4 MiB of '[' is not parsed unbounded (it cost ~330 MB).
TEST(RegistryClient, DeepErrorBodyIsParsedBounded) {
    const std::string body(kMaxManifestBytes - 1, '[');
    RegistryServer srv(true);
    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path.find("/manifests/") == std::string::npos) return false;
        return c.respond(404, body);
    });
    Staging st;
    reset_peak_rss();
    const uint64_t base = status_kib("VmRSS:");
    std::string err = pull_error(srv, st);
    const uint64_t peak = status_kib("VmHWM:");
    EXPECT_NE(err.find("HTTP 404"), std::string::npos) << err;
    EXPECT_LT(peak, base + 64 * 1024) << "peak RSS grew by " << (peak - base) / 1024 << " MiB";
}

// --- 7: exceptions never cross libcurl's C frames

TEST(Http, SinkExceptionIsRethrownAfterCurlReturns) {
    http_global_init();
    RegistryServer srv(false);
    srv.serve(TestImage::make({bytes_of(200000, 'q')}));
    Http http;
    TlsSettings tls;
    const std::string url = "http://" + srv.host() + "/v2/";
    Http::Sink boom = [](const HttpResponse&, const char*, size_t) -> bool { throw std::runtime_error("boom from the sink"); };
    try {
        http.get(url, {"X-Test: 1"}, tls, 0, boom);
        ADD_FAILURE() << "no exception";
    } catch (const std::runtime_error& e) {
        EXPECT_STREQ(e.what(), "boom from the sink");
    }
    // The handle is fine afterwards.
    HttpResponse r = http.get(url, {}, tls, 1024);
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "{}");
}

TEST(Http, TransportErrorIsAnOcivmError) {
    http_global_init();
    int port;
    {
        RegistryServer gone(false);
        port = gone.port();
    }
    Http http;
    try {
        http.get("http://127.0.0.1:" + std::to_string(port) + "/v2/", {}, TlsSettings{}, 1024);
        ADD_FAILURE() << "connected to a closed port";
    } catch (const ocivm::Error& e) {
        EXPECT_NE(std::string(e.what()).find("check that the registry is up"), std::string::npos) << e.what();
    } catch (...) {
        ADD_FAILURE() << "a transport error that is not an ocivm::Error";
    }
}

// --- 8: errors say what to do
TEST(RegistryClient, BlobErrorsSayWhatToDo) {
    TestImage img = TestImage::make({bytes_of(100, 'r'), bytes_of(100, 's')});
    RegistryServer srv(true);
    srv.serve(img);
    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path.find("/blobs/" + img.layer_digests[0]) != std::string::npos) return c.respond(404, "{}");
        return false;
    });
    Staging st;
    std::string err = pull_error(srv, st);
    EXPECT_NE(err.find("is missing on"), std::string::npos) << err;
    EXPECT_NE(err.find("tell its publisher, or pull another image"), std::string::npos) << err;

    srv.set_hook([&](const HttpRequest& r, Conn& c) {
        if (r.path.find("/blobs/" + img.layer_digests[0]) != std::string::npos) return c.respond(400, R"({"errors":[{"code":"DENIED"}]})");
        return false;
    });
    err = pull_error(srv, st);
    EXPECT_NE(err.find("the registry answered DENIED; try again later, or tell the registry's operator"), std::string::npos) << err;
}

}  // namespace

// A download directory is stale when no pull holds its lock, whatever its
// name says: a pull in another PID namespace may carry any pid, ours too.
TEST(RegistryStaging, SweepRemovesUnlockedDirectoriesAndKeepsHeldOnes) {
    Staging st;
    const std::string left = st.dir + "/pull-" + std::to_string(::getpid()) + "-7";
    const std::string live = st.dir + "/pull-live";
    std::filesystem::create_directories(left + "/blobs/sha256");
    std::filesystem::create_directories(live + "/blobs/sha256");
    ocivm::UniqueFd held(::open(live.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    ASSERT_TRUE(held);
    ASSERT_EQ(::flock(held.get(), LOCK_EX), 0);
    sweep_stale_staging(st.dir);
    EXPECT_FALSE(exists(left)) << "a directory no pull holds stayed";
    EXPECT_TRUE(exists(live)) << "a live pull's directory was removed";
    held.reset();
    sweep_stale_staging(st.dir);
    EXPECT_FALSE(exists(live)) << "released, it is stale";
}
