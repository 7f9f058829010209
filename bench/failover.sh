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

COUNTS=("$@")
[[ ${#COUNTS[@]} -gt 0 ]] || COUNTS=(8 64 256)
for n in "${COUNTS[@]}"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "failover.sh: a partition count is a positive number, not '$n'" >&2; exit 2; }
done
NAME=failover
# shellcheck source=bench/workers.sh
source "$(dirname "${BASH_SOURCE[0]}")/workers.sh"
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

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
  module_for "$rid"
  # w1 first, then w2: w2 only ever gains partitions, so each of its restore series is a
  # partition it owns (a series stays when a partition is revoked).
  a1="$(port)"; start_worker "$rid" w1 "$a1" --partitions "$n" --topic-partitions "$n"; w1=$WPID
  wait_ready "$a1" "$w1" "$WORK/$rid-w1.log"
  a2="$(port)"; start_worker "$rid" w2 "$a2" --partitions "$n" --topic-partitions "$n"; w2=$WPID
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
  rm -rf "$WORK/data-$rid"
done

echo
echo "| partitions | moved (of w1) | kill -9 to w2 owning all | to all open on w2 | opening |"
echo "|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo "(ENGINE_ARGS: ${ENGINE_ARGS:-none}; logs in $WORK)"
