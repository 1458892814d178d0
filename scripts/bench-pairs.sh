#!/usr/bin/env bash
# Interleaved pairs: SCENARIO=A-B PAIRS=N runs scripts/bench.sh with
# SCENARIO=A, then SCENARIO=B, N times (A B A B ...), each run on a stack
# started fresh, and prints after each pair a compact table: delivered
# msg/s, CPU us, context switches, system calls and read+write calls per
# delivered message (summed over each run's processes under test), A/B, and
# lost/duplicated/reordered. At the end it prints every pair again with the
# medians. Interleaving spreads the drift of a shared machine over both.
#
#   SCENARIO=anchor-floor PAIRS=3 scripts/bench.sh [chat-bench flags...]
#   make bench SCENARIO=anchor-floor PAIRS=3 BENCH_ARGS="-duration 5s"
#
# Flags go to every run. Each run's full text, JSON and HTML reports are
# kept in BENCH_PAIRS_DIR (default .run/bench-pairs/<time>). The other
# variables of bench.sh (BIN, TOPOLOGY, TRANSPORT, NSERVERS, ...) apply to
# every run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
PAIRS=${PAIRS:-3}
A=${SCENARIO%%-*}
B=${SCENARIO#*-}
if [ -z "$A" ] || [ -z "$B" ] || [ "$A" = "$SCENARIO" ] || [[ "$B" == *-* ]]; then
  echo "bench-pairs.sh: SCENARIO must be two scenarios joined by '-', e.g. anchor-floor (got '$SCENARIO')" >&2
  exit 2
fi
case "$PAIRS" in '' | *[!0-9]* | 0) echo "bench-pairs.sh: PAIRS must be a positive number" >&2; exit 2 ;; esac
OUT=${BENCH_PAIRS_DIR:-.run/bench-pairs/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
echo "bench-pairs.sh: $PAIRS pairs of $A and $B, reports in $OUT/" >&2

files=()
rc=0
for i in $(seq "$PAIRS"); do
  for s in "$A" "$B"; do
    base="$OUT/pair$i-$s"
    echo "bench-pairs.sh: pair $i/$PAIRS: $s" >&2
    if ! SCENARIO=$s BENCH_JSON="$base.json" BENCH_HTML="$base.html" \
      scripts/bench.sh -quiet "$@" >"$base.txt" 2>&1; then
      echo "bench-pairs.sh: the $s run of pair $i failed; its output ends:" >&2
      tail -20 "$base.txt" >&2
      exit 1
    fi
    files+=("$base.json")
  done
  "$BIN/chat-bench" -compare "$OUT/pair$i-$A.json,$OUT/pair$i-$B.json" || rc=$?
done
if [ "$PAIRS" -gt 1 ]; then
  echo
  echo "all $PAIRS pairs ($SCENARIO):"
  "$BIN/chat-bench" -compare "$(IFS=,; echo "${files[*]}")" || rc=$?
fi
exit $rc
