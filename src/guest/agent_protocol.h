#pragma once
// The exec agent's wire format, shared by the guest agent (ocivm-init
// --agent, static, libc only), the host supervisor and `ocivm exec`, so the
// sides can never disagree.
//
// One virtio-serial port ("ocivm.agent") carries every session as frames:
//   u32 session | u16 type | u16 reserved (0) | u32 length | payload
// little-endian, payload at most kMaxPayload. Session 0 is the channel's own.
//
// A session:
//   host  -> Open(config)     the command, its env, identity, terminal
//   guest -> Ack               the agent holds the request, nothing runs yet
//   host  -> Go                now run it (exactly once: a second Go, or an
//                              Open re-sent after a reset, runs nothing
//                              again; an Open of a finished session is
//                              answered with its Exit again)
//   guest -> Started(pid) | Exit("error CODE MESSAGE")
//   ...   Stdin / StdinEof / Signal / Winsize from the host,
//         Stdout / Stderr / CreditIn from the guest, CreditOut from the host
//   guest -> Exit("exit N" | "signal N" | "error CODE MESSAGE"), after all
//            of the session's output
//   host  -> Close             the host gave up on it: its processes are
//            killed and it is forgotten
//
// Flow control, so nothing buffers without bound either way: each session
// starts with kWindow bytes of stdin credit (the host may send that much
// Stdin; the guest returns CreditIn as the command takes it) and kWindow
// bytes of output credit (the guest may send that much Stdout+Stderr; the
// host returns CreditOut as its client takes it).
//
// Resets: the agent greets with Hello("ocivm-agent VERSION BOOT_ID") as soon
// as it can serve, and again whenever it (re)starts. A Hello on a channel
// that already had one means every session the host had running is lost:
// the host fails them loudly (exit 125) and re-sends the Opens that were
// never acknowledged, which is safe because of the Ack/Go split.
//
// Restores: a VM started from a snapshot (`ocivm run --from-snapshot`)
// resumes with an agent that greeted another host long ago. The host sends
//   host  -> Restore("key value" lines: epoch, hostname, mac, time, seed,
//            machine-id; restore_payload() below)
// on session 0 first; the agent takes the new identity, drops every
// session it had (their clients belong to the snapshot's VM), and greets
// with Hello("ocivm-agent VERSION BOOT_ID epoch EPOCH"). That Hello, with
// the epoch the host sent, is the clone's readiness signal; a Hello with
// another (or no) epoch is from before the restore and is not.
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

namespace ocivm::agent {

inline constexpr const char* kPort = "ocivm.agent";
inline constexpr unsigned kVersion = 1;
inline constexpr uint32_t kMaxPayload = 64 * 1024;
inline constexpr uint32_t kWindow = 256 * 1024;
inline constexpr size_t kHeaderSize = 12;
// More sessions than this at once are refused by the agent (exit 125).
inline constexpr unsigned kMaxSessions = 256;

enum class Type : uint16_t {
    Hello = 1,
    Open = 2,
    Ack = 3,
    Go = 4,
    Started = 5,
    Stdin = 6,
    StdinEof = 7,
    Stdout = 8,
    Stderr = 9,
    CreditIn = 10,
    CreditOut = 11,
    Signal = 12,
    Winsize = 13,
    Exit = 14,
    Close = 15,
    Restore = 16,
};

inline const char* type_name(Type t) {
    switch (t) {
        case Type::Hello: return "hello";
        case Type::Open: return "open";
        case Type::Ack: return "ack";
        case Type::Go: return "go";
        case Type::Started: return "started";
        case Type::Stdin: return "stdin";
        case Type::StdinEof: return "stdin-eof";
        case Type::Stdout: return "stdout";
        case Type::Stderr: return "stderr";
        case Type::CreditIn: return "credit-in";
        case Type::CreditOut: return "credit-out";
        case Type::Signal: return "signal";
        case Type::Winsize: return "winsize";
        case Type::Exit: return "exit";
        case Type::Close: return "close";
        case Type::Restore: return "restore";
    }
    return "unknown";
}

struct Frame {
    uint32_t session = 0;
    Type type = Type::Hello;
    std::string payload;
};

inline void put_u32(unsigned char* p, uint32_t v) {
    for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
inline uint32_t get_u32(const unsigned char* p) {
    return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
           static_cast<uint32_t>(p[3]) << 24;
}

// Appends one frame to out (payload longer than kMaxPayload is the
// caller's bug: split data before).
inline void append_frame(std::string& out, uint32_t session, Type type, const char* data, size_t n) {
    unsigned char h[kHeaderSize];
    put_u32(h, session);
    h[4] = static_cast<unsigned char>(static_cast<uint16_t>(type));
    h[5] = static_cast<unsigned char>(static_cast<uint16_t>(type) >> 8);
    h[6] = h[7] = 0;
    put_u32(h + 8, static_cast<uint32_t>(n));
    out.append(reinterpret_cast<const char*>(h), kHeaderSize);
    out.append(data, n);
}
inline void append_frame(std::string& out, uint32_t session, Type type, const std::string& payload = {}) {
    append_frame(out, session, type, payload.data(), payload.size());
}
inline std::string u32_payload(uint32_t v) {
    unsigned char b[4];
    put_u32(b, v);
    return std::string(reinterpret_cast<const char*>(b), 4);
}
inline bool parse_u32(const std::string& p, uint32_t* v) {
    if (p.size() != 4) return false;
    *v = get_u32(reinterpret_cast<const unsigned char*>(p.data()));
    return true;
}

// Splits a byte stream into frames. feed() appends what was read; next()
// yields complete frames. A frame with an unknown type or a payload over
// kMaxPayload is a broken channel: error() says why and nothing more is
// yielded (the reader must reset the channel, not guess).
class FrameReader {
public:
    void feed(const char* p, size_t n) { buf_.append(p, n); }
    bool next(Frame& f) {
        if (!error_.empty() || buf_.size() - pos_ < kHeaderSize) return compact(false);
        auto* h = reinterpret_cast<const unsigned char*>(buf_.data() + pos_);
        uint32_t len = get_u32(h + 8);
        uint16_t type = static_cast<uint16_t>(h[4] | h[5] << 8);
        if (len > kMaxPayload) {
            error_ = "frame of " + std::to_string(len) + " bytes (the limit is " + std::to_string(kMaxPayload) + ")";
            return false;
        }
        if (type < static_cast<uint16_t>(Type::Hello) || type > static_cast<uint16_t>(Type::Restore)) {
            error_ = "frame of unknown type " + std::to_string(type);
            return false;
        }
        if (buf_.size() - pos_ < kHeaderSize + len) return compact(false);
        f.session = get_u32(h);
        f.type = static_cast<Type>(type);
        f.payload.assign(buf_, pos_ + kHeaderSize, len);
        pos_ += kHeaderSize + len;
        return compact(true);
    }
    const std::string& error() const { return error_; }
    // Bytes held that are not a complete frame yet.
    size_t pending() const { return buf_.size() - pos_; }
    void reset() {
        buf_.clear();
        pos_ = 0;
        error_.clear();
    }

private:
    bool compact(bool r) {
        if (pos_ > 0 && (pos_ == buf_.size() || pos_ > (1u << 16))) {
            buf_.erase(0, pos_);
            pos_ = 0;
        }
        return r;
    }
    std::string buf_;
    size_t pos_ = 0;
    std::string error_;
};

// Exit payloads: "exit N", "signal N", "error CODE MESSAGE" (CODE 126: not
// executable, 127: not found, 125: the agent could not run it). The status
// ocivm exec returns, podman's way.
inline int exit_status(const std::string& payload, std::string* message) {
    unsigned long v = 0;
    const char* s = payload.c_str();
    if (std::strncmp(s, "exit ", 5) == 0) return static_cast<int>(std::strtoul(s + 5, nullptr, 10) & 0xff);
    if (std::strncmp(s, "signal ", 7) == 0) return 128 + static_cast<int>(std::strtoul(s + 7, nullptr, 10) & 0x7f);
    if (std::strncmp(s, "error ", 6) == 0) {
        char* end = nullptr;
        v = std::strtoul(s + 6, &end, 10);
        if (message && end && *end == ' ') *message = end + 1;
        return v == 126 || v == 127 ? static_cast<int>(v) : 125;
    }
    if (message) *message = "malformed exit report: " + payload.substr(0, 80);
    return 125;
}

// What a Restore frame carries: the clone's identity, as "key value" lines.
// The guest trusts it as it trusts the rest of the host's channel; parse()
// still checks every field's form (it reaches sethostname, an ioctl, a file).
struct RestoreInfo {
    uint64_t epoch = 0;          // random per restore; the Hello echoes it
    std::string hostname;        // 1-64 of [A-Za-z0-9.-]
    std::string mac;             // xx:xx:xx:xx:xx:xx, or empty (no network)
    int64_t time_sec = 0;        // the host's CLOCK_REALTIME when sent
    long time_nsec = 0;
    std::string seed;            // 64 hex digits of host randomness
    std::string machine_id;      // 32 hex digits

    std::string encode() const {
        return "epoch " + std::to_string(epoch) + "\nhostname " + hostname + "\nmac " + mac + "\ntime " +
               std::to_string(time_sec) + "." + std::to_string(time_nsec) + "\nseed " + seed + "\nmachine-id " +
               machine_id + "\n";
    }
    // "" when well formed, else what is wrong.
    std::string parse(const std::string& text) {
        auto hex = [](const std::string& v, size_t n) {
            if (v.size() != n) return false;
            for (char ch : v)
                if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) return false;
            return true;
        };
        size_t a = 0;
        while (a < text.size()) {
            size_t e = text.find('\n', a);
            if (e == std::string::npos) e = text.size();
            std::string line = text.substr(a, e - a);
            a = e + 1;
            size_t sp = line.find(' ');
            std::string k = line.substr(0, sp), v = sp == std::string::npos ? "" : line.substr(sp + 1);
            if (k == "epoch") {
                char* end = nullptr;
                epoch = std::strtoull(v.c_str(), &end, 10);
                if (v.empty() || *end) return "bad epoch";
            } else if (k == "hostname") {
                if (v.empty() || v.size() > 64) return "bad hostname";
                for (char ch : v)
                    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                          ch == '-' || ch == '.' || ch == '_'))
                        return "bad hostname";
                hostname = v;
            } else if (k == "mac") {
                if (!v.empty()) {
                    if (v.size() != 17) return "bad mac";
                    for (size_t i = 0; i < 17; ++i)
                        if (i % 3 == 2 ? v[i] != ':' : !std::isxdigit(static_cast<unsigned char>(v[i]))) return "bad mac";
                }
                mac = v;
            } else if (k == "time") {
                char* end = nullptr;
                time_sec = std::strtoll(v.c_str(), &end, 10);
                if (*end != '.') return "bad time";
                time_nsec = std::strtol(end + 1, &end, 10);
                if (*end || time_nsec < 0 || time_nsec >= 1000000000L || time_sec <= 0) return "bad time";
            } else if (k == "seed") {
                if (!hex(v, 64)) return "bad seed";
                seed = v;
            } else if (k == "machine-id") {
                if (!hex(v, 32)) return "bad machine-id";
                machine_id = v;
            } else if (!k.empty()) {
                return "unknown field " + k.substr(0, 32);
            }
        }
        if (!epoch || hostname.empty() || seed.empty() || machine_id.empty() || !time_sec) return "missing field";
        return "";
    }
};

}  // namespace ocivm::agent
