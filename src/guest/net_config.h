#pragma once
// ocivm-init's network set-up: brings up lo always, and the VM's interface
// when the kernel command line has ocivm.net= (guest/net_arg.h), with plain
// ioctls (an image need not have any network tool), then writes
// /etc/resolv.conf. Problems are reported through `report` (ocivm-init's
// console message) and never stop the VM: the command runs, offline.
#include <string>

namespace ocivm::guest {

void configure_network(void (*report)(const char* fmt, ...));

// After a restore (a clone of a snapshot): the interface takes the clone's
// MAC (xx:xx:xx:xx:xx:xx), goes down and up again, which drops what the
// kernel cached of the old link (neighbours, routes) and announces the new
// address (arp_notify: a gratuitous ARP), and is configured again from the
// kernel command line. Nothing when the VM has no interface.
void renew_network(const std::string& mac, void (*report)(const char* fmt, ...));

}  // namespace ocivm::guest
