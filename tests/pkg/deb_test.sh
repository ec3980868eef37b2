#!/usr/bin/env bash
# The Debian package, built and installed (issue 13, item 5).
#
#   deb_test.sh SOURCE_DIR BUILD_DIR
#
# 1. Builds the .deb with dpkg-buildpackage -us -uc -b and the real debian/
#    (rules, control, changelog, copyright) in a scratch copy of debian/,
#    but from the tree this build has already compiled (debian/rules'
#    OCIVM_PREBUILT): the full build from source is `make deb` (minutes on
#    two cores; too slow to repeat in `make test`). dpkg-buildpackage checks
#    the Build-Depends, so a build package missing from
#    scripts/install-deps.sh fails here.
# 2. Checks the .deb's control: every Depends is a package installed on
#    this machine (where the demo then runs), QEMU and a kernel among them.
# 3. Installs it with dpkg into a scratch root (dpkg --root; its
#    dependencies are this machine's, hence --force-depends), and from the
#    installed paths: `ocivm version` (must be the changelog's version),
#    `ocivm --help`, a man page for every command (man -l), the bash
#    completion, and the demo: import of the shipped demo image and
#    `ocivm run` of it in a VM.
# 4. Purges the package: nothing of it may stay in the root.
# Everything lives in one temporary directory, removed at exit.
set -euo pipefail
SRC=$(cd "${1:?source dir}" && pwd)
BUILD=$(cd "${2:?build dir}" && pwd)

. "$SRC/tests/lib/check.sh"   # fail, need
need dpkg-buildpackage dpkg-dev
need dh debhelper
need man man-db
need cmake cmake
[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg --root, and the demo VM as root); run as root like the fs and vm labels"
for f in ocivm man/ocivm.1 completion/ocivm demo-oci/index.json; do
  [ -e "$BUILD/$f" ] || fail "$BUILD/$f is missing: build first (cmake --build $BUILD --target installables)"
done

T=$(mktemp -d "${TMPDIR:-/tmp}/deb_test.$$.XXXXXX")
cleanup() { rm -rf "$T"; }
trap cleanup EXIT

# ---- 1. build the .deb ----
mkdir -p "$T/pkg/src"
cp -a "$SRC/debian" "$T/pkg/src/"
echo "== dpkg-buildpackage -us -uc -b (OCIVM_PREBUILT=$BUILD)"
if ! (cd "$T/pkg/src" && OCIVM_PREBUILT="$BUILD" dpkg-buildpackage -us -uc -b) > "$T/build.log" 2>&1; then
  tail -40 "$T/build.log" >&2
  fail "dpkg-buildpackage failed (log above)"
fi
version=$(cd "$SRC" && dpkg-parsechangelog -S Version)
deb="$T/pkg/ocivm_${version}_amd64.deb"
[ -f "$deb" ] || fail "no $deb after dpkg-buildpackage; it made: $(ls "$T/pkg")"
echo "built $(basename "$deb") ($(stat -c %s "$deb") bytes)"

# ---- 2. the control fields ----
depends=$(dpkg-deb -f "$deb" Depends)
echo "Depends: $depends"
[ "$(dpkg-deb -f "$deb" Package)" = ocivm ] || fail "the package is not called ocivm"
[ "$(dpkg-deb -f "$deb" Architecture)" = amd64 ] || fail "the package is not amd64"
# Each comma-separated group needs one alternative installed here (as a
# package, or provided by one: libspdlog1.10-fmt9).
dpkg-query -W -f='${db:Status-Abbrev}\t${Package}\t${Provides}\n' |
  awk -F'\t' '$1 ~ /^ii/ { print $2; n = split($3, p, ","); for (i = 1; i <= n; i++) { q = p[i]; sub(/\(.*/, "", q); gsub(/ /, "", q); print q } }' |
  sort -u > "$T/installed"
IFS=',' read -ra groups <<< "$depends"
for g in "${groups[@]}"; do
  ok=0
  IFS='|' read -ra alts <<< "$g"
  for a in "${alts[@]}"; do
    name=$(echo "$a" | sed 's/(.*)//; s/:any//; s/[[:space:]]//g')
    if grep -qxF -- "$name" "$T/installed"; then ok=1; break; fi
  done
  [ $ok = 1 ] || fail "dependency '$g' of the .deb is not installed on this machine (a wrong name, or missing from scripts/install-deps.sh)"
done
echo ",$depends," | grep -q ', *qemu-system-x86 *,' || fail "the .deb does not depend on qemu-system-x86"
echo "$depends" | grep -q 'linux-image-amd64' || fail "the .deb does not depend on a kernel (linux-image-amd64)"
built_using=$(dpkg-deb -f "$deb" Built-Using)
echo "$built_using" | grep -q '^busybox (= ' || fail "Built-Using does not name busybox (the demo image): '$built_using'"
# ocivm pull over HTTPS trusts the system's CAs, which ca-certificates installs.
recommends=$(dpkg-deb -f "$deb" Recommends)
echo ",$recommends," | grep -q ', *ca-certificates *,' || fail "the .deb does not recommend ca-certificates: '$recommends'"

# ---- 3. install into a scratch root and use it ----
R="$T/root"
mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/var/log"
: > "$R/var/lib/dpkg/status"
: > "$R/var/lib/dpkg/available"
dpkg --root="$R" --force-depends -i "$deb" > "$T/dpkg.log" 2>&1 || { cat "$T/dpkg.log" >&2; fail "dpkg -i into the scratch root failed"; }
status=$(dpkg-query --admindir="$R/var/lib/dpkg" -W -f='${Status}' ocivm)
[ "$status" = "install ok installed" ] || fail "ocivm is '$status' in the scratch root"
O="$R/usr/bin/ocivm"
[ -x "$O" ] || fail "no /usr/bin/ocivm in the package"
need readelf binutils
readelf -S "$O" > "$T/sections" || fail "readelf cannot read /usr/bin/ocivm"
! grep -q '\.debug_info' "$T/sections" || fail "/usr/bin/ocivm still has its debug info (dh_strip did not run?)"

echo "== ocivm version"
v=$("$O" version) || fail "ocivm version failed"
echo "$v"
[ "$v" = "ocivm version $version" ] || fail "'ocivm version' says '$v'; debian/changelog says $version (keep CMakeLists.txt's project VERSION and the changelog in step)"

echo "== ocivm --help"
"$O" --help > "$T/help" || fail "ocivm --help failed"
grep -q '^Usage: ocivm' "$T/help" || fail "ocivm --help prints no usage"
# The registry options' help (pull, disk create) fits an 80-column terminal.
for c in pull disk; do
  "$O" $c --help > "$T/help.$c" || fail "ocivm $c --help failed"
  wide=$(awk 'length($0) > 80' "$T/help.$c")
  [ -z "$wide" ] || fail "ocivm $c --help has lines over 80 columns: $wide"
done

echo "== man pages"
commands=$(awk '/^[A-Z][A-Za-z ]*:$/ { s = ($0 == "Commands:"); next } s && /^  [a-z]/ { w = substr($0, 3); sub(/ .*/, "", w); print w }' "$T/help")
[ -n "$commands" ] || fail "no commands in ocivm --help"
pages="ocivm"
for c in $commands; do
  case $c in help|version) ;; *) pages="$pages ocivm-$c" ;; esac
done
for p in $pages; do
  page="$R/usr/share/man/man1/$p.1.gz"
  [ -f "$page" ] || fail "no man page $p(1) in the package (a command of 'ocivm --help' without a page)"
  MANWIDTH=80 man -l "$page" > "$T/man.txt" 2> "$T/man.err" || { cat "$T/man.err" >&2; fail "man -l $p.1.gz failed"; }
  [ ! -s "$T/man.err" ] || { cat "$T/man.err" >&2; fail "man -l $p.1.gz warned (bad roff)"; }
  grep -q '^NAME' "$T/man.txt" && grep -q '^SYNOPSIS' "$T/man.txt" || fail "$p(1) has no NAME or SYNOPSIS"
done
MANWIDTH=80 man -l "$R/usr/share/man/man1/ocivm-run.1.gz" > "$T/man.txt"
grep -q -- '--memory SIZE' "$T/man.txt" || fail "ocivm-run(1) does not document --memory (generated from 'ocivm run --help'?)"
grep -Eq 'ocivm-run +- +boot +IMAGE' "$T/man.txt" || fail "ocivm-run(1) has no NAME line from 'ocivm --help'"
echo "pages: $pages"

echo "== bash completion"
C="$R/usr/share/bash-completion/completions/ocivm"
mkdir -p "$T/empty"
[ -f "$C" ] || fail "no bash completion in the package"
complete_words() {  # complete_words WORD... : what _ocivm offers for the last word
  # In an empty directory: file names must not mix into the answers.
  (cd "$T/empty" && env -i PATH="$R/usr/bin:/usr/bin:/bin" OCIVM_HOME="$T/home" bash --norc --noprofile -c '
    source "$1"; shift
    COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _ocivm
    echo "${COMPREPLY[*]}"' _ "$C" "$@")
}
expect_completion() {  # expect_completion "EXPECTED" WORD...
  local want=$1; shift
  local got
  got=$(complete_words "$@")
  [ "$got" = "$want" ] || fail "completing '$*' gave '$got', not '$want'"
  echo "  $* -> $got"
}
expect_completion "run" ocivm ru
expect_completion "import inspect" ocivm image i
expect_completion "--memory" ocivm run --mem
expect_completion "auto always" ocivm mount --cache a
expect_completion "raw qcow2" ocivm disk create --format ""
expect_completion "--lazy-after-sync" ocivm umount --la
# Every command's --log-level lists its levels (holders' once had one space
# too few between the option and its text, which made the text its argument).
for c in run image disk holders umount mount fsd; do
  expect_completion "trace debug info warn error" ocivm $c --log-level ""
done
expect_completion "summary" ocivm trace ""
# The registry options: --pull's policies, --tls-verify as the help writes
# it, and their values after a blank or after "=" (bash splits --pull=m
# into "--pull" "=" "m"; with nothing after the "=" yet, "=" is the word).
expect_completion "missing always never" ocivm run --pull ""
expect_completion "missing always never" ocivm disk create --pull ""
expect_completion "missing always never" ocivm run --pull = ""
expect_completion "missing always never" ocivm run --pull =
expect_completion "never" ocivm run --pull = n
expect_completion "--pull=never" ocivm run --pull=n
expect_completion "--tls-verify=false" ocivm pull --tls
expect_completion "--tls-verify=false" ocivm run --tls
expect_completion "false true" ocivm pull --tls-verify = ""
# a boolean takes no next word (podman): after "--tls-verify " come options
expect_completion "--creds" ocivm pull --tls-verify --cr
expect_completion "false" ocivm disk create --tls-verify = f

# Image names come from `ocivm image ls`, whose store anyone who can write
# it could fill: a name is completed as text, never run. A stand-in ocivm
# (first in PATH) lists names with command substitutions, backquotes and a
# ";"; completing must create none of the files they name and offer each
# name quoted for the command line.
mkdir -p "$T/fake"
cat > "$T/fake/ocivm" <<EOF
#!/bin/sh
[ "\$1 \$2" = "image ls" ] || exit 1
echo 'NAME DIGEST SIZE IMPORTED'
echo 'demo:latest sha256:0 1 now'
echo '\$(touch\${IFS}$T/ran-dollar):latest sha256:0 1 now'
echo '\`touch\${IFS}$T/ran-backquote\`:latest sha256:0 1 now'
echo 'x;touch\${IFS}$T/ran-semicolon:latest sha256:0 1 now'
EOF
chmod 755 "$T/fake/ocivm"
got=$(cd "$T/empty" && env -i PATH="$T/fake:/usr/bin:/bin" bash --norc --noprofile -c '
  source "$1"; COMP_WORDS=(ocivm run ""); COMP_CWORD=2; _ocivm
  printf "%s\n" "${COMPREPLY[@]}"' _ "$C")
for f in ran-dollar ran-backquote ran-semicolon; do
  [ ! -e "$T/$f" ] || fail "completing an image name ran a command from a name in 'ocivm image ls' ($f)"
done
want=$(printf '%q\n' demo demo:latest "\$(touch\${IFS}$T/ran-dollar)" "\$(touch\${IFS}$T/ran-dollar):latest" \
  "\`touch\${IFS}$T/ran-backquote\`" "\`touch\${IFS}$T/ran-backquote\`:latest" \
  "x;touch\${IFS}$T/ran-semicolon" "x;touch\${IFS}$T/ran-semicolon:latest")
[ "$got" = "$want" ] || fail "completing image names with shell characters gave
$got
not
$want"
echo "  ocivm run <hostile image names> -> quoted, nothing run"

echo "== the demo, from the installed paths"
export OCIVM_HOME="$T/home"
"$O" image import "oci:$R/usr/share/ocivm/demo-oci" --name demo > "$T/import.out" ||
  fail "ocivm image import of the shipped demo image failed"
expect_completion "demo demo:latest" ocivm run de
out=$("$O" run --rm demo -- sh -c 'uname -r; cat /etc/os-release; id') || fail "ocivm run of the demo failed (exit $?)"
echo "$out"
# The guest kernel is the host's newest /boot/vmlinuz-* with modules.
release=$(echo "$out" | head -1)
[ -n "$release" ] && [ -d "/lib/modules/$release" ] || fail "the demo's first line '$release' is no kernel release of /lib/modules"
echo "$out" | grep -q '^NAME="ocivm demo"' || fail "the demo did not print its os-release"
echo "$out" | grep -q '^uid=0(root)' || fail "the demo did not print uid=0(root)"

# ---- 4. purge ----
dpkg --root="$R" --purge ocivm > "$T/dpkg.log" 2>&1 || { cat "$T/dpkg.log" >&2; fail "dpkg --purge failed"; }
left=$(cd "$R" && find . -path ./var -prune -o ! -type d -print)
[ -z "$left" ] || fail "dpkg --purge left files of the package: $left"
if [ -d "$R/usr" ]; then
  fail "dpkg --purge left directories: $(cd "$R" && find ./usr | head -5 | tr '\n' ' ')"
fi
echo "PASS: the .deb builds, installs, runs the demo, and purges clean"
