#!/usr/bin/env bash
# Writes the man pages ocivm(1) and ocivm-COMMAND(1), one per command listed
# under "Commands:" in `ocivm --help` (but help and version), from the
# binary's own --help texts, so the pages can never drift from the program.
#
#   gen-man.sh OCIVM OUTDIR
#
# Why not help2man: it makes one page per program from `PROG --help` and
# `PROG --version` and has no notion of subcommands, and its heuristics
# would turn our two-column option tables and verbatim blocks into guesses.
# Our help texts follow one layout (Usage line, paragraphs, "Section:"
# headers, option lines indented 2-6 columns with their text in a column of
# its own, deeper lines continuing them), which this parses exactly; a text
# that breaks the layout shows up in the page, and tests/pkg/deb_test.sh
# renders the pages with man.
#
# The date on the pages is $SOURCE_DATE_EPOCH's when set (reproducible
# package builds), else none.
set -euo pipefail
OCIVM=${1:?path of the ocivm binary}
OUT=${2:?output directory}

version=$("$OCIVM" version)
version=${version##* }
date=""
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
  date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
fi

# The commands of `ocivm --help` as "NAME<TAB>SUMMARY" lines: the first word
# of each entry of its Commands section, with the entry's text joined.
commands() {
  "$OCIVM" --help | awk '
    /^[A-Z][A-Za-z ]*:$/ { insec = ($0 == "Commands:"); next }
    !insec { next }
    /^$/ { next }
    /^  [a-z]/ {
      if (name != "") print name "\t" text
      line = substr($0, 3); name = line; sub(/ .*/, "", name)
      text = ""
      i = index(line, "  ")
      if (i > 0) { text = substr(line, i); sub(/^ +/, "", text) }
      next
    }
    /^   / { t = $0; sub(/^ +/, "", t); text = (text == "" ? t : text " " t); next }
    { insec = 0 }
    END { if (name != "") print name "\t" text }'
}

# render NAME SUMMARY SEEALSO < help text > roff
render() {
  # Through the environment: awk -v would interpret the backslashes.
  GM_NAME=$1 GM_SUMMARY=$2 GM_SEEALSO=$3 GM_VERSION=$version GM_DATE=$date awk '
    # Escapes roff: backslashes, hyphens (minus signs in options), and a
    # control character at the start of a line.
    function esc(s,    r, i, c) {
      r = ""
      for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c == "\\") r = r "\\e"
        else if (c == "-") r = r "\\-"
        else r = r c
      }
      return r
    }
    function line(s) {
      if (pp) { print ".PP"; pp = 0 }
      s = esc(s)
      if (s ~ /^[.'"'"']/) s = "\\&" s
      print s
    }
    function indent_of(s) { match(s, /^ */); return RLENGTH }
    # verb: 1 in a verbatim block of the text (indented), 2 in one inside
    # a list entry (at the indentation of its text).
    function endverb() { if (verb) { print ".fi"; if (verb == 1) print ".RE"; verb = 0 } }
    # An option term: options bold, their arguments italic.
    function term(s,    n, w, i, r, t, comma) {
      if (!optsec) return "\\fB" esc(s) "\\fR"
      n = split(s, w, " ")
      r = ""
      for (i = 1; i <= n; i++) {
        t = w[i]; comma = ""
        if (t ~ /,$/) { comma = ","; t = substr(t, 1, length(t) - 1) }
        if (t ~ /^-/) t = "\\fB" esc(t) "\\fR"
        else if (t == "/" || t == "|") t = esc(t)
        else t = "\\fI" esc(t) "\\fR"
        r = r (i > 1 ? " " : "") t comma
      }
      return r
    }
    BEGIN {
      name = ENVIRON["GM_NAME"]; summary = ENVIRON["GM_SUMMARY"]; seealso = ENVIRON["GM_SEEALSO"]
      version = ENVIRON["GM_VERSION"]; date = ENVIRON["GM_DATE"]
      up = toupper(name)
      printf ".TH %s 1 \"%s\" \"ocivm %s\" \"User Commands\"\n", esc(up), date, version
      print ".SH NAME"
      print esc(name) " \\- " esc(summary)
      sec = "usage"; verb = 0; list = 0; optsec = 0; desccol = 0; started = 0; pp = 0
    }
    NR == 1 {
      if ($0 !~ /^Usage: /) { print "gen-man: " name ": --help does not start with \"Usage: \"" > "/dev/stderr"; exit 2 }
      print ".SH SYNOPSIS"
      print ".nf"
      line(substr($0, 8))
      next
    }
    sec == "usage" {
      if ($0 ~ /^ /) { t = $0; sub(/^ +/, "", t); line("      " t); next }
      print ".fi"
      sec = "text"; list = 0
      if ($0 == "") next
    }
    /^[A-Z][A-Za-z ]*:$/ {
      endverb()
      h = toupper(substr($0, 1, length($0) - 1))
      if (h == "OPTIONS" && seen[h]) h = "MORE OPTIONS"
      seen[h] = 1
      pp = 0
      print ".SH " esc(h)
      list = (h ~ /OPTIONS$/ || h ~ /COMMANDS$/)
      optsec = (h ~ /OPTIONS$/)
      desccol = 0; started = 1
      next
    }
    /^$/ { endverb(); if (!list && started) pp = 1; desccol = 0; next }
    {
      ind = indent_of($0)
      t = substr($0, ind + 1)
      if (!started) { print ".SH DESCRIPTION"; started = 1 }
      if (ind == 0) {                      # running text
        endverb()
        if (list) { list = 0; pp = 1 }
        line(t)
        next
      }
      if (list && ind <= 6) {              # a new entry: TERM  TEXT
        endverb()
        print ".TP"
        i = index(t, "  ")
        if (i > 0) {
          d = substr(t, i); dlead = indent_of(d)
          desccol = ind + i - 1 + dlead
          print term(substr(t, 1, i - 1))
          line(substr(d, dlead + 1))
        } else {
          print term(t)
          desccol = -1                     # set by the first continuation
        }
        next
      }
      if (list && desccol != 0) {          # a continuation of the entry
        if (desccol < 0) desccol = ind
        if (ind == desccol) { endverb(); line(t); next }
        if (!verb) { print ".nf"; verb = 2 }
        rel = ind - desccol; if (rel < 2) rel = 2
        line(sprintf("%" rel "s%s", "", t))
        next
      }
      if (!verb) { if (pp) { print ".PP"; pp = 0 }; print ".RS 4"; print ".nf"; verb = 1 }   # a verbatim block
      line(t)
    }
    END {
      if (sec == "usage") print ".fi"
      endverb()
      if (seealso != "") { print ".SH \"SEE ALSO\""; print seealso }
    }'
}

mkdir -p "$OUT"
tmp=$(mktemp -d "$OUT/.gen.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

pages=()
see_subs=""
while IFS=$'\t' read -r cmd summary; do
  case $cmd in help|version) continue ;; esac
  "$OCIVM" "$cmd" --help > "$tmp/help" || { echo "gen-man: 'ocivm $cmd --help' failed" >&2; exit 1; }
  render "ocivm-$cmd" "$summary" '\fBocivm\fR(1)' < "$tmp/help" > "$tmp/ocivm-$cmd.1"
  pages+=("ocivm-$cmd.1")
  see_subs+="${see_subs:+,
}\\fBocivm\\-$cmd\\fR(1)"
done < <(commands)
[ ${#pages[@]} -gt 0 ] || { echo "gen-man: no commands found in 'ocivm --help'" >&2; exit 1; }

"$OCIVM" --help > "$tmp/help"
render ocivm "run OCI container images as fast, ephemeral VMs" "$see_subs" < "$tmp/help" > "$tmp/ocivm.1"
pages+=(ocivm.1)

# Replace the whole set at once, so a page of a command that is gone goes too.
rm -f "$OUT"/ocivm*.1
for p in "${pages[@]}"; do mv "$tmp/$p" "$OUT/$p"; done
