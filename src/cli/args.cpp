#include "cli/args.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "util/error.h"

namespace ocivm::cli {

std::vector<std::string> parse_args(const std::string& cmd, int argc, char** argv, int first,
                                    const std::vector<Option>& opts, bool* help,
                                    bool stop_at_positional) {
    std::vector<std::string> pos;
    for (int i = first; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg == "--") {
            for (++i; i < argc; ++i) pos.emplace_back(argv[i]);
            break;
        }
        if (arg == "-h" || arg == "--help") {
            *help = true;
            continue;
        }
        if (arg.size() < 2 || arg[0] != '-') {
            pos.push_back(arg);
            if (stop_at_positional) {
                ++i;
                if (i < argc && std::string(argv[i]) == "--") ++i;
                for (; i < argc; ++i) pos.emplace_back(argv[i]);
                break;
            }
            continue;
        }
        if (arg[1] != '-' && arg.size() > 2) {
            // bundled short flags, e.g. -it
            std::vector<const Option*> flags;
            for (size_t k = 1; k < arg.size(); ++k) {
                const Option* f = nullptr;
                for (const auto& o : opts)
                    if (o.short_name == arg[k] && !o.takes_value) f = &o;
                if (!f) {
                    flags.clear();
                    break;
                }
                flags.push_back(f);
            }
            if (!flags.empty()) {
                for (auto* f : flags) f->apply("");
                continue;
            }
        }
        const Option* found = nullptr;
        std::string value;
        bool has_value = false;
        if (arg[1] == '-') {
            std::string name = arg.substr(2);
            if (auto eq = name.find('='); eq != std::string::npos) {
                value = name.substr(eq + 1);
                name = name.substr(0, eq);
                has_value = true;
            }
            for (const auto& o : opts)
                if (o.long_name == name) found = &o;
        } else if (arg.size() == 2) {
            for (const auto& o : opts)
                if (o.short_name == arg[1]) found = &o;
        }
        if (!found)
            throw UsageError{"unknown option '" + arg + "' for 'ocivm " + cmd +
                             "'; see 'ocivm " + cmd + " --help'"};
        if (found->optional_value) {
            // value stays "" without '='
        } else if (found->takes_value) {
            if (!has_value) {
                if (i + 1 >= argc)
                    throw UsageError{"option '" + arg + "' needs a value; see 'ocivm " + cmd +
                                     " --help'"};
                value = argv[++i];
            }
        } else if (has_value) {
            throw UsageError{"option '--" + found->long_name + "' takes no value"};
        }
        found->apply(value);
    }
    return pos;
}

double parse_duration(const std::string& flag, const std::string& v, bool allow_zero) {
    char* end = nullptr;
    double n = std::strtod(v.c_str(), &end);
    std::string unit = end ? end : "";
    double mult = unit.empty() || unit == "s" ? 1 : unit == "ms" ? 0.001 : unit == "m" ? 60 : unit == "h" ? 3600 : -1;
    if (v.empty() || end == v.c_str() || mult < 0 || n < 0 || (n == 0 && !allow_zero) || std::isinf(n) || std::isnan(n))
        throw UsageError{"invalid " + flag + " '" + v + "': give a duration such as 500ms, 90s, 5m or 1h"};
    return n * mult;
}

unsigned long long parse_size(const std::string& flag, const std::string& v) {
    char* end = nullptr;
    unsigned long long n = std::strtoull(v.c_str(), &end, 10);
    std::string u = end ? end : "";
    int shift = -1;
    if (u.empty()) shift = 0;
    else if (u == "k" || u == "K" || u == "KiB") shift = 10;
    else if (u == "m" || u == "M" || u == "MiB") shift = 20;
    else if (u == "g" || u == "G" || u == "GiB") shift = 30;
    else if (u == "t" || u == "T" || u == "TiB") shift = 40;
    if (v.empty() || v[0] == '-' || end == v.c_str() || shift < 0 || n == 0 || (n >> (63 - shift)) != 0)
        throw UsageError{"invalid " + flag + " '" + v + "': give a size such as 512M or 2G"};
    return n << shift;
}

namespace {

// A whole decimal number from `min` to `max` in v. lenient_start: v may
// start with what strtoul skips (blanks, a plus sign), as parse_count has
// always let it; otherwise it starts with a digit.
unsigned parse_number(const std::string& flag, const std::string& v, unsigned min, unsigned max, bool lenient_start) {
    char* end = nullptr;
    unsigned long n = std::strtoul(v.c_str(), &end, 10);
    bool start_ok = lenient_start ? v[0] != '-' : v[0] >= '0' && v[0] <= '9';
    if (v.empty() || *end != '\0' || !start_ok || n < min || n > max)
        throw UsageError{"invalid value '" + v + "' for " + flag + ": give a number from " + std::to_string(min) +
                         " to " + std::to_string(max)};
    return static_cast<unsigned>(n);
}

}  // namespace

unsigned parse_count(const std::string& flag, const std::string& v, unsigned max) {
    return parse_number(flag, v, 1, max, true);
}

unsigned parse_count_or_zero(const std::string& flag, const std::string& v, unsigned max) {
    return parse_number(flag, v, 0, max, false);
}

std::string env_entry(const std::string& v) {
    if (v.empty() || v[0] == '=') throw UsageError{"invalid --env '" + v + "': use KEY=VALUE"};
    if (v.find('=') != std::string::npos) return v;
    const char* host = std::getenv(v.c_str());
    return host ? v + "=" + host : "";
}

void set_env(std::vector<std::string>& env, const std::string& entry) {
    std::string key = entry.substr(0, entry.find('='));
    for (auto& e : env)
        if (e.substr(0, e.find('=')) == key) {
            e = entry;
            return;
        }
    env.push_back(entry);
}

int for_each_name(const std::vector<std::string>& names, const std::function<void(const std::string&)>& fn) {
    int rc = 0;
    for (auto& name : names) {
        try {
            fn(name);
        } catch (const Error& e) {
            std::fprintf(stderr, "ocivm: error: %s\n", e.what());
            rc = 125;
        }
    }
    return rc;
}

}  // namespace ocivm::cli
