#include "trace/livelock.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>
#include <sstream>

namespace ocivm::trace {

void LivelockDetector::add(const Record& r, const std::string& path, bool new_node) {
    std::lock_guard lk(mu_);
    uint64_t sec = r.time_ns / 1000000000ull;
    if (window_.empty() || window_.back().sec < sec) {
        window_.push_back(Second{sec, 0, 0, {}, {}});
        // Evaluate on each new second, then age the window.
        check_locked();
        while (!window_.empty() &&
               static_cast<double>(sec - window_.front().sec) >= o_.window_s)
            window_.pop_front();
    }
    Second& s = window_.back();
    ++s.requests;
    if (new_node) ++s.new_nodes;
    // A pair is the opcode with what it names: the path, else the node.
    std::string_view key = path;
    std::string fallback;
    if (key.empty()) {
        fallback = "node:" + std::to_string(r.nodeid);
        key = fallback;
    }
    uint64_t h = std::hash<std::string_view>{}(key) * 0x9E3779B97F4A7C15ull + r.opcode;
    if (s.pairs.size() < kMaxPairsPerSecond || s.pairs.count(h)) ++s.pairs[h];
    // Only for naming pairs in a warning: forgotten wholesale when large.
    if (!names_.count(h)) {
        if (names_.size() >= kMaxNames || names_bytes_ + key.size() > kMaxNameBytes) {
            names_.clear();
            names_bytes_ = 0;
        }
        names_.emplace(h, std::make_pair(r.opcode, std::string(key)));
        names_bytes_ += key.size();
    }
    // The pid is whatever the guest's kernel writes: count a bounded set.
    if (s.pids.size() < kMaxPidsPerSecond || s.pids.count(r.pid)) ++s.pids[r.pid];
}

LivelockDetector::Verdict LivelockDetector::evaluate_locked() const {
    Verdict v;
    if (window_.size() < 2) {
        v.message = "not enough history";
        return v;
    }
    // Complete seconds only: the last one is still filling.
    uint64_t reqs = 0, new_nodes = 0;
    std::unordered_map<uint64_t, uint64_t> hashed;
    std::unordered_map<uint32_t, uint64_t> pids;
    for (size_t i = 0; i + 1 < window_.size(); ++i) {
        const Second& s = window_[i];
        reqs += s.requests;
        new_nodes += s.new_nodes;
        for (auto& [k, n] : s.pairs) hashed[k] += n;
        for (auto& [p, n] : s.pids) pids[p] += n;
    }
    double span = static_cast<double>(window_[window_.size() - 2].sec - window_.front().sec + 1);
    double rate = static_cast<double>(reqs) / span;
    std::vector<std::pair<uint64_t, std::pair<uint32_t, std::string>>> top;
    for (auto& [k, n] : hashed) {
        auto it = names_.find(k);
        top.push_back({n, it == names_.end() ? std::make_pair(0u, std::string("?")) : it->second});
    }
    size_t distinct = hashed.size();
    std::sort(top.begin(), top.end(), [](auto& a, auto& b) { return a.first > b.first; });
    uint64_t top_n = 0;
    for (size_t i = 0; i < top.size() && i < o_.max_pairs; ++i) top_n += top[i].first;
    double share = reqs ? static_cast<double>(top_n) / static_cast<double>(reqs) : 0;
    double new_per_req = reqs ? static_cast<double>(new_nodes) / static_cast<double>(reqs) : 1;
    std::ostringstream why;
    why << static_cast<uint64_t>(rate) << " requests/s over " << static_cast<uint64_t>(span)
        << " s, " << distinct << " distinct (opcode, path) pairs, the top "
        << std::min(o_.max_pairs, distinct) << " carry " << static_cast<int>(share * 100)
        << "%, " << new_nodes << " new paths";
    if (rate < o_.min_rate || share < o_.top_share || new_per_req > o_.max_new_nodes) {
        v.message = "no livelock: " + why.str();
        return v;
    }
    std::vector<std::pair<uint64_t, uint32_t>> top_pids;
    for (auto& [p, n] : pids)
        if (p != 0) top_pids.push_back({n, p});  // pid 0: the kernel's own FORGETs
    std::sort(top_pids.rbegin(), top_pids.rend());
    std::ostringstream m;
    m << "the guest looks stuck in a request loop: " << why.str() << "; looping pids:";
    for (size_t i = 0; i < top_pids.size() && i < 3; ++i)
        m << " " << top_pids[i].second << " (" << top_pids[i].first << " requests)";
    // The looped-on paths: those of the top pairs, without the parent
    // directories a path walk revisits on the way (they repeat as often).
    std::map<std::string, std::pair<uint64_t, std::set<std::string>>> by_path;
    for (size_t i = 0; i < top.size() && i < o_.max_pairs; ++i) {
        auto& e = by_path[top[i].second.second];
        e.first += top[i].first;
        e.second.insert(opcode_name(top[i].second.first));
    }
    std::vector<std::pair<uint64_t, std::string>> leaves;
    for (auto& [p, e] : by_path) {
        bool parent = false;
        for (auto& [q, f] : by_path)
            if (q.size() > p.size() && q.compare(0, p.size(), p) == 0 &&
                (p == "/" || q[p.size()] == '/'))
                parent = true;
        if (!parent) leaves.push_back({e.first, p});
    }
    std::sort(leaves.rbegin(), leaves.rend());
    m << "; looping on:";
    for (size_t i = 0; i < leaves.size() && i < 5; ++i) {
        auto& e = by_path[leaves[i].second];
        m << (i ? ", " : " ") << leaves[i].second << " (";
        bool first = true;
        for (auto& op : e.second) {
            m << (first ? "" : " ") << op;
            first = false;
        }
        m << ", " << leaves[i].first << " requests)";
    }
    m << ". Without caching every lookup goes to the server; try --cache " << o_.cache_hint
      << " (or always for a read-only image).";
    v.livelock = true;
    v.message = m.str();
    return v;
}

void LivelockDetector::check_locked() {
    Verdict v = evaluate_locked();
    if (v.livelock && !in_episode_) {
        in_episode_ = true;
        ++warnings_;
        if (sink_) sink_(v.message);
        else spdlog::warn("{}", v.message);
    } else if (!v.livelock && v.message != "not enough history") {
        in_episode_ = false;
    }
}

LivelockDetector::Verdict LivelockDetector::verdict() const {
    std::lock_guard lk(mu_);
    return evaluate_locked();
}

unsigned LivelockDetector::warnings() const {
    std::lock_guard lk(mu_);
    return warnings_;
}

std::vector<std::string> LivelockDetector::window_summary(uint64_t now_ns, double seconds) const {
    std::lock_guard lk(mu_);
    uint64_t now = now_ns / 1000000000ull;
    uint64_t reqs = 0;
    std::map<std::string, uint64_t> ops, paths;
    std::unordered_map<uint32_t, uint64_t> pids;
    for (const Second& s : window_) {
        if (static_cast<double>(now - std::min(now, s.sec)) >= seconds) continue;
        reqs += s.requests;
        for (auto& [h, n] : s.pairs) {
            auto it = names_.find(h);
            if (it == names_.end()) continue;
            ops[opcode_name(it->second.first)] += n;
            paths[it->second.second] += n;
        }
        for (auto& [p, n] : s.pids) pids[p] += n;
    }
    auto top = [](auto& m, size_t k) {
        std::vector<std::pair<uint64_t, std::string>> v;
        for (auto& [name, n] : m) {
            std::ostringstream o;
            o << name;
            v.emplace_back(n, o.str());
        }
        std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.first > b.first; });
        std::string out;
        for (size_t i = 0; i < v.size() && i < k; ++i)
            out += (i ? ", " : "") + v[i].second + " (" + std::to_string(v[i].first) + ")";
        return out.empty() ? std::string("none") : out;
    };
    std::vector<std::string> lines;
    std::ostringstream head;
    head << reqs << " requests in the last " << seconds << " s";
    lines.push_back(head.str());
    if (reqs == 0) return lines;
    lines.push_back("top opcodes: " + top(ops, 6));
    lines.push_back("top paths: " + top(paths, 6));
    lines.push_back("top pids: " + top(pids, 6));
    return lines;
}

}  // namespace ocivm::trace
