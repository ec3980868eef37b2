#pragma once
// --network bridge (root): the VM's own network namespace, held only by an
// fd of this process (no /run/netns name), with the tap QEMU gets and a
// bridge joining it to one end of a veth pair; the other end stays in
// ocivm's namespace with the gateway address of the VM's /30. One nftables
// table per VM masquerades the /30 and DNATs the -p forwards. Everything
// but the table and the host's veth end vanishes with the last fd; those
// two are removed by the destructor, or by net::cleanup after a kill -9.
// Both carry the VM's state directory (the table as its comment, the
// device as its alias): whose they are is visible in `nft list table` and
// `ip link`, and the test suite's leak check judges only its own.
#include <cstdint>
#include <string>
#include <vector>

#include "net/network.h"
#include "util/unique_fd.h"

namespace ocivm::net {

class Bridge {
public:
    explicit Bridge(const NetworkOptions& o);
    ~Bridge();
    Bridge(const Bridge&) = delete;
    Bridge& operator=(const Bridge&) = delete;

    int tap_fd() const { return tap_.get(); }
    uint32_t guest_ip() const { return net_ + 2; }
    uint32_t gateway_ip() const { return net_ + 1; }
    unsigned prefix() const { return 30; }
    const std::vector<std::string>& dns() const { return dns_; }
    const std::string& host_device() const { return host_dev_; }
    const std::string& nft_table() const { return table_; }
    const std::string& netns_text() const { return netns_text_; }
    // The namespace the host device and the table are in (this process's).
    uint64_t host_netns_dev() const { return host_netns_dev_; }
    uint64_t host_netns_ino() const { return host_netns_ino_; }

    // Removes the host device and the nft table if they exist; never throws.
    static void remove_leftovers(const std::string& host_dev, const std::string& table);

private:
    void teardown() noexcept;

    std::string host_dev_, table_, netns_text_;
    uint64_t host_netns_dev_ = 0, host_netns_ino_ = 0;
    std::vector<std::string> dns_;
    uint32_t net_ = 0;
    UniqueFd netns_, tap_;
    bool made_link_ = false, made_table_ = false;
};

}  // namespace ocivm::net
