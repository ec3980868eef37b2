#pragma once
// The supervisor's side of the exec agent and of its control socket.
//
// Clients (`ocivm exec`, `stop`, `kill`, `rm -f`) connect to the VM's
// control socket (abstract, @ocivm-ctl-TOKEN, see vm_state.h) and send one
// line naming what they want:
//   "exec\n" followed by agent frames (agent_protocol.h; the session field
//            is the hub's business): the hub gives the session its id,
//            relays the frames both ways, sends the Go once the agent has
//            acknowledged the Open, and tells the agent to Close a session
//            whose client went away;
//   "stop SECONDS\n", "kill SIGNAL\n": handed to the supervisor's hooks
//            (stop and rm then wait for the supervisor's lock to be free).
//   "snapshot NAME [stop]\n": the snapshot hook; its answer line goes back.
// The on_hello hook runs when the guest's boot id is new: the first Hello,
// or one after a reboot; before anything held for the agent is sent.
// Nothing is sent to the agent before its Hello (frames are held); a second
// Hello means the agent restarted: running sessions are failed (exit 125,
// "the guest agent restarted") and unacknowledged Opens are sent again.
#include <poll.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "guest/agent_protocol.h"
#include "util/unique_fd.h"

namespace ocivm::vm {

class AgentHub {
public:
    struct Hooks {
        std::function<void(const std::string& boot_id)> on_hello;
        std::function<void(double seconds)> stop;
        std::function<void(int signal)> kill;
        // "snapshot NAME [stop]": returns the client's answer line.
        std::function<std::string(const std::string& name, bool stop)> snapshot;
    };
    AgentHub(UniqueFd agent_port, UniqueFd listener, Hooks hooks);
    ~AgentHub();
    AgentHub(const AgentHub&) = delete;
    AgentHub& operator=(const AgentHub&) = delete;

    // Adds the hub's fds to pf (remembering where), then handles what poll
    // reported for them.
    void add_pollfds(std::vector<pollfd>& pf);
    void handle(const std::vector<pollfd>& pf);
    // Fails sessions the agent has not acknowledged within kAckTimeoutNs of
    // their Open reaching it (a dead or stuck agent): call at least once a
    // second.
    void tick();
    static constexpr uint64_t kAckTimeoutNs = 30'000'000'000ull;  // TCG guests on a loaded host are slow
    // The VM is gone: every session still open fails with why (exit 125).
    void shutdown(const std::string& why);

    size_t sessions() const;
    // No session, and nothing half sent either way: a snapshot taken now
    // leaves both ends of the channel at a frame boundary.
    bool idle() const;
    // A VM restored from a snapshot: sends the Restore frame now, and takes
    // only a Hello that echoes r.epoch as the agent's greeting (Restore is
    // sent again when a Hello without it arrives).
    void restore(const agent::RestoreInfo& r);

private:
    struct Client;
    void on_agent_frame(const agent::Frame& f);
    void on_client_line(Client& c, const std::string& line);
    void on_client_frame(Client& c, const agent::Frame& f);
    void to_agent(uint32_t session, agent::Type t, const std::string& p = {});
    void fail_client(Client& c, const std::string& why);
    void drop_client(int fd);
    void flush_agent();

    UniqueFd port_, listener_;
    Hooks hooks_;
    agent::FrameReader port_reader_;
    std::string port_out_;   // for the agent, written as the port takes it
    std::string held_;       // for the agent, before its Hello
    unsigned hellos_ = 0;
    uint64_t restore_epoch_ = 0;
    std::string restore_payload_;
    unsigned restore_resends_ = 0;
    std::string boot_id_;
    uint32_t next_session_;
    std::map<int, std::unique_ptr<Client>> clients_;  // by fd
    std::map<uint32_t, int> by_session_;               // session -> client fd
    size_t pf_first_ = 0, pf_count_ = 0;
    std::vector<int> pf_fds_;
};

}  // namespace ocivm::vm
