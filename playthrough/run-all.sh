#!/usr/bin/env bash
# Runs every playthrough scenario, in order, against an already running stack (the broker:
# scripts/kafka.sh start; the functions and workers: playthrough/stack.sh start). All
# scenarios run even when one fails; the exit status is non-zero if any failed.
#
#   playthrough/run-all.sh [SCENARIO_FILE...]     default: every scenario_*.sh here
#
# Environment: as for the scenarios (lib.sh); one RUN id is shared, each scenario uses its own
# user and item names.
set -euo pipefail

SCENARIO=run-all
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export RUN KEYFLOW_BIN="$KEYFLOW"

if (($#)); then
  scenarios=("$@")
else
  scenarios=("$PLAYTHROUGH_DIR"/scenario_*.sh)
fi

start_banner
require_stack

passed=0 failed=0 results=()
for s in "${scenarios[@]}"; do
  name="$(basename "$s" .sh)"
  echo
  say "==== $name"
  t0=$SECONDS
  if "$s"; then
    passed=$((passed + 1))
    results+=("PASS  $name ($((SECONDS - t0))s)")
  else
    failed=$((failed + 1))
    results+=("FAIL  $name ($((SECONDS - t0))s)")
  fi
done

echo
for r in "${results[@]}"; do say "$r"; done
echo "playthrough: $passed passed, $failed failed"
((failed == 0))
