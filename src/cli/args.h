#pragma once
// A small getopt_long-style parser shared by every subcommand: --name VALUE,
// --name=VALUE, short aliases, flags, and positional arguments.
#include <functional>
#include <string>
#include <vector>

namespace ocivm::cli {

// Thrown for bad usage; main prints "ocivm: error: <msg>" and exits 125.
struct UsageError {
    std::string msg;
};

struct Option {
    std::string long_name;   // without "--"
    char short_name = 0;     // 0 when none
    bool takes_value = false;
    std::function<void(const std::string&)> apply;
    // A boolean as podman writes it: "--name" alone (apply gets "") or
    // "--name=VALUE"; the next word is never taken as its value.
    bool optional_value = false;
};

// Parses argv[first..]; options may come before, between and after
// positionals; "--" ends options (stop_at_dashdash keeps the rest as-is).
// Returns the positional arguments. "-h"/"--help" sets *help.
// With stop_at_positional (podman's `run IMAGE CMD...`), the first
// positional and everything after it are kept as-is (a "--" right after it
// is dropped). Bundled short flags ("-it") are accepted.
std::vector<std::string> parse_args(const std::string& cmd, int argc, char** argv, int first,
                                    const std::vector<Option>& opts, bool* help,
                                    bool stop_at_positional = false);

// A duration such as 500ms, 90s (or 90), 5m, 1h, in seconds; zero only when
// allowed. Throws UsageError naming the flag.
double parse_duration(const std::string& flag, const std::string& v, bool allow_zero = false);
// A size such as 512M, 2G, 4096 (bytes; K, M, G, T and KiB.. suffixes).
// Throws UsageError naming the flag.
unsigned long long parse_size(const std::string& flag, const std::string& v);
// An --env value: "KEY=VALUE" as is, "KEY" with the value from ocivm's own
// environment ("" when it has none: nothing to set). UsageError if malformed.
std::string env_entry(const std::string& v);
// Sets entry (KEY=VALUE) in env, replacing an entry of the same KEY.
void set_env(std::vector<std::string>& env, const std::string& entry);

// Runs fn for each name, as podman's commands over several VMs do: an
// Error for one is printed ("ocivm: error: ...") and the others still run;
// returns 0, or 125 when any failed.
int for_each_name(const std::vector<std::string>& names, const std::function<void(const std::string&)>& fn);

// Parses a positive integer option value or throws UsageError.
unsigned parse_count(const std::string& flag, const std::string& v, unsigned max);
// The same, with 0 allowed (a flag whose 0 means "off" or "leave it").
unsigned parse_count_or_zero(const std::string& flag, const std::string& v, unsigned max);

}  // namespace ocivm::cli
