#pragma once
// What ocivm-init does when its VM was restored from a snapshot (a clone):
// takes the identity the host sent in the agent's Restore frame
// (agent_protocol.h) so no two clones share one. Best effort, each step on
// its own: a failure is reported through `report` and the rest still runs.
#include "guest/agent_protocol.h"

namespace ocivm::guest {

//  - the clock: CLOCK_REALTIME from the host's (the snapshot's is stale);
//  - the kernel's RNG: the host's 32 random bytes added as entropy and the
//    CRNG reseeded at once (clones must not draw the same random numbers);
//  - the host name, and /etc/machine-id (where the image has an /etc);
//  - TCP connections to other hosts closed (SOCK_DESTROY; the clone's
//    network back-end knows none of them);
//  - the network interface: the clone's MAC, a down/up that drops the old
//    link's neighbours and announces the new address (renew_network).
void apply_restore(const agent::RestoreInfo& r, void (*report)(const char* fmt, ...));

}  // namespace ocivm::guest
