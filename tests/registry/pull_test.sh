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
fail() { echo "FAIL: $*"; exit 1; }
need() {  # need COMMAND PACKAGE
  command -v "$1" >/dev/null || fail "$1 missing: apt-get install $2"
}
need docker-registry docker-registry
need skopeo skopeo
need htpasswd apache2-utils
need openssl openssl
need python3 python3
need zstd zstd
need curl curl

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ocivm-pulltest-$$-XXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
passed=0; failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
contains() { grep -qF -- "$2" "$1"; }

# --- TLS: a CA, and a certificate for 127.0.0.1 it signs
cd "$WORK"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=ocivm test CA $$" \
  -keyout ca.key -out ca.crt 2>/dev/null || fail "openssl cannot make a CA"
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout reg.key -out reg.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext.cnf
openssl x509 -req -in reg.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out reg.crt 2>/dev/null \
  || fail "openssl cannot sign the registry certificate"
htpasswd -Bbc htpasswd tester 's3cret:pass' 2>/dev/null || fail "htpasswd failed"
CREDS='tester:s3cret:pass'

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- the registry; its access log counts the blob requests
start_registry() {
  PORT=$(free_port)
  cat > registry.yml <<YML
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $WORK/storage
http:
  addr: 127.0.0.1:$PORT
  tls:
    certificate: $WORK/reg.crt
    key: $WORK/reg.key
auth:
  htpasswd:
    realm: ocivm-test
    path: $WORK/htpasswd
YML
  docker-registry serve registry.yml > registry.log 2>&1 &
  REGPID=$!; pids+=($REGPID)
  for _ in $(seq 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --cacert ca.crt "https://127.0.0.1:$PORT/v2/" 2>/dev/null)
    [ "$code" = 401 ] && return 0
    kill -0 "$REGPID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
start_registry || start_registry || { cat registry.log; fail "docker-registry did not start"; }
REG=127.0.0.1:$PORT
echo "registry $REG (pid $REGPID)"

# --- images
ML="python3 $HERE/make_layout.py"
$ML image busy v1 --layer "etc/hello=hello from layer 1,bin/tool=tool $$" --layer "hello.txt=v1 $$" || fail "make_layout"
$ML image amd amd --arch amd64 --layer "arch=amd64,multi=$$"
$ML image arm arm --arch arm64 --layer "arch=arm64,multi=$$"
$ML index multi multi amd arm
$ML image d2 d2 --layer "docker=schema 2 $$"
$ML image zst zst --compress zstd --layer "zstd.txt=zstd layer $$" --random "zstd.bin=300000"
$ML image big big --layer "big.txt=big $$" --random "big.bin=8000000"
$ML image big2 big2 --layer "big2.txt=big2 $$" --random "big2.bin=8000000"
$ML image bad bad --layer "bad.txt=doomed $$" --random "bad.bin=200000"
$ML image hostile hostile --layer "hostile.txt=hostile $$"
mkdir -p certs && cp ca.crt certs/ca.crt
push() {  # push LAYOUT:TAG REPO:TAG [skopeo options]
  local src=$1 dst=$2; shift 2
  skopeo copy -q "$@" --dest-creds "$CREDS" --dest-cert-dir "$WORK/certs" "oci:$WORK/$src" "docker://$REG/$dst" \
    > push.log 2>&1 || { cat push.log; fail "skopeo copy $src -> $dst failed"; }
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
blob_gets() { grep -c "GET /v2/$1/blobs/sha256:" registry.log; }
rootfs_of() { "$OCIVM" image inspect "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rootfs"])'; }
store_state() { (cd "$OCIVM_HOME" && find . ! -name lock | sort); }

# 1. by tag, with --creds
"$OCIVM" pull --creds "$CREDS" "$REG/test/busy:v1" > out 2> err; rc=$?
check "pull by tag: exit 0" [ $rc -eq 0 ]
[ $rc -eq 0 ] || cat err
check "pull by tag: prints NAME DIGEST" grep -qE "^$REG/test/busy:v1 sha256:[0-9a-f]{64}\$" out
check "pull by tag: summary line on a non-tty" grep -q "ocivm: pulled $REG/test/busy:v1 (linux/amd64): 3 blobs fetched" err
check "pull by tag: in image ls" contains <("$OCIVM" image ls) "$REG/test/busy:v1"
root=$(rootfs_of "$REG/test/busy:v1")
check "pull by tag: layer 2's file" [ "$(cat "$root/hello.txt" 2>/dev/null)" = "v1 $$" ]
check "pull by tag: layer 1's file" [ "$(cat "$root/etc/hello" 2>/dev/null)" = "hello from layer 1" ]
digest=$(cut -d' ' -f2 out)

# 2. again: nothing fetched, the same image
before=$(blob_gets test/busy)
"$OCIVM" pull --creds "$CREDS" "$REG/test/busy:v1" > out2 2> err2; rc=$?
check "second pull: exit 0" [ $rc -eq 0 ]
check "second pull: no blob requested again (registry log)" [ "$(blob_gets test/busy)" -eq "$before" ]
check "second pull: says so" grep -q "0 blobs fetched, 0B in .*, 2 already in the store" err2
check "second pull: same digest" [ "$(cut -d' ' -f2 out2)" = "$digest" ]

# 3. by digest, credentials from --authfile; --quiet prints the digest only
"$OCIVM" pull -q --authfile "$WORK/auth.json" "$REG/test/busy@$digest" > out 2> err; rc=$?
check "pull by digest: exit 0" [ $rc -eq 0 ]
check "pull by digest --quiet: only the digest on stdout" [ "$(cat out)" = "$digest" ]
check "pull by digest --quiet: nothing on stderr" [ ! -s err ]
check "pull by digest: stored under the digest reference" contains <("$OCIVM" image ls) "$REG/test/busy@sha256:"

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
check "wrong password: says so" grep -q "wrong user name or password" err
"$OCIVM" pull "$REG/test/busy:v1" > out 2> err; rc=$?
check "no credentials: exit 125, says what to give" [ $rc -eq 125 ]
check "no credentials: exit 125, says what to give: what it says or holds" grep -q -- "--creds" err
"$OCIVM" pull --creds "$CREDS" "$REG/test/nosuch:v1" > out 2> err; rc=$?
check "unknown image: exit 125" [ $rc -eq 125 ]
check "unknown image: not found" grep -q "was not found" err
down=$(free_port)
"$OCIVM" pull --creds "$CREDS" "127.0.0.1:$down/test/busy:v1" > out 2> err; rc=$?
check "registry down: exit 125" [ $rc -eq 125 ]
check "registry down: says it cannot connect" grep -q "check that the registry is up" err
mv "$OCIVM_HOME/certs.d" "$WORK/certs.d.away"
"$OCIVM" pull --creds "$CREDS" "$REG/test/d2:latest" > out 2> err; rc=$?
check "unknown CA: exit 125 (certificate refused)" [ $rc -eq 125 ]
check "unknown CA: exit 125 (certificate refused): what it says or holds" grep -qi "certificate" err
mv "$WORK/certs.d.away" "$OCIVM_HOME/certs.d"
# a blob corrupted in the registry's storage (same size, other bytes)
bad_layer=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]+"/index.json"))["manifests"][0]["digest"][7:]; print(max(json.load(open(sys.argv[1]+"/blobs/sha256/"+m))["layers"], key=lambda l: l["size"])["digest"])' "$WORK/bad")
data=$WORK/storage/docker/registry/v2/blobs/sha256/${bad_layer:7:2}/${bad_layer:7}/data
[ -f "$data" ] || fail "the registry stores blobs elsewhere than $data"
printf 'CORRUPT' | dd of="$data" bs=1 seek=1000 conv=notrunc status=none
"$OCIVM" pull --creds "$CREDS" "$REG/test/bad:latest" > out 2> err; rc=$?
check "corrupt blob: exit 125" [ $rc -eq 125 ]
check "corrupt blob: names the expected digest" grep -q "$bad_layer" err
check "corrupt blob: names the digest it got" grep -qE "have the digest sha256:[0-9a-f]{64}" err
grep -qE "have the digest sha256:[0-9a-f]{64}" err || cat err
check "corrupt blob: not in image ls" bash -c "! '$OCIVM' image ls | grep -q test/bad"
check "failures: the store is as it was" [ "$(store_state)" = "$state" ]
[ "$(store_state)" = "$state" ] || diff <(echo "$state") <(store_state)

# 6. a transfer cut halfway resumes with a Range request
size=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]+"/index.json"))["manifests"][0]["digest"][7:]; print(max(l["size"] for l in json.load(open(sys.argv[1]+"/blobs/sha256/"+m))["layers"]))' "$WORK/big")
python3 "$HERE/cut_proxy.py" "$PORT" $((size / 2)) proxy.port proxy.stats & pids+=($!)
for _ in $(seq 100); do [ -s proxy.port ] && break; sleep 0.1; done
[ -s proxy.port ] || fail "the test proxy did not start"
PPORT=$(cat proxy.port)
mkdir -p "$OCIVM_HOME/certs.d/127.0.0.1:$PPORT" && cp ca.crt "$OCIVM_HOME/certs.d/127.0.0.1:$PPORT/"
"$OCIVM" pull --log-level info --creds "$CREDS" "127.0.0.1:$PPORT/test/big:latest" > out 2> err; rc=$?
read -r pbytes pconns pcuts < proxy.stats
check "cut transfer: exit 0" [ $rc -eq 0 ]
[ $rc -eq 0 ] || tail -5 err
check "cut transfer: the proxy did cut it" [ "$pcuts" -eq 1 ]
check "cut transfer: resumed at the byte it stopped" grep -q "resuming at byte" err
check "cut transfer: not fetched twice ($pbytes bytes for a $size-byte layer)" [ "$pbytes" -lt $((size + size / 4)) ]
root=$(rootfs_of "127.0.0.1:$PPORT/test/big:latest")
check "cut transfer: the layer's content" [ "$(stat -c %s "$root/big.bin" 2>/dev/null)" = 8000000 ]

# 6b. a pull whose network goes away for good keeps what it received; the
# next pull of the blob (here through another proxy: another registry name,
# the same digest) continues from there
size2=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]+"/index.json"))["manifests"][0]["digest"][7:]; print(max(l["size"] for l in json.load(open(sys.argv[1]+"/blobs/sha256/"+m))["layers"]))' "$WORK/big2")
python3 "$HERE/cut_proxy.py" "$PORT" $((size2 / 2)) proxy2.port proxy2.stats exit & pids+=($!)
for _ in $(seq 100); do [ -s proxy2.port ] && break; sleep 0.1; done
P2=$(cat proxy2.port)
mkdir -p "$OCIVM_HOME/certs.d/127.0.0.1:$P2" && cp ca.crt "$OCIVM_HOME/certs.d/127.0.0.1:$P2/"
"$OCIVM" pull --log-level info --creds "$CREDS" "127.0.0.1:$P2/test/big2:latest" > out 2> err; rc=$?
check "network gone: exit 125" [ $rc -eq 125 ]
check "network gone: the received part is kept" grep -q "bytes for the next pull" err
check "network gone: no image" bash -c "! '$OCIVM' image ls | grep -q test/big2"
python3 "$HERE/cut_proxy.py" "$PORT" 999999999999 proxy3.port proxy3.stats & pids+=($!)
for _ in $(seq 100); do [ -s proxy3.port ] && break; sleep 0.1; done
P3=$(cat proxy3.port)
mkdir -p "$OCIVM_HOME/certs.d/127.0.0.1:$P3" && cp ca.crt "$OCIVM_HOME/certs.d/127.0.0.1:$P3/"
"$OCIVM" pull --log-level info --creds "$CREDS" "127.0.0.1:$P3/test/big2:latest" > out 2> err; rc=$?
read -r p3bytes _ _ < proxy3.stats
check "next pull: exit 0" [ $rc -eq 0 ]
check "next pull: continued what the failed pull received" grep -q "continuing the [0-9]* bytes an earlier pull received" err
check "next pull: fetched about half ($p3bytes bytes for a $size2-byte layer)" [ "$p3bytes" -lt $((size2 * 3 / 4)) ]
check "next pull: the layer's content" [ "$(stat -c %s "$(rootfs_of "127.0.0.1:$P3/test/big2:latest")/big2.bin" 2>/dev/null)" = 8000000 ]
check "next pull: nothing kept any more" [ -z "$(find "$OCIVM_HOME/downloads" -type f)" ]

# 7. a multi-platform index
"$OCIVM" pull --creds "$CREDS" "$REG/test/multi" > out 2> err; rc=$?
check "index: default linux/amd64" [ $rc -eq 0 ]
check "index: default linux/amd64: what it says or holds" [ "$(cat "$(rootfs_of "$REG/test/multi:latest")/arch")" = amd64 ]
"$OCIVM" image rm "$REG/test/multi:latest"
"$OCIVM" pull --platform linux/arm64 --creds "$CREDS" "$REG/test/multi" > out 2> err; rc=$?
check "index: --platform linux/arm64" [ $rc -eq 0 ]
check "index: --platform linux/arm64: what it says or holds" [ "$(cat "$(rootfs_of "$REG/test/multi:latest")/arch")" = arm64 ]
"$OCIVM" pull --platform linux/s390x --creds "$CREDS" "$REG/test/multi" > out 2> err; rc=$?
check "index: a platform it lacks (125, lists what it has)" [ $rc -eq 125 ]
check "index: a platform it lacks (125, lists what it has): what it says or holds" grep -q "linux/arm64" err

# 8. Docker schema 2 and zstd
"$OCIVM" pull --creds "$CREDS" "$REG/test/d2" > out 2> err; rc=$?
m=$(cut -d' ' -f2 out); m=${m#sha256:}
check "docker schema 2: pulled" [ $rc -eq 0 ]
check "docker schema 2: pulled: what it says or holds" grep -q "application/vnd.docker.distribution.manifest.v2+json" "$OCIVM_HOME/blobs/sha256/$m"
check "docker schema 2: content" [ "$(cat "$(rootfs_of "$REG/test/d2:latest")/docker" 2>/dev/null)" = "schema 2 $$" ]
"$OCIVM" pull --creds "$CREDS" "$REG/test/zst" > out 2> err; rc=$?
[ $rc -eq 0 ] || cat err
m=$(cut -d' ' -f2 out); m=${m#sha256:}
check "zstd layer: pulled" [ $rc -eq 0 ]
check "zstd layer: pulled: what it says or holds" grep -q "tar+zstd" "$OCIVM_HOME/blobs/sha256/$m"
check "zstd layer: content" [ "$(cat "$(rootfs_of "$REG/test/zst:latest")/zstd.txt" 2>/dev/null)" = "zstd layer $$" ]

# 9. the bearer-token flow: a second registry on the same storage, with
# token auth (a JWT from tests/registry/token_server.py, signed by a key the
# registry trusts); test/d2 may be pulled anonymously, the rest needs a login.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=ocivm test token signer $$" \
  -keyout token.key -out token.crt 2>/dev/null || fail "openssl cannot make the token key"
python3 "$HERE/token_server.py" reg.crt reg.key token.crt token.key "$CREDS" test/d2 token.port token.log & pids+=($!)
for _ in $(seq 100); do [ -s token.port ] && break; sleep 0.1; done
[ -s token.port ] || fail "the token service did not start"
TPORT2=$(free_port)
cat > registry2.yml <<YML
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $WORK/storage
http:
  addr: 127.0.0.1:$TPORT2
  tls:
    certificate: $WORK/reg.crt
    key: $WORK/reg.key
auth:
  token:
    realm: https://127.0.0.1:$(cat token.port)/token
    service: ocivm-test
    issuer: ocivm-test-issuer
    rootcertbundle: $WORK/token.crt
YML
docker-registry serve registry2.yml > registry2.log 2>&1 & pids+=($!)
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' --cacert ca.crt "https://127.0.0.1:$TPORT2/v2/")" = 401 ] && break
  sleep 0.1
done
REG2=127.0.0.1:$TPORT2
mkdir -p "$OCIVM_HOME/certs.d/$REG2" && cp ca.crt "$OCIVM_HOME/certs.d/$REG2/"
"$OCIVM" pull --creds "$CREDS" "$REG2/test/busy:v1" > out 2> err; rc=$?
check "bearer: pull with credentials" [ $rc -eq 0 ]
check "bearer: pull with credentials: what it says or holds" grep -q "^user repository:test/busy:pull" token.log
[ $rc -eq 0 ] || { cat err; tail -5 registry2.log; }
"$OCIVM" pull "$REG2/test/d2" > out 2> err; rc=$?
check "bearer: anonymous pull of a public repository" [ $rc -eq 0 ]
check "bearer: anonymous pull of a public repository: what it says or holds" grep -q "^anon repository:test/d2:pull" token.log
"$OCIVM" pull "$REG2/test/zst" > out 2> err; rc=$?
check "bearer: anonymous pull of a private one: 125, asks for credentials" [ $rc -eq 125 ]
check "bearer: anonymous pull of a private one: 125, asks for credentials: what it says or holds" grep -q -- "--creds" err
"$OCIVM" pull --creds tester:nope "$REG2/test/zst" > out 2> err; rc=$?
check "bearer: wrong password: 125, says so" [ $rc -eq 125 ]
check "bearer: wrong password: 125, says so: what it says or holds" grep -q "wrong user name or password" err

# 10. --tls-verify=false needs no CA
rm -rf "$OCIVM_HOME/certs.d"
"$OCIVM" image rm "$REG/test/d2:latest"
"$OCIVM" pull --tls-verify=false --creds "$CREDS" "$REG/test/d2" > out 2> err; rc=$?
check "--tls-verify=false: pulled without the CA" [ $rc -eq 0 ]

# 11. a registry that lies and inflates (plain HTTP, insecure in registries.conf)
python3 "$HERE/hostile_registry.py" "$WORK/hostile" hostile.port & pids+=($!)
for _ in $(seq 100); do [ -s hostile.port ] && break; sleep 0.1; done
[ -s hostile.port ] || fail "the hostile registry did not start"
HREG=127.0.0.1:$(cat hostile.port)
printf '[[registry]]\nlocation = "%s"\ninsecure = true\n' "$HREG" > "$OCIVM_HOME/registries.conf"
# before any pull of its image: layers in the store are not fetched at all
"$OCIVM" pull "$HREG/longblob:1" > out 2> err; rc=$?
check "hostile longblob: 125, a blob longer than its descriptor is refused" [ $rc -eq 125 ]
check "hostile longblob: 125, a blob longer than its descriptor is refused: what it says or holds" grep -q "is longer than the" err
grep -q "is longer than the" err || cat err
"$OCIVM" pull "$HREG/flaky:1" > out 2> err; rc=$?
check "hostile: 503 then 429 are retried, then the pull succeeds (plain HTTP, insecure)" [ $rc -eq 0 ]
[ $rc -eq 0 ] || cat err
"$OCIVM" pull "$HREG/good:1" > out 2> err; rc=$?
check "hostile: its honest image" [ $rc -eq 0 ]
check "hostile: its honest image: what it says or holds" [ "$(cat "$(rootfs_of "$HREG/good:1")/hostile.txt")" = "hostile $$" ]
state=$(store_state)
hostile() {  # hostile REPO MESSAGE
  "$OCIVM" pull "$HREG/$1:1" > out 2> err; rc=$?
  check "hostile $1: 125, '$2'" [ $rc -eq 125 ]
  check "hostile $1: 125, '$2': what it says or holds" grep -q -- "$2" err
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
check "blocked registry: 125, says so" [ $rc -eq 125 ]
check "blocked registry: 125, says so: what it says or holds" grep -q "is blocked by registries.conf" err
rm "$OCIVM_HOME/registries.conf"

# 12. ocivm run of a reference: pulled first (--pull missing), then booted
if [ -n "$DEMO" ]; then
  [ -f "$DEMO/index.json" ] || fail "no demo layout at $DEMO (built by 'make')"
  skopeo copy -q --dest-creds "$CREDS" --dest-cert-dir "$WORK/certs" "oci:$DEMO:latest" "docker://$REG/test/demo:1" \
    > push.log 2>&1 || { cat push.log; fail "skopeo copy of the demo failed"; }
  mkdir -p "$OCIVM_HOME/certs.d/$REG" && cp ca.crt "$OCIVM_HOME/certs.d/$REG/ca.crt"
  "$OCIVM" run --rm --pull never --authfile auth.json "$REG/test/demo:1" -- echo x > out 2> err; rc=$?
  check "run --pull never of a reference not stored: 125, says it is not there" [ $rc -eq 125 ]
  check "run --pull never: what it says" grep -q "no image named" err
  "$OCIVM" run --rm --authfile auth.json "$REG/test/demo:1" -- sh -c 'echo pulled-and-ran; exit 7' > out 2> err; rc=$?
  check "run of a registry reference: the command's exit status (7, got $rc)" [ $rc -eq 7 ]
  check "run of a registry reference: the command's output" grep -qx pulled-and-ran out
  [ $rc -eq 7 ] || cat err
  check "run of a registry reference: the image is in the store" contains <("$OCIVM" image ls) "$REG/test/demo:1"
  before=$(blob_gets test/demo)
  "$OCIVM" run --rm "$REG/test/demo:1" -- true > out 2> err; rc=$?
  check "a second run: from the store, nothing fetched (exit $rc)" [ $rc -eq 0 ]
  check "a second run: no blob requested" [ "$(blob_gets test/demo)" -eq "$before" ]
fi

check "no staging directory or partial blob left" [ -z "$(find "$OCIVM_HOME/downloads" -mindepth 1 ! -name partial)" ]
echo "passed $passed, failed $failed"
[ $failed -eq 0 ]
