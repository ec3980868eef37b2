#!/usr/bin/env bash
# Packs a root file system directory into a one-layer OCI image layout
# (what a registry or `podman save --format oci-dir` would give), with only
# tar, gzip and sha256sum, so the demo image can be imported into ocivm's
# store like any other image.
#   make-oci-layout.sh ROOTFS OUTPUT_DIR TAG [CMD...]
set -euo pipefail
ROOTFS=${1:?root file system}; OUT=${2:?output directory}; TAG=${3:?tag}; shift 3
tmp="$OUT.tmp.$$"
rm -rf "$tmp"; trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/blobs/sha256"
tar --sort=name --numeric-owner --xattrs --xattrs-include='*' -C "$ROOTFS" -cf "$tmp/layer.tar" .
diff_id=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
gzip -n -1 "$tmp/layer.tar"
layer=$(sha256sum "$tmp/layer.tar.gz" | cut -d' ' -f1)
mv "$tmp/layer.tar.gz" "$tmp/blobs/sha256/$layer"
json_array() { local first=1; printf '['; for a in "$@"; do [ $first = 1 ] || printf ','; first=0; printf '"%s"' "$(printf '%s' "$a" | sed 's/\\/\\\\/g; s/"/\\"/g')"; done; printf ']'; }
cmd=$(json_array "$@")
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$cmd" "$diff_id" > "$tmp/config"
config=$(sha256sum "$tmp/config" | cut -d' ' -f1)
csize=$(stat -c %s "$tmp/config"); mv "$tmp/config" "$tmp/blobs/sha256/$config"
lsize=$(stat -c %s "$tmp/blobs/sha256/$layer")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' "$config" "$csize" "$layer" "$lsize" > "$tmp/manifest"
manifest=$(sha256sum "$tmp/manifest" | cut -d' ' -f1)
msize=$(stat -c %s "$tmp/manifest"); mv "$tmp/manifest" "$tmp/blobs/sha256/$manifest"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' "$manifest" "$msize" "$TAG" > "$tmp/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$tmp/oci-layout"
rm -rf "$OUT"; mv "$tmp" "$OUT"; trap - EXIT
