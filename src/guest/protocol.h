#pragma once
// What the host tells ocivm-init and what ocivm-init tells the host. Shared
// by both sides (the guest binary is static and uses only this header and
// libc), so the two can never disagree on the format.
//
// The run's configuration travels as /ocivm/config in a small cpio appended
// to the cached initramfs: one "key value" line per field, values escaped
// (\\, \n, \t), list fields repeated, a volume's fields tab-separated.
//
// The control port carries lines in both directions:
//   guest -> host: "stage NAME", "started PID",
//                  "exit CODE OUTBYTES ERRBYTES", "signal N OUTBYTES ERRBYTES",
//                  "error CODE MESSAGE" (126: not executable, 127: not found,
//                  125: the guest side failed)
//   host -> guest: "signal N" (forward to the command), "winsize ROWS COLS",
//                  "bye" (every byte of the command's output has arrived)
// OUTBYTES/ERRBYTES are what ocivm-init relayed to the stdout and stderr
// ports: the host answers "bye" only once it has read that many, so the VM
// never powers off with output still inside QEMU.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

namespace ocivm::guest {

inline constexpr const char* kPortStdout = "ocivm.stdout";
inline constexpr const char* kPortStderr = "ocivm.stderr";
inline constexpr const char* kPortStdin = "ocivm.stdin";
inline constexpr const char* kPortControl = "ocivm.control";
inline constexpr const char* kRootTag = "ocivm-root";

struct Volume {
    std::string tag, path;
    bool readonly = false;
    // Guest mount options (the host server enforces nodev/nosuid as well).
    bool nodev = false, nosuid = false, noexec = false;
    // Served over the stream transport: tag is then the virtio-serial
    // port's name ("ocivm.fs.N") and ocivm-init relays a FUSE mount over it
    // (guest/fuse_relay.h) instead of mounting virtiofs.
    bool stream = false;
};

struct GuestConfig {
    std::vector<std::string> argv;  // resolved: entrypoint + cmd, or the user's
    std::vector<std::string> env;   // KEY=VALUE
    std::string cwd = "/";
    std::string hostname = "ocivm";
    uint32_t uid = 0, gid = 0;
    std::vector<uint32_t> groups;
    bool systemd = false;
    bool tty = false;
    bool stdin_open = false;
    unsigned rows = 0, cols = 0;
    std::vector<Volume> volumes;
    // Boot from a disk instead of the virtio-fs root: the ext4 partition
    // with this GPT PARTUUID on the first virtio-blk disk (read-only).
    std::string root_partuuid;
    // The image root is an EROFS image on the first virtio-blk disk
    // (ocivm run --root erofs).
    bool root_erofs = false;
    // A boot snapshot's boot (ocivm run's snapshot cache): ocivm-init boots,
    // starts the agent and then waits for the command's configuration on
    // the control port ("command LEN\n" and LEN bytes of encode()), so the
    // host can save the booted VM first and every later run restore it.
    bool deferred = false;
};

// A GPT GUID (partition type or unique id) as text: the first three fields
// are stored little-endian, the last two as bytes.
inline std::string gpt_guid_text(const unsigned char* g) {
    static const char* hex = "0123456789abcdef";
    static const int order[16] = {3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15};
    std::string s;
    for (int i = 0; i < 16; ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
        s += hex[g[order[i]] >> 4];
        s += hex[g[order[i]] & 15];
    }
    return s;
}

inline std::string escape(const std::string& s) {
    std::string o;
    for (char c : s) {
        if (c == '\\') o += "\\\\";
        else if (c == '\n') o += "\\n";
        else if (c == '\t') o += "\\t";
        else o += c;
    }
    return o;
}

inline std::string unescape(const std::string& s) {
    std::string o;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 1 < s.size()) {
            char n = s[++i];
            o += n == 'n' ? '\n' : n == 't' ? '\t' : n;
        } else {
            o += s[i];
        }
    }
    return o;
}

inline std::string encode(const GuestConfig& c) {
    std::string o;
    auto put = [&o](const char* k, const std::string& v) { o += std::string(k) + " " + escape(v) + "\n"; };
    for (auto& a : c.argv) put("arg", a);
    for (auto& e : c.env) put("env", e);
    put("cwd", c.cwd);
    put("hostname", c.hostname);
    put("uid", std::to_string(c.uid));
    put("gid", std::to_string(c.gid));
    for (auto g : c.groups) put("group", std::to_string(g));
    put("systemd", c.systemd ? "1" : "0");
    put("tty", c.tty ? "1" : "0");
    put("stdin", c.stdin_open ? "1" : "0");
    put("rows", std::to_string(c.rows));
    put("cols", std::to_string(c.cols));
    if (!c.root_partuuid.empty()) put("root_partuuid", c.root_partuuid);
    if (c.root_erofs) put("root_erofs", "1");
    if (c.deferred) put("deferred", "1");
    for (auto& v : c.volumes)
        o += "volume " + escape(v.tag) + "\t" + escape(v.path) + "\t" + (v.readonly ? "ro" : "rw") +
             (v.nodev ? ",nodev" : "") + (v.nosuid ? ",nosuid" : "") + (v.noexec ? ",noexec" : "") + (v.stream ? ",stream" : "") + "\n";
    return o;
}

// Returns "" on success, else what is wrong.
inline std::string decode(const std::string& text, GuestConfig& c) {
    c = GuestConfig{};
    size_t pos = 0;
    while (pos < text.size()) {
        size_t nl = text.find('\n', pos);
        if (nl == std::string::npos) nl = text.size();
        std::string line = text.substr(pos, nl - pos);
        pos = nl + 1;
        if (line.empty()) continue;
        size_t sp = line.find(' ');
        if (sp == std::string::npos) return "config line without a value: " + line;
        std::string k = line.substr(0, sp), raw = line.substr(sp + 1), v = unescape(raw);
        auto num = [&v]() { return static_cast<uint32_t>(std::strtoul(v.c_str(), nullptr, 10)); };
        if (k == "arg") c.argv.push_back(v);
        else if (k == "env") c.env.push_back(v);
        else if (k == "cwd") c.cwd = v;
        else if (k == "hostname") c.hostname = v;
        else if (k == "uid") c.uid = num();
        else if (k == "gid") c.gid = num();
        else if (k == "group") c.groups.push_back(num());
        else if (k == "systemd") c.systemd = v == "1";
        else if (k == "tty") c.tty = v == "1";
        else if (k == "stdin") c.stdin_open = v == "1";
        else if (k == "rows") c.rows = num();
        else if (k == "cols") c.cols = num();
        else if (k == "root_partuuid") c.root_partuuid = v;
        else if (k == "root_erofs") c.root_erofs = v == "1";
        else if (k == "deferred") c.deferred = v == "1";
        else if (k == "volume") {
            size_t t1 = raw.find('\t'), t2 = raw.find('\t', t1 == std::string::npos ? t1 : t1 + 1);
            if (t1 == std::string::npos || t2 == std::string::npos) return "bad volume line: " + line;
            Volume v{unescape(raw.substr(0, t1)), unescape(raw.substr(t1 + 1, t2 - t1 - 1))};
            std::string flags = raw.substr(t2 + 1) + ",";
            for (size_t a = 0, b; (b = flags.find(',', a)) != std::string::npos; a = b + 1) {
                std::string f = flags.substr(a, b - a);
                if (f == "ro") v.readonly = true;
                else if (f == "nodev") v.nodev = true;
                else if (f == "nosuid") v.nosuid = true;
                else if (f == "noexec") v.noexec = true;
                else if (f == "stream") v.stream = true;
                else if (f != "rw") return "unknown volume option: " + f;
            }
            c.volumes.push_back(v);
        } else {
            return "unknown config key: " + k;
        }
    }
    if (c.argv.empty() && !c.deferred) return "config has no command";  // a deferred boot gets it later
    return "";
}

}  // namespace ocivm::guest
