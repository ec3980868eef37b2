// image::Gunzip (ISA-L inflate of layer blobs): what comes out equals what
// went in, across members and odd read sizes, and every kind of damage is an
// error naming the file, never a short or wrong stream.
#include "image/gunzip.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <fstream>
#include <random>
#include <string>

#include "unit/test_util.h"
#include "util/error.h"

namespace ocivm::image {
namespace {

std::string gzip(const std::string& data) {
    z_stream z{};
    EXPECT_EQ(deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
    std::string out(deflateBound(&z, data.size()) + 64, '\0');
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
    z.avail_in = static_cast<uInt>(data.size());
    z.next_out = reinterpret_cast<Bytef*>(out.data());
    z.avail_out = static_cast<uInt>(out.size());
    EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
    out.resize(z.total_out);
    deflateEnd(&z);
    return out;
}

std::string sample(size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::string s;
    while (s.size() < n) {  // compressible runs and random bytes
        if (rng() % 2) s.append(rng() % 5000, static_cast<char>('a' + rng() % 26));
        else for (int i = 0; i < 3000; ++i) s += static_cast<char>(rng());
    }
    s.resize(n);
    return s;
}

class GunzipTest : public ::testing::Test {
protected:
    void SetUp() override { dir_ = test::make_temp_dir(); }
    void TearDown() override { test::remove_tree(dir_); }
    std::string file(const std::string& bytes) {
        std::string p = dir_ + "/blob" + std::to_string(n_++);
        std::ofstream(p, std::ios::binary) << bytes;
        return p;
    }
    static std::string all(const std::string& path, size_t chunk) {
        Gunzip g(path);
        std::string out, buf(chunk, '\0');
        while (size_t n = g.read(buf.data(), buf.size())) out.append(buf.data(), n);
        return out;
    }
    static std::string error_of(const std::string& path) {
        try {
            all(path, 65536);
        } catch (const Error& e) {
            return e.what();
        }
        return "";
    }
    std::string dir_;
    int n_ = 0;
};

TEST_F(GunzipTest, RoundTripInOddReadSizes) {
    std::string data = sample(3 << 20, 1);
    std::string p = file(gzip(data));
    EXPECT_TRUE(is_gzip_file(p));
    EXPECT_EQ(all(p, 7777), data);
    EXPECT_EQ(all(p, 1 << 20), data);
}

TEST_F(GunzipTest, EmptyStream) { EXPECT_EQ(all(file(gzip("")), 4096), ""); }

TEST_F(GunzipTest, EveryMemberIsRead) {
    std::string a = sample(300000, 2), b = sample(500000, 3);
    EXPECT_EQ(all(file(gzip(a) + gzip(b) + gzip("")), 10000), a + b);
}

TEST_F(GunzipTest, ZeroPaddingAfterTheStreamIsIgnored) {
    std::string a = sample(100000, 4);
    EXPECT_EQ(all(file(gzip(a) + std::string(3000, '\0')), 4096), a);
}

TEST_F(GunzipTest, GarbageAfterTheStreamIsAnError) {
    std::string p = file(gzip(sample(100000, 5)) + "not gzip");
    std::string e = error_of(p);
    EXPECT_EQ(e, "gzip: data after the end of the stream");
}

TEST_F(GunzipTest, TruncatedStreamIsAnError) {
    std::string z = gzip(sample(1 << 20, 6));
    for (size_t cut : {z.size() - 1, z.size() - 8, z.size() / 2, size_t{10}}) {
        std::string e = error_of(file(z.substr(0, cut)));
        EXPECT_EQ(e.rfind("gzip: ", 0), 0u) << "cut at " << cut << ": " << e;
    }
}

TEST_F(GunzipTest, WrongCrcOrLengthIsAnError) {
    std::string z = gzip(sample(200000, 7));
    std::string crc = z, len = z;
    crc[crc.size() - 6] ^= 0x40;  // the CRC-32 is the trailer's first 4 bytes
    len[len.size() - 2] ^= 0x01;  // then the length
    EXPECT_NE(error_of(file(crc)).find("CRC-32 or length"), std::string::npos);
    EXPECT_NE(error_of(file(len)).find("CRC-32 or length"), std::string::npos);
}

TEST_F(GunzipTest, DamagedDeflateDataIsAnError) {
    std::string z = gzip(sample(1 << 20, 8));
    for (size_t at : {size_t{20}, z.size() / 3, z.size() / 2}) {
        std::string bad = z;
        for (size_t i = 0; i < 16; ++i) bad[at + i] = static_cast<char>(~bad[at + i]);
        EXPECT_EQ(error_of(file(bad)).rfind("gzip: ", 0), 0u) << "damage at " << at;
    }
}

TEST_F(GunzipTest, NotGzip) {
    EXPECT_FALSE(is_gzip_file(file("plain tar bytes")));
    EXPECT_FALSE(is_gzip_file(dir_ + "/missing"));
}

}  // namespace
}  // namespace ocivm::image
