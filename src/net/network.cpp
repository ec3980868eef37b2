// The Network object: user-mode back ends (passt, QEMU's slirp) here, the
// bridge in bridge.cpp.
#include "net/network.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "guest/net_arg.h"
#include "net/bridge.h"
#include "net/hash.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"
#include "util/paths.h"
#include "util/process.h"
#include "util/subprocess.h"
#include "util/unique_fd.h"

namespace ocivm::net {

namespace {

// The same addresses for passt and slirp (QEMU's defaults), so a guest
// sees one layout whichever runs: itself at .15, the gateway at .2 (which
// reaches the host's loopback), DNS at .3 (forwarded to the host's resolver).
constexpr const char* kUserAddress = "10.0.2.15";
constexpr unsigned kUserPrefix = 24;
constexpr const char* kUserGateway = "10.0.2.2";
constexpr const char* kUserDns = "10.0.2.3";
// passt's own default MTU (802.3's maximum frame, rounded): the guest
// sends 64 KiB frames instead of 1500-byte ones, the main reason passt
// outruns slirp (whose MTU is fixed at 1500).
constexpr unsigned kPasstMtu = 65520;

// Whether something (passt) now holds the port: our own bind fails.
bool port_taken(const PortForward& p) {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(p.host_port);
    ::inet_pton(AF_INET, p.host_ip.c_str(), &sa.sin_addr);
    UniqueFd s(::socket(AF_INET, (p.udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC, 0));
    if (!s) return false;
    int one = 1;
    if (!p.udp) ::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    return ::bind(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0 && errno == EADDRINUSE;
}

std::string last_lines(const std::string& path) {
    std::string text;
    try {
        text = read_file(path);
    } catch (const Error&) {
        return "";
    }
    std::string out;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t nl = text.find('\n', pos);
        if (nl == std::string::npos) nl = text.size();
        std::string line = text.substr(pos, nl - pos);
        pos = nl + 1;
        // This passt cannot reach a syslog daemon and says so per line.
        if (line.empty() || line.rfind("Failed to send", 0) == 0) continue;
        out += (out.empty() ? "" : "; ") + line;
    }
    return out;
}

// passt takes its outbound interface from the IPv4 default route and will
// not start without one (a namespace with only lo, as tests make); slirp
// needs none.
bool have_default_route() {
    std::string table;
    try {
        table = read_file("/proc/net/route");
    } catch (const Error&) {
        return true;  // cannot tell: let passt say what it thinks
    }
    size_t pos = table.find('\n');  // the header
    while (pos != std::string::npos && pos + 1 < table.size()) {
        size_t nl = table.find('\n', pos + 1);
        std::string line = table.substr(pos + 1, nl == std::string::npos ? std::string::npos : nl - pos - 1);
        char dev[64];
        char dest[16];
        if (std::sscanf(line.c_str(), "%63s %15s", dev, dest) == 2 && std::string(dest) == "00000000") return true;
        pos = nl;
    }
    return false;
}

}  // namespace

struct Network::Impl {
    UniqueFd qemu_end;  // passt's peer socket or the tap: QEMU gets a copy
    ChildProcess passt;
    std::unique_ptr<Bridge> bridge;
};

std::vector<std::string> qemu_args(const QemuNetdev& n, const std::function<std::string(int)>& pass) {
    if (!n.active()) return {};
    std::string netdev;
    if (n.backend == "stream") netdev = "stream,id=net0,server=off,addr.type=fd,addr.str=" + pass(n.fd);
    else if (n.backend == "tap") netdev = "tap,id=net0,vhost=off,fd=" + pass(n.fd);
    else if (n.backend == "user") netdev = "user,id=net0" + (n.user_opts.empty() ? "" : "," + n.user_opts);
    else throw Error("unknown network back end '" + n.backend + "'");
    std::string dev = n.device + ",netdev=net0";
    if (!n.mac.empty()) dev += ",mac=" + n.mac;
    return {"-netdev", netdev, "-device", dev};
}

Network::Network(const NetworkOptions& o) : impl_(std::make_unique<Impl>()) {
    Mode mode = o.mode;
    desc_.mode = "none";
    for (auto& p : o.ports) desc_.ports.push_back(p.text());
    if (mode == Mode::None) {
        if (!o.ports.empty()) throw Error("-p needs a network, and --network none has none: leave --network out or give user, passt, slirp or bridge");
        return;
    }
    if (mode == Mode::User) {
        mode = Mode::Slirp;
        if (!have_program("passt"))
            std::fprintf(stderr, "ocivm: warning: passt is not installed; using QEMU's slower user network "
                                 "(apt-get install passt)\n");
        else if (!have_default_route())
            std::fprintf(stderr, "ocivm: warning: no IPv4 default route in this network namespace, which passt "
                                 "needs; using QEMU's slower user network\n");
        else
            mode = Mode::Passt;
    }
    if (mode == Mode::Passt && !have_program("passt"))
        throw Error("--network passt: passt is not installed; apt-get install passt (or use --network slirp)");
    if (mode == Mode::Passt && !have_default_route())
        throw Error("--network passt: this network namespace has no IPv4 default route, and passt takes its "
                    "outbound interface from it; add one, or use --network slirp");
    check_ports_free(o.ports);

    qemu_.device = o.microvm ? "virtio-net-device" : "virtio-net-pci";
    // A stable MAC per VM name (locally administered range QEMU uses).
    uint32_t h = fnv1a(o.vm_name);
    char mac[32];
    std::snprintf(mac, sizeof mac, "52:54:00:%02x:%02x:%02x", (h >> 16) & 0xff, (h >> 8) & 0xff, h & 0xff);
    qemu_.mac = mac;
    // tcp_diag: a clone drops the connections of the VM it was cloned from (guest/restore.cpp).
    modules_ = {"virtio_net", "tcp_diag"};
    guest::NetArg arg;

    if (mode == Mode::Passt || mode == Mode::Slirp) {
        arg.address = kUserAddress;
        arg.prefix = kUserPrefix;
        arg.gateway = kUserGateway;
        arg.dns = {kUserDns};
        desc_.mode = mode_name(mode);
        desc_.address = std::string(kUserAddress) + "/" + std::to_string(kUserPrefix);
        desc_.gateway = kUserGateway;
        desc_.dns = arg.dns;
    }
    if (mode == Mode::Slirp) {
        qemu_.backend = "user";
        std::string opts = std::string("net=10.0.2.0/24,host=") + kUserGateway + ",dns=" + kUserDns +
                           ",dhcpstart=" + kUserAddress + ",ipv6=off";
        for (auto& p : o.ports)
            opts += ",hostfwd=" + std::string(p.udp ? "udp" : "tcp") + ":" + p.host_ip + ":" +
                    std::to_string(p.host_port) + "-" + kUserAddress + ":" + std::to_string(p.guest_port);
        qemu_.user_opts = opts;
    } else if (mode == Mode::Passt) {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) throw_errno("socketpair for passt", errno);
        UniqueFd mine(sv[0]), theirs(sv[1]);
        std::string log = o.state_dir + "/passt.log";
        UniqueFd logfd(::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
        if (!logfd) throw_errno("cannot create " + log, errno);
        SpawnOptions so;
        // -f: no daemon, -1: exit when QEMU's end closes (passt drops to
        // nobody, which clears the parent-death signal: this is what ends it
        // after a kill -9 of ocivm), -4: the guest is IPv4 only.
        so.argv = {"passt", "-f", "-q", "-1", "-4", "-F", "3", "-a", kUserAddress, "-n", std::to_string(kUserPrefix),
                   "-g", kUserGateway, "--dns-forward", kUserDns, "-m", std::to_string(kPasstMtu)};
        for (auto& p : o.ports)
            so.argv.insert(so.argv.end(), {p.udp ? "-u" : "-t", p.host_ip + "/" + std::to_string(p.host_port) + ":" +
                                                                    std::to_string(p.guest_port)});
        so.fds = {theirs.get()};
        so.stdout_fd = logfd.get();
        so.stderr_fd = logfd.get();
        so.new_process_group = true;  // a Ctrl-C is ocivm's to handle
        impl_->passt = ChildProcess::spawn(so, "apt-get install passt");
        theirs.reset();
        // passt binds the forwarded ports as it starts; QEMU is started only
        // once they are bound, so a forward that fails is an error now, not
        // a connection refused later.
        uint64_t deadline = mono_ns() + 10'000'000'000ull;
        for (size_t i = 0; i < o.ports.size();) {
            int st = 0;
            if (impl_->passt.reap(&st))
                throw Error("passt exited (status " + std::to_string(exit_code(st)) + ") before the VM started: " +
                            last_lines(log) + " (log: " + log + ")");
            if (port_taken(o.ports[i])) {
                ++i;
                continue;
            }
            if (mono_ns() > deadline)
                throw Error("passt did not bind " + o.ports[i].text() + " within 10 s (log: " + log + ")");
            ::usleep(5000);
        }
        qemu_.backend = "stream";
        impl_->qemu_end = std::move(mine);
        qemu_.fd = impl_->qemu_end.get();
        arg.mtu = kPasstMtu;
        spdlog::info("network: passt (pid {}), guest {}, gateway {} (the host's loopback)", impl_->passt.pid(),
                     desc_.address, desc_.gateway);
    } else if (mode == Mode::Bridge) {
        impl_->bridge = std::make_unique<Bridge>(o);
        const Bridge& b = *impl_->bridge;
        qemu_.backend = "tap";
        qemu_.fd = b.tap_fd();
        arg.address = ipv4_text(b.guest_ip());
        arg.prefix = b.prefix();
        arg.gateway = ipv4_text(b.gateway_ip());
        arg.dns = b.dns();
        desc_.mode = "bridge";
        desc_.address = arg.address + "/" + std::to_string(arg.prefix);
        desc_.gateway = arg.gateway;
        desc_.dns = arg.dns;
        desc_.host_device = b.host_device();
        desc_.nft_table = b.nft_table();
        desc_.netns = b.netns_text();
        desc_.host_netns_dev = b.host_netns_dev();
        desc_.host_netns_ino = b.host_netns_ino();
    }
    kargs_ = {guest::format_net_arg(arg)};
    if (!o.state_dir.empty()) {
        try {
            write_file_atomic(o.state_dir + "/network.json", desc_.to_json() + "\n");
        } catch (const Error& e) {
            spdlog::warn("network: {}", e.what());
        }
    }
}

Network::~Network() = default;

std::string Description::to_json() const {
    nlohmann::json j = {{"mode", mode}, {"ports", ports}};
    if (!address.empty()) j["address"] = address;
    if (!gateway.empty()) j["gateway"] = gateway;
    if (!dns.empty()) j["dns"] = dns;
    if (!host_device.empty()) j["host_device"] = host_device;
    if (!netns.empty()) j["netns"] = netns;
    if (!nft_table.empty()) j["nft_table"] = nft_table;
    if (host_netns_ino) j["host_netns"] = {{"dev", host_netns_dev}, {"ino", host_netns_ino}};
    return j.dump();
}

std::string cleanup(const std::string& state_dir) {
    std::string text;
    try {
        text = read_file(state_dir + "/network.json");
    } catch (const Error&) {
        return "";
    }
    nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    if (!j.is_object() || j.value("mode", std::string()) != "bridge") return "";
    std::string dev = j.value("host_device", std::string()), table = j.value("nft_table", std::string());
    uint64_t rec_dev = 0, rec_ino = 0;
    if (auto n = j.find("host_netns"); n != j.end() && n->is_object()) {
        rec_dev = n->value("dev", uint64_t{0});
        rec_ino = n->value("ino", uint64_t{0});
    }
    struct stat self;
    bool here = rec_ino != 0 && ::stat("/proc/thread-self/ns/net", &self) == 0 && self.st_dev == rec_dev &&
                self.st_ino == rec_ino;
    if (!here) {
        std::string where = rec_ino ? "network namespace net:[" + std::to_string(rec_ino) + "]"
                                    : "a network namespace the record does not name (an older ocivm's)";
        return "the bridged VM of " + state_dir + " ran in " + where +
               ", not this one: its nft table ip " + table + " and device " + dev +
               " may still be there; run ocivm from that namespace (ip netns exec NAME ocivm ...), or there: nft "
               "delete table ip " + table + "; ip link del " + dev;
    }
    // The names are ours to derive, not the record's to choose: a record
    // planted in a runtime directory must not make root delete another
    // device or table (or smuggle words into nft's command line).
    std::string abs = state_dir.empty() || state_dir[0] == '/'
                          ? state_dir
                          : std::filesystem::absolute(state_dir).lexically_normal().string();
    std::string want_dev = host_device_name(abs), suffix = want_dev.substr(5);
    bool table_ok = table.size() > 15 && table.rfind("ocivm-", 0) == 0 && table.size() <= 6 + 31 + 9 &&
                    table.compare(table.size() - 9, 9, "-" + suffix) == 0;
    for (char ch : table)
        if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '_') table_ok = false;
    if (dev != want_dev || !table_ok)
        return "the network record of " + state_dir + " names a device (" + dev.substr(0, 40) + ") or table (" +
               table.substr(0, 60) + ") that is not this VM's; nothing removed";
    Bridge::remove_leftovers(dev, table);
    // Done: a later clean-up of the same directory need not run nft again.
    ::unlink((state_dir + "/network.json").c_str());
    return "";
}

}  // namespace ocivm::net
