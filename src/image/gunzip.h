#pragma once
// Streaming gzip decompression of a layer blob with ISA-L's igzip inflate,
// which is 2-4x faster than zlib's here (decompression is the longest step
// of an image import; docs/images.md). Every member of a multi-member file
// is read; each member's CRC-32 and length are checked; zero padding after
// the last member is ignored, anything else there is an error.
#include <isa-l/igzip_lib.h>

#include <cstddef>
#include <string>
#include <vector>

#include "util/unique_fd.h"

namespace ocivm::image {

// True when the file starts with the gzip magic (1f 8b).
bool is_gzip_file(const std::string& path);

class Gunzip {
public:
    explicit Gunzip(const std::string& path);  // throws Error when it cannot be opened
    // Up to SIZE decompressed bytes into BUF; 0 at the end. Throws Error
    // ("gzip: WHY") on damaged or truncated data; the caller names the file.
    size_t read(char* buf, size_t size);

private:
    bool fill();  // more input; false at the end of the file
    std::string path_;
    UniqueFd fd_;
    std::vector<uint8_t> in_;
    inflate_state st_{};
    bool file_end_ = false;
    bool done_ = false;
    bool member_done_ = false;
};

}  // namespace ocivm::image
