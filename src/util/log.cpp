#include "util/log.h"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/error.h"
#include "util/io.h"

namespace ocivm {

void setup_logging(const std::string& level) {
    auto lvl = spdlog::level::from_str(level);
    // from_str maps unknown names to "off"; only accept the real spelling.
    if (lvl == spdlog::level::off && level != "off") {
        throw Error("unknown log level '" + level +
                    "'; use one of trace, debug, info, warn, error, critical, off");
    }
    static auto logger = spdlog::stderr_color_mt("ocivm");
    logger->set_pattern("%^ocivm: %l:%$ %v");
    logger->set_level(lvl);
    spdlog::set_default_logger(logger);
}

bool LogLimit::allow(uint64_t* skipped, uint64_t now_ns) {
    std::lock_guard lk(mu_);
    uint64_t second = now_ns / 1'000'000'000ull;
    if (second != window_) {
        window_ = second;
        in_window_ = 0;
    }
    if (in_window_ >= per_second_) {
        ++skipped_;
        return false;
    }
    ++in_window_;
    *skipped = skipped_;
    skipped_ = 0;
    return true;
}

bool LogLimit::allow(uint64_t* skipped) { return allow(skipped, mono_ns()); }

namespace {

// Writes to fd 2 while the file is under its cap (checked before each line:
// other processes append to it too).
class CappedFileSink final : public spdlog::sinks::base_sink<std::mutex> {
public:
    explicit CappedFileSink(uint64_t cap) : cap_(cap) {}

protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        if (full_) return;
        spdlog::memory_buf_t buf;
        formatter_->format(msg, buf);
        struct stat st;
        if (::fstat(2, &st) == 0 && static_cast<uint64_t>(st.st_size) + buf.size() > cap_) {
            full_ = true;
            std::string last = "ocivm: warn: this log has reached " + std::to_string(cap_ >> 20) +
                               " MiB; process " + std::to_string(::getpid()) + " logs nothing more\n";
            write_all(2, last.data(), last.size());
            return;
        }
        write_all(2, buf.data(), buf.size());
    }
    void flush_() override {}

private:
    uint64_t cap_;
    bool full_ = false;
};

}  // namespace

void cap_log_file(uint64_t max_bytes) {
    struct stat st;
    if (::fstat(2, &st) < 0 || !S_ISREG(st.st_mode)) return;
    auto logger = spdlog::default_logger();
    auto sink = std::make_shared<CappedFileSink>(max_bytes);
    sink->set_pattern("ocivm: %l: %v");
    logger->sinks().clear();
    logger->sinks().push_back(sink);
}

}  // namespace ocivm
