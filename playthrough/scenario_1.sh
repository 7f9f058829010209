#!/usr/bin/env bash
# The seed scenario: restock socks, a user adds 3 socks to the cart and checks out; exactly one
# new receipt `socks: 3` for that user appears on `receipts`.
#
# Ids are unique per run (user-$RUN, socks-$RUN) since topics outlive runs; SEED_IDS=1 uses the
# seed's own ids (user `1`, item `socks`) as scripts/demo.sh does on a fresh broker.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ "${SEED_IDS:-0}" == 1 ]]; then
  user=1 item=socks
else
  user="$(id user)" item="$(id socks)"
fi
start_banner
require_stack

# Receipts of earlier runs with the same ids (only possible with SEED_IDS=1) are not ours.
before="$(count_records receipts "$user")"

restock "$item" 50
add_to_cart "$user" "$item" 3
checkout "$user"
expect_records receipts "$user" "$before" "$(receipt_value "$user" "$item: 3")"
pass "one receipt for user $user: $item: 3"
