#pragma once
// JSON from an image or a registry, parsed with its nesting bounded: deeper
// than kMaxJsonDepth is refused while parsing (a few MiB of "[" would
// otherwise cost GiBs). Errors name `what`.
#include <nlohmann/json.hpp>

#include <string>

#include "util/error.h"
#include "util/printable.h"

namespace ocivm {

inline constexpr int kMaxJsonDepth = 64;

inline nlohmann::json parse_bounded_json(const std::string& text, const std::string& what) {
    struct TooDeep {};
    try {
        return nlohmann::json::parse(text, [](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
            if (depth > kMaxJsonDepth) throw TooDeep{};
            return true;
        });
    } catch (const TooDeep&) {
        throw Error(what + " nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    } catch (const nlohmann::json::exception& e) {
        // nlohmann quotes the text it stopped at: the author's bytes.
        throw Error(what + " is not valid JSON: " + printable(e.what(), 400));
    }
}

}  // namespace ocivm
