# Shell helpers for the tests that drive the ocivm CLI and check what a user
# sees (tests/vm/*): each command's stdout, stderr and exit status kept in
# $WORK/NAME.{out,err,rc}, and the checks on them. Needs OCIVM and WORK set,
# and check.sh sourced first (ok, bad).

# ocx NAME ARGS...: runs ocivm ARGS (stdin empty), keeps its results as NAME
ocx() {
  local name=$1; shift
  "$OCIVM" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" < /dev/null
  echo $? > "$WORK/$name.rc"
}
rc() { cat "$WORK/$1.rc"; }
out() { cat "$WORK/$1.out"; }
show() { echo "  --- $1: rc=$(rc "$1")"; sed 's/^/  out| /' "$WORK/$1.out" | head -20; sed 's/^/  err| /' "$WORK/$1.err" | head -20; }
# expect NAME RC OUT WHAT: exit status RC and stdout OUT exactly
expect() {
  if [ "$(rc "$1")" = "$2" ] && [ "$(out "$1")" = "$3" ]; then ok "$4"; else bad "$4 (want rc $2, out '$3')"; show "$1"; fi
}
# refused NAME PATTERN WHAT: exit status 125 and PATTERN in stderr
refused() {
  if [ "$(rc "$1")" = 125 ] && grep -q -- "$2" "$WORK/$1.err"; then ok "$3"; else bad "$3"; show "$1"; fi
}
# until_ok CMD...: retries CMD (at most 60 s) until it succeeds
until_ok() { for _ in $(seq 600); do "$@" > /dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
# until_grep PATTERN FILE: waits (at most 60 s) until FILE has PATTERN
until_grep() { for _ in $(seq 600); do grep -q -- "$1" "$2" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# json_field FILE PYTHON-EXPR: the expression over the parsed document j
json_field() { python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"; }
# gone PID: exited, or a zombie nobody reaps (it holds nothing)
gone() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null); [ -z "$st" ] || [ "${st:0:1}" = Z ]; }
