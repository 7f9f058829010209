#!/usr/bin/env bash
# End-to-end benchmark of the shopping-cart application on this machine (see bench/README.md).
#
#   bench/run.sh [--quick] [--keep] [-- <extra keyflow-bench run flags>]
#
#   --quick   10,000 AddToCart records and 10 s of latency measurement (default 100,000 / 20 s)
#   --keep    keep the run's temp dir (module, engine data, logs) and its Kafka topics
#
# Builds the release binaries, starts the broker when it is not running (and stops it again at
# the end), starts the shopping-cart functions and ONE engine worker with a fresh cluster name
# and fresh ingress topics, waits for /ready, runs the driver, prints a table and writes
# bench/results/<timestamp>.json. Everything it started is stopped on exit.
#
# Environment: ENGINE_ARGS (extra `keyflow run` flags, e.g. "--commit-interval 20ms"),
# KAFKA_BOOTSTRAP (default 127.0.0.1:9092), CARGO_TARGET_DIR.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
QUICK=0
KEEP=0
DRIVER_EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --keep) KEEP=1 ;;
    --) shift; DRIVER_EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

T0=$(date +%s)
say() { echo "[bench $(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

export KAFKA_BOOTSTRAP="${KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
BIN="$TARGET/release"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RUN_ID="bench-$(date -u +%m%d%H%M%S)-$(printf '%04x' $((RANDOM)))"
RESULTS="$BENCH_DIR/results"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/keyflow-bench.XXXXXX")"
STARTED_BROKER=0
ENGINE_PID=""
FUNCTIONS_PID=""
RC=0

stop_pid() { # stop_pid NAME PID: SIGTERM, wait up to 30 s, then SIGKILL
  local name="$1" pid="$2"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  say "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  say "$name still alive after 30 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  [[ $RC -ne 0 ]] || RC=$rc
  trap - EXIT INT TERM
  stop_pid engine "$ENGINE_PID"
  stop_pid functions "$FUNCTIONS_PID"
  if [[ -d "$WORK" ]]; then
    mkdir -p "$RESULTS"
    [[ -f "$WORK/engine.log" ]] && cp "$WORK/engine.log" "$RESULTS/$STAMP.engine.log"
    [[ -f "$WORK/functions.log" ]] && cp "$WORK/functions.log" "$RESULTS/$STAMP.functions.log"
  fi
  if [[ $KEEP -eq 0 && -x "$BIN/keyflow-bench" ]] && [[ -n "$ENGINE_PID" ]]; then
    "$BIN/keyflow-bench" cleanup --bootstrap "$KAFKA_BOOTSTRAP" --run-id "$RUN_ID" 2>&1 | sed 's/^/  /' >&2 || true
  fi
  if [[ $STARTED_BROKER -eq 1 ]]; then
    say "stopping the broker this run started"
    "$REPO/scripts/kafka.sh" stop || true
  fi
  if [[ $KEEP -eq 1 ]]; then
    say "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  if [[ $RC -eq 0 ]]; then
    say "done"
  elif [[ -n "$ENGINE_PID" ]]; then
    say "finished with exit code $RC (logs: $RESULTS/$STAMP.*.log)"
  else
    say "finished with exit code $RC"
  fi
  exit "$RC"
}
trap cleanup EXIT
trap 'RC=130; exit 130' INT TERM

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# 1. Binaries.
say "building release binaries (cargo build --release --bins)"
(cd "$REPO" && cargo build --release --bins) || die "build failed"
for b in keyflow shopping-cart-functions keyflow-bench; do
  [[ -x "$BIN/$b" ]] || die "$BIN/$b missing after the build"
done

# 2. Broker.
if "$REPO/scripts/kafka.sh" status >/dev/null 2>&1; then
  say "broker already running: $("$REPO/scripts/kafka.sh" status)"
else
  say "starting the broker"
  "$REPO/scripts/kafka.sh" start
  STARTED_BROKER=1
fi
BROKER_STATUS="$("$REPO/scripts/kafka.sh" status)"
BROKER_PID="$(sed -n 's/^running (pid \([0-9]*\),.*/\1/p' <<<"$BROKER_STATUS")"
KAFKA_VERSION="$(sed -n 's/.*Kafka \([0-9.]*\),.*/\1/p' <<<"$BROKER_STATUS")"
[[ -n "$BROKER_PID" ]] || say "WARNING: cannot tell the broker's pid from: $BROKER_STATUS (no broker CPU figures)"

# 3. Functions.
FPORT="$("$BIN/keyflow-bench" free-port)"
say "starting shopping-cart-functions on 127.0.0.1:$FPORT"
RUST_LOG="${FUNCTIONS_LOG:-info}" NO_COLOR=1 \
  "$BIN/shopping-cart-functions" --listen "127.0.0.1:$FPORT" >"$WORK/functions.log" 2>&1 &
FUNCTIONS_PID=$!
for _ in $(seq 1 100); do
  port_open "$FPORT" && break
  kill -0 "$FUNCTIONS_PID" 2>/dev/null || die "functions exited: $(tail -n 20 "$WORK/functions.log")"
  sleep 0.1
done
port_open "$FPORT" || die "functions not listening on $FPORT after 10 s"

# 4. Module: the repository's module.yaml with this run's ingress topics and consumer group.
MODULE="$WORK/module.yaml"
sed -E \
  -e "s/^( *- topic: )(add-to-cart|clear-cart|checkout|restock-items) *$/\1\2-$RUN_ID/" \
  -e "s/^( *consumerGroupId: ).*$/\1$RUN_ID-ingress/" \
  "$REPO/module.yaml" >"$MODULE"
for t in add-to-cart clear-cart checkout restock-items; do
  grep -q -- "- topic: $t-$RUN_ID\$" "$MODULE" \
    || die "module.yaml has no ingress topic '$t' in the expected form; bench/run.sh needs updating"
done

# 5. Engine: one worker, fresh cluster, data under the temp dir.
APORT="$("$BIN/keyflow-bench" free-port)"
# shellcheck disable=SC2206
EXTRA_ENGINE=(${ENGINE_ARGS:-})
# The benchmark uses Kafka ingress only: no HTTP ingress (its default port may be taken).
if [[ "${ENGINE_ARGS:-}" != *--ingress-addr* ]] && "$BIN/keyflow" run --help 2>/dev/null | grep -q -- '--ingress-addr'; then
  EXTRA_ENGINE=(--ingress-addr off "${EXTRA_ENGINE[@]}")
fi
say "starting the engine: cluster $RUN_ID, admin 127.0.0.1:$APORT ${EXTRA_ENGINE[*]}"
FUNCTIONS_URL="http://127.0.0.1:$FPORT" NO_COLOR=1 \
  RUST_LOG="${ENGINE_LOG:-info,librdkafka=warn,rdkafka=warn}" \
  "$BIN/keyflow" run \
    --module "$MODULE" \
    --cluster "$RUN_ID" \
    --worker-id w1 \
    --data-dir "$WORK/data" \
    --bootstrap "$KAFKA_BOOTSTRAP" \
    --admin-addr "127.0.0.1:$APORT" \
    "${EXTRA_ENGINE[@]}" >"$WORK/engine.log" 2>&1 &
ENGINE_PID=$!
READY_T0=$(date +%s)
until [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$APORT/ready" || true)" == 200 ]]; do
  kill -0 "$ENGINE_PID" 2>/dev/null || die "engine exited before it was ready:
$(tail -n 30 "$WORK/engine.log")"
  (( $(date +%s) - READY_T0 < 90 )) || die "engine not ready after 90 s:
$(tail -n 30 "$WORK/engine.log")"
  sleep 0.2
done
say "engine ready after $(( $(date +%s) - READY_T0 )) s"

# 6. Driver.
LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
if awk -v l="${LOAD%% *}" 'BEGIN { exit !(l > 1.0) }'; then
  say "WARNING: load average $LOAD before the run: other work on this machine will disturb the figures"
fi
mkdir -p "$RESULTS"
DRIVER_ARGS=(run
  --bootstrap "$KAFKA_BOOTSTRAP"
  --run-id "$RUN_ID"
  --admin "127.0.0.1:$APORT"
  --pid "engine=$ENGINE_PID"
  --pid "functions=$FUNCTIONS_PID"
  --log "engine=$WORK/engine.log"
  --log "functions=$WORK/functions.log"
  --json-out "$RESULTS/$STAMP.json"
  --meta "git=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$REPO" && git diff --quiet HEAD -- engine functions protocol 2>/dev/null || echo +dirty)"
  --meta "kafka=${KAFKA_VERSION:-unknown}"
  --meta "engine_args=${ENGINE_ARGS:-}"
  --meta "broker_started_by_bench=$STARTED_BROKER"
  --meta "loadavg_before=$LOAD"
)
[[ -n "$BROKER_PID" ]] && DRIVER_ARGS+=(--pid "broker=$BROKER_PID")
[[ $QUICK -eq 1 ]] && DRIVER_ARGS+=(--quick)
DRIVER_ARGS+=("${DRIVER_EXTRA[@]}")
say "running the driver"
set +e
"$BIN/keyflow-bench" "${DRIVER_ARGS[@]}"
RC=$?
set -e
kill -0 "$ENGINE_PID" 2>/dev/null || say "WARNING: the engine died during the run (log: $RESULTS/$STAMP.engine.log)"
