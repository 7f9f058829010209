#!/usr/bin/env bash
# The ticket-reservation application through the HTTP ingress, like a user with curl
# (docs/apps/ticket-reservation.md): the seed's exchange, a reservation that expires, an
# expiry after checkout, and two users racing for one seat. Needs a running ticket stack:
#   playthrough/app.sh ticket-reservation start
#
# Environment (defaults): INGRESS=127.0.0.1:8180 and INGRESS2=127.0.0.1:8181 (the two
# workers' HTTP ingress; the race sends one request to each), WAIT_TIMEOUT=60, RUN (lib.sh).
set -euo pipefail
SCENARIO="${SCENARIO:-ticket_reservation}"
# shellcheck source=SCRIPTDIR/../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

INGRESS="${INGRESS:-127.0.0.1:8180}"
INGRESS2="${INGRESS2:-127.0.0.1:8181}"
command -v curl >/dev/null || fail "curl is needed (apt-get install curl)"

# ask ADDR USER TYPE BODY: POST to ticketing/UserSession/USER with request-reply; sets ANSWER
# to the reply's body (`true` or `false`); fails on anything else.
ask() {
  local addr=$1 user=$2 type=$3 body=$4 out code ctype
  say "send  POST http://$addr/ticketing/UserSession/$user?reply=true  ($type) $body"
  out="$(mktemp)"
  code="$(curl -s -m "$WAIT_TIMEOUT" -o "$out" -w '%{http_code} %{content_type}' -X POST \
    -H "Content-Type: application/vnd.ticketing/$type" -d "$body" \
    "http://$addr/ticketing/UserSession/$user?reply=true")" || code="000 -"
  ANSWER="$(cat "$out")"
  rm -f "$out"
  ctype=${code#* }
  code=${code%% *}
  say "seen  $code $ctype  $ANSWER"
  [[ "$code" == 200 ]] || fail "HTTP $code from $addr ($STACK_HINT; is it the ticket stack? playthrough/app.sh ticket-reservation start)"
  [[ "$ctype" == application/vnd.ticketing/Result ]] || fail "expected Content-Type application/vnd.ticketing/Result, got $ctype"
  [[ "$ANSWER" == true || "$ANSWER" == false ]] || fail "expected true or false, got $ANSWER"
}

# expect ADDR USER TYPE BODY WANT: ask, and fail unless the answer is WANT.
expect() {
  ask "$1" "$2" "$3" "$4"
  [[ "$ANSWER" == "$5" ]] || fail "$2: $3 $4 answered $ANSWER, expected $5"
}

add_body() { # add_body TICKET [RESERVATION_MS]
  if (($# > 1)); then echo "{\"ticketId\":\"$1\",\"reservationMs\":$2}"; else echo "{\"ticketId\":\"$1\"}"; fi
}

# ticket_state TICKET: the TicketDb's committed value (`null` when available).
ticket_state() {
  curl -s -m 10 "http://$INGRESS/state/ticketing/TicketDb/$1" | jq -c '.values.ticket.value' 2>/dev/null \
    || echo "?"
}

# wait_ticket TICKET WANT: waits until the ticket's state is WANT (compact JSON).
wait_ticket() {
  local deadline=$((SECONDS + WAIT_TIMEOUT)) got
  while :; do
    got="$(ticket_state "$1")"
    if [[ "$got" == "$2" ]]; then
      say "state ticketing/TicketDb/$1: $got"
      return 0
    fi
    ((SECONDS < deadline)) || fail "ticket $1 is $got, expected $2 within ${WAIT_TIMEOUT}s"
    sleep 0.2
  done
}

command -v jq >/dev/null || fail "jq is needed (apt-get install jq)"
start_banner

say "--- the seed: add true, add again false, checkout true"
user="$(id user_1)" seat="$(id Rolling-stones-A22)"
expect "$INGRESS" "$user" AddTicket "$(add_body "$seat")" true
expect "$INGRESS" "$user" AddTicket "$(add_body "$seat")" false
expect "$INGRESS" "$user" Checkout '{}' true
wait_ticket "$seat" "{\"status\":\"SOLD\",\"userId\":\"$user\"}"
expect "$INGRESS" "$user" Checkout '{}' false
pass "seed: true, false, true; the seat is sold to $user"

say "--- a 2 s reservation expires unless bought"
ann="$(id ann)" bob="$(id bob)" seat="$(id seat-B7)"
expect "$INGRESS" "$ann" AddTicket "$(add_body "$seat" 2000)" true
expect "$INGRESS2" "$bob" AddTicket "$(add_body "$seat")" false
t0=$SECONDS
deadline=$((SECONDS + WAIT_TIMEOUT))
while :; do
  sleep 1
  ask "$INGRESS2" "$bob" AddTicket "$(add_body "$seat")"
  [[ "$ANSWER" == true ]] && break
  ((SECONDS < deadline)) || fail "$ann's 2 s reservation of $seat did not expire within ${WAIT_TIMEOUT}s"
done
expect "$INGRESS" "$ann" Checkout '{}' false
expect "$INGRESS2" "$bob" Checkout '{}' true
pass "the reservation expired (bob got the seat after ~$((SECONDS - t0))s); ann's cart was empty"

say "--- an expiry after checkout changes nothing"
carol="$(id carol)" dave="$(id dave)" seat="$(id seat-C3)"
expect "$INGRESS" "$carol" AddTicket "$(add_body "$seat" 1500)" true
expect "$INGRESS" "$carol" Checkout '{}' true
say "(waiting 3 s, past the 1.5 s reservation)"
sleep 3
wait_ticket "$seat" "{\"status\":\"SOLD\",\"userId\":\"$carol\"}"
expect "$INGRESS2" "$dave" AddTicket "$(add_body "$seat")" false
pass "still sold to $carol after the reservation time"

say "--- two users race for one seat (one request to each worker, at once)"
for round in 1 2 3; do
  erin="$(id erin$round)" finn="$(id finn$round)" seat="$(id seat-D$round)"
  out1="$(mktemp)" out2="$(mktemp)"
  (ask "$INGRESS" "$erin" AddTicket "$(add_body "$seat")" && echo "$ANSWER" >"$out1") &
  p1=$!
  (ask "$INGRESS2" "$finn" AddTicket "$(add_body "$seat")" && echo "$ANSWER" >"$out2") &
  p2=$!
  wait "$p1" || fail "erin's request failed"
  wait "$p2" || fail "finn's request failed"
  a1="$(cat "$out1")" a2="$(cat "$out2")"
  rm -f "$out1" "$out2"
  if [[ "$a1" == true && "$a2" == false ]]; then
    winner=$erin
  elif [[ "$a1" == false && "$a2" == true ]]; then
    winner=$finn
  else
    fail "round $round: erin got $a1, finn got $a2; exactly one should get the seat"
  fi
  wait_ticket "$seat" "{\"status\":\"RESERVED\",\"userId\":\"$winner\"}"
  pass "round $round: exactly one winner ($winner)"
done

pass "ticket reservation: all checks passed"
