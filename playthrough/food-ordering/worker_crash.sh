#!/usr/bin/env bash
# Orders in flight while a worker is killed (kill -9) mid-delivery and restarted: every
# order still reaches DELIVERED with each status exactly once on `food-order-events`.
# Needs a running food-ordering stack: playthrough/app.sh food-ordering start
#
# Environment (defaults): INGRESS=127.0.0.1:8180, KEYFLOW_DATA_DIR (the stack's, for the
# workers' pid files; app.sh sets it), WORKER_PREFIX=worker (the victim is
# $WORKER_PREFIX-1), FOOD_EVENTS_TOPIC=food-order-events, WAIT_TIMEOUT=60.
set -euo pipefail
SCENARIO="${SCENARIO:-worker_crash}"
# shellcheck source=SCRIPTDIR/../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=SCRIPTDIR/common.bash
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
VICTIM="${WORKER_PREFIX:-worker}-1"
PID_FILE="${KEYFLOW_DATA_DIR:-$REPO_ROOT/.data}/run/$VICTIM.pid"
start_banner
require_stack
[[ -f "$PID_FILE" ]] || fail "no $PID_FILE: run this through playthrough/app.sh food-ordering play (or set KEYFLOW_DATA_DIR)"

ids=()
for i in 1 2 3; do
  ids+=("$(id crash-order-$i)")
  order "${ids[-1]}" 15 500
done

say "--- wait until a driver has an order, then kill -9 $VICTIM"
wait_records "$EVENTS_TOPIC" "${ids[0]}" 1 "*WAITING_FOR_DRIVER*"
pid="$(cat "$PID_FILE")"
kill -KILL "$pid"
say "killed $VICTIM (pid $pid)"
sleep 1
"$REPO_ROOT/playthrough/stack.sh" start
pass "$VICTIM restarted"

expect_delivered "${ids[@]}"
for id in "${ids[@]}"; do
  expect_status "$id" DELIVERED
done
pass "worker crash: ${#ids[@]} orders delivered, every status exactly once"
