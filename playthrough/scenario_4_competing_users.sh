#!/usr/bin/env bash
# Two users compete for the last items. 5 hats; in each round alice and bob ask for the same
# number at the same moment. Whatever the order the stock answers them in, the stock never
# goes below zero, every request gets exactly one answer (a receipt or an out-of-stock event),
# and the units sold add up to exactly the units stocked.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

alice="$(id s4-alice)" bob="$(id s4-bob)" carol="$(id s4-carol)" item="$(id hat)"
stock=5
rounds=(3 1 1)
start_banner
require_stack

restock "$item" "$stock"
left=$stock sold=0
for qty in "${rounds[@]}"; do
  say "--- round: alice and bob each ask for $qty (model: $left left)"
  declare -A receipts0=() oos0=()
  for u in "$alice" "$bob"; do
    receipts0[$u]="$(count_records receipts "$u")"
    oos0[$u]="$(count_records cart-events "$u" "$(about_item "$item")")"
  done
  # Both requests in flight together: neither waits for the other's answer.
  add_to_cart "$alice" "$item" "$qty" &
  alice_sent=$!
  add_to_cart "$bob" "$item" "$qty" &
  bob_sent=$!
  wait "$alice_sent" || fail "sending alice's request failed"
  wait "$bob_sent" || fail "sending bob's request failed"
  for u in "$alice" "$bob"; do settle "$u"; done
  for u in "$alice" "$bob"; do checkout "$u"; done
  winners=0
  for u in "$alice" "$bob"; do
    await_outcome "$u" "$item" "$qty" "${receipts0[$u]}" "${oos0[$u]}"
    if [[ "$OUTCOME" == bought ]]; then winners=$((winners + 1)); fi
  done
  # However the two requests interleave, the stock can serve min(2, left / qty) of them.
  expected=$((left / qty))
  ((expected <= 2)) || expected=2
  ((winners == expected)) \
    || fail "with $left left, $expected of two requests for $qty should succeed; $winners did"
  left=$((left - winners * qty))
  sold=$((sold + winners * qty))
  pass "round for $qty: $winners request(s) served, $left left"
done

((sold == stock)) || fail "sold $sold, stocked $stock"
try_buy "$carol" "$item" 1
[[ "$OUTCOME" == out-of-stock ]] || fail "carol bought a hat after all $stock were sold: the stock went below zero"
pass "sold exactly the $stock hats stocked; none left for carol"
