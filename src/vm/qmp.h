#pragma once
// QEMU's monitor (QMP) on the socketpair the supervisor keeps: commands
// without waiting (quit), commands with their answer (a snapshot's stop,
// migrate, cont; a clone's migrate-incoming), and QEMU's events and
// greeting for whoever watches the boot. Answers are matched by the "id"
// QMP echoes, so an answer nobody waits for is never taken for another's.
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "util/unique_fd.h"

namespace ocivm::vm {

class QmpChannel {
public:
    using Json = nlohmann::json;
    using OnLine = std::function<void(const std::string& line)>;
    QmpChannel() = default;
    explicit QmpChannel(UniqueFd fd);  // made non-blocking
    int fd() const { return fd_.get(); }
    explicit operator bool() const { return static_cast<bool>(fd_); }
    void reset() { fd_.reset(); }

    // Where lines that are not a call()'s answer go when a call or
    // read_available is given no handler of its own.
    void set_on_line(OnLine f) { on_line_ = std::move(f); }
    // Sends a command whose answer nobody waits for.
    void send(const std::string& cmd);
    // Reads what is there; each line that is not an answer to call() goes
    // to on_line (events, the greeting, answers to send()). Closes the
    // channel at end of file.
    void read_available(const OnLine& on_line = {});
    // Sends cmd with args (and fd as SCM_RIGHTS when >= 0, for getfd) and
    // waits up to timeout_s for its answer, handing other lines to on_line.
    // Returns the answer's "return"; throws Error with QEMU's words for an
    // "error" answer, and on timeout or end of file.
    Json call(const std::string& cmd, const Json& args = Json::object(), double timeout_s = 30, int fd = -1,
              const OnLine& on_line = {});

private:
    bool take_lines(const OnLine& on_line, const std::string& want_id, Json* answer);
    UniqueFd fd_;
    std::string buf_;
    unsigned next_id_ = 1;
    OnLine on_line_;
};

}  // namespace ocivm::vm
