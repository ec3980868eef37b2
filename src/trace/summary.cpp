#include "trace/summary.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <map>
#include <ostream>
#include <stdexcept>
#include <vector>

#include "util/printable.h"

namespace ocivm::trace {

namespace {

// Our own trace format: flat objects of numbers and strings.
bool field(const std::string& line, const char* key, std::string& out) {
    std::string k = std::string("\"") + key + "\":";
    size_t p = line.find(k);
    if (p == std::string::npos) return false;
    p += k.size();
    out.clear();
    if (p < line.size() && line[p] == '"') {
        for (++p; p < line.size() && line[p] != '"'; ++p) {
            if (line[p] == '\\' && p + 1 < line.size()) {
                ++p;
                if (line[p] == 'u' && p + 4 < line.size()) {
                    out += static_cast<char>(std::strtol(line.substr(p + 1, 4).c_str(), nullptr, 16));
                    p += 4;
                    continue;
                }
            }
            out += line[p];
        }
        return true;
    }
    size_t e = line.find_first_of(",}", p);
    out = line.substr(p, e == std::string::npos ? std::string::npos : e - p);
    return true;
}

// The trace's paths are at most PathLimits::max_path (1,024) bytes, each
// unprintable byte four characters once shown.
constexpr size_t kMaxShownPath = 4 * 1024 + 8;

// "t": seconds, finite, from 0 to about 31,000 years.
bool parse_seconds(const std::string& v, double& out) {
    char* end = nullptr;
    out = std::strtod(v.c_str(), &end);
    return !v.empty() && end == v.c_str() + v.size() && std::isfinite(out) && out >= 0 && out < 1e12;
}

bool parse_u32(const std::string& v, uint32_t& out) {
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    return ec == std::errc{} && p == v.data() + v.size();
}

template <typename K>
std::vector<std::pair<K, uint64_t>> ranked(const std::map<K, uint64_t>& m) {
    std::vector<std::pair<K, uint64_t>> v(m.begin(), m.end());
    std::stable_sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.second > b.second; });
    return v;
}

}  // namespace

size_t summarize(const std::string& path, std::ostream& out, size_t top) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot read trace file " + path + ": " + std::strerror(errno));
    struct OpStats {
        uint64_t n = 0, errors = 0, us = 0;
    };
    std::map<std::string, OpStats> ops;
    std::map<std::string, uint64_t> paths;
    std::map<uint64_t, uint64_t> pids, per_sec;
    double t_first = -1, t_last = 0;
    size_t records = 0, bad = 0;
    std::vector<std::string> polling;
    std::string line, v;
    while (std::getline(in, line)) {
        if (line.empty()) continue;
        std::string op, t;
        if (field(line, "polling", v)) {
            // The servers' polling at exit (docs/filesystem.md, "Polling").
            std::string row = "  " + printable(v) + ":";
            for (const char* k : {"spins", "hits", "spin_us", "busy_skips", "sleeps", "window_us"}) {
                std::string n;
                if (field(line, k, n)) row += std::string(" ") + k + " " + printable(n, 24);
            }
            polling.push_back(row);
            continue;
        }
        // A file that is not fsd's own (forged, cut, edited) must not make
        // the summary wrap its sums or index seconds by NaN: a time that is
        // not a finite second count, or a latency that is not the recorder's
        // unsigned 32-bit microseconds, makes the line unreadable.
        uint32_t us = 0;
        double ts = 0;
        if (!field(line, "op", op) || !field(line, "t", t) || !parse_seconds(t, ts) ||
            (field(line, "us", v) && !parse_u32(v, us))) {
            ++bad;
            continue;
        }
        ++records;
        if (t_first < 0) t_first = ts;
        t_last = std::max(t_last, ts);
        auto& s = ops[printable(op, 32)];
        ++s.n;
        if (field(line, "error", v) && v != "0") ++s.errors;
        s.us += us;
        // Paths are the guest's names: shown as printable text only.
        if (field(line, "path", v) && !v.empty()) ++paths[printable(v, kMaxShownPath)];
        if (field(line, "pid", v)) ++pids[std::strtoull(v.c_str(), nullptr, 10)];
        ++per_sec[static_cast<uint64_t>(std::max(0.0, ts - t_first))];  // out of order: second 0
    }
    if (records == 0)
        throw std::runtime_error(path + " holds no trace records (written by --trace FILE)");
    double span = std::max(t_last - t_first, 1e-6);
    out << records << " requests in " << std::fixed << std::setprecision(1) << span << " s ("
        << std::setprecision(0) << records / span << "/s)";
    if (bad) out << ", " << bad << " unreadable lines";
    // How much of the traced time the server's own work was: about what
    // faster handling could save the guest (a little low: each latency is
    // whole microseconds rounded down, and dropped records are missing).
    // Over 100 % of the span when several threads served at once.
    uint64_t all_us = 0;
    for (auto& [k, s] : ops) all_us += s.us;
    out << "\nserving: " << std::setprecision(3) << static_cast<double>(all_us) / 1e6
        << " s in all, each request from the server taking it to its reply (" << std::setprecision(1)
        << 100.0 * static_cast<double>(all_us) / 1e6 / span << "% of the span)";
    out << "\n\nby opcode:\n";
    out << "  " << std::left << std::setw(16) << "opcode" << std::right << std::setw(10) << "count"
        << std::setw(8) << "share" << std::setw(10) << "avg us" << std::setw(10) << "total ms"
        << std::setw(9) << "errors\n";
    std::map<std::string, uint64_t> opcount;
    for (auto& [k, s] : ops) opcount[k] = s.n;
    for (auto& [k, n] : ranked(opcount)) {
        auto& s = ops[k];
        out << "  " << std::left << std::setw(16) << k << std::right << std::setw(10) << n
            << std::setw(7) << std::setprecision(1) << 100.0 * static_cast<double>(n) / records << "%"
            << std::setw(10) << std::setprecision(0) << static_cast<double>(s.us) / n << std::setw(10)
            << std::setprecision(1) << static_cast<double>(s.us) / 1000 << std::setw(8) << s.errors << "\n";
    }
    out << "\ntop paths:\n";
    size_t i = 0;
    for (auto& [p, n] : ranked(paths)) {
        if (i++ == top) break;
        out << "  " << std::setw(10) << n << "  " << p << "\n";
    }
    out << "\ntop pids:\n";
    i = 0;
    for (auto& [p, n] : ranked(pids)) {
        if (i++ == top) break;
        out << "  " << std::setw(10) << n << "  pid " << p << "\n";
    }
    out << "\nrequests per second:\n";
    uint64_t peak = 0;
    for (auto& [s, n] : per_sec) peak = std::max(peak, n);
    for (auto& [s, n] : per_sec) {
        int bar = peak ? static_cast<int>(40.0 * static_cast<double>(n) / static_cast<double>(peak)) : 0;
        out << "  +" << std::setw(5) << s << "s " << std::setw(9) << n << " " << std::string(bar, '#') << "\n";
    }
    if (!polling.empty()) {
        out << "\npolling (per serving thread, at exit):\n";
        for (auto& row : polling) out << row << "\n";
    }
    return records;
}

}  // namespace ocivm::trace
