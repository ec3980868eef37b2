#!/usr/bin/env bash
# pullbench (issue 13.6): a ~300 MB, 4-layer image from a local registry
# (Debian's docker-registry, TLS, on 127.0.0.1) to a runnable root file
# system: `ocivm pull` against `skopeo copy docker://... oci:DIR` + `umoci
# unpack`, and against `podman pull` when podman works here. Cold store (and
# page cache dropped) before every run, interleaved, REPS runs (default 3),
# medians and ratios. The image is this Debian machine's own files
# (bench/lib.sh make_debian_tree), split into 4 gzip layers.
#   bench/pullbench.sh [OCIVM]
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
OCIVM=$(realpath "${1:-$HERE/../build/ocivm}")
REPS=${REPS:-3}
fail() { echo "pullbench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "run as root"
for t in docker-registry:docker-registry skopeo:skopeo umoci:umoci openssl:openssl curl:curl python3:python3; do
  command -v "${t%%:*}" >/dev/null || fail "${t%%:*} missing: apt-get install ${t##*:}"
done
[ -x "$OCIVM" ] || fail "$OCIVM missing: make build"
WORK=$(scratch_dir pullbench) || fail "cannot make a scratch directory in /var/tmp"
. "$HERE/../tests/lib/registry.sh"
cleanup() {
  registry_stop_all
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"

# --- the image: 4 layers of this machine's files
make_debian_tree "$WORK/tree"
mkdir -p "$WORK/layout/blobs/sha256"
layer() {  # layer N PATH... (relative to tree)
  local n=$1; shift
  tar --sort=name --numeric-owner -C "$WORK/tree" -cf "$WORK/l$n.tar" "$@" || fail "tar"
  diff_ids+=("sha256:$(sha256sum "$WORK/l$n.tar" | cut -d' ' -f1)")
  gzip -n -6 "$WORK/l$n.tar"
  local d; d=$(sha256sum "$WORK/l$n.tar.gz" | cut -d' ' -f1)
  layers+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$d\",\"size\":$(stat -c %s "$WORK/l$n.tar.gz")}")
  mv "$WORK/l$n.tar.gz" "$WORK/layout/blobs/sha256/$d"
}
diff_ids=(); layers=()
bins=$(cd "$WORK/tree" && find usr/bin -mindepth 1 -maxdepth 1 | sort)
half=$(( $(echo "$bins" | wc -l) / 2 ))
layer 1 etc
layer 2 usr/sbin usr/lib
layer 3 $(echo "$bins" | head -n "$half")
layer 4 $(echo "$bins" | tail -n +"$((half + 1))")
ids=$(printf '"%s",' "${diff_ids[@]}"); ids=${ids%,}
ls_json=$(printf '%s,' "${layers[@]}"); ls_json=${ls_json%,}
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' "$ids" > cfg
c=$(sha256sum cfg | cut -d' ' -f1); csize=$(stat -c %s cfg); mv cfg "layout/blobs/sha256/$c"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' "$c" "$csize" "$ls_json" > man
m=$(sha256sum man | cut -d' ' -f1); msize=$(stat -c %s man); mv man "layout/blobs/sha256/$m"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' "$m" "$msize" > layout/index.json
echo '{"imageLayoutVersion":"1.0.0"}' > layout/oci-layout
size=$(du -sm "$WORK/tree" | cut -f1); files=$(find "$WORK/tree" | wc -l); blob=$(du -sm layout/blobs | cut -f1)
rm -rf "$WORK/tree"

# --- the registry (TLS, no auth, no access log)
registry_tls "$WORK" "pullbench CA $$"
registry_start registry "$WORK" "$WORK/storage" quiet none
PORT=$REGISTRY_PORT
REF=127.0.0.1:$PORT/bench/debian:latest
registry_push "$WORK/layout:latest" "$REF" "$WORK/certs" ""
rm -rf layout

# --- podman, if it can pull here (its own storage under $WORK)
PODMAN=
if command -v podman >/dev/null; then
  mkdir -p "$WORK/pod/certs.d/127.0.0.1:$PORT" && cp ca.crt "$WORK/pod/certs.d/127.0.0.1:$PORT/"
  if podman --root "$WORK/pod/root" --runroot "$WORK/pod/run" pull -q --cert-dir "$WORK/pod/certs.d/127.0.0.1:$PORT" "$REF" > pod.log 2>&1; then
    PODMAN=1
  else
    echo "pullbench: podman pull does not work here ($(tail -1 pod.log)); left out"
  fi
  rm -rf "$WORK/pod/root" "$WORK/pod/run"
fi

cold() { rm -rf "$WORK/store" "$WORK/oci" "$WORK/bundle" "$WORK/pod/root" "$WORK/pod/run"; sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; }
mkdir -p "$WORK/certsd/127.0.0.1:$PORT" && cp ca.crt "$WORK/certsd/127.0.0.1:$PORT/"
: > ocivm.t; : > peer.t; : > podman.t
for i in $(seq "$REPS"); do
  cold
  mkdir -p "$WORK/store" && cp -r "$WORK/certsd" "$WORK/store/certs.d"
  t0=$(now); OCIVM_HOME=$WORK/store CONTAINERS_REGISTRIES_CONF=/dev/null "$OCIVM" pull -q "$REF" > /dev/null || fail "ocivm pull failed"; t1=$(now)
  echo "$t1 - $t0" | bc >> ocivm.t
  cold
  t0=$(now)
  skopeo copy -q --src-cert-dir "$WORK/certs" "docker://$REF" "oci:$WORK/oci:latest" || fail "skopeo copy failed"
  umoci unpack --image "$WORK/oci:latest" "$WORK/bundle" > /dev/null 2>&1 || fail "umoci unpack failed"
  t1=$(now)
  echo "$t1 - $t0" | bc >> peer.t
  if [ -n "$PODMAN" ]; then
    cold
    t0=$(now)
    podman --root "$WORK/pod/root" --runroot "$WORK/pod/run" pull -q --cert-dir "$WORK/pod/certs.d/127.0.0.1:$PORT" "$REF" > /dev/null 2>&1 || fail "podman pull failed"
    t1=$(now)
    echo "$t1 - $t0" | bc >> podman.t
  fi
done
cold
O=$(median < ocivm.t); P=$(median < peer.t)
echo "pullbench: ${size} MB root file system, ${files} entries, 4 layers, ${blob} MB compressed; median of $REPS, cold store and page cache; $(nproc) CPUs, $(uname -r)"
printf "%-48s %10s %8s\n" "to a runnable root" "median s" "ratio"
printf "%-48s %10.3f %8s\n" "ocivm pull" "$O" "1.00"
printf "%-48s %10.3f %8.2f\n" "skopeo copy + umoci unpack (peer)" "$P" "$(echo "scale=4; $P / $O" | bc)"
if [ -n "$PODMAN" ]; then
  D=$(median < podman.t)
  printf "%-48s %10.3f %8.2f\n" "podman pull (peer)" "$D" "$(echo "scale=4; $D / $O" | bc)"
fi
echo "all ocivm:  $(tr '\n' ' ' < ocivm.t)"
echo "all peer:   $(tr '\n' ' ' < peer.t)"
[ -n "$PODMAN" ] && echo "all podman: $(tr '\n' ' ' < podman.t)"
exit 0
