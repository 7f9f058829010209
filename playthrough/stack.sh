#!/usr/bin/env bash
# The shopping-cart stack on this machine, from the built binaries: the function service and
# N engine workers of one cluster. The Kafka broker is not part of it (scripts/kafka.sh start).
#
#   playthrough/stack.sh start    start what is not running; wait until the function service
#                                 answers and every worker's /ready says so
#   playthrough/stack.sh stop     SIGTERM (workers first, then the functions), SIGKILL after
#                                 STOP_TIMEOUT seconds
#   playthrough/stack.sh status   one line per process; exit 0 if all run, 3 if none, 1 if some
#
# Environment (defaults):
#   WORKERS=2                      engine workers, ids $WORKER_PREFIX-1 .. $WORKER_PREFIX-N
#   WORKER_PREFIX=worker
#   ADMIN_BASE_PORT=8090           worker i serves /ready /metrics /status on 127.0.0.1:(8090+i-1)
#   INGRESS_BASE_PORT=8180         worker i serves the HTTP ingress on 127.0.0.1:(8180+i-1)
#   FUNCTIONS_PORT=1108            the function service listens on 127.0.0.1:$FUNCTIONS_PORT
#   KEYFLOW_DATA_DIR=<repo>/.data  worker state (<dir>/<worker-id>), logs (<dir>/logs), pids (<dir>/run)
#   KEYFLOW_MODULE=<repo>/module.yaml
#   FUNCTIONS_BIN_NAME=shopping-cart-functions  the function service's binary (playthrough/app.sh
#                                 sets it per application)
#   KEYFLOW_BIN, FUNCTIONS_BIN     the binaries (default: target/release or target/debug, the newer)
#   KEYFLOW_BOOTSTRAP=127.0.0.1:9092
#   READY_TIMEOUT=120, STOP_TIMEOUT=30 (seconds)
# Other KEYFLOW_* variables (KEYFLOW_CLUSTER, KEYFLOW_PARTITIONS, ...) reach the workers as set.
set -euo pipefail

SCENARIO=stack
PLAYTHROUGH_NO_BIN=1
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WORKERS="${WORKERS:-2}"
WORKER_PREFIX="${WORKER_PREFIX:-worker}"
ADMIN_BASE_PORT="${ADMIN_BASE_PORT:-8090}"
INGRESS_BASE_PORT="${INGRESS_BASE_PORT:-8180}"
FUNCTIONS_PORT="${FUNCTIONS_PORT:-1108}"
FUNCTIONS_BIN_NAME="${FUNCTIONS_BIN_NAME:-shopping-cart-functions}"
DATA_DIR="${KEYFLOW_DATA_DIR:-$REPO_ROOT/.data}"
MODULE="${KEYFLOW_MODULE:-$REPO_ROOT/module.yaml}"
READY_TIMEOUT="${READY_TIMEOUT:-120}"
STOP_TIMEOUT="${STOP_TIMEOUT:-30}"
LOG_DIR="$DATA_DIR/logs"
RUN_DIR="$DATA_DIR/run"

[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || fail "WORKERS=$WORKERS is not a positive number"

# Plain log files: no colour codes.
export NO_COLOR="${NO_COLOR:-1}"
# module.yaml takes the broker and the function endpoint from these.
export KAFKA_BOOTSTRAP="$KEYFLOW_BOOTSTRAP"
export FUNCTIONS_URL="http://127.0.0.1:$FUNCTIONS_PORT"

worker_names() {
  local i
  for ((i = 1; i <= WORKERS; i++)); do echo "$WORKER_PREFIX-$i"; done
}

# Every process with a pid file, workers first (they stop before the functions they call).
known_names() {
  local f
  for f in "$RUN_DIR"/*.pid; do
    [[ -e "$f" ]] || continue
    f="$(basename "$f" .pid)"
    [[ "$f" == functions ]] || echo "$f"
  done
  [[ -e "$RUN_DIR/functions.pid" ]] && echo functions
  return 0
}

# pid NAME: the pid of NAME if its pid file names a live process of the expected binary.
pid() {
  local name=$1 p exe
  [[ -f "$RUN_DIR/$name.pid" ]] || return 1
  p="$(cat "$RUN_DIR/$name.pid")"
  [[ "$p" =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null || return 1
  exe="$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)"
  if [[ "$name" == functions ]]; then [[ "$exe" == *"$FUNCTIONS_BIN_NAME"* ]]; else [[ "$exe" == *keyflow* ]]; fi || return 1
  echo "$p"
}

port_of() { cat "$RUN_DIR/$1.port" 2>/dev/null || echo "?"; }

# ready NAME: the function service accepts connections / a worker's /ready answers 200.
ready() {
  local port
  port="$(port_of "$1")"
  if [[ "$1" == functions ]]; then port_open "$port"; else [[ "$(http_status "$port" /ready)" == 200 ]]; fi
}

# launch NAME PORT CMD...: starts CMD in its own session (a Ctrl-C meant for the shell that
# ran start must not reach it; stop sends one SIGTERM), logging to $LOG_DIR/NAME.log.
launch() {
  local name=$1 port=$2 log="$LOG_DIR/$1.log"
  shift 2
  if port_open "$port"; then
    fail "port 127.0.0.1:$port (for $name) is in use by another process; set ADMIN_BASE_PORT / FUNCTIONS_PORT, or stop it"
  fi
  [[ -f "$log" ]] && mv -f "$log" "$log.prev"
  echo "$port" >"$RUN_DIR/$name.port"
  # A stale pid file (a process killed with -9) would be read back as the new pid.
  rm -f "$RUN_DIR/$name.pid"
  # shellcheck disable=SC2016 # the inner shell writes its own pid, then becomes the process
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN_DIR/$name.pid" "$@" </dev/null >"$log" 2>&1 9>&- &
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s "$RUN_DIR/$name.pid" ]] && break
    sleep 0.1
  done
  STARTED+=("$name")
  say "started $name (pid $(cat "$RUN_DIR/$name.pid" 2>/dev/null || echo ?), port $port, log ${log#"$REPO_ROOT"/})"
}

# terminate NAME...: SIGTERM to all, wait up to STOP_TIMEOUT for each, then SIGKILL.
terminate() {
  local name p
  local -A pids=()
  for name in "$@"; do
    if p="$(pid "$name")"; then
      pids[$name]=$p
      kill -TERM "$p" 2>/dev/null || true
    else
      rm -f "$RUN_DIR/$name.pid" "$RUN_DIR/$name.port"
    fi
  done
  local deadline=$((SECONDS + STOP_TIMEOUT))
  for name in "$@"; do
    [[ -n "${pids[$name]:-}" ]] || continue
    while kill -0 "${pids[$name]}" 2>/dev/null; do
      if ((SECONDS >= deadline)); then
        say "$name (pid ${pids[$name]}) still running after ${STOP_TIMEOUT}s: SIGKILL"
        kill -KILL "${pids[$name]}" 2>/dev/null || true
        break
      fi
      sleep 0.2
    done
    rm -f "$RUN_DIR/$name.pid" "$RUN_DIR/$name.port"
    say "stopped $name (pid ${pids[$name]})"
  done
}

with_lock() {
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  exec 9>"$RUN_DIR/.lock"
  flock -w 60 9 || fail "another stack.sh holds $RUN_DIR/.lock"
}

cmd_start() {
  with_lock
  local keyflow functions
  keyflow="$(find_bin keyflow KEYFLOW_BIN)"
  functions="$(find_bin "$FUNCTIONS_BIN_NAME" FUNCTIONS_BIN)"
  KEYFLOW="$keyflow"
  [[ -f "$MODULE" ]] || fail "no module file at $MODULE (set KEYFLOW_MODULE)"
  KEYFLOW_ADMIN="" require_stack
  say "binaries: ${keyflow#"$REPO_ROOT"/}, ${functions#"$REPO_ROOT"/}; broker $KEYFLOW_BOOTSTRAP; data ${DATA_DIR#"$REPO_ROOT"/}"

  STARTED=()
  trap 'if ((${#STARTED[@]})); then say "start failed: stopping what it started"; terminate "${STARTED[@]}"; fi' EXIT
  local names=(functions) name i=0 p
  mapfile -t -O 1 names < <(worker_names)
  for name in "${names[@]}"; do
    if p="$(pid "$name")"; then
      say "$name already running (pid $p)"
      continue
    fi
    if [[ "$name" == functions ]]; then
      launch functions "$FUNCTIONS_PORT" "$functions" --listen "127.0.0.1:$FUNCTIONS_PORT"
    else
      i="${name##*-}"
      launch "$name" $((ADMIN_BASE_PORT + i - 1)) "$keyflow" run --module "$MODULE" --worker-id "$name" \
        --admin-addr "127.0.0.1:$((ADMIN_BASE_PORT + i - 1))" --data-dir "$DATA_DIR" \
        --ingress-addr "127.0.0.1:$((INGRESS_BASE_PORT + i - 1))"
    fi
  done

  local deadline=$((SECONDS + READY_TIMEOUT)) pending=("${names[@]}") next
  say "waiting for the function service and $WORKERS worker(s) to be ready (up to ${READY_TIMEOUT}s)"
  while ((${#pending[@]})); do
    next=()
    for name in "${pending[@]}"; do
      if ! pid "$name" >/dev/null; then
        say "$name exited during start-up; the end of $LOG_DIR/$name.log:"
        tail -n 40 "$LOG_DIR/$name.log" >&2 || true
        fail "$name did not start"
      elif ready "$name"; then
        if [[ "$name" == functions ]]; then
          say "functions ready: $FUNCTIONS_URL"
        else
          say "$name ready: http://127.0.0.1:$(port_of "$name")/ready"
        fi
      else
        next+=("$name")
      fi
    done
    pending=("${next[@]}")
    ((${#pending[@]})) || break
    if ((SECONDS >= deadline)); then
      for name in "${pending[@]}"; do
        say "$name is not ready; the end of $LOG_DIR/$name.log:"
        tail -n 20 "$LOG_DIR/$name.log" >&2 || true
      done
      fail "not ready within ${READY_TIMEOUT}s: ${pending[*]}"
    fi
    sleep 0.5
  done
  # A rebalance may follow the first worker's start; wait until ownership stops moving.
  local admins=()
  for name in $(worker_names); do admins+=("127.0.0.1:$(port_of "$name")"); done
  wait_settled $((deadline - SECONDS > 1 ? deadline - SECONDS : 1)) "${admins[@]}"
  for name in $(worker_names); do
    say "$name owns $(grep -c "^127.0.0.1:$(port_of "$name") " <<<"$SETTLED") partition(s)"
  done
  trap - EXIT
  say "stack is up: functions on 127.0.0.1:$FUNCTIONS_PORT, workers' admin on 127.0.0.1:$ADMIN_BASE_PORT..$((ADMIN_BASE_PORT + WORKERS - 1)), HTTP ingress on 127.0.0.1:$INGRESS_BASE_PORT..$((INGRESS_BASE_PORT + WORKERS - 1))"
}

cmd_stop() {
  with_lock
  local names
  mapfile -t names < <(known_names)
  if ((${#names[@]} == 0)); then
    say "nothing to stop (no pid files in ${RUN_DIR#"$REPO_ROOT"/})"
    return 0
  fi
  local workers=() name
  for name in "${names[@]}"; do [[ "$name" == functions ]] || workers+=("$name"); done
  if ((${#workers[@]})); then terminate "${workers[@]}"; fi
  if [[ -e "$RUN_DIR/functions.pid" ]]; then terminate functions; fi
}

cmd_status() {
  local names name p running=0 total=0 line
  mapfile -t names < <({ echo functions; worker_names; known_names; } | awk '!seen[$0]++')
  for name in "${names[@]}"; do
    total=$((total + 1))
    if p="$(pid "$name")"; then
      running=$((running + 1))
      line="running (pid $p)"
      if [[ "$name" == functions ]]; then
        line+=", 127.0.0.1:$(port_of "$name") $(port_open "$(port_of "$name")" && echo answering || echo 'not answering')"
      else
        line+=", admin 127.0.0.1:$(port_of "$name") /ready $(http_status "$(port_of "$name")" /ready)"
      fi
    else
      line="not running"
    fi
    printf '%-12s %s\n' "$name" "$line"
  done
  ((running == total)) && return 0
  ((running == 0)) && return 3
  return 1
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
