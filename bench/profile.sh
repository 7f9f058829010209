#!/usr/bin/env bash
# Where the engine's CPU goes: runs bench/run.sh (without the limit phases) and records the
# engine worker with `perf record` from its start to its exit, then prints the functions that
# take the most CPU themselves (self time) and, with their callees (children), the engine's
# own code paths. Needs perf (linux-perf) and permission to profile (root, or
# kernel.perf_event_paranoid <= 1).
#
#   bench/profile.sh [--quick] [-- <keyflow-bench run flags>]
#
# Writes bench/results/<timestamp>.perf.data and <timestamp>.profile.txt.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RESULTS="$BENCH_DIR/results"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
ARGS=(--no-limit "$@")
say() { echo "[profile $(date +%H:%M:%S)] $*" >&2; }
command -v perf >/dev/null || { say "perf is not installed (apt-get install linux-perf)"; exit 1; }
mkdir -p "$RESULTS"
DATA="$RESULTS/$STAMP.perf.data"
TEXT="$RESULTS/$STAMP.profile.txt"

"$BENCH_DIR/run.sh" "${ARGS[@]}" &
BENCH=$!
# The engine worker of this run: the newest `keyflow run` process that bench/run.sh started.
PID=""
# It must still be there a moment later (not a short-lived process that matched).
for _ in $(seq 1 1800); do
  PID="$(pgrep -n -f -- "release/keyflow run --module .*--cluster bench-.*--worker-id w1" || true)"
  if [[ -n "$PID" ]]; then
    sleep 0.5
    if kill -0 "$PID" 2>/dev/null && grep -q -- "--worker-id" "/proc/$PID/cmdline" 2>/dev/null; then break; fi
    PID=""
  fi
  kill -0 "$BENCH" 2>/dev/null || { say "bench/run.sh ended before an engine started"; wait "$BENCH"; exit 1; }
  sleep 0.1
done
[[ -n "$PID" ]] || { say "no engine process appeared"; exit 1; }
say "recording engine pid $PID (perf record -F 199 --call-graph dwarf) until it exits"
perf record -F 199 --call-graph dwarf,16384 -p "$PID" -o "$DATA" 2>"$RESULTS/$STAMP.perf.log" &
PERF=$!
RC=0
wait "$BENCH" || RC=$?
wait "$PERF" || true
say "bench/run.sh exited with $RC; analysing $DATA"
{
  echo "# engine CPU profile, bench/run.sh ${ARGS[*]}, $(date -u)"
  echo
  echo "## self time by function (top 40)"
  perf report -i "$DATA" --no-children --sort symbol --stdio --percent-limit 0.7 -g none 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -n 40
  echo
  echo "## self time by shared object"
  perf report -i "$DATA" --no-children --sort dso --stdio -g none 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -n 15
  echo
  echo "## with callees (children), keyflow's own functions (top 40)"
  perf report -i "$DATA" --children --sort symbol --stdio -g none 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | grep -E 'keyflow|rdkafka::|sled::|prost::|reqwest|hyper' | head -n 40
} | sed -E -e 's/ {3,}/  /g' -e 's/ +- +- *$//' >"$TEXT"
cat "$TEXT"
say "written $TEXT"
exit "$RC"
