#include <gtest/gtest.h>

#include "cli/args.h"

using namespace ocivm::cli;

namespace {
std::vector<std::string> run(std::vector<std::string> a, const std::vector<Option>& o, bool* help) {
    std::vector<char*> argv;
    for (auto& s : a) argv.push_back(s.data());
    return parse_args("test", static_cast<int>(argv.size()), argv.data(), 2, o, help);
}
}  // namespace

TEST(Args, ValuesFlagsAndPositionals) {
    std::string cache;
    bool ro = false, help = false;
    std::vector<Option> o = {{"cache", 0, true, [&](const std::string& v) { cache = v; }},
                             {"readonly", 'r', false, [&](const std::string&) { ro = true; }}};
    auto pos = run({"ocivm", "test", "src", "--cache", "always", "-r", "dst"}, o, &help);
    EXPECT_EQ(pos, (std::vector<std::string>{"src", "dst"}));
    EXPECT_EQ(cache, "always");
    EXPECT_TRUE(ro);
    EXPECT_FALSE(help);
    pos = run({"ocivm", "test", "--cache=never", "--", "--not-an-option"}, o, &help);
    EXPECT_EQ(cache, "never");
    EXPECT_EQ(pos, (std::vector<std::string>{"--not-an-option"}));
    run({"ocivm", "test", "--help"}, o, &help);
    EXPECT_TRUE(help);
}

TEST(Args, BadUsageThrows) {
    bool help = false;
    std::vector<Option> o = {{"cache", 0, true, [](const std::string&) {}},
                             {"readonly", 0, false, [](const std::string&) {}}};
    EXPECT_THROW(run({"ocivm", "test", "--bogus"}, o, &help), UsageError);
    EXPECT_THROW(run({"ocivm", "test", "--cache"}, o, &help), UsageError);
    EXPECT_THROW(run({"ocivm", "test", "--readonly=yes"}, o, &help), UsageError);
    EXPECT_THROW(parse_count("--threads", "0", 10), UsageError);
    EXPECT_THROW(parse_count("--threads", "abc", 10), UsageError);
    EXPECT_THROW(parse_count("--threads", "11", 10), UsageError);
    EXPECT_EQ(parse_count("--threads", "4", 10), 4u);
    EXPECT_EQ(parse_count_or_zero("--spin-us", "0", 10), 0u);
    EXPECT_EQ(parse_count_or_zero("--spin-us", "00", 10), 0u);
    EXPECT_EQ(parse_count_or_zero("--spin-us", "10", 10), 10u);
    EXPECT_THROW(parse_count_or_zero("--spin-us", "11", 10), UsageError);
    EXPECT_THROW(parse_count_or_zero("--spin-us", "", 10), UsageError);
    EXPECT_THROW(parse_count_or_zero("--spin-us", "-1", 10), UsageError);
    EXPECT_THROW(parse_count_or_zero("--spin-us", " 1", 10), UsageError);
    EXPECT_THROW(parse_count_or_zero("--spin-us", "1x", 10), UsageError);
    EXPECT_THROW(parse_count_or_zero("--spin-us", "99999999999999999999", 10), UsageError);
}

TEST(Args, RunStyleStopsAtTheImage) {
    bool i = false, t = false, help = false;
    std::vector<std::string> env;
    std::vector<Option> o = {{"interactive", 'i', false, [&](const std::string&) { i = true; }},
                             {"tty", 't', false, [&](const std::string&) { t = true; }},
                             {"env", 'e', true, [&](const std::string& v) { env.push_back(v); }}};
    std::vector<std::string> a = {"ocivm", "run", "-it", "-e", "A=1", "img", "--", "sh", "-e", "-i", "--"};
    std::vector<char*> argv;
    for (auto& s : a) argv.push_back(s.data());
    auto pos = parse_args("run", static_cast<int>(argv.size()), argv.data(), 2, o, &help, true);
    EXPECT_TRUE(i);
    EXPECT_TRUE(t);
    EXPECT_EQ(env, (std::vector<std::string>{"A=1"}));
    // Everything after IMAGE is the command's, options included; one "--" right after IMAGE is dropped.
    EXPECT_EQ(pos, (std::vector<std::string>{"img", "sh", "-e", "-i", "--"}));
    // A bundle with an unknown letter is an error, not a silent partial apply.
    std::vector<std::string> b = {"ocivm", "run", "-ix", "img"};
    std::vector<char*> argv2;
    for (auto& s : b) argv2.push_back(s.data());
    EXPECT_THROW(parse_args("run", 4, argv2.data(), 2, o, &help, true), UsageError);
}

// podman's booleans: "--tls-verify" alone, or "--tls-verify=false"; the
// next word is a positional, never the flag's value.
TEST(Args, BooleanTakesItsValueOnlyAfterEquals) {
    bool help = false;
    std::vector<std::string> seen;
    std::vector<Option> o = {{"tls-verify", 0, false, [&](const std::string& v) { seen.push_back(v); }, true}};
    auto pos = run({"ocivm", "test", "--tls-verify", "false"}, o, &help);
    EXPECT_EQ(seen, (std::vector<std::string>{""}));
    EXPECT_EQ(pos, (std::vector<std::string>{"false"}));
    seen.clear();
    pos = run({"ocivm", "test", "--tls-verify=false", "img"}, o, &help);
    EXPECT_EQ(seen, (std::vector<std::string>{"false"}));
    EXPECT_EQ(pos, (std::vector<std::string>{"img"}));
}
