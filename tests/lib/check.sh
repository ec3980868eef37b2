# Shell test helpers: `check WHAT CMD...` counts CMD's success as a passed
# check, `finish` prints "N passed, N failed" and exits non-zero on a failure
# (or when nothing was checked). `fail MESSAGE` ends a test that cannot go
# on (a missing prerequisite, a set-up step that failed); `need COMMAND
# PACKAGE` is that failure when COMMAND is missing, naming the package.
passed=0; failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
  exit $?
}
fail() { echo "FAIL: $*"; exit 1; }
need() {
  command -v "$1" >/dev/null || fail "$1 missing: apt-get install $2 (scripts/install-deps.sh installs it)"
}
