#include "util/fd_passing.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace ocivm {

ssize_t recv_with_fds(int sock, void* buf, size_t len, std::vector<UniqueFd>& fds,
                      size_t max_fds, int flags, bool* truncated) {
    std::vector<char> ctl(CMSG_SPACE(sizeof(int) * max_fds));
    struct iovec iov{buf, len};
    struct msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.data();
    msg.msg_controllen = ctl.size();
    ssize_t n;
    do n = ::recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0) return n;
    for (auto* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t cnt = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t k = 0; k < cnt; ++k) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof fd);
            fds.emplace_back(fd);
        }
    }
    if (truncated) *truncated = msg.msg_flags & MSG_CTRUNC;
    return n;
}

}  // namespace ocivm
