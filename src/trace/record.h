#pragma once
// One served request, as the trace and the livelock detector see it.
#include <cstdint>
#include <string_view>

namespace ocivm::trace {

struct Record {
    uint64_t time_ns = 0;  // CLOCK_MONOTONIC when the request arrived
    uint64_t unique = 0;
    uint64_t nodeid = 0;       // the node the request is about (parent for names)
    uint64_t result_node = 0;  // node an entry reply named (LOOKUP, CREATE, ...)
    uint32_t opcode = 0;
    uint32_t pid = 0, uid = 0, gid = 0;
    int32_t error = 0;
    uint32_t latency_us = 0;
    uint64_t nlookup = 0;      // FORGET: the lookups it drops
    // One node of a BATCH_FORGET (nodeid, nlookup): it only updates the
    // recorder's path map; the request itself has a record of its own.
    bool batch_entry = false;
    uint8_t name_len = 0;  // the request's name argument, cut to 62 bytes
    char name[62] = {};

    std::string_view name_view() const { return {name, name_len}; }
};

const char* opcode_name(uint32_t opcode);

}  // namespace ocivm::trace
