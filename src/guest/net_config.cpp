#include "guest/net_config.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "guest/net_arg.h"

namespace ocivm::guest {

namespace {

std::string slurp(const char* path) {
    std::string out;
    int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return out;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    ::close(fd);
    return out;
}

// The first Ethernet interface; virtio_net probes it shortly after the
// module loads (seconds under TCG), so wait for it (up to `tries` x 10 ms).
std::string find_interface(int tries = 1000) {
    for (int t = 0; t < tries; ++t) {
        std::string found;
        if (DIR* d = ::opendir("/sys/class/net")) {
            while (dirent* e = ::readdir(d)) {
                std::string name = e->d_name;
                if (name[0] == '.' || name == "lo") continue;
                std::string type = slurp(("/sys/class/net/" + name + "/type").c_str());
                if (std::atoi(type.c_str()) == 1 && (found.empty() || name < found)) found = name;
            }
            ::closedir(d);
        }
        if (!found.empty()) return found;
        if (t + 1 < tries) ::usleep(10000);
    }
    return "";
}

sockaddr_in inet(const std::string& ip) {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    ::inet_pton(AF_INET, ip.c_str(), &sa.sin_addr);
    return sa;
}

void set_name(ifreq& ifr, const std::string& dev) {
    std::memcpy(ifr.ifr_name, dev.data(), std::min<size_t>(dev.size(), IFNAMSIZ - 1));
}

bool set_up(int s, const std::string& dev) {
    ifreq ifr{};
    set_name(ifr, dev);
    if (::ioctl(s, SIOCGIFFLAGS, &ifr) < 0) return false;
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
    return ::ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
}

}  // namespace

void configure_network(void (*report)(const char* fmt, ...)) {
    int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        report("network: socket: %s", std::strerror(errno));
        return;
    }
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{s};
    // The kernel gives lo 127.0.0.1/8 when it comes up.
    if (!set_up(s, "lo")) report("network: cannot bring up lo: %s", std::strerror(errno));

    std::string cmdline = slurp("/proc/cmdline");
    std::string value;
    for (size_t a = 0; a < cmdline.size();) {
        size_t e = cmdline.find_first_of(" \n", a);
        if (e == std::string::npos) e = cmdline.size();
        std::string tok = cmdline.substr(a, e - a);
        if (tok.rfind(kNetArgKey, 0) == 0) value = tok.substr(std::strlen(kNetArgKey));
        a = e + 1;
    }
    if (value.empty()) return;
    NetArg n;
    if (std::string err = parse_net_arg(value, n); !err.empty()) {
        report("network: bad ocivm.net= on the kernel command line: %s", err.c_str());
        return;
    }
    std::string dev = find_interface();
    if (dev.empty()) {
        report("network: no network interface appeared (is virtio_net loaded?)");
        return;
    }
    ifreq ifr{};
    set_name(ifr, dev);
    auto fail = [&](const char* what) {
        report("network: %s %s: %s", what, dev.c_str(), std::strerror(errno));
    };
    if (n.mtu) {
        ifr.ifr_mtu = static_cast<int>(n.mtu);
        if (::ioctl(s, SIOCSIFMTU, &ifr) < 0) fail("cannot set the MTU of");
    }
    sockaddr_in addr = inet(n.address);
    std::memcpy(&ifr.ifr_addr, &addr, sizeof addr);
    if (::ioctl(s, SIOCSIFADDR, &ifr) < 0) return fail("cannot set the address of");
    sockaddr_in mask{};
    mask.sin_family = AF_INET;
    mask.sin_addr.s_addr = htonl(n.prefix == 0 ? 0 : ~uint32_t{0} << (32 - n.prefix));
    std::memcpy(&ifr.ifr_netmask, &mask, sizeof mask);
    if (::ioctl(s, SIOCSIFNETMASK, &ifr) < 0) return fail("cannot set the netmask of");
    if (!set_up(s, dev)) return fail("cannot bring up");
    if (!n.gateway.empty()) {
        rtentry rt{};
        sockaddr_in any{};
        any.sin_family = AF_INET;
        sockaddr_in gw = inet(n.gateway);
        std::memcpy(&rt.rt_dst, &any, sizeof any);
        std::memcpy(&rt.rt_genmask, &any, sizeof any);
        std::memcpy(&rt.rt_gateway, &gw, sizeof gw);
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        rt.rt_dev = dev.data();
        if (::ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST) fail("cannot add the default route via");
    }
    if (!n.dns.empty()) {
        std::string text = "# written by ocivm-init from the kernel command line (ocivm.net=)\n";
        for (auto& d : n.dns) text += "nameserver " + d + "\n";
        // Often a link (systemd-resolved's stub, a dangling one in an image).
        ::unlink("/etc/resolv.conf");
        int fd = ::open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0 || ::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size()))
            report("network: cannot write /etc/resolv.conf: %s", std::strerror(errno));
        if (fd >= 0) ::close(fd);
    }
}

void renew_network(const std::string& mac, void (*report)(const char* fmt, ...)) {
    std::string dev = find_interface(1);  // no waiting: it was there before the snapshot
    if (dev.empty()) return;
    int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return report("network: socket: %s", std::strerror(errno));
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{s};
    int fd = ::open(("/proc/sys/net/ipv4/conf/" + dev + "/arp_notify").c_str(), O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (::write(fd, "1", 1) != 1) report("network: cannot set arp_notify: %s", std::strerror(errno));
        ::close(fd);
    }
    ifreq ifr{};
    set_name(ifr, dev);
    if (::ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags = static_cast<short>(ifr.ifr_flags & ~IFF_UP);
        if (::ioctl(s, SIOCSIFFLAGS, &ifr) < 0) report("network: cannot take %s down: %s", dev.c_str(), std::strerror(errno));
    }
    if (!mac.empty()) {
        unsigned b[6];
        if (std::sscanf(mac.c_str(), "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) == 6) {
            ifreq hw{};
            set_name(hw, dev);
            hw.ifr_hwaddr.sa_family = 1;  // ARPHRD_ETHER
            for (int i = 0; i < 6; ++i) hw.ifr_hwaddr.sa_data[i] = static_cast<char>(b[i]);
            if (::ioctl(s, SIOCSIFHWADDR, &hw) < 0)
                report("network: cannot set the MAC of %s: %s", dev.c_str(), std::strerror(errno));
        }
    }
    configure_network(report);  // up, address, route, resolv.conf
}

}  // namespace ocivm::guest
