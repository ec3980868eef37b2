#pragma once
// The guest side of a stream share (src/guest/stream_protocol.h): a FUSE
// mount in the guest whose requests ocivm-init's relay forwards over a
// virtio-serial port to the host's fuse::Server, and whose replies it hands
// back to the kernel. Static, libc only (part of ocivm-init).
//
// The relay is a translating proxy, so a share survives a snapshot: the
// kernel sees node ids and file handles of the relay's own, each mapped to
// the host server's. After a restore the clone's server is a new one (it
// greets with a new session id) that knows nothing of them; the relay then
// introduces itself (INIT), looks every node it knows up again by parent and
// name from the root down, opens every open handle again with its flags,
// re-sends the requests that were in flight, and from then on maps to the
// new server's ids. The kernel never notices. A node that cannot be found
// again (removed or replaced on the host meanwhile) answers ESTALE, a handle
// that cannot be opened again EIO. When the channel is gone (the host's
// server died) every request in flight and every new one gets EIO, and the
// relay waits for a new hello.
#include <linux/fuse.h>
#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "guest/protocol.h"

namespace ocivm::guest {

using Bytes = std::vector<unsigned char>;

// The translation, without any I/O: requests from the kernel and replies
// from the host go in; what to send to the host and to the kernel comes
// out (take_to_host, take_to_kernel).
class RelayCore {
public:
    RelayCore();

    // One request read from /dev/fuse.
    void on_kernel_request(const unsigned char* p, size_t n);
    // One reply frame from the host.
    void on_host_reply(const unsigned char* p, size_t n);
    // A hello: a server with this session id serves the port now. A new id
    // (after an earlier session) starts the rebuild. Returns true when the
    // id is new (the caller sends the attach frame before anything else).
    bool on_hello(uint64_t session);
    // The port is gone (EOF or error): in-flight requests fail with EIO.
    void on_disconnect();
    // The host's "pause" (a snapshot is coming): no new request goes to the
    // host (the kernel's wait in held_, FORGETs too) until on_resume or a
    // new server's hello. take_paused() is true once (with the pause's
    // number) when every request forwarded before has its reply: the
    // caller then sends "paused".
    void on_pause(uint64_t seq);
    void on_resume(uint64_t seq);
    bool take_paused(uint64_t* seq);
    bool paused() const { return paused_; }
    // Lines for the console (a rebuild that went wrong, or differently).
    std::vector<std::string> take_notes() { return std::exchange(notes_, {}); }

    std::vector<Bytes> take_to_host() { return std::exchange(to_host_, {}); }
    std::vector<Bytes> take_to_kernel() { return std::exchange(to_kernel_, {}); }

    bool ready() const { return state_ == State::Ready; }
    bool down() const { return state_ == State::Down; }
    uint64_t session() const { return session_; }
    size_t nodes() const { return nodes_.size(); }
    size_t handles() const { return handles_.size(); }
    size_t in_flight() const { return pending_.size(); }
    struct Counters {
        uint64_t rebuilds = 0, relookups = 0, reopened = 0, stale_nodes = 0, stale_handles = 0, replayed = 0,
                 pauses = 0, held_over_pause = 0, init_changed = 0;
        int handle_error = 0;  // why the last handle could not be opened again (errno; -1: its node is stale)
    };
    const Counters& counters() const { return counters_; }

private:
    enum class State { Waiting, Down, Rebuilding, Ready };
    struct Node {
        uint64_t host = 0;
        uint64_t parent = 0;
        std::string name;
        bool named = false;  // parent/name is where it can be found again
        bool stale = false;  // could not be found again after a restore
        uint64_t guest_n = 0, host_n = 0;  // lookups the kernel holds, and the host server
        uint64_t ino = 0;    // to tell a file from another of the same name after a restore
    };
    struct Handle {
        uint64_t host = 0;
        uint64_t node = 0;
        uint32_t flags = 0;
        bool dir = false;
        bool stale = false;
    };
    struct Pending {
        Bytes req;  // as the kernel sent it (guest ids)
    };

    void send(uint64_t unique, bool replay);
    bool translate(Bytes& r, int* err);
    void reply_error(uint64_t unique, int err);
    void forget(uint64_t guest, uint64_t n);
    uint64_t map_entry(uint64_t parent, const std::string& name, unsigned char* entry_out);
    void set_name(uint64_t node, uint64_t parent, const std::string& name);
    void drop_name(uint64_t parent, const std::string& name);
    void after_reply(const Bytes& req, unsigned char* p, size_t n);
    // The rebuild, one internal request at a time.
    void rebuild_step();
    void on_internal_reply(const unsigned char* p, size_t n);
    void finish_rebuild();
    // Sends what was held (the kernel's requests while no server was ready or
    // the relay was paused).
    void release_held();
    void check_paused();
    // To the host now, or (paused) after the resume.
    void to_host(Bytes b);
    uint64_t internal_unique() { return (1ull << 63) | ++internal_; }

    State state_ = State::Waiting;
    uint64_t session_ = 0;
    bool initialized_ = false;  // the kernel's INIT went to a server
    Bytes init_req_;            // the kernel's INIT, sent again to a new server
    std::unordered_map<uint64_t, Node> nodes_;
    std::unordered_map<uint64_t, uint64_t> by_host_;
    std::map<std::pair<uint64_t, std::string>, uint64_t> names_;
    std::unordered_map<uint64_t, Handle> handles_;
    std::map<uint64_t, Pending> pending_;  // by unique: replayed in the order sent
    std::deque<Bytes> held_;               // kernel requests while no server is ready
    uint64_t next_node_ = 2, next_fh_ = 1, internal_ = 0;
    // The rebuild's work list: nodes (by depth), then handles.
    std::vector<uint64_t> rb_nodes_, rb_handles_;
    size_t rb_pos_ = 0;
    enum class Step { None, Init, Lookup, Open } rb_step_ = Step::None;
    uint64_t rb_unique_ = 0;
    std::vector<Bytes> to_host_, to_kernel_;
    bool paused_ = false, paused_due_ = false, paused_sent_ = false;
    uint64_t pause_seq_ = 0;
    std::vector<Bytes> deferred_;
    std::vector<std::string> notes_;
    fuse_init_out init_out_{};  // the first server's INIT reply, as it came  // FORGETs while paused (nothing the old server needs in a clone)
    Counters counters_;
};

// Opens /dev/fuse, mounts the volume on v.path (fuse.ocivm, allow_other,
// the volume's flags) and forks the relay for it. Returns the relay's pid,
// or -1 with *error set.
pid_t start_fuse_relay(const Volume& v, std::string* error);

}  // namespace ocivm::guest
