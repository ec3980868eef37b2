#pragma once
// A VM's network: none, user-mode (passt, or QEMU's own "slirp" user
// network) or bridged (root: a network namespace of its own with a tap
// device, a veth pair to ocivm's namespace and nftables NAT). `Network` is
// created before QEMU starts and owns everything it made; destroying it
// removes all of it (docs/networking.md lists what and how).
//
// Everything QEMU needs comes out as a QemuNetdev (qemu_args turns it into
// QEMU's words), everything the guest needs as one kernel argument that
// ocivm-init reads (guest/net_arg.h).
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace ocivm::net {

// User = passt when installed, else Slirp (QEMU's user network) with a
// warning; Passt and Slirp force one (benchmarks, tests).
enum class Mode { None, User, Passt, Slirp, Bridge };

// A bad --network/-p/--subnet value; the CLI turns it into a usage error
// (exit 125). The message says the accepted form.
struct SpecError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// "none", "user", "passt", "slirp", "bridge"; SpecError otherwise.
Mode parse_mode(const std::string& s);
const char* mode_name(Mode m);

struct PortForward {
    std::string host_ip = "127.0.0.1";
    uint16_t host_port = 0, guest_port = 0;
    bool udp = false;
    // podman's style: "127.0.0.1:8080->80/tcp"
    std::string text() const;
    bool operator==(const PortForward&) const = default;
};

// [IP:]HOSTPORT:GUESTPORT[/tcp|/udp], IP a dotted IPv4 address (0.0.0.0:
// every address); the host side is 127.0.0.1 unless an IP is given.
// Throws SpecError.
PortForward parse_port(const std::string& spec);

// Binds each forward's host address and port (tcp or udp) and lets go
// again: a port another program holds is an Error naming it and what to
// do, before anything is started. Two forwards of the same host port and
// protocol are an Error too.
void check_ports_free(const std::vector<PortForward>& ports);

// An IPv4 network "A.B.C.D/N" with 8 <= N <= 30; SpecError otherwise.
struct Subnet {
    uint32_t base = 0;  // host byte order, host bits zero
    unsigned prefix = 0;
};
Subnet parse_subnet(const std::string& cidr);
std::string ipv4_text(uint32_t host_order);

struct NetworkOptions {
    Mode mode = Mode::None;
    std::vector<PortForward> ports;
    std::string vm_name;
    std::string subnet = "10.89.0.0/16";  // bridge: one /30 per VM from it
    std::string state_dir;                // passt.log, network.json
    bool microvm = true;                  // virtio-net-device, else virtio-net-pci
};

// What QEMU gets: backend "stream" (passt's end of a socketpair, fd),
// "tap" (fd) or "user" (QEMU's user network, options in user_opts); an
// empty backend means no network device at all.
struct QemuNetdev {
    std::string backend;
    int fd = -1;  // ours; stays open as long as the Network
    std::string user_opts;
    std::string device = "virtio-net-device";
    std::string mac;
    bool active() const { return !backend.empty(); }
};

// QEMU's -netdev/-device words; `pass` hands an fd to QEMU and returns its
// number there (qemu_argv's numbering).
std::vector<std::string> qemu_args(const QemuNetdev& n, const std::function<std::string(int)>& pass);

// What `ps` and `inspect` show.
struct Description {
    std::string mode;  // none, passt, slirp, bridge
    std::string address, gateway;  // "10.0.2.15/24", "10.0.2.2"
    std::vector<std::string> dns;
    std::vector<std::string> ports;  // PortForward::text()
    std::string host_device, netns, nft_table;  // bridge
    // bridge: the network namespace host_device and nft_table are in (that
    // of the ocivm that set it up), st_dev and st_ino of its ns/net file:
    // net::cleanup touches them only from that namespace.
    uint64_t host_netns_dev = 0, host_netns_ino = 0;
    std::string to_json() const;
};

class Network {
public:
    // Sets the network up (passt started and listening, or the bridge's
    // namespace, devices and rules in place). Throws Error with what
    // failed and what to do; whatever was made by then is removed again.
    explicit Network(const NetworkOptions& o);
    ~Network();
    Network(const Network&) = delete;
    Network& operator=(const Network&) = delete;

    const QemuNetdev& qemu() const { return qemu_; }
    // The guest kernel command-line arguments ("ocivm.net=..."), may be empty.
    const std::vector<std::string>& kernel_args() const { return kargs_; }
    // Guest modules to load, by name (dependencies are resolved by the
    // initramfs builder).
    const std::vector<std::string>& guest_modules() const { return modules_; }
    const Description& description() const { return desc_; }

    struct Impl;

private:
    QemuNetdev qemu_;
    std::vector<std::string> kargs_, modules_;
    Description desc_;
    std::unique_ptr<Impl> impl_;
};

// Removes what a VM's network left when its ocivm could not (kill -9):
// the nft table and the host's veth end recorded in STATE_DIR/network.json,
// and then the record. Only from the network namespace the record names
// (names are looked up in the caller's namespace: elsewhere they would miss
// the real objects, or hit another's of the same name): from any other, or
// for a record that names none, nothing is touched and the record stays;
// the result then says what is left where and how to remove it. Empty when
// nothing is left for anyone (no record, not bridged, removed); never throws.
std::string cleanup(const std::string& state_dir);

// The nftables ruleset of a bridged VM (one table, "ip NAME", its comment
// OWNER: the VM's state directory): masquerade for the VM's /30 and a DNAT
// per -p forward, for connections from this host (output) and from
// elsewhere (prerouting). Exposed for the tests.
std::string nft_ruleset(const std::string& table, const std::string& owner, const std::string& host_dev,
                        uint32_t guest_ip, uint32_t net_base, unsigned prefix, const std::vector<PortForward>& ports);
// Host-side names are unique per state directory, not per VM name: two
// runtime directories (OCIVM_RUNTIME_DIR) may each run a VM "web" in one
// namespace.
// "ocivm-" + the VM's name reduced to [A-Za-z0-9_-] (at most 31 of them),
// "-" and a hash of STATE_DIR: at most 46 characters.
std::string nft_table_name(const std::string& vm_name, const std::string& state_dir);
// The host's end of the VM's veth pair: "ocivm" + 8 hex digits of a hash
// of STATE_DIR, 13 characters (IFNAMSIZ allows 15).
std::string host_device_name(const std::string& state_dir);

}  // namespace ocivm::net
