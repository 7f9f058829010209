#!/usr/bin/env bash
# Clearing a cart returns its items to the stock: alice takes all 5 scarves and clears her
# cart; bob can then buy all 5, and after that nobody can buy even one.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

alice="$(id s2-alice)" bob="$(id s2-bob)" carol="$(id s2-carol)" item="$(id scarf)"
start_banner
require_stack

restock "$item" 5
add_to_cart "$alice" "$item" 5
settle "$alice"
clear_cart "$alice"

# The units alice's clear-cart returns travel cart -> stock, while bob's request goes
# add-to-cart -> bob's cart -> stock: bob may ask before they are back. He asks again then.
attempt=1
deadline=$((SECONDS + WAIT_TIMEOUT))
while :; do
  try_buy "$bob" "$item" 5
  [[ "$OUTCOME" == bought ]] && break
  ((SECONDS < deadline)) || fail "bob never got the 5 units alice's clear-cart should have returned ($attempt attempts, all out of stock)"
  say "bob was early: alice's units are not back in stock yet; asking again"
  attempt=$((attempt + 1))
done
pass "after alice cleared her cart, bob bought all 5 (attempt $attempt)"

try_buy "$carol" "$item" 1
[[ "$OUTCOME" == out-of-stock ]] || fail "carol bought a scarf, but all 5 were sold: a clear-cart returned units twice"
pass "no scarf left for carol: the cleared units came back exactly once"

# Had alice's request been refused, bob would have bought units her clear never returned.
# Her answer came before her clear-cart ran (the cart waits for it), so it is visible by now.
read_records cart-events "$alice" "$(about_item "$item")"
((${#SEEN[@]} == 0)) || { show_seen "$alice"; fail "alice's request for 5 was refused, so her clear-cart returned nothing"; }
pass "alice had really taken the 5 before clearing"
