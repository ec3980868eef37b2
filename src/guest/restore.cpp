#include "guest/restore.h"

#include <fcntl.h>
#include <linux/random.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "guest/net_config.h"

namespace ocivm::guest {

namespace {

int hex_value(char ch) { return ch <= '9' ? ch - '0' : ch - 'a' + 10; }

void reseed(const std::string& seed_hex, void (*report)(const char* fmt, ...)) {
    size_t n = seed_hex.size() / 2;
    std::vector<unsigned char> buf(sizeof(rand_pool_info) + n);
    auto* info = reinterpret_cast<rand_pool_info*>(buf.data());
    info->entropy_count = static_cast<int>(n * 8);
    info->buf_size = static_cast<int>(n);
    auto* bytes = reinterpret_cast<unsigned char*>(info->buf);
    for (size_t i = 0; i < n; ++i)
        bytes[i] = static_cast<unsigned char>(hex_value(seed_hex[2 * i]) << 4 | hex_value(seed_hex[2 * i + 1]));
    int fd = ::open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return report("restore: cannot open /dev/urandom: %s", std::strerror(errno));
    if (::ioctl(fd, RNDADDENTROPY, info) < 0) report("restore: RNDADDENTROPY: %s", std::strerror(errno));
    if (::ioctl(fd, RNDRESEEDCRNG) < 0) report("restore: RNDRESEEDCRNG: %s", std::strerror(errno));
    ::close(fd);
    std::memset(buf.data(), 0, buf.size());
}

// /etc/machine-id (in the guest's RAM overlay), made where the image has
// an /etc; never through a link the image planted.
void set_machine_id(const std::string& id, void (*report)(const char* fmt, ...)) {
    int fd = ::open("/etc/machine-id", O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0444);
    if (fd < 0) {
        if (errno != ENOENT) report("restore: cannot write /etc/machine-id: %s", std::strerror(errno));
        return;
    }
    std::string text = id + "\n";
    if (::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size()))
        report("restore: cannot write /etc/machine-id: %s", std::strerror(errno));
    ::close(fd);
}

}  // namespace

void apply_restore(const agent::RestoreInfo& r, void (*report)(const char* fmt, ...)) {
    timespec ts{static_cast<time_t>(r.time_sec), r.time_nsec};
    if (::clock_settime(CLOCK_REALTIME, &ts) < 0) report("restore: cannot set the clock: %s", std::strerror(errno));
    reseed(r.seed, report);
    if (::sethostname(r.hostname.data(), r.hostname.size()) < 0)
        report("restore: sethostname: %s", std::strerror(errno));
    set_machine_id(r.machine_id, report);
    renew_network(r.mac, report);
}

}  // namespace ocivm::guest
