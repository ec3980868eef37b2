// Warnings a guest can cause at will are rate-limited (LogLimit), so a
// flood of malformed requests is not a flood of log lines.
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <unistd.h>

#include <algorithm>
#include <sstream>
#include <vector>

#include "fuse/reply_writer.h"
#include "unit/test_util.h"
#include "util/clock.h"
#include "util/log.h"

using namespace ocivm;
using namespace ocivm::test;

namespace {

class DiscardWriter final : public fuse::BufferReplyWriter {
public:
    using BufferReplyWriter::BufferReplyWriter;
    int commit(size_t) override { return 0; }
};

}  // namespace

TEST(LogLimit, AFewASecondAndThenACountOfTheRest) {
    LogLimit lim(3);
    uint64_t skipped = 99;
    const uint64_t t0 = 50'000'000'000ull;
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(lim.allow(&skipped, t0 + i));
    EXPECT_EQ(skipped, 0u);
    for (int i = 0; i < 1000; ++i) EXPECT_FALSE(lim.allow(&skipped, t0 + 500'000'000ull));
    ASSERT_TRUE(lim.allow(&skipped, t0 + 1'000'000'000ull)) << "the next second logs again";
    EXPECT_EQ(skipped, 1000u) << "and says how many were left out";
    ASSERT_TRUE(lim.allow(&skipped, t0 + 1'000'000'001ull));
    EXPECT_EQ(skipped, 0u);
}

TEST(LogLimit, MalformedRequestsDoNotFloodTheLog) {
    std::ostringstream out;
    auto old = spdlog::default_logger();
    auto l = std::make_shared<spdlog::logger>("capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(out));
    l->set_level(spdlog::level::info);
    spdlog::set_default_logger(l);
    struct Restore {
        std::shared_ptr<spdlog::logger> old;
        ~Restore() { spdlog::set_default_logger(old); }
    } restore{old};
    Harness h;
    std::vector<std::byte> buf(64 * 1024);
    // The limit is the process's: earlier tests may have used this second's.
    ::usleep(static_cast<useconds_t>((1'000'000'000ull - mono_ns() % 1'000'000'000ull) / 1000 + 1000));
    for (int i = 0; i < 2000; ++i) {
        DiscardWriter w(buf.data(), buf.size());
        std::byte tiny[3]{};
        EXPECT_EQ(h.server->handle(std::span<const std::byte>(tiny, i % 2 ? 3 : 0), w),
                  fuse::Server::Result::NoReply);
    }
    std::string text = out.str();
    size_t lines = static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
    EXPECT_GE(lines, 1u) << "the first ones are logged";
    EXPECT_LE(lines, 40u) << "2000 malformed requests, not 2000 warnings:\n" << text.substr(0, 2000);
}
