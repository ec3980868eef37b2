#pragma once
// The one sanitiser for text ocivm did not write (an image's file names, a
// registry's error bodies, header values, platform strings) on its way to a
// terminal or a log: such text could otherwise move the cursor, retitle the
// window or hide lines (escape sequences), or flood the screen.
#include <cstddef>
#include <string>
#include <string_view>

namespace ocivm {

inline constexpr size_t kPrintableMax = 200;

// s with every byte that is not printable ASCII, and the backslash (so an
// escape in the output is always ours), written as \xNN; cut once the
// output reaches `max` characters, the cut marked with "...".
std::string printable(std::string_view s, size_t max = kPrintableMax);

}  // namespace ocivm
