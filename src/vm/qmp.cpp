#include "vm/qmp.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/clock.h"
#include "util/error.h"
#include "util/io.h"

namespace ocivm::vm {

QmpChannel::QmpChannel(UniqueFd fd) : fd_(std::move(fd)) {
    ::fcntl(fd_.get(), F_SETFL, ::fcntl(fd_.get(), F_GETFL) | O_NONBLOCK);
}

void QmpChannel::send(const std::string& cmd) {
    if (!fd_) return;
    std::string msg = Json{{"execute", cmd}}.dump() + "\n";
    write_all(fd_.get(), msg.data(), msg.size());
}

// Hands complete lines on; the answer with id want_id (if any) goes to
// *answer instead. Returns true once that answer was seen.
bool QmpChannel::take_lines(const OnLine& given, const std::string& want_id, Json* answer) {
    const OnLine& on_line = given ? given : on_line_;
    bool found = false;
    size_t nl;
    while ((nl = buf_.find('\n')) != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        if (!want_id.empty() && !found && line.find(want_id) != std::string::npos) {
            Json j = Json::parse(line, nullptr, false);
            if (j.is_object() && j.contains("id") && j["id"] == want_id) {
                *answer = std::move(j);
                found = true;
                continue;
            }
        }
        if (on_line) on_line(line);
    }
    return found;
}

void QmpChannel::read_available(const OnLine& on_line) {
    char buf[4096];
    while (fd_) {
        ssize_t r = ::read(fd_.get(), buf, sizeof buf);
        if (r > 0) {
            buf_.append(buf, static_cast<size_t>(r));
            if (buf_.size() > (1u << 20)) buf_.erase(0, buf_.size() - (1u << 16));  // a runaway line
            continue;
        }
        if (r == 0) fd_.reset();
        break;
    }
    take_lines(on_line, "", nullptr);
}

QmpChannel::Json QmpChannel::call(const std::string& cmd, const Json& args, double timeout_s, int fd,
                                  const OnLine& on_line) {
    if (!fd_) throw Error("QEMU's monitor is closed (QEMU has exited)");
    std::string id = "ocivm-" + std::to_string(next_id_++);
    Json req = {{"execute", cmd}, {"id", id}};
    if (!args.empty()) req["arguments"] = args;
    std::string msg = req.dump() + "\n";
    if (fd >= 0) {
        iovec iov{msg.data(), msg.size()};
        char control[CMSG_SPACE(sizeof(int))] = {};
        msghdr mh{};
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = control;
        mh.msg_controllen = sizeof control;
        cmsghdr* cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(cm), &fd, sizeof(int));
        ssize_t w;
        do w = ::sendmsg(fd_.get(), &mh, MSG_NOSIGNAL);
        while (w < 0 && errno == EINTR);
        if (w != static_cast<ssize_t>(msg.size())) throw_errno("sending " + cmd + " to QEMU", w < 0 ? errno : EIO);
    } else if (!write_all(fd_.get(), msg.data(), msg.size())) {
        throw_errno("sending " + cmd + " to QEMU", errno);
    }
    uint64_t deadline = mono_ns() + static_cast<uint64_t>(timeout_s * 1e9);
    Json answer;
    char buf[4096];
    while (!take_lines(on_line, id, &answer)) {
        uint64_t now = mono_ns();
        if (now >= deadline) throw Error("QEMU did not answer " + cmd + " within " + std::to_string(static_cast<int>(timeout_s)) + " s");
        pollfd p{fd_.get(), POLLIN, 0};
        int n = ::poll(&p, 1, static_cast<int>((deadline - now) / 1000000 + 1));
        if (n < 0 && errno != EINTR) throw_errno("poll", errno);
        if (n <= 0) continue;
        ssize_t r = ::read(fd_.get(), buf, sizeof buf);
        if (r == 0) {
            fd_.reset();
            throw Error("QEMU exited while answering " + cmd);
        }
        if (r > 0) {
            buf_.append(buf, static_cast<size_t>(r));
            if (buf_.size() > (1u << 20)) throw Error("QEMU's monitor sent a line over 1 MiB while answering " + cmd);
        }
    }
    if (answer.contains("error")) {
        std::string desc = answer["error"].is_object() ? answer["error"].value("desc", "") : "";
        throw Error("QEMU refused " + cmd + ": " + (desc.empty() ? answer.dump() : desc));
    }
    return answer.contains("return") ? answer["return"] : Json::object();
}

}  // namespace ocivm::vm
