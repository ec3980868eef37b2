// -p parsing, the port check before boot, and the text forms of addresses.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "net/network.h"
#include "util/error.h"
#include "util/unique_fd.h"

namespace ocivm::net {

namespace {

const char kPortForm[] = "use [IP:]HOSTPORT:GUESTPORT[/tcp|/udp], e.g. 8080:80 or 0.0.0.0:5353:53/udp";

bool parse_u16(const std::string& s, uint16_t& out) {
    if (s.empty() || s.size() > 5 || s.find_first_not_of("0123456789") != std::string::npos) return false;
    unsigned long v = std::stoul(s);
    if (v == 0 || v > 65535) return false;
    out = static_cast<uint16_t>(v);
    return true;
}

bool parse_ipv4(const std::string& s, uint32_t& host_order) {
    in_addr a{};
    // inet_pton takes exactly the dotted quad (no "1.2.3", no octal).
    if (s.empty() || ::inet_pton(AF_INET, s.c_str(), &a) != 1) return false;
    host_order = ntohl(a.s_addr);
    return true;
}

}  // namespace

Mode parse_mode(const std::string& s) {
    if (s == "none") return Mode::None;
    if (s == "user") return Mode::User;
    if (s == "passt") return Mode::Passt;
    if (s == "slirp") return Mode::Slirp;
    if (s == "bridge") return Mode::Bridge;
    throw SpecError("invalid --network '" + s + "': use none, user, passt, slirp or bridge");
}

const char* mode_name(Mode m) {
    switch (m) {
        case Mode::None: return "none";
        case Mode::User: return "user";
        case Mode::Passt: return "passt";
        case Mode::Slirp: return "slirp";
        case Mode::Bridge: return "bridge";
    }
    return "?";
}

std::string PortForward::text() const {
    return host_ip + ":" + std::to_string(host_port) + "->" + std::to_string(guest_port) + (udp ? "/udp" : "/tcp");
}

PortForward parse_port(const std::string& spec) {
    auto bad = [&spec](const std::string& why) {
        return SpecError("invalid --publish '" + spec + "': " + why + "; " + kPortForm);
    };
    PortForward p;
    std::string s = spec;
    size_t slash = s.find('/');
    if (slash != std::string::npos) {
        std::string proto = s.substr(slash + 1);
        if (proto == "udp") p.udp = true;
        else if (proto != "tcp") throw bad("unknown protocol '" + proto + "'");
        s.erase(slash);
    }
    std::vector<std::string> parts;
    for (size_t a = 0;;) {
        size_t c = s.find(':', a);
        parts.push_back(s.substr(a, c == std::string::npos ? std::string::npos : c - a));
        if (c == std::string::npos) break;
        a = c + 1;
    }
    if (parts.size() == 3) {
        uint32_t ip;
        if (!parse_ipv4(parts[0], ip)) throw bad("'" + parts[0] + "' is not an IPv4 address");
        p.host_ip = ipv4_text(ip);
        parts.erase(parts.begin());
    } else if (parts.size() != 2) {
        throw bad(parts.size() == 1 ? "no guest port" : "too many ':'");
    }
    if (!parse_u16(parts[0], p.host_port)) throw bad("host port '" + parts[0] + "' is not a number from 1 to 65535");
    if (!parse_u16(parts[1], p.guest_port)) throw bad("guest port '" + parts[1] + "' is not a number from 1 to 65535");
    return p;
}

void check_ports_free(const std::vector<PortForward>& ports) {
    // Two forwards of one port are a mistake in the command line whatever
    // else holds the port: said first, the same on every host.
    for (size_t i = 0; i < ports.size(); ++i) {
        const auto& p = ports[i];
        for (size_t j = 0; j < i; ++j) {
            const auto& q = ports[j];
            if (q.host_port == p.host_port && q.udp == p.udp &&
                (q.host_ip == p.host_ip || q.host_ip == "0.0.0.0" || p.host_ip == "0.0.0.0"))
                throw Error("-p " + p.text() + " and -p " + q.text() +
                            " use the same host port; give each forward a host port of its own");
        }
    }
    for (const auto& p : ports) {
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(p.host_port);
        if (::inet_pton(AF_INET, p.host_ip.c_str(), &sa.sin_addr) != 1)
            throw Error("-p " + p.text() + ": '" + p.host_ip + "' is not an IPv4 address");
        UniqueFd s(::socket(AF_INET, (p.udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC, 0));
        if (!s) throw_errno("socket for the port check", errno);
        // SO_REUSEADDR as the forwarder (passt, QEMU) binds: a TCP port in
        // TIME_WAIT is no conflict, a listener is.
        int one = 1;
        if (!p.udp) ::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (::bind(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) continue;
        int e = errno;
        std::string what = "cannot publish " + p.text() + ": " + (p.udp ? "udp" : "tcp") + " port " +
                           std::to_string(p.host_port) + " on " + p.host_ip;
        if (e == EADDRINUSE)
            throw Error(what + " is already in use by another program; pick another host port (-p OTHER:" +
                        std::to_string(p.guest_port) + ") or stop that program");
        if (e == EADDRNOTAVAIL)
            throw Error(what + ": no interface of this host has that address; give one it has, 127.0.0.1 or 0.0.0.0");
        if (e == EACCES)
            throw Error(what + ": permission denied (ports below 1024 need root or "
                        "net.ipv4.ip_unprivileged_port_start); pick a host port from 1024 up");
        throw_errno(what, e);
    }
}

Subnet parse_subnet(const std::string& cidr) {
    auto bad = [&cidr](const std::string& why) {
        return SpecError("invalid --subnet '" + cidr + "': " + why + "; use an IPv4 network A.B.C.D/N, N from 8 to 30 "
                         "(default 10.89.0.0/16)");
    };
    size_t slash = cidr.find('/');
    if (slash == std::string::npos) throw bad("no prefix length");
    uint32_t ip;
    if (!parse_ipv4(cidr.substr(0, slash), ip)) throw bad("'" + cidr.substr(0, slash) + "' is not an IPv4 address");
    std::string len = cidr.substr(slash + 1);
    if (len.empty() || len.size() > 2 || len.find_first_not_of("0123456789") != std::string::npos)
        throw bad("bad prefix length");
    unsigned n = static_cast<unsigned>(std::stoul(len));
    if (n < 8 || n > 30) throw bad("prefix length " + len + " out of range");
    uint32_t mask = n == 0 ? 0 : ~uint32_t{0} << (32 - n);
    if (ip & ~mask) throw bad("host bits set (the network is " + ipv4_text(ip & mask) + "/" + len + ")");
    return {ip, n};
}

std::string ipv4_text(uint32_t host_order) {
    in_addr a{htonl(host_order)};
    char buf[INET_ADDRSTRLEN];
    ::inet_ntop(AF_INET, &a, buf, sizeof buf);
    return buf;
}

}  // namespace ocivm::net
