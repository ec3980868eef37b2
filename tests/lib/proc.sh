# What the shell tests read of a process from /proc (sourced).
#   field PID KEY        the first value of KEY: in /proc/PID/status (CapEff, Seccomp...)
#   status_line PID KEY  all of KEY's values (Uid: 0 0 0 0)
#   descendants PID      every descendant, one per line
#   gone PID...          true once none of them exists (10 s at most)
field() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null; }
status_line() { awk -v k="$2:" '$1 == k { $1 = ""; print substr($0, 2) }' "/proc/$1/status" 2>/dev/null; }
descendants() { local k; for k in $(pgrep -P "$1"); do echo "$k"; descendants "$k"; done; }
gone() {
  local p left
  for _ in $(seq 100); do
    left=""
    for p in "$@"; do [ -d "/proc/$p" ] && left="$left $p"; done
    [ -z "$left" ] && return 0
    sleep 0.1
  done
  echo "  still there:$left" >&2
  return 1
}
