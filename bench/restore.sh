#!/usr/bin/env bash
# Restore and failover of one partition with large state (docs/benchmarks.md, "Restore and
# failover").
#
#   bench/restore.sh [KEYS ...]     default: 10000 1000000 5000000
#
# For each size, on a fresh one-partition cluster:
#   1. `keyflow-bench restore-fill` writes KEYS shopping-cart baskets into `<cluster>-state`
#      (the engine's record format, no invocations);
#   2. new owner: worker w1 starts with an empty data dir; its "partition restored in" log line
#      gives the restore time;
#   3. same owner back: w1 stops (SIGTERM) and starts again on its data dir (a current
#      checkpoint: only the tail is replayed);
#   4. failover: w2 joins; one AddToCart per 200 ms flows through the partition (owned by w1);
#      w1 gets kill -9; the failover time is from the kill to the first epoch that partition
#      commits on w2 (`keyflow_partition_epochs_total{partition="0"}` on w2 moves), polled
#      every 50 ms. With `--standby-replicas 1` in ENGINE_ARGS, the kill waits until w2's
#      standby of the partition has caught up (`keyflow_standby_lag_records` 0).
# Prints one line per size and a Markdown table at the end.
#
# Environment: KAFKA_BOOTSTRAP (default 127.0.0.1:9092; the broker must be running),
# CARGO_TARGET_DIR, BENCH_NO_BUILD=1 (skip the release build), ENGINE_ARGS (extra `keyflow
# run` flags). Needs curl.
set -euo pipefail

SIZES=("$@")
[[ ${#SIZES[@]} -gt 0 ]] || SIZES=(10000 1000000 5000000)
NAME=restore
# shellcheck source=bench/workers.sh
source "$(dirname "${BASH_SOURCE[0]}")/workers.sh"

# The last "partition restored in" line of a log: prints "<seconds> <replayed>".
restored() {
  local line
  line="$(grep -a "partition restored in" "$1" | tail -n 1)"
  echo "$(sed -E 's/.*restored in ([0-9.]+)s.*/\1/' <<<"$line") $(sed -E 's/.*replayed=([0-9]+).*/\1/' <<<"$line")"
}
# standby_lag ADMIN_PORT: the lag of that worker's standby of partition 0 (empty: none yet)
standby_lag() {
  curl -s "http://127.0.0.1:$1/metrics" \
    | awk '/^keyflow_standby_lag_records\{.*partition="0"/ { print $2 }'
}
epochs() { # epochs ADMIN_PORT: committed epochs of partition 0 on that worker
  curl -s "http://127.0.0.1:$1/metrics" \
    | awk '/^keyflow_partition_epochs_total\{.*partition="0"/ { print $2; found=1 } END { if (!found) print 0 }'
}

ROWS=()
for n in "${SIZES[@]}"; do
  rid="restore-$n-$(date +%s)"
  module_for "$rid"
  say "$n keys: filling $rid-state"
  read -r records bytes < <("$BIN/keyflow-bench" restore-fill --bootstrap "$KAFKA_BOOTSTRAP" --cluster "$rid" --keys "$n")
  mb=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1e6 }')

  a1="$(port)"; start_worker "$rid" w1 "$a1" --partitions 1 --topic-partitions 1; w1=$WPID
  wait_ready "$a1" "$w1" "$WORK/$rid-w1.log"
  read -r cold cold_n < <(restored "$WORK/$rid-w1.log")
  say "$n keys ($mb MB): new owner restored $cold_n records in ${cold}s"

  kill -TERM "$w1"; wait "$w1" || true
  a1="$(port)"; start_worker "$rid" w1 "$a1" --partitions 1 --topic-partitions 1; w1=$WPID
  wait_ready "$a1" "$w1" "$WORK/$rid-w1.log"
  read -r warm warm_n < <(restored "$WORK/$rid-w1.log")
  say "$n keys: same owner back restored $warm_n records in ${warm}s"

  a2="$(port)"; start_worker "$rid" w2 "$a2" --partitions 1 --topic-partitions 1; w2=$WPID
  wait_ready "$a2" "$w2" "$WORK/$rid-w2.log"
  if [[ "${ENGINE_ARGS:-}" == *--standby-replicas* ]]; then
    # w2 keeps a standby of partition 0: the kill waits until it has caught up.
    t0=$SECONDS
    until [[ "$(standby_lag "$a2")" == 0 ]]; do
      (( SECONDS - t0 < 900 )) || die "w2's standby did not catch up in 900 s: $(tail -n 20 "$WORK/$rid-w2.log")"
      sleep 0.5
    done
    say "$n keys: w2's standby caught up in $((SECONDS - t0)) s"
  fi
  (
    i=0
    while true; do
      i=$((i + 1))
      "$BIN/keyflow" produce --bootstrap "$KAFKA_BOOTSTRAP" --topic "add-to-cart-$rid" --quiet \
        "user-$((i % 50))" "{\"userId\":\"user-$((i % 50))\",\"itemId\":\"socks\",\"quantity\":1}" || true
      sleep 0.2
    done
  ) &
  feeder=$!
  PIDS+=("$feeder")
  t0=$SECONDS
  until [[ "$(epochs "$a1")" != 0 ]]; do
    (( SECONDS - t0 < 120 )) || die "w1 committed nothing in 120 s: $(tail -n 20 "$WORK/$rid-w1.log")"
    sleep 0.2
  done
  sleep 2
  [[ "$(epochs "$a2")" == 0 ]] || die "w2 owns partition 0 before the kill (expected w1)"
  killed=$(now)
  kill -9 "$w1"
  wait "$w1" 2>/dev/null || true
  until [[ "$(epochs "$a2")" != 0 ]]; do
    kill -0 "$w2" 2>/dev/null || die "w2 exited: $(tail -n 20 "$WORK/$rid-w2.log")"
    sleep 0.05
  done
  failover=$(awk -v a="$killed" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  read -r fo_restore fo_n < <(restored "$WORK/$rid-w2.log")
  say "$n keys: failover ${failover}s (w2 restored $fo_n records in ${fo_restore}s)"
  kill "$feeder" 2>/dev/null || true
  kill -TERM "$w2"; wait "$w2" || true

  rate() { awk -v x="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", x / s; else print "-" }'; }
  ROWS+=("| $n | $mb | ${cold} s | $(rate "$bytes" "$cold" | awk '{ printf "%.1f", $1 / 1e6 }') MB/s, $(rate "$records" "$cold") keys/s | ${warm} s ($warm_n replayed) | ${failover} s (restore ${fo_restore} s) |")
  "$BIN/keyflow-bench" cleanup --bootstrap "$KAFKA_BOOTSTRAP" --run-id "$rid" >/dev/null 2>&1 || true
  rm -rf "$WORK/data-$rid"
done

echo
echo "| keys | state MB | restore, new owner | rate | restore, same owner back | failover (kill -9 to first commit on the survivor) |"
echo "|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo "(logs in $WORK)"
