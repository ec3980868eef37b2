#pragma once
// Layer unpacking and root file system assembly.
//
// A layer (tar, gzip or zstd) is unpacked into a directory of its own,
// keeping OCI whiteouts as marker files (".wh.NAME", ".wh..wh..opq"); its
// diff_id (sha256 of the uncompressed tar) is verified while unpacking.
// Every path is resolved inside the layer directory (openat2 with
// RESOLVE_IN_ROOT, final components never followed), so a malicious layer
// (absolute paths, "..", symlink tricks, hard links out, whiteouts of "..",
// over-long names) cannot write outside it: such entries fail the import.
//
// A root file system is then assembled from the layer directories in
// order: whiteouts remove what lower layers put there, opaque directories
// hide their lower contents, files are reflinked where the file system can
// (FICLONE) and copied otherwise (copy_file_range, holes kept), hard links
// inside the image stay hard links, so link counts are the image's own.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ocivm::image {

struct UnpackStats {
    uint64_t entries = 0;
    uint64_t bytes = 0;  // uncompressed tar bytes
    // No whiteouts and no records beside the files: the directory is, as it
    // is, the root file system this layer gives on its own.
    bool clean = false;
};

// Unpacks the layer blob at `blob` into the new directory `dest` (which must
// not exist); throws Error (and removes dest) when the blob is corrupt, its
// uncompressed digest is not `diff_id` ("sha256:..."; empty: not checked),
// or an entry is unsafe. progress(bytes so far) is called now and then.
UnpackStats unpack_layer(const std::string& blob, const std::string& dest, const std::string& diff_id,
                         const std::function<void(uint64_t)>& progress = {});

// Applies the layer directory `layer` on top of the root file system `root`.
void apply_layer(const std::string& layer, const std::string& root);

// Normalises a path from a tar entry: leading "/" and "./" dropped (an
// absolute path is confined to the root), "." components dropped; returns
// false for "..", empty names, or a component longer than NAME_MAX.
bool safe_relative_path(const std::string& in, std::vector<std::string>& components, std::string* why);

}  // namespace ocivm::image
