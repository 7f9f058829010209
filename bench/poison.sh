#!/usr/bin/env bash
# The poison-pill scenario of issue 14 as a benchmark (see bench/README.md, "Poison pills").
#
#   bench/poison.sh [--quick]
#
#   --quick   the test's own figures: a 10 s outage, 2,000 messages to the hot id
#             (default: the issue's 60 s and 10,000)
#
# Runs engine/tests/poison_pills.rs in release mode: a steady healthy stream on one partition
# while an oversized ingress record, a function output and state over the limit, an egress to
# `bad topic!` and a function endpoint down with N messages to one id are injected one after
# another. Starts the broker when it is not running (and stops it again at the end), prints
# the healthy traffic's p50/p99/max latency per phase and the dead-letter counts, and writes
# them to bench/results/poison-<UTC timestamp>.json. The test's correctness checks still
# apply (exit code 1 when one fails); the latencies are information, never pass/fail.
#
# Environment: POISON_OUTAGE_SECS, POISON_HOT_MESSAGES (override the figures above),
# KAFKA_PORT (default 9092), KEYFLOW_BOOTSTRAP (default 127.0.0.1:$KAFKA_PORT), CARGO_TARGET_DIR.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
OUTAGE=60
HOT=10000
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) OUTAGE=10 HOT=2000 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "poison.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
export POISON_OUTAGE_SECS="${POISON_OUTAGE_SECS:-$OUTAGE}"
export POISON_HOT_MESSAGES="${POISON_HOT_MESSAGES:-$HOT}"
export KAFKA_PORT="${KAFKA_PORT:-9092}"
export KEYFLOW_BOOTSTRAP="${KEYFLOW_BOOTSTRAP:-127.0.0.1:$KAFKA_PORT}"

say() { echo "[poison $(date +%H:%M:%S)] $*" >&2; }

STARTED_BROKER=0
cleanup() {
  if ((STARTED_BROKER)); then
    say "stopping the broker this run started"
    "$REPO/scripts/kafka.sh" stop || true
  fi
}
trap cleanup EXIT

if "$REPO/scripts/kafka.sh" status >/dev/null 2>&1; then
  say "broker already running: $("$REPO/scripts/kafka.sh" status)"
else
  say "starting the broker"
  "$REPO/scripts/kafka.sh" start
  STARTED_BROKER=1
fi

mkdir -p "$BENCH_DIR/results"
REPORT="$BENCH_DIR/results/poison-$(date -u +%Y%m%dT%H%M%SZ).json"
export POISON_REPORT="$REPORT"
say "outage ${POISON_OUTAGE_SECS} s, ${POISON_HOT_MESSAGES} messages to the hot id, broker $KEYFLOW_BOOTSTRAP"
(cd "$REPO" && cargo test --release -p keyflow-engine --test poison_pills -- --nocapture)

[[ -s "$REPORT" ]] || { say "ERROR: the test wrote no report to $REPORT"; exit 1; }
COMMIT="$(git -C "$REPO" rev-parse --short HEAD)"
echo
echo "Poison pills, commit $COMMIT, $(date -u +%Y-%m-%d), $(nproc) cores:" \
  "healthy $(jq .healthy_rate_per_s "$REPORT") records/s on one partition," \
  "outage $(jq .outage_secs "$REPORT") s, $(jq .hot_messages "$REPORT") messages to one id"
echo
echo "| phase | seconds | healthy records | p50 ms | p99 ms | max ms |"
echo "|---|---:|---:|---:|---:|---:|"
jq -r '.phases[] | "| \(.phase) | \(.seconds) | \(.healthy) | \(.p50_ms) | \(.p99_ms) | \(.max_ms) |"' "$REPORT"
echo
echo "Dead letters by kind: $(jq -c .dead_letters "$REPORT")"
say "report: $REPORT"
