#!/usr/bin/env bash
# The one-command demo: installs what is missing, builds, starts a Kafka broker, the
# shopping-cart functions and two engine workers, plays the seed scenario (restock socks, add
# 3 to user 1's cart, check out: one receipt), shows where to look next, and keeps everything
# running until Ctrl-C, when it stops all it started.
#
#   scripts/demo.sh            (from anywhere)
#   scripts/demo.sh --no-wait  stop everything right after the scenario (a smoke test)
#
# It uses the default ports: Kafka 127.0.0.1:9092, functions 127.0.0.1:1108, workers' admin
# 127.0.0.1:8090 and :8091; state and logs in .data/. A broker that is already running is used
# and left running.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

if [[ -t 1 ]]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD="" PLAIN=""; fi
say() { printf '\n%sdemo: %s%s\n' "$BOLD" "$*" "$PLAIN" 2>/dev/null || true; }
die() {
  printf 'demo: %s\n' "$*" >&2
  exit 1
}

NO_WAIT=0
case "${1:-}" in
  "") ;;
  --no-wait) NO_WAIT=1 ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

# The demo's own stack settings (the environment must not point it elsewhere).
export WORKERS=2 WORKER_PREFIX=worker ADMIN_BASE_PORT=8090 INGRESS_BASE_PORT=8180 FUNCTIONS_PORT=1108
export KEYFLOW_DATA_DIR="$REPO_ROOT/.data"
export KAFKA_PORT="${KAFKA_PORT:-9092}"
export KEYFLOW_BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
KEYFLOW="$REPO_ROOT/target/release/keyflow"

# --- one demo at a time ------------------------------------------------------------------------
mkdir -p "$KEYFLOW_DATA_DIR"
exec 8>"$KEYFLOW_DATA_DIR/demo.lock"
if ! flock -n 8; then
  die "another scripts/demo.sh is running (pid $(cat "$KEYFLOW_DATA_DIR/demo.pid" 2>/dev/null || echo '?')); use it, or stop it with Ctrl-C in its terminal"
fi
echo $$ >"$KEYFLOW_DATA_DIR/demo.pid"

stack_rc=0
playthrough/stack.sh status >/dev/null 2>&1 || stack_rc=$?
if ((stack_rc != 3)); then
  playthrough/stack.sh status >&2 || true
  die "the demo stack is already running (above): play with it (playthrough/run-all.sh), or stop it first: playthrough/stack.sh stop"
fi
# shellcheck disable=SC2016 # expanded by the inner shell
port_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null; }
for port in 1108 8090 8091 8180 8181; do
  if port_open "$port"; then
    die "port 127.0.0.1:$port is taken by another process (a demo from another checkout? see: ss -ltnp | grep :$port)"
  fi
done

# --- stop what we started, however we leave ----------------------------------------------------
STARTED_BROKER=0 STARTED_STACK=0 SLEEPER=""
# Passes output on while someone reads it, and swallows it after (see cleanup).
relay() { cat 2>/dev/null || cat >/dev/null; }
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # Ctrl-C in `demo.sh | tee log` also ends tee: stop everything even with no one to tell.
  trap '' PIPE
  [[ -z "$SLEEPER" ]] || kill "$SLEEPER" 2>/dev/null || true
  if ((STARTED_STACK)); then
    say "stopping the functions and the engine workers"
    playthrough/stack.sh stop 8>&- 2>&1 | relay || true
  fi
  if ((STARTED_BROKER)); then
    say "stopping the Kafka broker the demo started"
    scripts/kafka.sh stop 8>&- 2>&1 | relay || true
  fi
  rm -f "$KEYFLOW_DATA_DIR/demo.pid"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- install, build, start ---------------------------------------------------------------------
say "1/5 setup: system packages, toolchains, the Kafka jars (skipped when present)"
scripts/setup.sh

say "2/5 build: cargo build --release --bins (the first build takes several minutes)"
cargo build --release --bins

say "3/5 Kafka broker on $KEYFLOW_BOOTSTRAP"
if scripts/kafka.sh status >/dev/null 2>&1; then
  echo "already running: $(scripts/kafka.sh status) (the demo leaves it running)"
else
  STARTED_BROKER=1
  scripts/kafka.sh start 8>&-
fi

say "4/5 the shopping-cart functions and two engine workers"
STARTED_STACK=1
KEYFLOW_BIN="$KEYFLOW" FUNCTIONS_BIN="$REPO_ROOT/target/release/shopping-cart-functions" \
  playthrough/stack.sh start 8>&-

# --- the seed scenario -------------------------------------------------------------------------
# The seed's own ids (user 1, socks) only on a fresh broker: on one with earlier receipts,
# unique ids keep this run's receipt apart from theirs.
seed=0
earlier="$(RUST_LIB_BACKTRACE=0 "$KEYFLOW" consume --topic receipts --to-end --max 1 2>/dev/null || true)"
[[ -n "$earlier" ]] || seed=1
say "5/5 the seed scenario$( ((seed)) && echo " with the seed's ids" || echo " with fresh ids (receipts has records of earlier runs)")"
if ! SEED_IDS=$seed KEYFLOW_BIN="$KEYFLOW" playthrough/scenario_1.sh; then
  die "the scenario failed; the logs: .data/logs/ (functions.log, worker-1.log, worker-2.log) and scripts/kafka.sh logs"
fi

k="target/release/keyflow"
cat <<EOF

The receipt above is on topic \`receipts\`, written exactly once (read_committed).
Everything is running:
  Kafka broker      $KEYFLOW_BOOTSTRAP                          scripts/kafka.sh status | logs
  functions         http://127.0.0.1:1108                           .data/logs/functions.log
  engine worker-1   http://127.0.0.1:8090/ready  /metrics  /status  .data/logs/worker-1.log
  engine worker-2   http://127.0.0.1:8091/ready  /metrics  /status  .data/logs/worker-2.log

Try$( [[ "$KAFKA_PORT" == 9092 ]] || echo " (first: export KEYFLOW_BOOTSTRAP=$KEYFLOW_BOOTSTRAP)"):
  $k produce --topic restock-items hats '{"itemId":"hats","quantity":5}'
  $k produce --topic add-to-cart 2 '{"userId":"2","itemId":"hats","quantity":2}'
  $k produce --topic checkout 2 '{"userId":"2"}'
  $k consume --topic receipts --key 2 --timeout 5s
  $k consume --topic cart-events --to-end --json
  $k topics
  curl -s http://127.0.0.1:8090/status; curl -s http://127.0.0.1:8090/metrics | less
  curl -s -X POST -H 'Content-Type: application/vnd.com.example/RequestItem' -d '{"quantity":1}' 'http://127.0.0.1:8180/com.example/stock/hats?reply=true'
  playthrough/run-all.sh        # every playthrough scenario against this stack
EOF

if ((NO_WAIT)); then
  say "--no-wait: stopping"
  exit 0
fi
say "running until Ctrl-C (then the demo stops everything it started)"
sleep infinity &
SLEEPER=$!
wait "$SLEEPER"
