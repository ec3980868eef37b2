#pragma once
// Layer unpacking and root file system assembly.
//
// A layer (tar, gzip, zstd, xz or bzip2) is unpacked into a directory of
// its own; its diff_id (sha256 of the uncompressed tar) is verified while
// unpacking. The directory holds the layer's files and nothing else: what
// the assembly needs besides them (whiteouts, opaque directories, implied
// directories, hard links into lower layers) is returned as LayerRecords,
// which the store keeps beside the directory, never inside it, so a layer
// may hold any file name and no file of the layer is ever read back as
// ocivm's own.
//
// Every file operation is by fd relative to the layer directory: parents
// are opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) and the
// last component is never followed, so a symlink in a layer is never
// followed by the unpacker (an entry below one fails the import), and
// nothing outside the directory is touched whatever the entry names say.
//
// A root file system is then assembled from the layer directories in
// order, again by fd and without following any symlink: whiteouts remove
// what lower layers put there, opaque directories hide their lower
// contents, files are reflinked where the file system can (FICLONE) and
// copied otherwise (copy_file_range, holes kept), hard links inside the
// image stay hard links, so link counts are the image's own.
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

// printable(): names from an image in messages (util/printable.h).
#include "util/printable.h"

namespace ocivm::image {

// What one layer may cost; past a limit the import fails with an error
// that names it (docs/images.md).
struct UnpackLimits {
    uint64_t max_entries = uint64_t{1} << 22;  // tar entries in one layer
    size_t max_depth = 256;                    // components of one entry's path
    // Bytes of bookkeeping held in memory while unpacking (paths and xattrs
    // of directories whose metadata is applied at the end, whiteouts,
    // implied directories, hard links into lower layers).
    uint64_t max_record_bytes = uint64_t{64} << 20;
};

// Paths are relative to the layer root, "/"-separated, "" is the root.
struct LayerRecords {
    std::vector<std::string> whiteouts;  // removed from the layers below
    std::vector<std::string> opaque;     // directories whose lower contents are hidden
    std::vector<std::string> implicit;   // directories with no entry of their own
    std::vector<std::pair<std::string, std::string>> links;  // path -> its target in a lower layer
};

struct UnpackStats {
    uint64_t entries = 0;
    uint64_t bytes = 0;  // uncompressed tar bytes
    LayerRecords records;
    // No hard links into lower layers: the directory is, as it is, the root
    // file system this layer gives on its own (whiteouts and opaque
    // directories have nothing below them to act on).
    bool clean = false;
};

// Unpacks the layer blob at `blob` into the new directory `dest` (which must
// not exist); throws Error (and removes dest) when the blob is corrupt, its
// uncompressed digest is not `diff_id` ("sha256:..."; empty: not checked),
// an entry is unsafe or a limit is passed. progress(bytes so far) is called
// now and then.
UnpackStats unpack_layer(const std::string& blob, const std::string& dest, const std::string& diff_id,
                         const std::function<void(uint64_t)>& progress = {}, const UnpackLimits& limits = {});

// The digest ("sha256:...") of a layer blob's decompressed bytes: what its
// diff_id must be. Throws Error when the blob is corrupt.
std::string layer_diff_id(const std::string& blob);

// Applies the layer directory `layer`, with its records, on top of the root
// file system `root`.
void apply_layer(const std::string& layer, const LayerRecords& records, const std::string& root);

// Removes path (a whole tree if it is a directory) without following any
// symlink in it; nothing when it does not exist. Throws Error.
void remove_tree(const std::string& path);

// Normalises a path from a tar entry: leading "/" and "./" dropped (an
// absolute path is confined to the root), "." components dropped; returns
// false for "..", empty names, or a component longer than NAME_MAX.
bool safe_relative_path(const std::string& in, std::vector<std::string>& components, std::string* why);

}  // namespace ocivm::image
