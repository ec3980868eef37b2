#include "guest/restore.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/random.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <cstdint>
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

bool loopback(int family, const uint32_t* addr) {
    if (family == AF_INET) return (ntohl(addr[0]) >> 24) == 127;
    static const uint32_t v6_loopback[4] = {0, 0, 0, htonl(1)};
    if (std::memcmp(addr, v6_loopback, 16) == 0) return true;
    // ::ffff:127.x.y.z
    return addr[0] == 0 && addr[1] == 0 && addr[2] == htonl(0xffff) && (ntohl(addr[3]) >> 24) == 127;
}

// The TCP connections the snapshot's VM had with other hosts: the clone's
// network back-end knows none of them, so they are closed now (the
// programs holding them get ECONNABORTED) instead of hanging on a peer
// that is not there. SOCK_DESTROY through sock_diag (tcp_diag, loaded with
// the network); connections within the guest (loopback) stay.
void drop_connections(void (*report)(const char* fmt, ...)) {
    int nl = ::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (nl < 0) return report("restore: cannot reach sock_diag to drop stale connections: %s", std::strerror(errno));
    struct Request {
        nlmsghdr nh;
        inet_diag_req_v2 r;
    };
    std::vector<Request> doomed;
    for (int family : {AF_INET, AF_INET6}) {
        Request req{};
        req.nh.nlmsg_len = sizeof req;
        req.nh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
        req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
        req.r.sdiag_family = static_cast<uint8_t>(family);
        req.r.sdiag_protocol = IPPROTO_TCP;
        // Every state but LISTEN (servers stay) and TIME_WAIT (not a socket to destroy).
        req.r.idiag_states = 0xfff & ~(1u << TCP_LISTEN) & ~(1u << TCP_TIME_WAIT) & ~(1u << TCP_CLOSE);
        if (::send(nl, &req, sizeof req, 0) != static_cast<ssize_t>(sizeof req)) {
            report("restore: sock_diag: %s", std::strerror(errno));
            continue;
        }
        alignas(nlmsghdr) char buf[16384];
        bool done = false;
        while (!done) {
            ssize_t n = ::recv(nl, buf, sizeof buf, 0);
            if (n <= 0) break;
            for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, static_cast<unsigned>(n)); h = NLMSG_NEXT(h, n)) {
                if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR) {
                    if (h->nlmsg_type == NLMSG_ERROR)
                        report("restore: sock_diag refused the listing (is tcp_diag loaded?)");
                    done = true;
                    break;
                }
                if (h->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) continue;
                auto* m = static_cast<inet_diag_msg*>(NLMSG_DATA(h));
                if (loopback(m->idiag_family, m->id.idiag_src) || loopback(m->idiag_family, m->id.idiag_dst)) continue;
                Request d{};
                d.nh.nlmsg_len = sizeof d;
                d.nh.nlmsg_type = SOCK_DESTROY;
                d.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
                d.r.sdiag_family = m->idiag_family;
                d.r.sdiag_protocol = IPPROTO_TCP;
                d.r.idiag_states = ~0u;
                d.r.id = m->id;
                doomed.push_back(d);
            }
        }
    }
    unsigned dropped = 0;
    for (auto& d : doomed) {
        if (::send(nl, &d, sizeof d, 0) != static_cast<ssize_t>(sizeof d)) continue;
        alignas(nlmsghdr) char ack[512];
        ssize_t n = ::recv(nl, ack, sizeof ack, 0);
        auto* h = reinterpret_cast<nlmsghdr*>(ack);
        if (n >= static_cast<ssize_t>(NLMSG_LENGTH(sizeof(nlmsgerr))) && h->nlmsg_type == NLMSG_ERROR &&
            static_cast<nlmsgerr*>(NLMSG_DATA(h))->error == 0)
            ++dropped;
    }
    if (dropped) report("restore: dropped %u connection%s of the snapshot's VM", dropped, dropped == 1 ? "" : "s");
    ::close(nl);
}

}  // namespace

void apply_restore(const agent::RestoreInfo& r, void (*report)(const char* fmt, ...)) {
    timespec ts{static_cast<time_t>(r.time_sec), r.time_nsec};
    if (::clock_settime(CLOCK_REALTIME, &ts) < 0) report("restore: cannot set the clock: %s", std::strerror(errno));
    reseed(r.seed, report);
    if (::sethostname(r.hostname.data(), r.hostname.size()) < 0)
        report("restore: sethostname: %s", std::strerror(errno));
    set_machine_id(r.machine_id, report);
    if (!r.mac.empty()) drop_connections(report);  // a VM with a network
    renew_network(r.mac, report);
}

}  // namespace ocivm::guest
