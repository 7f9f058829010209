#!/usr/bin/env bash
# A second checkout emits nothing new: the first checkout empties the basket. The user then
# buys something else, and the receipts are exactly the two purchases, each listed once.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

user="$(id s5-user)" socks="$(id s5-socks)" belt="$(id belt)"
start_banner
require_stack

restock "$socks" 10
restock "$belt" 1
add_to_cart "$user" "$socks" 3
settle "$user"
checkout "$user"
wait_records receipts "$user" 1
show_seen "$user"

say "second checkout, with an empty basket"
checkout "$user"
# A later purchase on the same topics: its receipt can only be committed after whatever the
# second checkout emitted (checkouts of one user stay in order), so no sleeping is needed.
add_to_cart "$user" "$belt" 1
settle "$user"
checkout "$user"
expect_records receipts "$user" 0 \
  "$(receipt_value "$user" "$socks: 3")" \
  "$(receipt_value "$user" "$belt: 1")"
pass "two checkouts of socks emitted one receipt; the belt came on a receipt of its own"
