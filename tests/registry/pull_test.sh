#!/usr/bin/env bash
# `ocivm pull` against a real registry (issue 13.4): Debian's docker-registry
# (distribution 2.8) on 127.0.0.1 with TLS (a CA and certificate made here)
# and htpasswd auth, images pushed with skopeo from OCI layouts built here.
# Each case checks what a user sees (exit status, message) and what the
# store holds afterwards (ocivm image ls/inspect, the unpacked root).
# With DEMO_LAYOUT (the demo image as an OCI layout, build/demo-oci), the
# demo is pushed too and `ocivm run` boots it straight from the registry
# reference (the implicit pull of --pull missing), in a VM.
#   pull_test.sh OCIVM [DEMO_LAYOUT]
set -uo pipefail
OCIVM=$(realpath "${1:?ocivm binary}")
DEMO=${2:-}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib/check.sh"
. "$HERE/../lib/registry.sh"
need docker-registry docker-registry
need skopeo skopeo
need htpasswd apache2-utils
need openssl openssl
need python3 python3
need zstd zstd
need curl curl

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ocivm-pulltest-$$-XXXX") || fail "cannot create a directory in ${TMPDIR:-/tmp}"
pids=()
cleanup() {
  registry_stop_all
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
# listed TEXT: 0 when a line of `ocivm image ls` holds TEXT, 1 when none
# does, 2 (saying why) when `ocivm image ls` fails: a check that an image is
# NOT listed never passes because nothing could be listed.
listed() {
  local out
  out=$("$OCIVM" image ls 2>&1) || { echo "  ocivm image ls failed: $out"; return 2; }
  grep -qF -- "$1" <<< "$out"
}
not_listed() { listed "$1"; [ $? -eq 1 ]; }

# --- TLS (a CA, and a certificate for 127.0.0.1 it signs) and htpasswd auth
cd "$WORK"
registry_tls "$WORK" "ocivm test CA $$"
CREDS='tester:s3cret:pass'
registry_htpasswd "$WORK/htpasswd" tester 's3cret:pass'

# --- the registry; its access log counts the blob requests
registry_start registry "$WORK" "$WORK/storage" access htpasswd "$WORK/htpasswd"
PORT=$REGISTRY_PORT
REG=127.0.0.1:$PORT
echo "registry $REG (pid $REGISTRY_PID)"

# --- images
layout() { python3 "$HERE/make_layout.py" "$@" || fail "make_layout.py $* failed"; }
layout image busy v1 --layer "etc/hello=hello from layer 1,bin/tool=tool $$" --layer "hello.txt=v1 $$"
layout image amd amd --arch amd64 --layer "arch=amd64,multi=$$"
layout image arm arm --arch arm64 --layer "arch=arm64,multi=$$"
layout index multi multi amd arm
layout image d2 d2 --layer "docker=schema 2 $$"
layout image zst zst --compress zstd --layer "zstd.txt=zstd layer $$" --random "zstd.bin=300000"
layout image big big --layer "big.txt=big $$" --random "big.bin=8000000"
layout image big2 big2 --layer "big2.txt=big2 $$" --random "big2.bin=8000000"
layout image bad bad --layer "bad.txt=doomed $$" --random "bad.bin=200000"
layout image hostile hostile --layer "hostile.txt=hostile $$"
push() {  # push LAYOUT:TAG REPO:TAG [skopeo options]
  local src=$1 dst=$2; shift 2
  registry_push "$WORK/$src" "$REG/$dst" "$WORK/certs" "$CREDS" "$@"
}
push busy:v1 test/busy:v1
push busy:v1 test/busy:short
push multi:multi test/multi:latest --all
push d2:d2 test/d2:latest --format v2s2
push zst:zst test/zst:latest
push big:big test/big:latest
push big2:big2 test/big2:latest
push bad:bad test/bad:latest

# --- ocivm's environment: its own store, no host registries.conf or auth files
export OCIVM_HOME=$WORK/home HOME=$WORK/userhome XDG_RUNTIME_DIR=$WORK/run XDG_CONFIG_HOME=$WORK/userhome/.config
unset REGISTRY_AUTH_FILE
: > "$WORK/empty-registries.conf"
export CONTAINERS_REGISTRIES_CONF=$WORK/empty-registries.conf
mkdir -p "$OCIVM_HOME/certs.d/$REG" "$HOME" "$XDG_RUNTIME_DIR"
cp ca.crt "$OCIVM_HOME/certs.d/$REG/ca.crt"
printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$REG" "$(printf %s "$CREDS" | base64 -w0)" > auth.json

if [ -n "${PAUSE:-}" ]; then
  echo "PAUSE: registry $REG, OCIVM_HOME=$OCIVM_HOME, creds $CREDS; touch $WORK/go to continue"
  while [ ! -e "$WORK/go" ]; do sleep 1; done
fi
# blob_gets VAR REPO: VAR=the registry's count of blob GETs for REPO so
# far, every request answered before this call included
blob_gets() {
  registry_sync_log "$WORK/registry.log" "$PORT" "$WORK/ca.crt"
  printf -v "$1" %s "$(grep -c "GET /v2/$2/blobs/sha256:" "$WORK/registry.log")"
}
rootfs_of() { "$OCIVM" image inspect "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rootfs"])'; }
store_state() { (cd "$OCIVM_HOME" && find . ! -name lock | sort); }
# layer_size LAYOUT: the size of the largest layer of LAYOUT's first image
layer_size() {
  python3 -c 'import json,sys; m=json.load(open(sys.argv[1]+"/index.json"))["manifests"][0]["digest"][7:]; print(max(l["size"] for l in json.load(open(sys.argv[1]+"/blobs/sha256/"+m))["layers"]))' "$1"
}
# proxy NAME CUT-AFTER [exit]: a cut_proxy.py in front of the registry,
# listening; sets PROXY_PORT and trusts the registry's CA under its name.
proxy() {
  python3 "$HERE/cut_proxy.py" "$PORT" "$2" "$1.port" "$1.stats" ${3:-} > "$1.log" 2>&1 & pids+=($!)
  wait_port_file PROXY_PORT "the test proxy $1 (cut_proxy.py)" $! "$1.port" "$1.log"
  mkdir -p "$OCIVM_HOME/certs.d/127.0.0.1:$PROXY_PORT" && cp ca.crt "$OCIVM_HOME/certs.d/127.0.0.1:$PROXY_PORT/"
}

# 1. by tag, with --creds
"$OCIVM" pull --creds "$CREDS" "$REG/test/busy:v1" > out 2> err; rc=$?
check "pull by tag: exit 0" [ $rc -eq 0 ]
[ $rc -eq 0 ] || cat err
check "pull by tag: prints NAME DIGEST" grep -qE "^$REG/test/busy:v1 sha256:[0-9a-f]{64}\$" out
check "pull by tag: summary line on a non-tty" grep -q "ocivm: pulled $REG/test/busy:v1 (linux/amd64): 3 blobs fetched" err
check "pull by tag: in image ls" listed "$REG/test/busy:v1"
root=$(rootfs_of "$REG/test/busy:v1")
check "pull by tag: layer 2's file" [ "$(cat "$root/hello.txt" 2>/dev/null)" = "v1 $$" ]
check "pull by tag: layer 1's file" [ "$(cat "$root/etc/hello" 2>/dev/null)" = "hello from layer 1" ]
digest=$(cut -d' ' -f2 out)
# The registry's log must show the first pull's blob requests: a count of
# 0 (a log that records no requests) would make the next check vacuous.
blob_gets first test/busy
check "pull by tag: the registry served its blobs ($first blob GETs in its log)" [ "$first" -gt 0 ]

# 2. again: nothing fetched, the same image
"$OCIVM" pull --creds "$CREDS" "$REG/test/busy:v1" > out2 2> err2; rc=$?
blob_gets second test/busy
check "second pull: exit 0" [ $rc -eq 0 ]
check "second pull: no blob requested from the registry ($((second - first)) more blob GETs)" [ "$second" -eq "$first" ]
check "second pull: says 0 blobs fetched, 2 already in the store" grep -q "0 blobs fetched, 0B in .*, 2 already in the store" err2
check "second pull: same digest" [ "$(cut -d' ' -f2 out2)" = "$digest" ]

# 3. by digest, credentials from --authfile; --quiet prints the digest only
"$OCIVM" pull -q --authfile "$WORK/auth.json" "$REG/test/busy@$digest" > out 2> err; rc=$?
check "pull by digest: exit 0" [ $rc -eq 0 ]
check "pull by digest --quiet: only the digest on stdout" [ "$(cat out)" = "$digest" ]
check "pull by digest --quiet: nothing on stderr" [ ! -s err ]
check "pull by digest: image ls lists it under the digest reference" listed "$REG/test/busy@sha256:"

# 4. a short name through $OCIVM_HOME/registries.conf, credentials from $REGISTRY_AUTH_FILE
printf 'unqualified-search-registries = ["%s"]\n' "$REG" > "$OCIVM_HOME/registries.conf"
REGISTRY_AUTH_FILE=$WORK/auth.json "$OCIVM" pull test/busy:short > out 2> err; rc=$?
check "short name: exit 0" [ $rc -eq 0 ]
check "short name: resolved through registries.conf" grep -q "^$REG/test/busy:short " out
rm "$OCIVM_HOME/registries.conf"

# 5. failures leave the store as it was
state=$(store_state)
"$OCIVM" pull --creds 'tester:wrong' "$REG/test/busy:v1" > out 2> err; rc=$?
check "wrong password: exit 125" [ $rc -eq 125 ]
check "wrong password: the error says 'wrong user name or password'" grep -q "wrong user name or password" err
"$OCIVM" pull "$REG/test/busy:v1" > out 2> err; rc=$?
check "no credentials: exit 125" [ $rc -eq 125 ]
check "no credentials: the error tells to give --creds" grep -q -- "--creds" err
"$OCIVM" pull --creds "$CREDS" "$REG/test/nosuch:v1" > out 2> err; rc=$?
check "unknown image: exit 125" [ $rc -eq 125 ]
check "unknown image: the error says it was not found" grep -q "was not found" err
down=$(free_port)
"$OCIVM" pull --creds "$CREDS" "127.0.0.1:$down/test/busy:v1" > out 2> err; rc=$?
check "registry down: exit 125" [ $rc -eq 125 ]
check "registry down: the error says to check that the registry is up" grep -q "check that the registry is up" err
mv "$OCIVM_HOME/certs.d" "$WORK/certs.d.away"
"$OCIVM" pull --creds "$CREDS" "$REG/test/d2:latest" > out 2> err; rc=$?
check "unknown CA: exit 125" [ $rc -eq 125 ]
check "unknown CA: the error is about the registry's certificate" grep -qi "certificate" err
mv "$WORK/certs.d.away" "$OCIVM_HOME/certs.d"
# a blob corrupted in the registry's storage (same size, other bytes)
bad_layer=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]+"/index.json"))["manifests"][0]["digest"][7:]; print(max(json.load(open(sys.argv[1]+"/blobs/sha256/"+m))["layers"], key=lambda l: l["size"])["digest"])' "$WORK/bad")
data=$WORK/storage/docker/registry/v2/blobs/sha256/${bad_layer:7:2}/${bad_layer:7}/data
[ -f "$data" ] || fail "the registry stores blobs elsewhere than $data"
printf 'CORRUPT' | dd of="$data" bs=1 seek=1000 conv=notrunc status=none
"$OCIVM" pull --creds "$CREDS" "$REG/test/bad:latest" > out 2> err; rc=$?
check "corrupt blob: exit 125" [ $rc -eq 125 ]
check "corrupt blob: the error names the expected digest" grep -q "$bad_layer" err
check "corrupt blob: the error names the digest it got" grep -qE "have the digest sha256:[0-9a-f]{64}" err
grep -qE "have the digest sha256:[0-9a-f]{64}" err || cat err
check "corrupt blob: not in image ls" not_listed test/bad
check "failures: the store is as it was" [ "$(store_state)" = "$state" ]
[ "$(store_state)" = "$state" ] || diff <(echo "$state") <(store_state)

# 6. a transfer cut halfway resumes with a Range request
size=$(layer_size "$WORK/big")
proxy proxy $((size / 2))
PPORT=$PROXY_PORT
"$OCIVM" pull --log-level info --creds "$CREDS" "127.0.0.1:$PPORT/test/big:latest" > out 2> err; rc=$?
read -r pbytes pconns pcuts < proxy.stats
check "cut transfer: exit 0" [ $rc -eq 0 ]
[ $rc -eq 0 ] || tail -5 err
check "cut transfer: the proxy did cut it" [ "$pcuts" -eq 1 ]
check "cut transfer: the log says it resumed at the byte it stopped" grep -q "resuming at byte" err
check "cut transfer: not fetched twice ($pbytes bytes for a $size-byte layer)" [ "$pbytes" -lt $((size + size / 4)) ]
root=$(rootfs_of "127.0.0.1:$PPORT/test/big:latest")
check "cut transfer: the layer's file is whole" [ "$(stat -c %s "$root/big.bin" 2>/dev/null)" = 8000000 ]

# 6b. a pull whose network goes away for good keeps what it received; the
# next pull of the blob (here through another proxy: another registry name,
# the same digest) continues from there
size2=$(layer_size "$WORK/big2")
proxy proxy2 $((size2 / 2)) exit
P2=$PROXY_PORT
"$OCIVM" pull --log-level info --creds "$CREDS" "127.0.0.1:$P2/test/big2:latest" > out 2> err; rc=$?
check "network gone: exit 125" [ $rc -eq 125 ]
check "network gone: the error says the received bytes are kept for the next pull" grep -q "bytes for the next pull" err
check "network gone: not in image ls" not_listed test/big2
proxy proxy3 999999999999
P3=$PROXY_PORT
"$OCIVM" pull --log-level info --creds "$CREDS" "127.0.0.1:$P3/test/big2:latest" > out 2> err; rc=$?
read -r p3bytes _ _ < proxy3.stats
check "next pull: exit 0" [ $rc -eq 0 ]
check "next pull: the log says it continued what the failed pull received" grep -q "continuing the [0-9]* bytes an earlier pull received" err
check "next pull: fetched about half ($p3bytes bytes for a $size2-byte layer)" [ "$p3bytes" -lt $((size2 * 3 / 4)) ]
check "next pull: the layer's file is whole" [ "$(stat -c %s "$(rootfs_of "127.0.0.1:$P3/test/big2:latest")/big2.bin" 2>/dev/null)" = 8000000 ]
check "next pull: no partial download kept any more" [ -z "$(find "$OCIVM_HOME/downloads" -type f)" ]

# 7. a multi-platform index
"$OCIVM" pull --creds "$CREDS" "$REG/test/multi" > out 2> err; rc=$?
check "index without --platform: exit 0" [ $rc -eq 0 ]
check "index without --platform: the linux/amd64 image's files" [ "$(cat "$(rootfs_of "$REG/test/multi:latest")/arch")" = amd64 ]
"$OCIVM" image rm "$REG/test/multi:latest"
"$OCIVM" pull --platform linux/arm64 --creds "$CREDS" "$REG/test/multi" > out 2> err; rc=$?
check "index, --platform linux/arm64: exit 0" [ $rc -eq 0 ]
check "index, --platform linux/arm64: the arm64 image's files" [ "$(cat "$(rootfs_of "$REG/test/multi:latest")/arch")" = arm64 ]
"$OCIVM" pull --platform linux/s390x --creds "$CREDS" "$REG/test/multi" > out 2> err; rc=$?
check "index, a platform it lacks: exit 125" [ $rc -eq 125 ]
check "index, a platform it lacks: the error lists the platforms it has" grep -q "linux/arm64" err

# 8. Docker schema 2 and zstd
"$OCIVM" pull --creds "$CREDS" "$REG/test/d2" > out 2> err; rc=$?
m=$(cut -d' ' -f2 out); m=${m#sha256:}
check "docker schema 2: exit 0" [ $rc -eq 0 ]
check "docker schema 2: the stored manifest is Docker's" grep -q "application/vnd.docker.distribution.manifest.v2+json" "$OCIVM_HOME/blobs/sha256/$m"
check "docker schema 2: the layer's file" [ "$(cat "$(rootfs_of "$REG/test/d2:latest")/docker" 2>/dev/null)" = "schema 2 $$" ]
"$OCIVM" pull --creds "$CREDS" "$REG/test/zst" > out 2> err; rc=$?
[ $rc -eq 0 ] || cat err
m=$(cut -d' ' -f2 out); m=${m#sha256:}
check "zstd layer: exit 0" [ $rc -eq 0 ]
check "zstd layer: the stored manifest names a tar+zstd layer" grep -q "tar+zstd" "$OCIVM_HOME/blobs/sha256/$m"
check "zstd layer: the layer's file" [ "$(cat "$(rootfs_of "$REG/test/zst:latest")/zstd.txt" 2>/dev/null)" = "zstd layer $$" ]

# 9. the bearer-token flow: a second registry on the same storage, with
# token auth (a JWT from tests/registry/token_server.py, signed by a key the
# registry trusts); test/d2 may be pulled anonymously, the rest needs a login.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=ocivm test token signer $$" \
  -keyout token.key -out token.crt 2>/dev/null || fail "openssl cannot make the token key"
python3 "$HERE/token_server.py" reg.crt reg.key token.crt token.key "$CREDS" test/d2 token.port token.log \
  > token_server.log 2>&1 & pids+=($!)
wait_port_file TOKEN_PORT "the token service (token_server.py)" $! token.port token_server.log
registry_start registry2 "$WORK" "$WORK/storage" access \
  token "https://127.0.0.1:$TOKEN_PORT/token" ocivm-test ocivm-test-issuer "$WORK/token.crt"
REG2=127.0.0.1:$REGISTRY_PORT
mkdir -p "$OCIVM_HOME/certs.d/$REG2" && cp ca.crt "$OCIVM_HOME/certs.d/$REG2/"
"$OCIVM" pull --creds "$CREDS" "$REG2/test/busy:v1" > out 2> err; rc=$?
check "bearer, with credentials: exit 0" [ $rc -eq 0 ]
check "bearer, with credentials: the token service issued tester a pull token for test/busy" grep -q "^user repository:test/busy:pull" token.log
[ $rc -eq 0 ] || { cat err; tail -5 registry2.log; }
"$OCIVM" pull "$REG2/test/d2" > out 2> err; rc=$?
check "bearer, anonymous pull of a public repository: exit 0" [ $rc -eq 0 ]
check "bearer, anonymous pull of a public repository: the token service issued an anonymous token" grep -q "^anon repository:test/d2:pull" token.log
"$OCIVM" pull "$REG2/test/zst" > out 2> err; rc=$?
check "bearer, anonymous pull of a private repository: exit 125" [ $rc -eq 125 ]
check "bearer, anonymous pull of a private repository: the error tells to give --creds" grep -q -- "--creds" err
"$OCIVM" pull --creds tester:nope "$REG2/test/zst" > out 2> err; rc=$?
check "bearer, wrong password: exit 125" [ $rc -eq 125 ]
check "bearer, wrong password: the error says 'wrong user name or password'" grep -q "wrong user name or password" err

# 10. --tls-verify=false needs no CA
rm -rf "$OCIVM_HOME/certs.d"
"$OCIVM" image rm "$REG/test/d2:latest"
"$OCIVM" pull --tls-verify=false --creds "$CREDS" "$REG/test/d2" > out 2> err; rc=$?
check "--tls-verify=false: pulled without the CA (exit 0)" [ $rc -eq 0 ]

# 11. a registry that lies and inflates (plain HTTP, insecure in registries.conf)
python3 "$HERE/hostile_registry.py" "$WORK/hostile" hostile.port > hostile.log 2>&1 & pids+=($!)
wait_port_file HPORT "the hostile registry (hostile_registry.py)" $! hostile.port hostile.log
HREG=127.0.0.1:$HPORT
printf '[[registry]]\nlocation = "%s"\ninsecure = true\n' "$HREG" > "$OCIVM_HOME/registries.conf"
# before any pull of its image: layers in the store are not fetched at all
"$OCIVM" pull "$HREG/longblob:1" > out 2> err; rc=$?
check "hostile longblob: exit 125" [ $rc -eq 125 ]
check "hostile longblob: the error says the blob is longer than its descriptor" grep -q "is longer than the" err
grep -q "is longer than the" err || cat err
"$OCIVM" pull "$HREG/flaky:1" > out 2> err; rc=$?
check "hostile: 503 then 429 are retried, then the pull succeeds (plain HTTP, insecure)" [ $rc -eq 0 ]
[ $rc -eq 0 ] || cat err
"$OCIVM" pull "$HREG/good:1" > out 2> err; rc=$?
check "hostile, its honest image: exit 0" [ $rc -eq 0 ]
check "hostile, its honest image: the layer's file" [ "$(cat "$(rootfs_of "$HREG/good:1")/hostile.txt")" = "hostile $$" ]
state=$(store_state)
hostile() {  # hostile REPO MESSAGE
  "$OCIVM" pull "$HREG/$1:1" > out 2> err; rc=$?
  check "hostile $1: exit 125" [ $rc -eq 125 ]
  check "hostile $1: the error says '$2'" grep -q -- "$2" err
  grep -q -- "$2" err || cat err
}
hostile bigmanifest "larger than the 4194304 bytes"
hostile redirect "redirects"
hostile foreign "non-distributable"
hostile urls "foreign layer"
hostile lying "but the registry says"
hostile deep "nests deeper than"
hostile hugeheader "headers larger than"
hostile schema1 "schema 1"
hostile baddigest "ocivm accepts sha256 only"
hostile artifact "is not a container image"
check "hostile: the store is as it was" [ "$(store_state)" = "$state" ]
printf '[[registry]]\nlocation = "%s"\nblocked = true\n' "$HREG" > "$OCIVM_HOME/registries.conf"
"$OCIVM" pull "$HREG/good:1" > out 2> err; rc=$?
check "blocked registry: exit 125" [ $rc -eq 125 ]
check "blocked registry: the error says it is blocked by registries.conf" grep -q "is blocked by registries.conf" err
rm "$OCIVM_HOME/registries.conf"

# 12. ocivm run of a reference: pulled first (--pull missing), then booted
if [ -n "$DEMO" ]; then
  [ -f "$DEMO/index.json" ] || fail "no demo layout at $DEMO (built by 'make')"
  registry_push "$DEMO:latest" "$REG/test/demo:1" "$WORK/certs" "$CREDS"
  mkdir -p "$OCIVM_HOME/certs.d/$REG" && cp ca.crt "$OCIVM_HOME/certs.d/$REG/ca.crt"
  "$OCIVM" run --rm --pull never --authfile auth.json "$REG/test/demo:1" -- echo x > out 2> err; rc=$?
  check "run --pull never of a reference not stored: exit 125" [ $rc -eq 125 ]
  check "run --pull never of a reference not stored: the error says there is no image of that name" grep -q "no image named" err
  "$OCIVM" run --rm --authfile auth.json "$REG/test/demo:1" -- sh -c 'echo pulled-and-ran; exit 7' > out 2> err; rc=$?
  check "run of a registry reference: the command's exit status (7, got $rc)" [ $rc -eq 7 ]
  check "run of a registry reference: the command's output" grep -qx pulled-and-ran out
  [ $rc -eq 7 ] || cat err
  check "run of a registry reference: the image is in image ls" listed "$REG/test/demo:1"
  blob_gets first test/demo
  check "run of a registry reference: the registry served its blobs ($first blob GETs in its log)" [ "$first" -gt 0 ]
  "$OCIVM" run --rm "$REG/test/demo:1" -- true > out 2> err; rc=$?
  blob_gets second test/demo
  check "a second run: exit 0" [ $rc -eq 0 ]
  check "a second run: runs from the store, no blob requested ($((second - first)) more blob GETs)" [ "$second" -eq "$first" ]
fi

check "no staging directory or partial blob left" [ -z "$(find "$OCIVM_HOME/downloads" -mindepth 1 ! -name partial)" ]
finish
