#!/usr/bin/env bash
# The ticket-reservation stack on this machine, from the built binaries: the ticketing
# function service (ticket-reservation-functions) plus the engine workers of
# playthrough/stack.sh, running apps/ticket-reservation/module.yaml as their own cluster.
#
#   playthrough/tickets/stack.sh start    start the function service, then the workers
#   playthrough/tickets/stack.sh stop     stop the workers (and stack.sh's functions), then ours
#   playthrough/tickets/stack.sh status
#
# Environment (defaults):
#   TICKETING_PORT=1109                    the ticketing function service's port
#   TICKETING_RESERVATION_MS=900000        how long a reservation lasts unless a request says
#   TICKETING_BIN                          the binary (default: target/release or target/debug)
#   KEYFLOW_DATA_DIR=<repo>/.data-tickets  pids, logs and worker state of this stack
#   KEYFLOW_CLUSTER=tickets
# and everything playthrough/stack.sh reads (WORKERS, ADMIN_BASE_PORT=8090,
# INGRESS_BASE_PORT=8180, FUNCTIONS_PORT=1108, ...). It uses the same default ports as the
# shopping-cart stack: stop that one first, or move the ports.
set -euo pipefail

SCENARIO=tickets-stack
PLAYTHROUGH_NO_BIN=1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/../lib.sh
source "$HERE/../lib.sh"

TICKETING_PORT="${TICKETING_PORT:-1109}"
export KEYFLOW_DATA_DIR="${KEYFLOW_DATA_DIR:-$REPO_ROOT/.data-tickets}"
export KEYFLOW_CLUSTER="${KEYFLOW_CLUSTER:-tickets}"
export KEYFLOW_MODULE="${KEYFLOW_MODULE:-$REPO_ROOT/apps/ticket-reservation/module.yaml}"
export TICKETING_FUNCTIONS_URL="http://127.0.0.1:$TICKETING_PORT"
export NO_COLOR="${NO_COLOR:-1}"
LOG_DIR="$KEYFLOW_DATA_DIR/logs"
# Not in $RUN_DIR: stack.sh stop treats every pid file there as one of its workers.
PID_FILE="$KEYFLOW_DATA_DIR/ticketing.pid"

# The pid of our function service, if it runs.
ticketing_pid() {
  local p
  [[ -f "$PID_FILE" ]] || return 1
  p="$(cat "$PID_FILE")"
  [[ "$p" =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null || return 1
  [[ "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" == *ticket-reservation-functions* ]] || return 1
  echo "$p"
}

start_ticketing() {
  local bin p i
  if p="$(ticketing_pid)"; then
    say "ticketing functions already running (pid $p)"
    return 0
  fi
  bin="$(find_bin ticket-reservation-functions TICKETING_BIN)"
  if port_open "$TICKETING_PORT"; then
    fail "port 127.0.0.1:$TICKETING_PORT is in use by another process; set TICKETING_PORT"
  fi
  mkdir -p "$LOG_DIR"
  # shellcheck disable=SC2016 # the inner shell writes its own pid, then becomes the process
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" "$bin" --listen "127.0.0.1:$TICKETING_PORT" \
    </dev/null >"$LOG_DIR/ticketing.log" 2>&1 &
  for ((i = 0; i < 100; i++)); do
    port_open "$TICKETING_PORT" && break
    sleep 0.1
  done
  port_open "$TICKETING_PORT" || {
    tail -n 20 "$LOG_DIR/ticketing.log" >&2 || true
    fail "the ticketing functions did not start"
  }
  say "started ticketing functions (pid $(cat "$PID_FILE"), 127.0.0.1:$TICKETING_PORT, log ${LOG_DIR#"$REPO_ROOT"/}/ticketing.log)"
}

stop_ticketing() {
  local p i
  if p="$(ticketing_pid)"; then
    kill -TERM "$p" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
    say "stopped ticketing functions (pid $p)"
  fi
  rm -f "$PID_FILE"
}

case "${1:-}" in
  start)
    start_ticketing
    "$HERE/../stack.sh" start
    ;;
  stop)
    "$HERE/../stack.sh" stop
    stop_ticketing
    ;;
  status)
    if p="$(ticketing_pid)"; then
      printf '%-12s running (pid %s), 127.0.0.1:%s\n' ticketing "$p" "$TICKETING_PORT"
    else
      printf '%-12s not running\n' ticketing
    fi
    "$HERE/../stack.sh" status
    ;;
  *)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
