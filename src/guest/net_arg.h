#pragma once
// The guest's network configuration as one kernel command-line argument,
// written by the host (net::Network) and read by ocivm-init
// (guest/net_config.cpp): both include this header, so the two cannot
// disagree on the format.
//
//   ocivm.net=ADDRESS/PREFIX[,gw=GATEWAY][,mtu=MTU][,dns=SERVER]...
//
// IPv4 only, dotted quads; no spaces (the kernel splits its command line
// on them).
#include <arpa/inet.h>

#include <string>
#include <vector>

namespace ocivm::guest {

inline constexpr const char* kNetArgKey = "ocivm.net=";

struct NetArg {
    std::string address;  // "10.0.2.15"
    unsigned prefix = 24;
    std::string gateway;  // "" = no default route
    unsigned mtu = 0;     // 0 = the driver's default
    std::vector<std::string> dns;
};

inline std::string format_net_arg(const NetArg& n) {
    std::string s = std::string(kNetArgKey) + n.address + "/" + std::to_string(n.prefix);
    if (!n.gateway.empty()) s += ",gw=" + n.gateway;
    if (n.mtu) s += ",mtu=" + std::to_string(n.mtu);
    for (auto& d : n.dns) s += ",dns=" + d;
    return s;
}

inline bool net_ipv4_ok(const std::string& s) {
    in_addr a{};
    return ::inet_pton(AF_INET, s.c_str(), &a) == 1;
}

// Parses the value after "ocivm.net="; returns "" or what is wrong.
inline std::string parse_net_arg(const std::string& value, NetArg& out) {
    NetArg n;
    std::vector<std::string> parts;
    for (size_t a = 0;;) {
        size_t c = value.find(',', a);
        parts.push_back(value.substr(a, c == std::string::npos ? std::string::npos : c - a));
        if (c == std::string::npos) break;
        a = c + 1;
    }
    size_t slash = parts[0].find('/');
    if (slash == std::string::npos) return "no /PREFIX after the address '" + parts[0] + "'";
    n.address = parts[0].substr(0, slash);
    if (!net_ipv4_ok(n.address)) return "'" + n.address + "' is not an IPv4 address";
    std::string len = parts[0].substr(slash + 1);
    if (len.empty() || len.size() > 2 || len.find_first_not_of("0123456789") != std::string::npos ||
        std::stoul(len) > 32)
        return "bad prefix length '" + len + "'";
    n.prefix = static_cast<unsigned>(std::stoul(len));
    for (size_t i = 1; i < parts.size(); ++i) {
        const std::string& p = parts[i];
        size_t eq = p.find('=');
        std::string key = p.substr(0, eq), val = eq == std::string::npos ? "" : p.substr(eq + 1);
        if (key == "gw" && net_ipv4_ok(val)) n.gateway = val;
        else if (key == "dns" && net_ipv4_ok(val)) n.dns.push_back(val);
        else if (key == "mtu" && !val.empty() && val.size() <= 5 && val.find_first_not_of("0123456789") == std::string::npos &&
                 std::stoul(val) >= 68 && std::stoul(val) <= 65535)
            n.mtu = static_cast<unsigned>(std::stoul(val));
        else return "bad field '" + p + "'";
    }
    out = n;
    return "";
}

}  // namespace ocivm::guest
