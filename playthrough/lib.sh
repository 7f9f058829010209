# shellcheck shell=bash disable=SC2034 # variables set here are read by the scripts that source it
# Helpers for the playthrough scenarios and stack.sh; sourced, not run.
#
# Environment:
#   KEYFLOW_BIN        the keyflow binary (default: target/release/keyflow or target/debug/keyflow,
#                      whichever exists, the newer if both do, else `keyflow` on PATH)
#   KEYFLOW_BOOTSTRAP  Kafka bootstrap servers (default 127.0.0.1:9092)
#   RUN                suffix that makes this run's user and item ids unique (default: from the clock)
#   WAIT_TIMEOUT       seconds to wait for an expected record (default 60)
#   KEYFLOW_ADMIN      admin addresses (host:port, space-separated) of the engine workers: when
#                      set, a scenario first waits until they have divided the partitions
#                      (docker-compose.yml sets it; playthrough/stack.sh start waits by itself)
#
# Topics outlive runs, so scenarios use ids no earlier run used (`id NAME` -> NAME-$RUN) and
# read only the records of their own keys.
set -euo pipefail

PLAYTHROUGH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$PLAYTHROUGH_DIR/.." && pwd)"
SCENARIO="${SCENARIO:-$(basename "$0" .sh)}"
export KEYFLOW_BOOTSTRAP="${KEYFLOW_BOOTSTRAP:-127.0.0.1:9092}"
# keyflow's errors are meant for people: the message, not a backtrace.
export RUST_LIB_BACKTRACE=0
RUN="${RUN:-$(date +%s%N | tail -c 7)}"
WAIT_TIMEOUT="${WAIT_TIMEOUT:-60}"

# Progress lines; a reader that went away (a closed pipe) must not stop a script halfway.
say() { printf '[%s] %s\n' "$SCENARIO" "$*" 2>/dev/null || true; }
pass() { printf '[%s] PASS  %s\n' "$SCENARIO" "$*" 2>/dev/null || true; }
fail() {
  printf '[%s] FAIL  %s\n' "$SCENARIO" "$*" >&2
  exit 1
}

# find_bin NAME VAR: the path of binary NAME, from $VAR when set, else target/{release,debug}
# (the newer if both exist), else PATH.
find_bin() {
  local name=$1 var=$2
  if [[ -n "${!var:-}" ]]; then
    [[ -x "${!var}" ]] || fail "$var=${!var} is not an executable file"
    echo "${!var}"
    return
  fi
  local release="$REPO_ROOT/target/release/$name" debug="$REPO_ROOT/target/debug/$name"
  if [[ -x "$release" && -x "$debug" ]]; then
    if [[ "$release" -nt "$debug" ]]; then echo "$release"; else echo "$debug"; fi
  elif [[ -x "$release" ]]; then
    echo "$release"
  elif [[ -x "$debug" ]]; then
    echo "$debug"
  elif command -v "$name" >/dev/null; then
    command -v "$name"
  else
    fail "no $name binary: build it (cargo build --release --bins) or set $var"
  fi
}

# stack.sh finds its binaries itself (and `stack.sh stop` must work without any).
if [[ "${PLAYTHROUGH_NO_BIN:-0}" != 1 ]]; then
  KEYFLOW="$(find_bin keyflow KEYFLOW_BIN)"
fi

# id NAME: a user or item id of this run.
id() { echo "$1-$RUN"; }

# --- sending -----------------------------------------------------------------------------------

# send TOPIC KEY VALUE: one record, acknowledged by the broker before this returns.
send() {
  local topic=$1 key=$2 value=$3
  say "send  $topic  $key: $value"
  "$KEYFLOW" produce --quiet --topic "$topic" -- "$key" "$value" \
    || fail "could not send to $topic (is the broker running? scripts/kafka.sh start)"
}

restock() { send restock-items "$1" "{\"itemId\":\"$1\",\"quantity\":$2}"; }
add_to_cart() { send add-to-cart "$1" "{\"userId\":\"$1\",\"itemId\":\"$2\",\"quantity\":$3}"; }
clear_cart() { send clear-cart "$1" "{\"userId\":\"$1\"}"; }
checkout() { send checkout "$1" "{\"userId\":\"$1\"}"; }

# The values the functions emit (functions/shopping-cart/README.md, "Egress").
receipt_value() { echo "{\"userId\":\"$1\",\"details\":\"$2\"}"; }
out_of_stock_value() { echo "{\"userId\":\"$1\",\"itemId\":\"$2\",\"status\":\"OUTOFSTOCK\",\"quantity\":$3}"; }
# A glob matching the cart events about one item.
about_item() { echo "*\"itemId\":\"$1\"*"; }

# --- reading -----------------------------------------------------------------------------------

# One line of `keyflow consume --json`: topic, partition, offset, key, value (in this order).
JSON_STRING='"(([^"\\]|\\.)*)"'
RECORD_RE="^\\{\"topic\":$JSON_STRING,\"partition\":([0-9]+),\"offset\":([0-9]+),\"key\":(null|$JSON_STRING),\"value\":(null|$JSON_STRING),"

# json_unescape TEXT: the string a JSON string literal's body stands for. A `\"` can only be
# an escaped quote (a quote after an escaped backslash would have ended the literal), and
# printf %b reads the remaining escapes left to right (`\\`, `\n`, `\t`, `\uXXXX`, ...).
json_unescape() {
  local s=$1
  s=${s//\\\"/\"}
  printf '%b' "$s"
}

# read_records TOPIC KEY [GLOB]: the committed records of TOPIC with KEY whose value matches
# GLOB (default: all), oldest first, into the arrays SEEN (values) and SEEN_AT
# (topic/partition@offset). A topic that does not exist yet has no records.
read_records() {
  local topic=$1 key=$2 glob=${3:-*} out err line value
  SEEN=()
  SEEN_AT=()
  err="$(mktemp)"
  if ! out="$("$KEYFLOW" consume --topic "$topic" --key "$key" --json --to-end --timeout 10s 2>"$err")"; then
    if grep -q "does not exist" "$err"; then
      rm -f "$err"
      return 0
    fi
    local msg
    msg="$(cat "$err")"
    rm -f "$err"
    fail "reading $topic: $msg"
  fi
  rm -f "$err"
  while IFS= read -r line; do
    [[ -n "$line" ]] || continue
    [[ "$line" =~ $RECORD_RE ]] || fail "unexpected output of keyflow consume --json: $line"
    value="$(json_unescape "${BASH_REMATCH[9]}")"
    # shellcheck disable=SC2053 # GLOB is a pattern on purpose
    [[ "$value" == $glob ]] || continue
    SEEN+=("$value")
    SEEN_AT+=("$topic/${BASH_REMATCH[3]}@${BASH_REMATCH[4]}")
  done <<<"$out"
}

# count_records TOPIC KEY [GLOB]: prints how many records read_records finds.
count_records() {
  read_records "$@"
  echo "${#SEEN[@]}"
}

show_seen() { # show_seen KEY: prints SEEN / SEEN_AT
  local i
  if ((${#SEEN[@]} == 0)); then say "      (none)"; fi
  for i in "${!SEEN[@]}"; do say "seen  ${SEEN_AT[$i]}  $1: ${SEEN[$i]}"; done
}

STACK_HINT="is the stack running? playthrough/stack.sh status; logs in ${KEYFLOW_DATA_DIR:-.data}/logs/"

# wait_records TOPIC KEY N [GLOB]: waits up to WAIT_TIMEOUT seconds until at least N records
# of TOPIC with KEY (values matching GLOB) are committed; leaves them in SEEN / SEEN_AT.
wait_records() {
  local topic=$1 key=$2 n=$3 glob=${4:-*}
  local deadline=$((SECONDS + WAIT_TIMEOUT))
  local what="$n record(s) on $topic with key $key"
  [[ "$glob" == "*" ]] || what+=" matching $glob"
  say "wait  for $what (up to ${WAIT_TIMEOUT}s)"
  while :; do
    read_records "$topic" "$key" "$glob"
    ((${#SEEN[@]} < n)) || return 0
    if ((SECONDS >= deadline)); then
      say "saw only ${#SEEN[@]}:"
      show_seen "$key"
      fail "no $what within ${WAIT_TIMEOUT}s ($STACK_HINT)"
    fi
    sleep 0.3
  done
}

# expect_records TOPIC KEY SKIP VALUE...: after the first SKIP records of TOPIC with KEY (those
# from before this run), exactly the given values, in order, and nothing more.
expect_records() {
  local topic=$1 key=$2 skip=$3
  shift 3
  local want=("$@")
  wait_records "$topic" "$key" $((skip + ${#want[@]}))
  # One more look: a duplicate would be committed with or soon after the record we waited for.
  read_records "$topic" "$key"
  local got=("${SEEN[@]:skip}") at=("${SEEN_AT[@]:skip}") i same=1
  for i in "${!got[@]}"; do say "seen  ${at[$i]}  $key: ${got[$i]}"; done
  ((${#got[@]} == ${#want[@]})) || same=0
  for i in "${!want[@]}"; do [[ "${got[$i]:-}" == "${want[$i]}" ]] || same=0; done
  if ((!same)); then
    for i in "${!want[@]}"; do say "want  $key: ${want[$i]}"; done
    fail "$topic, key $key: expected the ${#want[@]} record(s) marked want, saw ${#got[@]} (marked seen)"
  fi
}

# --- barriers ----------------------------------------------------------------------------------
# Ingress topics are not ordered relative to each other, so a checkout sent right after an
# add-to-cart may reach the cart first. `settle USER` orders them: it asks for an item nobody
# ever restocks and waits for the out-of-stock event that answer causes. The records of one
# key stay in order on add-to-cart, so once the event is out, every earlier AddToCart of USER
# has reached the cart; a stock answer still on its way is awaited by the cart itself before
# a later checkout or clear-cart runs.
GHOST="$(id ghost)"

settle() {
  local user=$1 before
  before="$(count_records cart-events "$user" "$(about_item "$GHOST")")"
  say "(barrier: an item nobody stocks, to know $user's earlier adds reached the cart)"
  add_to_cart "$user" "$GHOST" 1
  wait_records cart-events "$user" $((before + 1)) "$(about_item "$GHOST")"
}

# The answer try_buy and await_outcome saw: `bought` or `out-of-stock`.
OUTCOME=""

# try_buy USER ITEM QTY: adds QTY of ITEM to USER's (empty) cart and checks out. Sets OUTCOME
# to `bought` (a receipt `ITEM: QTY` arrived) or `out-of-stock` (an out-of-stock event for
# exactly this request arrived, and no receipt).
try_buy() {
  local user=$1 item=$2 qty=$3 receipts0 oos0
  receipts0="$(count_records receipts "$user")"
  oos0="$(count_records cart-events "$user" "$(about_item "$item")")"
  add_to_cart "$user" "$item" "$qty"
  settle "$user"
  checkout "$user"
  await_outcome "$user" "$item" "$qty" "$receipts0" "$oos0"
}

# await_outcome USER ITEM QTY RECEIPTS0 OOS0: the answer to one request of QTY units of ITEM
# by USER, who had RECEIPTS0 receipts and OOS0 out-of-stock events about ITEM before.
await_outcome() {
  local user=$1 item=$2 qty=$3 receipts0=$4 oos0=$5
  local deadline=$((SECONDS + WAIT_TIMEOUT)) receipts oos receipts_at oos_at
  say "wait  for $user's answer: a receipt or an out-of-stock event for $item (up to ${WAIT_TIMEOUT}s)"
  while :; do
    read_records receipts "$user"
    receipts=("${SEEN[@]:receipts0}")
    receipts_at=("${SEEN_AT[@]:receipts0}")
    read_records cart-events "$user" "$(about_item "$item")"
    oos=("${SEEN[@]:oos0}")
    oos_at=("${SEEN_AT[@]:oos0}")
    if ((${#receipts[@]} + ${#oos[@]} > 1)); then
      SEEN=("${receipts[@]}" "${oos[@]}")
      SEEN_AT=("${receipts_at[@]}" "${oos_at[@]}")
      show_seen "$user"
      fail "one request of $qty $item by $user was answered more than once (above)"
    elif ((${#receipts[@]} == 1)); then
      say "seen  ${receipts_at[0]}  $user: ${receipts[0]}"
      [[ "${receipts[0]}" == "$(receipt_value "$user" "$item: $qty")" ]] \
        || fail "receipt for $user should list exactly \`$item: $qty\`"
      OUTCOME="bought"
      return 0
    elif ((${#oos[@]} == 1)); then
      say "seen  ${oos_at[0]}  $user: ${oos[0]}"
      [[ "${oos[0]}" == "$(out_of_stock_value "$user" "$item" "$qty")" ]] \
        || fail "out-of-stock event for $user should be $(out_of_stock_value "$user" "$item" "$qty")"
      OUTCOME="out-of-stock"
      return 0
    elif ((SECONDS >= deadline)); then
      fail "no answer to $user's request for $qty $item within ${WAIT_TIMEOUT}s: neither a receipt nor an out-of-stock event ($STACK_HINT)"
    fi
    sleep 0.3
  done
}

# --- checks and stack --------------------------------------------------------------------------
# Addresses are `host:port`, or a bare port on 127.0.0.1. No curl needed: bash's /dev/tcp.

# http_get ADDR PATH: the whole HTTP/1.0 response (status line, headers, body) of
# GET http://ADDR/PATH; empty when nothing answers.
http_get() {
  local host=127.0.0.1 port=$1
  if [[ "$1" == *:* ]]; then host=${1%:*} port=${1##*:}; fi
  # shellcheck disable=SC2016 # expanded by the inner shell
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" "$2" "$0" >&3
    cat <&3' "$host" "$port" "$2" 2>/dev/null || true
}

# http_status ADDR PATH: the status code of GET http://ADDR/PATH, or 000.
http_status() {
  local line
  line="$(http_get "$1" "$2" | head -n1)"
  if [[ "$line" =~ ^HTTP/[0-9.]+\ ([0-9]{3}) ]]; then echo "${BASH_REMATCH[1]}"; else echo 000; fi
}

# http_body ADDR PATH: the body of GET http://ADDR/PATH.
http_body() { http_get "$1" "$2" | tr -d '\r' | sed '1,/^$/d'; }

# shellcheck disable=SC2016 # expanded by the inner shell
port_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null; }

# ownership ADDR...: one line `ADDR TOPIC/PARTITION PHASE` per partition that the worker with
# admin address ADDR lists in /status; fails when a worker answers nothing or owns nothing.
ownership() {
  local addr body obj topic part phase n
  for addr in "$@"; do
    body="$(http_body "$addr" /status)"
    n=0
    while read -r obj; do
      [[ "$obj" =~ \"topic\":\"([^\"]+)\" ]] || continue
      topic=${BASH_REMATCH[1]}
      [[ "$obj" =~ \"partition\":([0-9]+) ]] || continue
      part=${BASH_REMATCH[1]}
      [[ "$obj" =~ \"phase\":\"([a-z]+)\" ]] || continue
      phase=${BASH_REMATCH[1]}
      echo "$addr $topic/$part $phase"
      n=$((n + 1))
    done < <(grep -o '{[^{}]*}' <<<"$body")
    ((n > 0)) || return 1
  done
}

# settled ADDR...: the workers have finished dividing their cluster: each owns partitions, all
# of them running, and together they own every partition of <cluster>-messages once. Sets
# SETTLED to the ownership lines. (A worker's /ready speaks only for what it owns at the
# moment; right after a start the first worker owns everything, then gives half away.)
settled() {
  local own cluster expected
  SETTLED=""
  own="$(ownership "$@")" || return 1
  [[ "$own" != *" restoring"* ]] || return 1
  [[ -z "$(awk '{print $2}' <<<"$own" | sort | uniq -d)" ]] || return 1
  [[ "$(http_body "$1" /status)" =~ \"cluster\":\"([^\"]+)\" ]] || return 1
  cluster=${BASH_REMATCH[1]}
  expected="$("$KEYFLOW" topics | awk -v t="$cluster-messages" '$1 == t {print $2}')"
  [[ -n "$expected" ]] || return 1
  (($(grep -c " $cluster-messages/" <<<"$own") == expected)) || return 1
  SETTLED="$own"
}

# wait_settled TIMEOUT ADDR...: waits until `settled` holds twice in a row, a second apart,
# with the same assignment (a rebalance in progress moves it).
wait_settled() {
  local timeout=$1 last=""
  shift
  local deadline=$((SECONDS + timeout))
  say "wait  for the workers ($*) to divide the partitions among them (up to ${timeout}s)"
  while :; do
    if settled "$@" && [[ "$SETTLED" == "$last" ]]; then
      return 0
    fi
    last="$SETTLED"
    if ((SECONDS >= deadline)); then
      ownership "$@" >&2 || true
      fail "the workers did not settle on an assignment of the partitions within ${timeout}s (workers of the same cluster started elsewhere, e.g. by scripts/demo.sh, take partitions too)"
    fi
    sleep 1
  done
}

# require_stack: fails at once, with the fix, when the broker does not answer; with
# KEYFLOW_ADMIN (admin addresses of the workers, space-separated) also waits until those
# workers have settled, so that no rebalance reorders the scenario's first records.
require_stack() {
  local err
  if ! err="$("$KEYFLOW" topics 2>&1 >/dev/null)"; then
    fail "${err#Error: }"
  fi
  if [[ -n "${KEYFLOW_ADMIN:-}" ]]; then
    # shellcheck disable=SC2086 # a list of addresses
    wait_settled "$WAIT_TIMEOUT" $KEYFLOW_ADMIN
  fi
}

start_banner() {
  say "run id $RUN, broker $KEYFLOW_BOOTSTRAP, keyflow ${KEYFLOW#"$REPO_ROOT"/}"
}
