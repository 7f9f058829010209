#!/usr/bin/env bash
# The holiday trip saga through the HTTP ingress, like a user with curl
# (docs/apps/holiday-saga.md): one trip per run_type with its exact number of compensations
# and no booking left behind, then an Idempotency-Key repeated on both workers (the same
# answer, nothing run twice), and one outcome record per trip on the egress topic
# `trip-outcomes`. Needs a running holiday-saga stack:
#   playthrough/app.sh holiday-saga start
#
# Environment (defaults): INGRESS=127.0.0.1:8180 and INGRESS2=127.0.0.1:8181 (the two
# workers' HTTP ingress), WAIT_TIMEOUT=60, RUN (lib.sh).
set -euo pipefail
SCENARIO="${SCENARIO:-holiday_saga}"
# shellcheck source=SCRIPTDIR/../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

INGRESS="${INGRESS:-127.0.0.1:8180}"
INGRESS2="${INGRESS2:-127.0.0.1:8181}"
OUTCOMES="trip-outcomes"
command -v curl >/dev/null || fail "curl is needed (apt-get install curl)"
command -v jq >/dev/null || fail "jq is needed (apt-get install jq)"

# reserve ADDR TRIP BODY [KEY]: books TRIP with request-reply (with Idempotency-Key KEY if
# given); sets ANSWER (the body) and MESSAGE_ID; fails unless it is a holiday/TripResult.
reserve() {
  local addr=$1 trip=$2 body=$3 key=${4:-} out hdr code ctype
  local args=(-s -m "$WAIT_TIMEOUT" -X POST -H 'Content-Type: application/vnd.holiday/Reserve')
  [[ -z "$key" ]] || args+=(-H "Idempotency-Key: $key")
  say "send  POST http://$addr/holiday/trips/$trip?reply=true ${key:+(Idempotency-Key: $key) }$body"
  out="$(mktemp)" hdr="$(mktemp)"
  code="$(curl "${args[@]}" -D "$hdr" -o "$out" -w '%{http_code} %{content_type}' -d "$body" \
    "http://$addr/holiday/trips/$trip?reply=true")" || code="000 -"
  ANSWER="$(cat "$out")"
  MESSAGE_ID="$(tr -d '\r' <"$hdr" | sed -n 's/^[Xx]-[Kk]eyflow-[Mm]essage-[Ii]d: //p')"
  rm -f "$out" "$hdr"
  ctype=${code#* }
  code=${code%% *}
  say "seen  $code $ctype  $ANSWER"
  [[ "$code" == 200 ]] || fail "HTTP $code from $addr ($STACK_HINT; is it the holiday-saga stack? playthrough/app.sh holiday-saga start)"
  [[ "$ctype" == application/vnd.holiday/TripResult ]] || fail "expected Content-Type application/vnd.holiday/TripResult, got $ctype"
}

# field NAME: a field of ANSWER, compact JSON.
field() { jq -c ".$1" <<<"$ANSWER"; }

# state TYPE ID NAME: the committed value of state NAME of holiday/TYPE/ID (`null` if none).
state() {
  curl -s -m 10 "http://$INGRESS/state/holiday/$1/$2" | jq -c ".values.$3.value" 2>/dev/null || echo "?"
}

# bookings TRIP: the statuses of the trip's flight, car and payment, e.g. ["CANCELLED",null,null].
bookings() {
  local f c p
  f="$(state flights "$1" booking | jq -c '.status?')"
  c="$(state cars "$1" booking | jq -c '.status?')"
  p="$(state payments "$1" payment | jq -c '.status?')"
  echo "[$f,$c,$p]"
}

# wait_bookings TRIP WANT: waits until the trip's bookings are WANT.
wait_bookings() {
  local deadline=$((SECONDS + WAIT_TIMEOUT)) got
  while :; do
    got="$(bookings "$1")"
    if [[ "$got" == "$2" ]]; then
      say "state flight, car, payment of $1: $got"
      return 0
    fi
    ((SECONDS < deadline)) || fail "trip $1: flight, car, payment are $got, expected $2 within ${WAIT_TIMEOUT}s"
    sleep 0.2
  done
}

# expect_outcome TRIP: exactly one record with key TRIP on the egress topic, equal to ANSWER.
expect_outcome() {
  wait_records "$OUTCOMES" "$1" 1
  read_records "$OUTCOMES" "$1"
  show_seen "$1"
  ((${#SEEN[@]} == 1)) || fail "$OUTCOMES: ${#SEEN[@]} records with key $1, expected exactly 1"
  [[ "$(jq -cS . <<<"${SEEN[0]}")" == "$(jq -cS . <<<"$ANSWER")" ]] \
    || fail "$OUTCOMES: the record of $1 is not the answer $ANSWER"
}

require_stack
start_banner

# run_type, compensations, then flight / car / payment after the trip.
CASES=(
  "success 0 [\"CONFIRMED\",\"CONFIRMED\",\"PAID\"]"
  "failFlightsReservation 0 [null,null,null]"
  "failCarRentalReservation 1 [\"CANCELLED\",null,null]"
  "failPayment 2 [\"CANCELLED\",\"CANCELLED\",null]"
  "failFlightsConfirmation 3 [\"CANCELLED\",\"CANCELLED\",\"REFUNDED\"]"
  "failCarRentalConfirmation 3 [\"CANCELLED\",\"CANCELLED\",\"REFUNDED\"]"
  "failNotification 3 [\"CANCELLED\",\"CANCELLED\",\"REFUNDED\"]"
)
i=0
for c in "${CASES[@]}"; do
  read -r run_type n after <<<"$c"
  say "--- $run_type"
  trip="$(id "trip-$run_type")"
  # Alternate between the workers: either one takes any trip.
  addr=$INGRESS
  ((i++ % 2 == 0)) || addr=$INGRESS2
  reserve "$addr" "$trip" "{\"run_type\":\"$run_type\"}"
  [[ "$(field compensations)" == "$n" ]] || fail "$run_type: $(field compensations) compensations, expected $n"
  if [[ "$run_type" == success ]]; then
    [[ "$(field status)" == '"CONFIRMED"' && "$(field result)" == '"trip booked"' ]] \
      || fail "$run_type: expected a booked trip, got $ANSWER"
  else
    [[ "$(field status)" == '"FAILED"' ]] || fail "$run_type: expected FAILED, got $ANSWER"
    [[ "$(field result)" == *"failed, $n compensation"*" applied\"" ]] \
      || fail "$run_type: expected \"failed, $n compensations applied\", got $(field result)"
  fi
  wait_bookings "$trip" "$after"
  expect_outcome "$trip"
  pass "$run_type: $(jq -r '.result + (if .failedStep then " (at the " + .failedStep + ")" else "" end)' <<<"$ANSWER"); flight, car, payment: $after; one outcome record"
done

say "--- an Idempotency-Key: the trip runs once, every repeat gets the same answer"
trip="$(id trip-keyed)"
key="$(id holiday-booking)"
reserve "$INGRESS" "$trip" '{}' "$key"
first=$ANSWER first_id=$MESSAGE_ID
[[ "$(field status)" == '"CONFIRMED"' ]] || fail "expected a booked trip, got $ANSWER"
wait_bookings "$trip" '["CONFIRMED","CONFIRMED","PAID"]'
for addr in "$INGRESS2" "$INGRESS"; do
  reserve "$addr" "$trip" '{"run_type":"failPayment"}' "$key"
  [[ "$ANSWER" == "$first" ]] || fail "a repeat answered $ANSWER, the first $first"
  [[ "$MESSAGE_ID" == "$first_id" ]] || fail "a repeat has message id $MESSAGE_ID, the first $first_id"
done
requests="$(state trips "$trip" trip | jq -c '.requests')"
[[ "$requests" == 1 ]] || fail "the trip saw $requests requests; the repeats should never reach it"
wait_bookings "$trip" '["CONFIRMED","CONFIRMED","PAID"]'
ANSWER=$first
expect_outcome "$trip"
pass "two repeats (both workers, even with another run_type): the same answer and message id; the trip ran once (requests: $requests), paid once, one outcome record"

say "--- a repeat without a key reaches the trip, which has run already"
reserve "$INGRESS2" "$trip" '{}'
[[ "$ANSWER" == "$first" ]] || fail "answered $ANSWER, expected the stored $first"
requests="$(state trips "$trip" trip | jq -c '.requests')"
[[ "$requests" == 2 ]] || fail "the trip saw $requests requests, expected 2"
wait_bookings "$trip" '["CONFIRMED","CONFIRMED","PAID"]'
expect_outcome "$trip"
pass "the stored result again (requests: $requests); nothing booked or paid twice, still one outcome record"

pass "holiday saga: all checks passed"
