#pragma once
// ocivm-init's network set-up: brings up lo always, and the VM's interface
// when the kernel command line has ocivm.net= (guest/net_arg.h), with plain
// ioctls (an image need not have any network tool), then writes
// /etc/resolv.conf. Problems are reported through `report` (ocivm-init's
// console message) and never stop the VM: the command runs, offline.
namespace ocivm::guest {

void configure_network(void (*report)(const char* fmt, ...));

}  // namespace ocivm::guest
