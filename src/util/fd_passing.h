#pragma once
// Receiving file descriptors over a Unix socket (SCM_RIGHTS): used by the
// fusermount3 hand-off and by vhost-user messages.
#include <sys/types.h>

#include <vector>

#include "util/unique_fd.h"

namespace ocivm {

// recvmsg(2) of up to len bytes with up to max_fds descriptors (owned by
// `fds` on return, close-on-exec). Returns the byte count or -1 (errno set);
// retries EINTR. *truncated is set when descriptors were cut off.
ssize_t recv_with_fds(int sock, void* buf, size_t len, std::vector<UniqueFd>& fds,
                      size_t max_fds, int flags, bool* truncated = nullptr);

}  // namespace ocivm
