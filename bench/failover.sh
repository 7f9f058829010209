#!/usr/bin/env bash
# Failover of a whole worker: how long the partitions of a worker killed with kill -9 take to
# be open again on the survivor, by partition count (docs/benchmarks.md, "Failover of a
# worker by partition count").
#
#   bench/failover.sh [PARTITIONS ...]     default: 8 64 256
#
# For each count N, on a fresh cluster of N partitions (ingress topics of N partitions too):
#   1. worker w1 starts, then w2, and they share the partitions (both own some, together all
#      N, and w2 has opened each of its own: `keyflow_restore_seconds` has a series for each);
#   2. one AddToCart per 200 ms flows (users spread over the partitions);
#   3. w1 gets kill -9. Two times from the kill, polled every 50 ms on w2's /metrics:
#      "moved": w2 owns all N (`keyflow_partitions_owned`; the group noticed, after the session
#      timeout), "open": w2 has opened all N (a `keyflow_restore_seconds` series for each: the
#      state restored, inputs positioned, reading).
# Prints one line per count and a Markdown table at the end.
#
# Environment: KAFKA_BOOTSTRAP (default 127.0.0.1:9092; the broker must be running),
# CARGO_TARGET_DIR, BENCH_NO_BUILD=1 (skip the release build), ENGINE_ARGS (extra `keyflow
# run` flags, e.g. `--session-timeout 1s`). Needs curl.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
COUNTS=("$@")
[[ ${#COUNTS[@]} -gt 0 ]] || COUNTS=(8 64 256)
export KAFKA_BOOTSTRAP="${KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
WORK="$(mktemp -d -t keyflow-failover.XXXXXX)"
PIDS=()
say() { echo "[failover $(date +%H:%M:%S)] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

for n in "${COUNTS[@]}"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "a partition count is a positive number, not '$n'"
done
if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
  say "building release binaries"
  (cd "$REPO" && cargo build --release -p keyflow-engine -p shopping-cart-functions -p keyflow-bench --bins) >&2
fi
now() { date +%s.%N; }
port() { "$BIN/keyflow-bench" free-port; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

FPORT="$(port)"
"$BIN/shopping-cart-functions" --listen "127.0.0.1:$FPORT" >"$WORK/functions.log" 2>&1 &
PIDS+=($!)

# start_worker RID WID ADMIN_PORT N: starts `keyflow run` in the background, sets WPID.
start_worker() {
  local rid="$1" wid="$2" admin="$3" n="$4"
  # shellcheck disable=SC2086
  FUNCTIONS_URL="http://127.0.0.1:$FPORT" NO_COLOR=1 RUST_LOG="info,librdkafka=warn,rdkafka=warn" \
    "$BIN/keyflow" run --module "$WORK/module-$rid.yaml" --cluster "$rid" --worker-id "$wid" \
    --data-dir "$WORK/data-$rid-$wid" --bootstrap "$KAFKA_BOOTSTRAP" --admin-addr "127.0.0.1:$admin" \
    --ingress-addr off --partitions "$n" --topic-partitions "$n" ${ENGINE_ARGS:-} \
    >>"$WORK/$rid-$wid.log" 2>&1 &
  WPID=$!
  PIDS+=("$WPID")
}
wait_ready() { # wait_ready ADMIN_PORT PID LOG
  local t0=$SECONDS
  until [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/ready" || true)" == 200 ]]; do
    kill -0 "$2" 2>/dev/null || die "worker exited: $(tail -n 20 "$3")"
    (( SECONDS - t0 < 600 )) || die "worker not ready after 600 s: $(tail -n 20 "$3")"
    sleep 0.1
  done
}
# owned_open ADMIN_PORT: "<partitions owned> <partitions opened>" of that worker
owned_open() {
  curl -s "http://127.0.0.1:$1/metrics" | awk '
    /^keyflow_partitions_owned / { owned = $2 }
    /^keyflow_restore_seconds\{/ { open++ }
    END { printf "%d %d\n", owned, open }'
}

ROWS=()
for n in "${COUNTS[@]}"; do
  rid="failover-$n-$(date +%s)"
  sed -E -e "s/^( *- topic: )(add-to-cart|clear-cart|checkout|restock-items) *$/\1\2-$rid/" \
    -e "s/^( *consumerGroupId: ).*$/\1$rid-ingress/" "$REPO/module.yaml" >"$WORK/module-$rid.yaml"
  # w1 first, then w2: w2 only ever gains partitions, so each of its restore series is a
  # partition it owns (a series stays when a partition is revoked).
  a1="$(port)"; start_worker "$rid" w1 "$a1" "$n"; w1=$WPID
  wait_ready "$a1" "$w1" "$WORK/$rid-w1.log"
  a2="$(port)"; start_worker "$rid" w2 "$a2" "$n"; w2=$WPID
  wait_ready "$a2" "$w2" "$WORK/$rid-w2.log"
  t0=$SECONDS
  while true; do
    read -r o1 p1 < <(owned_open "$a1")
    read -r o2 p2 < <(owned_open "$a2")
    # Settled: both own some, together all, and w2 opened all it owns.
    (( o1 > 0 && o2 > 0 && o1 + o2 == n && p2 >= o2 )) && break
    (( SECONDS - t0 < ${SETTLE_SECS:-600} )) || die "$n partitions: not shared after ${SETTLE_SECS:-600} s (w1 owns $o1, w2 owns $o2, w2 opened $p2)"
    (( (SECONDS - t0) % 10 == 9 )) && say "$n partitions: waiting for w2 to take some: w1 owns $o1, w2 owns $o2 (opened $p2)"
    sleep 0.5
  done
  say "$n partitions: w1 owns $o1, w2 owns $o2 (settled in $((SECONDS - t0)) s after ready)"
  (
    i=0
    while true; do
      i=$((i + 1))
      u="user-$((i % (4 * n)))"
      "$BIN/keyflow" produce --bootstrap "$KAFKA_BOOTSTRAP" --topic "add-to-cart-$rid" --quiet \
        "$u" "{\"userId\":\"$u\",\"itemId\":\"socks\",\"quantity\":1}" || true
      sleep 0.2
    done
  ) >>"$WORK/$rid-feeder.log" 2>&1 &
  feeder=$!
  PIDS+=("$feeder")
  sleep 3
  killed=$(now)
  kill -9 "$w1"
  wait "$w1" 2>/dev/null || true
  moved="" open=""
  while [[ -z "$open" ]]; do
    kill -0 "$w2" 2>/dev/null || die "w2 exited: $(tail -n 20 "$WORK/$rid-w2.log")"
    read -r o2 p2 < <(owned_open "$a2")
    [[ -z "$moved" && "$o2" == "$n" ]] && moved=$(since "$killed")
    [[ -n "$moved" && "$p2" -ge "$n" ]] && open=$(since "$killed")
    [[ "$(since "$killed")" == 600.* ]] && die "$n partitions: w2 owns $o2 and opened $p2 600 s after the kill"
    sleep 0.05
  done
  say "$n partitions: the $o1 of w1 moved to w2 after ${moved}s, all open after ${open}s"
  ROWS+=("| $n | $o1 | ${moved} s | ${open} s | $(awk -v a="$open" -v b="$moved" 'BEGIN { printf "%.1f", a - b }') s |")
  kill "$feeder" 2>/dev/null || true
  kill -TERM "$w2"; wait "$w2" || true
  "$BIN/keyflow-bench" cleanup --bootstrap "$KAFKA_BOOTSTRAP" --run-id "$rid" >/dev/null 2>&1 || true
  rm -rf "$WORK/data-$rid-"*
done

echo
echo "| partitions | moved (of w1) | kill -9 to w2 owning all | to all open on w2 | opening |"
echo "|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo "(ENGINE_ARGS: ${ENGINE_ARGS:-none}; logs in $WORK)"
