#!/usr/bin/env bash
# The food-ordering application like a provider and a customer (docs/apps/food-ordering.md):
# orders published to Kafka `orders` run through payment, the restaurant (stub) and a driver
# (simulator) to DELIVERED, each status once on `food-order-events`; a repeated order id is
# ignored; an order over the payment limit is rejected; the status is read over HTTP. Needs
# a running food-ordering stack: playthrough/app.sh food-ordering start
#
# Environment (defaults): INGRESS=127.0.0.1:8180 (a worker's HTTP ingress),
# FOOD_EVENTS_TOPIC=food-order-events, WAIT_TIMEOUT=60, RUN (lib.sh).
set -euo pipefail
SCENARIO="${SCENARIO:-food_ordering}"
# shellcheck source=SCRIPTDIR/../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=SCRIPTDIR/common.bash
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
start_banner
require_stack

say "--- two orders are delivered, each status once"
o1="$(id order-1)" o2="$(id order-2)"
order "$o1" 23.5
order "$o2" 12
say "--- the same order id again (other content): ignored"
order "$o1" 99
expect_delivered "$o1" "$o2"
pass "$o1 and $o2: CREATED SCHEDULED IN_PREPARATION SCHEDULING_DELIVERY WAITING_FOR_DRIVER IN_DELIVERY DELIVERED, once each"

expect_status "$o1" DELIVERED
[[ "$(jq -r .driverId <<<"$STATUS_JSON")" == driver-* ]] || fail "no driver in $STATUS_JSON"
total="$(curl -s -m 10 "http://$INGRESS/state/food/order/$o1" | jq -c '.values.order.value.order.totalCost')"
say "seen  GET http://$INGRESS/state/food/order/$o1 -> totalCost $total"
[[ "$total" == 23.5 ]] || fail "the repeated order replaced the first: totalCost $total"
pass "GetStatus says DELIVERED; the repeated order id changed nothing (totalCost $total)"

say "--- an order over the payment limit is rejected"
o3="$(id order-expensive)"
order "$o3" 5000
expect_records "$EVENTS_TOPIC" "$o3" 0 "$(event "$o3" CREATED)" \
  "{\"orderId\":\"$o3\",\"status\":\"REJECTED\",\"reason\":\"payment declined: totalCost 5000 is over the limit of 1000\"}"
expect_status "$o3" REJECTED
pass "$o3: CREATED REJECTED, and nothing after"

pass "food ordering: all checks passed"
