#include "net/bridge.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "net/hash.h"
#include "util/error.h"
#include "util/log.h"
#include "util/paths.h"
#include "util/subprocess.h"

namespace ocivm::net {

namespace {

uint32_t mask_of(unsigned prefix) { return prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix); }

// Runs fn on a thread of its own that has entered (or, with nsfd < 0,
// created) a network namespace: namespaces are per thread, and a child
// forked from that thread (ip, nft) starts in it. The process's other
// threads never change namespace.
template <typename F>
void on_netns_thread(int nsfd, F fn) {
    std::exception_ptr ep;
    std::thread t([&] {
        try {
            if (nsfd < 0 ? ::unshare(CLONE_NEWNET) < 0 : ::setns(nsfd, CLONE_NEWNET) < 0)
                throw_errno(nsfd < 0 ? "cannot create a network namespace" : "cannot enter the VM's network namespace",
                            errno);
            fn();
        } catch (...) {
            ep = std::current_exception();
        }
    });
    t.join();
    if (ep) std::rethrow_exception(ep);
}

void run_or_throw(const std::vector<std::string>& argv, const std::string& what, const std::string& input = "") {
    CommandResult r = run_command(argv, input);
    if (!r.ok()) {
        std::string cmd;
        for (auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
        throw Error("bridge network: " + what + " failed (" + cmd + "): " + r.why(argv[0]));
    }
}

void write_sysctl(const std::string& path, const char* value) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd || ::write(fd.get(), value, std::strlen(value)) < 0) throw_errno("bridge network: cannot set " + path, errno);
}

// Which IPv4 networks this namespace's interfaces already have: a VM's
// /30 must not overlap any of them (other VMs' veth ends included: they
// are how allocation knows which /30s are taken, and they vanish with
// their VM).
std::vector<std::pair<uint32_t, unsigned>> local_networks() {
    std::vector<std::pair<uint32_t, unsigned>> out;
    ifaddrs* ifa = nullptr;
    if (::getifaddrs(&ifa) < 0) throw_errno("getifaddrs", errno);
    for (ifaddrs* i = ifa; i; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !i->ifa_netmask) continue;
        uint32_t a = ntohl(reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr.s_addr);
        uint32_t m = ntohl(reinterpret_cast<sockaddr_in*>(i->ifa_netmask)->sin_addr.s_addr);
        unsigned p = static_cast<unsigned>(__builtin_popcount(m));
        out.emplace_back(a & m, p);
    }
    ::freeifaddrs(ifa);
    return out;
}

std::vector<std::string> host_nameservers() {
    std::vector<std::string> out;
    std::string text;
    try {
        text = read_file("/etc/resolv.conf");
    } catch (const Error&) {
        return out;
    }
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream l(line);
        std::string key, val;
        l >> key >> val;
        in_addr a{};
        // A loopback resolver (systemd-resolved, dnsmasq on 127.0.0.1) is
        // the host's own and unreachable from the guest.
        if (key == "nameserver" && ::inet_pton(AF_INET, val.c_str(), &a) == 1 && (ntohl(a.s_addr) >> 24) != 127)
            out.push_back(val);
    }
    return out;
}

// nft's limit for a comment, and the kernel's for an interface alias
// (IFALIASZ - 1).
constexpr size_t kNftCommentMax = 128;
constexpr size_t kIfAliasMax = 255;

// s cut to at most max bytes, with what nft's string syntax or a one-line
// `ip -o link` could not carry ('"', '\\', control characters) as '?'.
std::string printable(const std::string& s, size_t max) {
    std::string out = s.substr(0, max);
    for (char& c : out)
        if (c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    return out;
}

}  // namespace

std::string host_device_name(const std::string& state_dir) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "ocivm%08x", fnv1a(state_dir));
    return buf;
}

std::string nft_table_name(const std::string& vm_name, const std::string& state_dir) {
    std::string s;
    for (char c : vm_name.substr(0, 31))
        s += std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' ? c : '_';
    char h[10];
    std::snprintf(h, sizeof h, "%08x", fnv1a(state_dir));
    return "ocivm-" + s + "-" + h;
}

std::string nft_ruleset(const std::string& table, const std::string& owner, const std::string& host_dev,
                        uint32_t guest_ip, uint32_t net_base, unsigned prefix, const std::vector<PortForward>& ports) {
    // Forwards reached from this host (output) and from other hosts
    // (prerouting). A loopback forward is this host's only: in prerouting
    // DNAT would rewrite 127.0.0.1 before the martian check, and a
    // neighbour sending to 127.0.0.1 with this host's MAC would get in.
    // Elsewhere only packets for one of this host's own addresses match.
    std::string dnat_out, dnat_pre;
    for (auto& p : ports) {
        std::string to = std::string(p.udp ? " udp" : " tcp") + " dport " + std::to_string(p.host_port) + " dnat to " +
                         ipv4_text(guest_ip) + ":" + std::to_string(p.guest_port) + "\n";
        bool loopback = p.host_ip.rfind("127.", 0) == 0;
        std::string match = p.host_ip == "0.0.0.0" ? "fib daddr type local" : "ip daddr " + p.host_ip;
        dnat_out += "\t\t" + match + to;
        if (!loopback) dnat_pre += "\t\t" + (p.host_ip == "0.0.0.0" ? match : "fib daddr type local " + match) + to;
    }
    std::string q = "\"" + host_dev + "\"";
    std::string guest = ipv4_text(guest_ip);
    std::string s = "table ip " + table + " {\n";
    s += "\tcomment \"" + printable(owner, kNftCommentMax) + "\"\n";
    // What the guest sends: only from its own address (no spoofing), never
    // to this host's loopback (route_localnet is on for the veth end, so the
    // kernel would take it), checked before conntrack and NAT.
    s += "\tchain guard {\n\t\ttype filter hook prerouting priority raw; policy accept;\n";
    s += "\t\tiifname " + q + " ip saddr != " + guest + " drop\n";
    s += "\t\tiifname " + q + " ip daddr 127.0.0.0/8 drop\n\t}\n";
    // Routed traffic to the guest: replies, and the -p forwards; nothing
    // else reaches it from other networks or other VMs.
    s += "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n";
    s += "\t\toifname " + q + " ct state established,related accept\n";
    s += "\t\toifname " + q + " ct status dnat accept\n";
    s += "\t\toifname " + q + " drop\n\t}\n";
    s += "\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n" + dnat_pre + "\t}\n";
    s += "\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n" + dnat_out + "\t}\n";
    s += "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n";
    // The guest's connections out, as this host's address.
    s += "\t\tip saddr " + ipv4_text(net_base) + "/" + std::to_string(prefix) + " oifname != " + q + " masquerade\n";
    // A forward reached from this host's loopback: the guest cannot answer
    // 127.0.0.1, so it sees the gateway instead.
    s += "\t\toifname " + q + " ip saddr 127.0.0.0/8 masquerade\n";
    s += "\t}\n}\n";
    return s;
}

void Bridge::remove_leftovers(const std::string& host_dev, const std::string& table) {
    try {
        if (!table.empty() && have_program("nft")) {
            CommandResult r = run_command({"nft", "list", "table", "ip", table});
            if (r.ok()) run_command({"nft", "delete", "table", "ip", table});
        }
        if (!host_dev.empty() && ::access(("/sys/class/net/" + host_dev).c_str(), F_OK) == 0)
            run_command({"ip", "link", "del", host_dev});
    } catch (const std::exception& e) {
        spdlog::warn("network clean-up: {}", e.what());
    }
}

Bridge::Bridge(const NetworkOptions& o) {
    if (::geteuid() != 0)
        throw Error("--network bridge needs root (it creates a network namespace, a veth pair and nftables rules); "
                    "as a user, use --network user");
    if (!have_program("ip")) throw Error("--network bridge needs ip: apt-get install iproute2");
    if (!have_program("nft")) throw Error("--network bridge needs nft: apt-get install nftables");
    Subnet sub;
    try {
        sub = parse_subnet(o.subnet);
    } catch (const SpecError& e) {
        throw Error(e.what());
    }
    // The state directory StateDir makes when there is none (an absolute
    // path: the same directory gives the same names from any cwd).
    std::string owner = o.state_dir.empty() ? runtime_dir() + "/vms/" + o.vm_name : o.state_dir;
    if (owner.front() != '/') owner = std::filesystem::absolute(owner).lexically_normal().string();
    host_dev_ = host_device_name(owner);
    table_ = nft_table_name(o.vm_name, owner);
    // The names are looked up in this thread's namespace, by ip and nft as
    // by the destructor; net::cleanup must be in the same one to use them.
    struct stat ns;
    if (::stat("/proc/thread-self/ns/net", &ns) < 0) throw_errno("cannot stat /proc/thread-self/ns/net", errno);
    host_netns_dev_ = ns.st_dev;
    host_netns_ino_ = ns.st_ino;
    // A VM of this state directory in this namespace that was killed left
    // these; none of a live VM can have them (the state directory's lock).
    remove_leftovers(host_dev_, table_);
    // Recorded before anything is made, so a kill -9 at any point below
    // leaves a record net::cleanup can work from.
    if (!o.state_dir.empty()) {
        nlohmann::json rec = {{"mode", "bridge"},
                              {"host_device", host_dev_},
                              {"nft_table", table_},
                              {"host_netns", {{"dev", host_netns_dev_}, {"ino", host_netns_ino_}}}};
        write_file_atomic(o.state_dir + "/network.json", rec.dump() + "\n");
    }
    try {
        // One allocator at a time: the /30 is taken once the veth end has it.
        std::string lock_path = runtime_dir() + "/net.lock";
        make_dirs(runtime_dir());
        UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
        if (!lock || ::flock(lock.get(), LOCK_EX) < 0) throw_errno("cannot lock " + lock_path, errno);
        auto taken = local_networks();
        uint32_t size = uint32_t{1} << (32 - sub.prefix);
        bool found = false;
        for (uint32_t off = 0; off + 4 <= size && !found; off += 4) {
            uint32_t cand = sub.base + off;
            bool clash = false;
            for (auto& [net, p] : taken) {
                uint32_t m = mask_of(std::min(p, 30u));
                if ((cand & m) == (net & m)) clash = true;
            }
            if (!clash) {
                net_ = cand;
                found = true;
            }
        }
        if (!found)
            throw Error("bridge network: no free /30 left in " + o.subnet + " (one per running VM); give a larger --subnet");

        on_netns_thread(-1, [this] {
            netns_ = UniqueFd(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
            if (!netns_) throw_errno("cannot open the new network namespace", errno);
            tap_ = UniqueFd(::open("/dev/net/tun", O_RDWR | O_CLOEXEC));
            if (!tap_) throw_errno("cannot open /dev/net/tun", errno, "load the tun module (modprobe tun)");
            ifreq ifr{};
            std::strncpy(ifr.ifr_name, "tap0", IFNAMSIZ - 1);
            ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
            if (::ioctl(tap_.get(), TUNSETIFF, &ifr) < 0) throw_errno("cannot create the tap device", errno);
        });
        char link[64] = {};
        if (::readlink(("/proc/self/fd/" + std::to_string(netns_.get())).c_str(), link, sizeof link - 1) > 0)
            netns_text_ = link;
        std::string ns_path = "/proc/" + std::to_string(::getpid()) + "/fd/" + std::to_string(netns_.get());
        made_link_ = true;
        run_or_throw({"ip", "link", "add", host_dev_, "type", "veth", "peer", "name", "veth0", "netns", ns_path},
                     "creating the veth pair");
        run_or_throw({"ip", "addr", "add", ipv4_text(gateway_ip()) + "/30", "dev", host_dev_}, "addressing " + host_dev_);
        lock.reset();
        // Connections from this host's loopback to a forward leave through
        // the veth once DNAT has rewritten them (the device's own setting,
        // gone with it).
        write_sysctl("/proc/sys/net/ipv4/conf/" + host_dev_ + "/route_localnet", "1");
        // No IPv6 on the host's end: a guest's router advertisement would
        // otherwise become this host's default route (accept_ra), and
        // link-local IPv6 would reach services the ip table cannot filter.
        write_sysctl("/proc/sys/net/ipv6/conf/" + host_dev_ + "/disable_ipv6", "1");
        write_sysctl("/proc/sys/net/ipv4/conf/" + host_dev_ + "/rp_filter", "1");
        run_or_throw({"ip", "link", "set", host_dev_, "alias", printable(owner, kIfAliasMax), "up"},
                     "bringing up " + host_dev_);
        on_netns_thread(netns_.get(), [] {
            run_or_throw({"ip", "-batch", "-"}, "setting up the VM's namespace",
                         "link set lo up\n"
                         "link add br0 type bridge\n"
                         "link set veth0 master br0\n"
                         "link set tap0 master br0\n"
                         "link set veth0 up\n"
                         "link set tap0 up\n"
                         "link set br0 up\n");
        });
        // Routing the guest's packets on to other networks (NAT). This is
        // the namespace's own setting (podman and docker set it the same
        // way) and stays: other VMs may rely on it (docs/networking.md).
        std::string fwd;
        try {
            fwd = read_file("/proc/sys/net/ipv4/ip_forward");
        } catch (const Error&) {
        }
        if (fwd.rfind("1", 0) != 0) {
            write_sysctl("/proc/sys/net/ipv4/ip_forward", "1");
            spdlog::info("network: turned on net.ipv4.ip_forward in this network namespace");
        }
        made_table_ = true;
        run_or_throw({"nft", "-f", "-"}, "adding nftables table " + table_,
                     nft_ruleset(table_, owner, host_dev_, guest_ip(), net_, 30, o.ports));
        dns_ = host_nameservers();
        if (dns_.empty())
            std::fprintf(stderr, "ocivm: warning: --network bridge: the host's /etc/resolv.conf has no name server "
                                 "the guest can reach (only loopback ones); the guest gets no DNS\n");
        spdlog::info("network: bridge {} {}/30, guest {}, table ip {}", host_dev_, ipv4_text(gateway_ip()),
                     ipv4_text(guest_ip()), table_);
    } catch (...) {
        teardown();
        throw;
    }
}

void Bridge::teardown() noexcept {
    try {
        if (made_table_) run_command({"nft", "delete", "table", "ip", table_});
        // The namespace (and the veth with it) goes when its last fd does,
        // but the kernel removes it later, from a work queue: deleting the
        // host's end now means nothing is seen after ocivm has gone.
        if (made_link_ && ::access(("/sys/class/net/" + host_dev_).c_str(), F_OK) == 0)
            run_command({"ip", "link", "del", host_dev_});
    } catch (const std::exception& e) {
        spdlog::warn("network tear-down: {}", e.what());
    }
    made_table_ = made_link_ = false;
    tap_.reset();
    netns_.reset();
}

Bridge::~Bridge() { teardown(); }

}  // namespace ocivm::net
