#!/usr/bin/env bash
# Out of stock reaches the user: asking for more than the stock has puts an OUTOFSTOCK event
# for that user on `cart-events` and leaves the stock unchanged.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

user="$(id s3-user)" item="$(id gloves)" never="$(id unicorn)"
start_banner
require_stack

restock "$item" 2
add_to_cart "$user" "$item" 3
wait_records cart-events "$user" 1 "$(about_item "$item")"
show_seen "$user"
[[ "${SEEN[0]}" == "$(out_of_stock_value "$user" "$item" 3)" ]] \
  || fail "expected the event $(out_of_stock_value "$user" "$item" 3)"
pass "asking for 3 of 2 gloves: $user heard OUTOFSTOCK on cart-events"

add_to_cart "$user" "$never" 1
wait_records cart-events "$user" 1 "$(about_item "$never")"
show_seen "$user"
[[ "${SEEN[0]}" == "$(out_of_stock_value "$user" "$never" 1)" ]] \
  || fail "expected the event $(out_of_stock_value "$user" "$never" 1)"
pass "an item that was never stocked is out of stock too"

try_buy "$user" "$item" 2
[[ "$OUTCOME" == bought ]] || fail "the 2 gloves should still be there after the refused request"
pass "the refused request left the stock alone: $user bought the 2 gloves"

try_buy "$user" "$item" 1
[[ "$OUTCOME" == out-of-stock ]] || fail "a third glove was sold, but only 2 were stocked"
pass "with the stock at 0, one more glove is out of stock"
