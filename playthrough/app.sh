#!/usr/bin/env bash
# One application of apps/ (docs/apps/): its function service and engine workers as a cluster
# of their own, and its playthrough scenarios (playthrough/<app>/*.sh).
#
#   playthrough/app.sh list                    the applications
#   playthrough/app.sh APP start|stop|status   its stack (playthrough/stack.sh with the
#                                              application's binary, module and ports, plus
#                                              the extra services it declares)
#   playthrough/app.sh APP play [SCENARIO...]  its scenarios against the running stack
#   playthrough/app.sh APP run                 start, play every scenario, stop; the exit
#                                              status is the scenarios'
#
# apps/APP/app.env (sourced) sets FUNCTIONS_BIN_NAME and FUNCTIONS_PORT, exports what the
# module file reads, and may define app_start / app_stop / app_status for extra services
# (start_service / stop_service / service_status below help).
#
# Environment (defaults): KEYFLOW_DATA_DIR=<repo>/.data-APP, KEYFLOW_CLUSTER=APP,
# KEYFLOW_MODULE=apps/APP/module.yaml, INGRESS / INGRESS2 = the first two workers' HTTP
# ingress, and everything playthrough/stack.sh reads (WORKERS, ADMIN_BASE_PORT,
# INGRESS_BASE_PORT, ...). The default ports are the shopping-cart stack's: run one stack at
# a time, or move the ports.
set -euo pipefail

SCENARIO=app
PLAYTHROUGH_NO_BIN=1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/lib.sh
source "$HERE/lib.sh"

usage() {
  sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

apps() {
  local f
  for f in "$REPO_ROOT"/apps/*/app.env; do basename "$(dirname "$f")"; done
}

APP="${1:-}"
CMD="${2:-}"
[[ -n "$APP" ]] || usage
if [[ "$APP" == list ]]; then
  apps
  exit 0
fi
[[ -n "$CMD" ]] || usage
shift 2
APP_DIR="$REPO_ROOT/apps/$APP"
[[ -f "$APP_DIR/app.env" ]] || fail "no application $APP (apps/$APP/app.env); there are: $(apps | tr '\n' ' ')"
SCENARIO="$APP"

export KEYFLOW_DATA_DIR="${KEYFLOW_DATA_DIR:-$REPO_ROOT/.data-$APP}"
export KEYFLOW_CLUSTER="${KEYFLOW_CLUSTER:-$APP}"
export KEYFLOW_MODULE="${KEYFLOW_MODULE:-$APP_DIR/module.yaml}"
export ADMIN_BASE_PORT="${ADMIN_BASE_PORT:-8090}" INGRESS_BASE_PORT="${INGRESS_BASE_PORT:-8180}"
export INGRESS="${INGRESS:-127.0.0.1:$INGRESS_BASE_PORT}"
export INGRESS2="${INGRESS2:-127.0.0.1:$((INGRESS_BASE_PORT + 1))}"
export NO_COLOR="${NO_COLOR:-1}"
SERVICE_DIR="$KEYFLOW_DATA_DIR/services"
LOG_DIR="$KEYFLOW_DATA_DIR/logs"

# service_pid NAME BIN: the pid of extra service NAME if it runs (its pid file names a live BIN).
service_pid() {
  local p
  [[ -f "$SERVICE_DIR/$1.pid" ]] || return 1
  p="$(cat "$SERVICE_DIR/$1.pid")"
  [[ "$p" =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null || return 1
  [[ "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" == *"$2"* ]] || return 1
  echo "$p"
}

# start_service NAME BIN PORT ARGS...: starts the built binary BIN with ARGS (log
# <data>/logs/NAME.log) and waits until it accepts connections on PORT (PORT "-": no wait).
start_service() {
  local name=$1 bin_name=$2 port=$3 bin p i
  shift 3
  if p="$(service_pid "$name" "$bin_name")"; then
    say "$name already running (pid $p)"
    return 0
  fi
  bin="$(find_bin "$bin_name" "$(echo "${name}_BIN" | tr 'a-z-' 'A-Z_')")"
  if [[ "$port" != - ]] && port_open "$port"; then
    fail "port 127.0.0.1:$port (for $name) is in use by another process"
  fi
  mkdir -p "$SERVICE_DIR" "$LOG_DIR"
  # shellcheck disable=SC2016 # the inner shell writes its own pid, then becomes the process
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$SERVICE_DIR/$name.pid" "$bin" "$@" \
    </dev/null >"$LOG_DIR/$name.log" 2>&1 &
  if [[ "$port" != - ]]; then
    for ((i = 0; i < 150; i++)); do
      port_open "$port" && break
      sleep 0.1
    done
    port_open "$port" || {
      tail -n 20 "$LOG_DIR/$name.log" >&2 || true
      fail "$name did not start (log ${LOG_DIR#"$REPO_ROOT"/}/$name.log)"
    }
  fi
  say "started $name (pid $(cat "$SERVICE_DIR/$name.pid"), log ${LOG_DIR#"$REPO_ROOT"/}/$name.log)"
}

# stop_service NAME BIN: SIGTERM, SIGKILL after 10 s.
stop_service() {
  local p i
  if p="$(service_pid "$1" "$2")"; then
    kill -TERM "$p" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
    say "stopped $1 (pid $p)"
  fi
  rm -f "$SERVICE_DIR/$1.pid"
}

# service_status NAME BIN: one line.
service_status() {
  local p
  if p="$(service_pid "$1" "$2")"; then
    printf '%-12s running (pid %s)\n' "$1" "$p"
  else
    printf '%-12s not running\n' "$1"
  fi
}

FUNCTIONS_BIN_NAME=""
FUNCTIONS_PORT=""
# shellcheck source=/dev/null
source "$APP_DIR/app.env"
[[ -n "$FUNCTIONS_BIN_NAME" && -n "$FUNCTIONS_PORT" ]] \
  || fail "apps/$APP/app.env must set FUNCTIONS_BIN_NAME and FUNCTIONS_PORT"
export FUNCTIONS_BIN_NAME FUNCTIONS_PORT

has() { declare -F "$1" >/dev/null; }

cmd_start() {
  if has app_start; then app_start; fi
  "$HERE/stack.sh" start
}

cmd_stop() {
  local rc=0
  "$HERE/stack.sh" stop || rc=$?
  if has app_stop; then app_stop || rc=$?; fi
  return "$rc"
}

cmd_play() {
  local scenarios=("$@")
  if ((${#scenarios[@]} == 0)); then
    scenarios=("$HERE/$APP"/*.sh)
    [[ -e "${scenarios[0]}" ]] || fail "no scenarios in playthrough/$APP/"
  fi
  "$HERE/run-all.sh" "${scenarios[@]}"
}

case "$CMD" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status)
    rc=0
    if has app_status; then app_status; fi
    "$HERE/stack.sh" status || rc=$?
    exit "$rc"
    ;;
  play) cmd_play "$@" ;;
  run)
    trap 'cmd_stop' EXIT
    cmd_start
    cmd_play "$@"
    ;;
  *) usage ;;
esac
