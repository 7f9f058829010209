#!/usr/bin/env bash
# The e-commerce store through the HTTP ingress, like a user with curl (docs/apps/ecommerce.md),
# with the order events read from their Kafka topic: seeding, a checkout with a tracking
# number and exactly one event, out of stock and remove, injected payment and shipment
# failures that release every reservation, the delayed restock of a last unit, and shoppers
# racing for a few units over both workers. Needs a running e-commerce stack:
#   playthrough/app.sh ecommerce start
#
# Environment (defaults): INGRESS=127.0.0.1:8180 and INGRESS2=127.0.0.1:8181 (the two workers'
# HTTP ingress), ORDER_EVENTS_TOPIC=order-events, ECOMMERCE_RESTOCK_DELAY_MS=3000 (what the
# function service was started with; app.env sets it), SHOPPERS=20, WAIT_TIMEOUT=60, RUN (lib.sh).
set -euo pipefail
SCENARIO="${SCENARIO:-ecommerce_store}"
# shellcheck source=SCRIPTDIR/../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

INGRESS="${INGRESS:-127.0.0.1:8180}"
INGRESS2="${INGRESS2:-127.0.0.1:8181}"
TOPIC="${ORDER_EVENTS_TOPIC:-order-events}"
RESTOCK_MS="${ECOMMERCE_RESTOCK_DELAY_MS:-3000}"
SHOPPERS="${SHOPPERS:-20}"
command -v curl >/dev/null || fail "curl is needed (apt-get install curl)"
command -v jq >/dev/null || fail "jq is needed (apt-get install jq)"

# ask ADDR PATH TYPE BODY WANT_TYPE: POST to PATH with request-reply; sets ANSWER to the reply's
# body; fails unless it is 200 with Content-Type application/vnd.WANT_TYPE.
ask() {
  local addr=$1 path=$2 type=$3 body=$4 reply_type=$5 out code ctype
  say "send  POST http://$addr$path?reply=true  ($type) $body"
  out="$(mktemp)"
  code="$(curl -s -m "$WAIT_TIMEOUT" -o "$out" -w '%{http_code} %{content_type}' -X POST \
    -H "Content-Type: application/vnd.$type" -d "$body" \
    "http://$addr$path?reply=true")" || code="000 -"
  ANSWER="$(cat "$out")"
  rm -f "$out"
  ctype=${code#* }
  code=${code%% *}
  say "seen  $code $ctype  $ANSWER"
  [[ "$code" == 200 ]] || fail "HTTP $code from $addr ($STACK_HINT; is it the e-commerce stack? playthrough/app.sh ecommerce start)"
  [[ "$ctype" == "application/vnd.$reply_type" ]] || fail "expected Content-Type application/vnd.$reply_type, got $ctype"
}

# field NAME: a field of ANSWER (jq -c).
field() { jq -c ".$1" <<<"$ANSWER"; }

# add ADDR CART USER PRODUCT WANT_DONE
add() {
  ask "$1" "/ecommerce/ShoppingCart/$2" ecommerce/AddProduct \
    "{\"userId\":\"$3\",\"productId\":\"$4\"}" ecommerce/ItemResult
  [[ "$(field "done")" == "$5" ]] || fail "AddProduct $4 to $2: done is $(field "done"), expected $5"
}

remove() { # remove ADDR CART PRODUCT WANT_DONE
  ask "$1" "/ecommerce/ShoppingCart/$2" ecommerce/RemoveProduct "{\"productId\":\"$3\"}" ecommerce/ItemResult
  [[ "$(field "done")" == "$4" ]] || fail "RemoveProduct $3 from $2: done is $(field "done"), expected $4"
}

checkout() { # checkout ADDR CART BODY: ANSWER is the ecommerce/CheckoutResult
  ask "$1" "/ecommerce/ShoppingCart/$2" ecommerce/Checkout "$3" ecommerce/CheckoutResult
}

# product ID: ANSWER is the product's ecommerce/ProductInfo.
product() { ask "$INGRESS" "/ecommerce/Product/$1" ecommerce/GetProduct '{}' ecommerce/ProductInfo; }

# expect_stock ID QUANTITY RESERVED SOLD
expect_stock() {
  product "$1"
  local got
  got="$(jq -c '[.quantity,.reserved,.sold]' <<<"$ANSWER")"
  [[ "$got" == "[$2,$3,$4]" ]] || fail "$1: [available,reserved,sold] is $got, expected [$2,$3,$4]"
}

# one_event CART EVENT: exactly one order event for CART (key), of kind EVENT; EVENT_JSON is it.
one_event() {
  wait_records "$TOPIC" "$1" 1
  sleep 1 # a duplicate would be committed with or soon after the first
  read_records "$TOPIC" "$1"
  show_seen "$1"
  ((${#SEEN[@]} == 1)) || fail "cart $1: ${#SEEN[@]} order events on $TOPIC, expected exactly 1"
  EVENT_JSON="${SEEN[0]}"
  [[ "$(jq -r .event <<<"$EVENT_JSON")" == "$2" ]] || fail "cart $1: event $(jq -r .event <<<"$EVENT_JSON"), expected $2"
}

start_banner
say "--- seeding the catalog (apps/ecommerce/seed-products.sh, ids suffixed -$RUN)"
INGRESS="$INGRESS" SUFFIX="-$RUN" "$REPO_ROOT/apps/ecommerce/seed-products.sh" \
  | while IFS= read -r line; do say "seen  $line"; done
[[ "${PIPESTATUS[0]}" == 0 ]] || fail "seeding failed"
expect_stock "cactus-tshirt-$RUN" 3 0 0
pass "seeded 5 products"

say "--- a checkout: profile, shipment, payment, email, history, sold; a tracking number"
ann="$(id ann)" cart="$(id cart-ann)" hoodie="sunset-hoodie-$RUN" cap="canvas-cap-$RUN"
add "$INGRESS" "$cart" "$ann" "$hoodie" true
add "$INGRESS" "$cart" "$ann" "$cap" true
add "$INGRESS2" "$cart" "$ann" "$cap" true
[[ "$(field inCart)" == 2 ]] || fail "two caps expected in the cart"
expect_stock "$cap" 18 2 0
checkout "$INGRESS" "$cart" '{}'
[[ "$(field success)" == true ]] || fail "checkout of $cart failed: $ANSWER"
tracking="$(jq -r .trackingNumber <<<"$ANSWER")"
[[ "$tracking" == TRK-* ]] || fail "no tracking number in $ANSWER"
[[ "$(field totalCents)" == $((3999 + 2 * 1200)) ]] || fail "total should be $((3999 + 2 * 1200)) cents"
one_event "$cart" CHECKOUT_SUCCEEDED
[[ "$(jq -r .trackingNumber <<<"$EVENT_JSON")" == "$tracking" ]] || fail "the event's tracking number differs"
expect_stock "$cap" 18 0 2
ask "$INGRESS2" "/ecommerce/UserProfile/$ann" ecommerce/GetProfile '{}' ecommerce/Profile
[[ "$(jq -r '.purchases[0].trackingNumber' <<<"$ANSWER")" == "$tracking" ]] || fail "the purchase is not in $ann's history"
checkout "$INGRESS2" "$cart" '{}'
[[ "$(jq -r .trackingNumber <<<"$ANSWER")" == "$tracking" ]] || fail "a repeated checkout should answer the same"
one_event "$cart" CHECKOUT_SUCCEEDED
pass "checkout answered $tracking; exactly one CHECKOUT_SUCCEEDED event; history appended; a repeat changed nothing"

say "--- out of stock, and RemoveProduct gives the unit back"
bob="$(id bob)" carol="$(id carol)" lamp="$(id lamp)"
ask "$INGRESS" "/ecommerce/Product/$lamp" ecommerce/SetProduct '{"quantity":1,"priceCents":2500}' ecommerce/ProductInfo
add "$INGRESS" "$(id cart-bob)" "$bob" "$lamp" true
add "$INGRESS2" "$(id cart-carol)" "$carol" "$lamp" false
[[ "$(field reason)" == '"out of stock"' ]] || fail "the reason should be out of stock"
remove "$INGRESS" "$(id cart-bob)" "$lamp" true
add "$INGRESS2" "$(id cart-carol)" "$carol" "$lamp" true
expect_stock "$lamp" 0 1 0
pass "the second shopper got out of stock, then the unit bob removed"

for fail_at in payment shipment; do
  say "--- injected $fail_at failure: every reservation released, one CHECKOUT_FAILED event"
  dan="$(id "dan-$fail_at")" cart="$(id "cart-dan-$fail_at")" socks="wool-socks-$RUN" tee="black-tshirt-$RUN"
  product "$socks"
  socks0="$(field quantity)"
  product "$tee"
  tee0="$(field quantity)"
  add "$INGRESS" "$cart" "$dan" "$socks" true
  add "$INGRESS" "$cart" "$dan" "$socks" true
  add "$INGRESS2" "$cart" "$dan" "$tee" true
  checkout "$INGRESS" "$cart" "{\"fail\":\"$fail_at\"}"
  [[ "$(field success)" == false ]] || fail "the checkout should have failed: $ANSWER"
  reason="$(field reason)"
  one_event "$cart" CHECKOUT_FAILED
  expect_stock "$socks" "$socks0" 0 0
  expect_stock "$tee" "$tee0" 0 0
  pass "$fail_at failure ($reason): both products back to $socks0 and $tee0 available"
done

say "--- the last unit sold: one unit restocked ${RESTOCK_MS} ms later"
erin="$(id erin)" cart="$(id cart-erin)" cactus="cactus-tshirt-$RUN"
for _ in 1 2 3; do add "$INGRESS" "$cart" "$erin" "$cactus" true; done
add "$INGRESS2" "$(id cart-finn)" "$(id finn)" "$cactus" false
checkout "$INGRESS" "$cart" '{}'
[[ "$(field success)" == true ]] || fail "checkout of $cart failed: $ANSWER"
t0=$(date +%s%N)
product "$cactus"
[[ "$(field restockPending)" == true ]] || fail "a restock should be pending"
deadline=$((SECONDS + WAIT_TIMEOUT))
while :; do
  product "$cactus"
  [[ "$(field quantity)" == 1 ]] && break
  ((SECONDS < deadline)) || fail "no restock of $cactus within ${WAIT_TIMEOUT}s"
  sleep 0.5
done
elapsed_ms=$((($(date +%s%N) - t0) / 1000000))
((elapsed_ms >= RESTOCK_MS - 500)) || fail "restocked after ${elapsed_ms} ms, before the ${RESTOCK_MS} ms delay"
expect_stock "$cactus" 1 0 3
add "$INGRESS2" "$(id cart-finn)" "$(id finn)" "$cactus" true
pass "restocked one unit ${elapsed_ms} ms after the last sale; the next shopper got it"

say "--- $SHOPPERS shoppers race for 5 units (alternating workers, all at once)"
vase="$(id vase)"
ask "$INGRESS" "/ecommerce/Product/$vase" ecommerce/SetProduct '{"quantity":5,"priceCents":4000}' ecommerce/ProductInfo
dir="$(mktemp -d)"
for ((i = 0; i < SHOPPERS; i++)); do
  addr=$INGRESS
  ((i % 2)) && addr=$INGRESS2
  (
    SCENARIO="shopper$i"
    cart="$(id "cart-vase$i")"
    ask "$addr" "/ecommerce/ShoppingCart/$cart" ecommerce/AddProduct \
      "{\"userId\":\"$(id "shopper$i")\",\"productId\":\"$vase\"}" ecommerce/ItemResult >/dev/null
    if [[ "$(field "done")" == true ]]; then
      checkout "$addr" "$cart" '{}' >/dev/null
      field success >"$dir/$i"
    else
      echo none >"$dir/$i"
    fi
  ) &
done
wait
bought=0 refused=0
for ((i = 0; i < SHOPPERS; i++)); do
  [[ -f "$dir/$i" ]] || fail "shopper $i got no answer"
  case "$(cat "$dir/$i")" in
    true) bought=$((bought + 1)) ;;
    none) refused=$((refused + 1)) ;;
    *) fail "shopper $i: checkout did not succeed" ;;
  esac
done
rm -rf "$dir"
say "bought $bought, out of stock $refused"
((bought == 5 && refused == SHOPPERS - 5)) || fail "expected 5 buyers and $((SHOPPERS - 5)) refused"
product "$vase"
[[ "$(jq -c '[.reserved,.sold]' <<<"$ANSWER")" == "[0,5]" ]] || fail "$vase should have 0 reserved, 5 sold"
(($(field quantity) >= 0 && $(field quantity) <= 1)) || fail "$vase: nothing available but the one restocked unit"
pass "exactly 5 of $SHOPPERS shoppers bought; sold 5, never more than the stock"

pass "e-commerce store: all checks passed"
