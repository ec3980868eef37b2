#pragma once
// `ocivm trace summary`: totals by opcode, top paths, top pids and requests
// per second over time, from a trace file of JSON lines.
#include <iosfwd>
#include <string>

namespace ocivm::trace {

// Returns the number of records read; throws std::runtime_error when the
// file cannot be read or holds no trace records.
size_t summarize(const std::string& path, std::ostream& out, size_t top = 10);

}  // namespace ocivm::trace
