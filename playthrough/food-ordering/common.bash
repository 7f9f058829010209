# shellcheck shell=bash
# Helpers of the food-ordering scenarios (sourced after lib.sh; not a scenario itself).

INGRESS="${INGRESS:-127.0.0.1:8180}"
EVENTS_TOPIC="${FOOD_EVENTS_TOPIC:-food-order-events}"
ORDERS_TOPIC=orders

# order ID TOTAL [DELAY_MS]: publishes an order of pizzeria-1 to Kafka (key = ID).
order() {
  send "$ORDERS_TOPIC" "$1" "{\"id\":\"$1\",\"restaurantId\":\"pizzeria-1\",\"products\":[\"margherita\",\"tiramisu\"],\"totalCost\":$2,\"deliveryDelay\":${3:-1000}}"
}

# event ID STATUS: the order-events value of one status change.
event() { echo "{\"orderId\":\"$1\",\"status\":\"$2\"}"; }

# delivered_events ID: the values of a delivered order's events, in order.
delivered_events() {
  local s
  for s in CREATED SCHEDULED IN_PREPARATION SCHEDULING_DELIVERY WAITING_FOR_DRIVER IN_DELIVERY DELIVERED; do
    event "$1" "$s"
  done
}

# status ID: asks for the order's status with request-reply (food/GetStatus); sets STATUS
# (e.g. DELIVERED) and STATUS_JSON (the whole food/OrderStatus answer).
status() {
  local out code
  out="$(mktemp)"
  code="$(curl -s -m 30 -o "$out" -w '%{http_code}' -X POST \
    -H 'Content-Type: application/vnd.food/GetStatus' -d '{}' \
    "http://$INGRESS/food/order/$1?reply=true")" || code=000
  STATUS_JSON="$(cat "$out")"
  rm -f "$out"
  say "seen  POST http://$INGRESS/food/order/$1?reply=true (food/GetStatus) -> $code $STATUS_JSON"
  [[ "$code" == 200 ]] || fail "GetStatus of $1 answered HTTP $code ($STACK_HINT)"
  STATUS="$(jq -r .status <<<"$STATUS_JSON")"
}

# expect_status ID WANT: fails unless the order's status is WANT.
expect_status() {
  status "$1"
  [[ "$STATUS" == "$2" ]] || fail "GetStatus of $1 is $STATUS, expected $2"
}

# expect_delivered ID...: each order's events are exactly the delivered sequence.
expect_delivered() {
  local id events
  for id in "$@"; do
    mapfile -t events < <(delivered_events "$id")
    expect_records "$EVENTS_TOPIC" "$id" 0 "${events[@]}"
  done
}

command -v curl >/dev/null || fail "curl is needed (apt-get install curl)"
command -v jq >/dev/null || fail "jq is needed (apt-get install jq)"
