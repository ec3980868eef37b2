#!/usr/bin/env bash
# Runs each fuzz target for SECONDS on a copy of its seed corpus (plus its
# regression inputs) in BUILD/fuzz-runs/TARGET and prints, per target,
# executions per second, coverage (libFuzzer's cov: edges and ft: features at
# the end) and what it found. Exits non-zero when any target crashed, hung
# (-timeout), ran out of memory or leaked. Each target's log and any finding
# stay in BUILD/fuzz-runs/TARGET (log, artifacts/); its scratch files are gone.
#
#   run_fuzz.sh BUILD SECONDS TARGET...
set -uo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 BUILD SECONDS TARGET..." >&2
  exit 2
fi
build=$(realpath "$1")
secs=$2
shift 2
src=$(cd "$(dirname "$0")" && pwd)
runs=$build/fuzz-runs

max_len() {
  case $1 in
    oci_parse_fuzz) echo 16384 ;;
    *) echo 65536 ;;
  esac
}

if [ -n "${OCIVM_FUZZ_TOLERATE:-}" ]; then
  echo "run_fuzz: NOTE: tolerating known findings (OCIVM_FUZZ_TOLERATE): $OCIVM_FUZZ_TOLERATE" >&2
fi

status=0
rows=()
for t in "$@"; do
  bin=$build/tests/fuzz/$t
  if [ ! -x "$bin" ]; then
    echo "run_fuzz: $bin is missing (make fuzz builds it)" >&2
    exit 2
  fi
  dir=$runs/$t
  rm -rf "$dir"
  mkdir -p "$dir/corpus" "$dir/artifacts" "$dir/tmp"
  cp "$src/corpus/$t"/* "$dir/corpus/"
  if [ -d "$src/regressions/$t" ]; then
    for f in "$src/regressions/$t"/*; do cp "$f" "$dir/corpus/regression-$(basename "$f")"; done
  fi
  dict=()
  [ -f "$src/dict/$t.dict" ] && dict=("-dict=$src/dict/$t.dict")
  echo "run_fuzz: $t for ${secs}s ($dir/log)" >&2
  start=$(date +%s)
  (cd "$dir" && TMPDIR="$dir/tmp" OCIVM_FUZZ_WRITABLE="$dir" "$bin" \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len="$(max_len "$t")" \
      -handle_xfsz=0 -print_final_stats=1 -artifact_prefix="$dir/artifacts/" "${dict[@]}" "$dir/corpus" \
      >"$dir/log" 2>&1)
  rc=$?
  took=$(( $(date +%s) - start ))
  rm -rf "$dir/tmp"

  stat() { sed -n "s/^stat::$1: *//p" "$dir/log" | tail -1; }
  execs=$(stat number_of_executed_units)
  rate=$(stat average_exec_per_sec)
  rss=$(stat peak_rss_mb)
  cov=$(grep -o 'cov: [0-9]*' "$dir/log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$dir/log" | tail -1 | cut -d' ' -f2)
  corp=$(grep -o 'corp: [0-9]*' "$dir/log" | tail -1 | cut -d' ' -f2)
  found=$(find "$dir/artifacts" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
  verdict="none"
  if [ "$found" -gt 0 ]; then
    status=1
    verdict="$found finding(s), exit $rc: $(ls "$dir/artifacts" | tr '\n' ' ')"
  elif [ "$rc" -eq 72 ]; then
    status=1
    verdict="interrupted (SIGINT/SIGTERM from outside) after ${took}s"
  elif [ "$rc" -ne 0 ]; then
    status=1
    verdict="exit $rc (see the log)"
  fi
  rows+=("$(printf '%-18s %6ss %10s %8s %7s %7s %6s %6sMB  %s' "$t" "$took" "${execs:-?}" "${rate:-?}" \
      "${cov:-?}" "${ft:-?}" "${corp:-?}" "${rss:-?}" "$verdict")")
done

printf '%-18s %7s %10s %8s %7s %7s %6s %8s  %s\n' target time execs exec/s cov ft corpus rss findings
for r in "${rows[@]}"; do echo "$r"; done
exit $status
