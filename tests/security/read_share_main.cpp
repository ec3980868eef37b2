// read_share: the front end's side of one virtio-fs session, for the
// rootless test (tests/security/rootless_test.sh), which starts `ocivm fsd
// --socket-path` itself (as an unprivileged user) and so cannot use
// FsdProcess. Connects to SOCKET as QEMU would, sets up guest RAM and
// request queue 1 with the frontend.h pieces, sends FUSE INIT, LOOKUP of
// NAME in the share's root, OPEN and READ, and writes what it read to
// stdout. It then keeps the session open until its stdin ends, so the test
// can look at the server while it serves.
//
//   read_share SOCKET NAME
//
// Exit: 0 when the file was read (whatever its content; the test compares
// it), 1 with a message on stderr naming the step that failed.
#include <fcntl.h>
#include <linux/fuse.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

#include "security/frontend.h"

using namespace ocivm;
using namespace ocivm::security;

namespace {

UniqueFd connect_to(const std::string& path) {
    sockaddr_un a{};
    if (path.size() >= sizeof a.sun_path) throw std::runtime_error("socket path too long: " + path);
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.c_str(), path.size());
    UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
    if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) < 0)
        throw std::runtime_error("connect " + path + ": " + std::strerror(errno));
    return s;
}

std::string failure(const FuseClient::Reply& r) {
    return r.answered ? "error " + std::to_string(r.error) : "no answer";
}

template <typename T>
std::span<const std::byte> bytes_of(const T& v) {
    return std::as_bytes(std::span(&v, 1));
}

std::string read_file(FuseClient& fuse, const std::string& name) {
    int32_t err = 0;
    uint64_t node = fuse.lookup(FUSE_ROOT_ID, name, &err);
    if (!node) throw std::runtime_error("LOOKUP " + name + ": error " + std::to_string(err));
    fuse_open_in oi{};
    oi.flags = O_RDONLY;
    auto o = fuse.call(FUSE_OPEN, node, bytes_of(oi));
    fuse_open_out oo{};
    // ENOSYS is the server's "no open needed" (--cache auto and always):
    // the kernel then reads with handle 0, and so do we.
    if (o.answered && o.error == -ENOSYS) {
        oo.fh = 0;
    } else if (!o.answered || o.error || o.body.size() < sizeof(fuse_open_out)) {
        throw std::runtime_error("OPEN " + name + ": " + failure(o));
    } else {
        std::memcpy(&oo, o.body.data(), sizeof oo);
    }
    fuse_read_in ri{};
    ri.fh = oo.fh;
    ri.offset = 0;
    ri.size = 4096;
    auto r = fuse.call(FUSE_READ, node, bytes_of(ri));
    if (!r.answered || r.error)
        throw std::runtime_error("READ " + name + ": " + failure(r));
    return std::string(reinterpret_cast<const char*>(r.body.data()), r.body.size());
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: read_share SOCKET NAME\n");
        return 2;
    }
    try {
        Channel ch(connect_to(argv[1]));
        Device dev(ch);
        GuestRam ram(16ull << 20, Session::kGpa, Session::kUaddr);
        GuestQueue q(ram, 1, 64);
        dev.negotiate();
        auto st = dev.set_mem_table(ram);
        if (!st || *st) throw std::runtime_error("SET_MEM_TABLE refused");
        dev.start_queue(q);
        FuseClient fuse(ram, q, 8);
        if (!fuse.init()) throw std::runtime_error("FUSE_INIT failed");
        std::string content = read_file(fuse, argv[2]);
        std::fwrite(content.data(), 1, content.size(), stdout);
        std::fflush(stdout);
        std::fclose(stdout);  // the test sees EOF: everything was read
        char c;
        for (;;) {
            ssize_t n = ::read(0, &c, 1);
            if (n == 0 || (n < 0 && errno != EINTR)) return 0;
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "read_share: %s\n", e.what());
        return 1;
    }
}
