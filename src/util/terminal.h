#pragma once
// A terminal in raw mode (cfmakeraw) for as long as this object lives, and
// restored however the caller leaves: `ocivm run -t` and `ocivm exec -it`
// hand every key, Ctrl-C included, to the guest's pty.
#include <termios.h>

namespace ocivm {

class RawTerminal {
public:
    explicit RawTerminal(int fd) : fd_(fd) {
        if (::tcgetattr(fd, &saved_) < 0) return;
        termios raw = saved_;
        ::cfmakeraw(&raw);
        if (::tcsetattr(fd, TCSANOW, &raw) == 0) active_ = true;
    }
    ~RawTerminal() {
        if (active_) ::tcsetattr(fd_, TCSANOW, &saved_);
    }
    RawTerminal(const RawTerminal&) = delete;
    RawTerminal& operator=(const RawTerminal&) = delete;

private:
    int fd_;
    termios saved_{};
    bool active_ = false;
};

}  // namespace ocivm
