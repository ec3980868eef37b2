// Networking pieces that need no VM and no privileges: -p parsing, the port
// check, --subnet, the guest's kernel argument both ways, the nftables
// ruleset of a bridged VM, and QEMU's words for each back end.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "guest/net_arg.h"
#include "net/network.h"
#include "test_util.h"
#include "util/error.h"
#include "util/paths.h"
#include "util/unique_fd.h"

using namespace ocivm;
using net::PortForward;

TEST(NetPorts, ParsesEveryForm) {
    PortForward p = net::parse_port("8080:80");
    EXPECT_EQ(p.host_ip, "127.0.0.1");
    EXPECT_EQ(p.host_port, 8080);
    EXPECT_EQ(p.guest_port, 80);
    EXPECT_FALSE(p.udp);
    EXPECT_EQ(p.text(), "127.0.0.1:8080->80/tcp");

    p = net::parse_port("0.0.0.0:5353:53/udp");
    EXPECT_EQ(p.host_ip, "0.0.0.0");
    EXPECT_TRUE(p.udp);
    EXPECT_EQ(p.text(), "0.0.0.0:5353->53/udp");

    p = net::parse_port("192.0.2.7:65535:1/tcp");
    EXPECT_EQ(p.host_ip, "192.0.2.7");
    EXPECT_EQ(p.host_port, 65535);
    EXPECT_EQ(p.guest_port, 1);
    EXPECT_FALSE(p.udp);
    EXPECT_EQ(net::parse_port("1:2/udp").text(), "127.0.0.1:1->2/udp");
}

TEST(NetPorts, RefusesBadForms) {
    for (const char* bad : {"", "80", ":80", "80:", "8080:80:", "0:80", "80:0", "65536:80", "80:65536", "x:80", "80:y",
                            "-1:80", "+80:80", "8080:80/sctp", "8080:80/", "8080:80/tcp/udp", "1.2.3:8080:80",
                            "localhost:8080:80", "::1:8080:80", "1.2.3.4:5:6:7", "999999:80", " 80:80", "80:80 "}) {
        try {
            net::parse_port(bad);
            ADD_FAILURE() << "accepted '" << bad << "'";
        } catch (const net::SpecError& e) {
            std::string msg = e.what();
            // Every refusal names the value and the form to use.
            EXPECT_NE(msg.find(std::string("'") + bad + "'"), std::string::npos) << msg;
            EXPECT_NE(msg.find("[IP:]HOSTPORT:GUESTPORT[/tcp|/udp]"), std::string::npos) << msg;
        }
    }
}

TEST(NetPorts, Modes) {
    EXPECT_EQ(net::parse_mode("none"), net::Mode::None);
    EXPECT_EQ(net::parse_mode("user"), net::Mode::User);
    EXPECT_EQ(net::parse_mode("passt"), net::Mode::Passt);
    EXPECT_EQ(net::parse_mode("slirp"), net::Mode::Slirp);
    EXPECT_EQ(net::parse_mode("bridge"), net::Mode::Bridge);
    EXPECT_THROW(net::parse_mode("host"), net::SpecError);
    EXPECT_THROW(net::parse_mode(""), net::SpecError);
}

namespace {
// A socket bound to 127.0.0.1 on a port the kernel picks.
UniqueFd bound(int type, uint16_t* port, bool listen_too) {
    UniqueFd s(::socket(AF_INET, type | SOCK_CLOEXEC, 0));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    if (listen_too) {
        EXPECT_EQ(::listen(s.get(), 1), 0);
    }
    socklen_t len = sizeof sa;
    ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&sa), &len);
    *port = ntohs(sa.sin_port);
    return s;
}
}  // namespace

TEST(NetPorts, PortInUseIsRefusedWithItsNumber) {
    uint16_t port;
    UniqueFd held = bound(SOCK_STREAM, &port, true);
    PortForward p = net::parse_port(std::to_string(port) + ":80");
    try {
        net::check_ports_free({p});
        FAIL() << "a port held by a listener passed the check";
    } catch (const Error& e) {
        std::string msg = e.what();
        EXPECT_NE(msg.find(std::to_string(port)), std::string::npos) << msg;
        EXPECT_NE(msg.find("already in use"), std::string::npos) << msg;
    }
    // The same number over udp is another port.
    uint16_t uport;
    UniqueFd uheld = bound(SOCK_DGRAM, &uport, false);
    try {
        net::check_ports_free({net::parse_port(std::to_string(uport) + ":53/udp")});
        FAIL() << "a udp port held by a socket passed the check";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("udp port " + std::to_string(uport) + " on 127.0.0.1 is already in use"),
                  std::string::npos)
            << e.what();
    }
}

TEST(NetPorts, FreePortPassesAndStaysFree) {
    uint16_t port;
    { UniqueFd probe = bound(SOCK_STREAM, &port, false); }  // a port that was free a moment ago
    PortForward p = net::parse_port(std::to_string(port) + ":80");
    EXPECT_NO_THROW(net::check_ports_free({p}));
    // The check let go of it: binding it again works.
    EXPECT_NO_THROW(net::check_ports_free({p}));
}

TEST(NetPorts, SameHostPortTwiceIsRefused) {
    // A port this test holds: the duplicate is what must be reported, not
    // that something holds the port (which a fixed number could be, by
    // anything, and any Error passed).
    uint16_t port;
    UniqueFd held = bound(SOCK_STREAM, &port, true);
    std::string n = std::to_string(port);
    auto refusal = [](const std::vector<PortForward>& ports) {
        try {
            net::check_ports_free(ports);
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string("(accepted)");
    };
    EXPECT_EQ(refusal({net::parse_port(n + ":80"), net::parse_port(n + ":81")}),
              "-p 127.0.0.1:" + n + "->81/tcp and -p 127.0.0.1:" + n +
                  "->80/tcp use the same host port; give each forward a host port of its own");
    EXPECT_EQ(refusal({net::parse_port("0.0.0.0:" + n + ":80"), net::parse_port(n + ":81")}),
              "-p 127.0.0.1:" + n + "->81/tcp and -p 0.0.0.0:" + n +
                  "->80/tcp use the same host port; give each forward a host port of its own");
}

TEST(NetPorts, UnknownHostAddressIsRefused) {
    // TEST-NET-3: no interface of a test machine has it.
    try {
        net::check_ports_free({net::parse_port("203.0.113.77:40002:80")});
        FAIL() << "an address of no interface passed";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("no interface"), std::string::npos) << e.what();
    }
}

TEST(NetSubnet, ParsesAndRefuses) {
    net::Subnet s = net::parse_subnet("10.89.0.0/16");
    EXPECT_EQ(net::ipv4_text(s.base), "10.89.0.0");
    EXPECT_EQ(s.prefix, 16u);
    EXPECT_EQ(net::parse_subnet("192.168.7.4/30").prefix, 30u);
    for (const char* bad : {"10.89.0.0", "10.89.0.1/16", "10.89.0.0/31", "10.0.0.0/7", "10.89.0.0/", "x/16",
                            "10.89.0.0/1a", "10.89.0.0/016x"})
        EXPECT_THROW(net::parse_subnet(bad), net::SpecError) << bad;
}

TEST(NetGuestArg, RoundTrip) {
    guest::NetArg a;
    a.address = "10.0.2.15";
    a.prefix = 24;
    a.gateway = "10.0.2.2";
    a.mtu = 65520;
    a.dns = {"10.0.2.3", "192.0.2.53"};
    std::string arg = guest::format_net_arg(a);
    EXPECT_EQ(arg, "ocivm.net=10.0.2.15/24,gw=10.0.2.2,mtu=65520,dns=10.0.2.3,dns=192.0.2.53");
    EXPECT_EQ(arg.find(' '), std::string::npos);
    guest::NetArg b;
    ASSERT_EQ(guest::parse_net_arg(arg.substr(std::string(guest::kNetArgKey).size()), b), "");
    EXPECT_EQ(b.address, a.address);
    EXPECT_EQ(b.prefix, a.prefix);
    EXPECT_EQ(b.gateway, a.gateway);
    EXPECT_EQ(b.mtu, a.mtu);
    EXPECT_EQ(b.dns, a.dns);

    guest::NetArg bare;
    ASSERT_EQ(guest::parse_net_arg("10.89.0.2/30", bare), "");
    EXPECT_EQ(bare.prefix, 30u);
    EXPECT_TRUE(bare.gateway.empty());
    EXPECT_EQ(bare.mtu, 0u);

    for (const char* bad : {"", "10.0.2.15", "10.0.2.15/33", "10.0.2.15/", "10.0.2/24", "10.0.2.15/24,gw=x",
                            "10.0.2.15/24,mtu=10", "10.0.2.15/24,mtu=70000", "10.0.2.15/24,what=1", "10.0.2.15/24,"}) {
        guest::NetArg n;
        EXPECT_NE(guest::parse_net_arg(bad, n), "") << bad;
    }
}

TEST(NetBridge, RulesetScopedToTheVm) {
    std::string rules = net::nft_ruleset("ocivm-web", "/run/x\"y\\z\n/vms/web", "ocivm1234abcd", 0x0a590006,
                                         0x0a590004, 30,
                                         {net::parse_port("8080:80"), net::parse_port("0.0.0.0:5353:53/udp")});
    EXPECT_NE(rules.find("table ip ocivm-web {\n\tcomment \"/run/x?y?z?/vms/web\"\n"), std::string::npos) << rules;
    // The comment is cut to nft's 128 characters, which it accepts.
    std::string longer = net::nft_ruleset("t", std::string(300, 'a'), "d", 0x0a590006, 0x0a590004, 30, {});
    EXPECT_NE(longer.find("comment \"" + std::string(128, 'a') + "\"\n"), std::string::npos) << longer;
    EXPECT_NE(rules.find("ip daddr 127.0.0.1 tcp dport 8080 dnat to 10.89.0.6:80"), std::string::npos) << rules;
    EXPECT_NE(rules.find("fib daddr type local udp dport 5353 dnat to 10.89.0.6:53"), std::string::npos) << rules;
    EXPECT_NE(rules.find("ip saddr 10.89.0.4/30 oifname != \"ocivm1234abcd\" masquerade"), std::string::npos) << rules;
    EXPECT_NE(rules.find("type nat hook output"), std::string::npos) << rules;
    EXPECT_NE(rules.find("type nat hook prerouting"), std::string::npos) << rules;
    // The loopback forward only for this host (output); the 0.0.0.0 one in
    // both hooks, in prerouting only for this host's own addresses.
    size_t n = 0;
    for (size_t p = 0; (p = rules.find("dnat to", p)) != std::string::npos; ++p) ++n;
    EXPECT_EQ(n, 3u) << rules;
    size_t pre = rules.find("chain prerouting"), out = rules.find("chain output");
    EXPECT_EQ(rules.substr(pre, out - pre).find("127.0.0.1"), std::string::npos) << rules;
    // The guest: no spoofed sources, nothing to this host's loopback, and
    // nothing routed to it but replies and forwards.
    EXPECT_NE(rules.find("iifname \"ocivm1234abcd\" ip saddr != 10.89.0.6 drop"), std::string::npos) << rules;
    EXPECT_NE(rules.find("iifname \"ocivm1234abcd\" ip daddr 127.0.0.0/8 drop"), std::string::npos) << rules;
    EXPECT_NE(rules.find("oifname \"ocivm1234abcd\" ct status dnat accept\n\t\toifname \"ocivm1234abcd\" drop"),
              std::string::npos)
        << rules;
}

TEST(NetBridge, Names) {
    std::string web = net::nft_table_name("web", "/run/ocivm/vms/web");
    EXPECT_EQ(web.rfind("ocivm-web-", 0), 0u) << web;
    EXPECT_EQ(web.size(), std::string("ocivm-web-").size() + 8) << web;
    std::string odd = net::nft_table_name("a b;{}\"x", "/run/ocivm/vms/a b;{}\"x");
    EXPECT_EQ(odd.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"),
              std::string::npos)
        << odd;
    // the hash tells apart names that read the same once reduced
    EXPECT_NE(net::nft_table_name("a b", "/r/vms/a b"), net::nft_table_name("a_b", "/r/vms/a_b"));
    EXPECT_LE(net::nft_table_name(std::string(300, 'x'), "/r/vms/" + std::string(300, 'x')).size(), 46u);
    std::string dev = net::host_device_name("/run/ocivm/vms/web");
    EXPECT_EQ(dev.size(), 13u);
    EXPECT_EQ(dev.rfind("ocivm", 0), 0u);
    EXPECT_NE(dev, net::host_device_name("/run/ocivm/vms/web2"));
    // The same VM name in two runtime directories (OCIVM_RUNTIME_DIR): two
    // VMs that may run at once in one namespace, so different names.
    EXPECT_NE(net::host_device_name("/tmp/a/vms/web"), net::host_device_name("/tmp/b/vms/web"));
    EXPECT_NE(net::nft_table_name("web", "/tmp/a/vms/web"), net::nft_table_name("web", "/tmp/b/vms/web"));
}

namespace {
// A state directory holding a bridged VM's network.json with HOST_NETNS.
struct BridgeRecord {
    std::string dir = test::make_temp_dir();
    // The names the VM of dir has (nothing of them exists), or others.
    explicit BridgeRecord(const std::string& host_netns, std::string dev = {}, std::string table = {}) {
        if (dev.empty()) dev = net::host_device_name(dir);
        if (table.empty()) table = net::nft_table_name("unittest", dir);
        write_file_atomic(dir + "/network.json", "{\"mode\":\"bridge\",\"host_device\":\"" + dev +
                                                     "\",\"nft_table\":\"" + table + "\"" + host_netns + "}\n");
    }
    ~BridgeRecord() { test::remove_tree(dir); }
    bool kept() const { return ::access((dir + "/network.json").c_str(), F_OK) == 0; }
};
struct stat own_netns() {
    struct stat st{};
    EXPECT_EQ(::stat("/proc/thread-self/ns/net", &st), 0);
    return st;
}
}  // namespace

TEST(NetCleanup, OnlyInTheNamespaceTheRecordNames) {
    struct stat ns = own_netns();
    {
        // Another namespace's record: nothing looked up here, the record stays.
        BridgeRecord other(",\"host_netns\":{\"dev\":" + std::to_string(ns.st_dev) +
                           ",\"ino\":" + std::to_string(ns.st_ino + 1) + "}");
        std::string left = net::cleanup(other.dir);
        EXPECT_TRUE(other.kept());
        EXPECT_NE(left.find("net:[" + std::to_string(ns.st_ino + 1) + "]"), std::string::npos) << left;
        EXPECT_NE(left.find("nft delete table ip ocivm-unittest-"), std::string::npos) << left;
    }
    {
        // An older ocivm's record names no namespace: not ours to judge.
        BridgeRecord old("");
        EXPECT_NE(net::cleanup(old.dir), "");
        EXPECT_TRUE(old.kept());
    }
    {
        // This namespace's: cleaned (nothing of these names exists) and consumed.
        BridgeRecord here(",\"host_netns\":{\"dev\":" + std::to_string(ns.st_dev) +
                          ",\"ino\":" + std::to_string(ns.st_ino) + "}");
        EXPECT_EQ(net::cleanup(here.dir), "");
        EXPECT_FALSE(here.kept());
    }
    {
        // A record naming what is not this VM's (planted in a runtime
        // directory): nothing deleted, no words for nft's command line.
        std::string here_ns = ",\"host_netns\":{\"dev\":" + std::to_string(ns.st_dev) + ",\"ino\":" +
                              std::to_string(ns.st_ino) + "}";
        BridgeRecord planted(here_ns, "eth0", "filter; flush ruleset");
        std::string left = net::cleanup(planted.dir);
        EXPECT_NE(left.find("not this VM's"), std::string::npos) << left;
        EXPECT_TRUE(planted.kept());
        BridgeRecord other_vm(here_ns, "", net::nft_table_name("unittest", "/some/other/vms/x"));
        EXPECT_NE(net::cleanup(other_vm.dir).find("not this VM's"), std::string::npos);
    }
    {
        BridgeRecord none("");
        test::remove_tree(none.dir + "/network.json");
        EXPECT_EQ(net::cleanup(none.dir), "");
    }
}

TEST(NetCleanup, DescriptionRecordsTheHostNamespace) {
    net::Description d;
    d.mode = "bridge";
    d.host_netns_dev = 4;
    d.host_netns_ino = 4026531840u;
    EXPECT_NE(d.to_json().find("\"host_netns\":{\"dev\":4,\"ino\":4026531840}"), std::string::npos) << d.to_json();
    d.host_netns_ino = 0;
    EXPECT_EQ(d.to_json().find("host_netns"), std::string::npos) << d.to_json();
}

TEST(NetQemu, ArgsPerBackend) {
    int passed = -1;
    auto pass = [&passed](int fd) { passed = fd; return std::string("3"); };
    net::QemuNetdev n;
    EXPECT_TRUE(net::qemu_args(n, pass).empty());
    n.backend = "stream";
    n.fd = 42;
    n.mac = "52:54:00:01:02:03";
    auto a = net::qemu_args(n, pass);
    ASSERT_EQ(a.size(), 4u);
    EXPECT_EQ(a[1], "stream,id=net0,server=off,addr.type=fd,addr.str=3");
    EXPECT_EQ(a[3], "virtio-net-device,netdev=net0,mac=52:54:00:01:02:03");
    EXPECT_EQ(passed, 42);
    n.backend = "tap";
    n.device = "virtio-net-pci";
    a = net::qemu_args(n, pass);
    EXPECT_EQ(a[1], "tap,id=net0,vhost=off,fd=3");
    EXPECT_EQ(a[3].rfind("virtio-net-pci,netdev=net0", 0), 0u);
    n.backend = "user";
    n.user_opts = "hostfwd=tcp:127.0.0.1:8080-10.0.2.15:80";
    EXPECT_EQ(net::qemu_args(n, pass)[1], "user,id=net0,hostfwd=tcp:127.0.0.1:8080-10.0.2.15:80");
}

TEST(NetNetwork, NoneMakesNothingAndRefusesPorts) {
    net::NetworkOptions o;
    net::Network none(o);
    EXPECT_FALSE(none.qemu().active());
    EXPECT_TRUE(none.kernel_args().empty());
    EXPECT_TRUE(none.guest_modules().empty());
    o.ports = {net::parse_port("40003:80")};  // refused before any port is looked at
    try {
        net::Network refused(o);
        FAIL() << "-p with --network none was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("-p needs a network"), std::string::npos) << e.what();
    }
}
