#!/usr/bin/env bash
# End-to-end benchmark of the shopping-cart application on this machine (see bench/README.md).
#
#   bench/run.sh [--quick] [--keep] [--no-limit] [--workers 1,2,4] [--peers statefun,kstreams,restate]
#                [-- <extra keyflow-bench run flags>]
#
#   --quick   10,000 AddToCart records and 10 s of latency measurement (default 100,000 / 20 s)
#   --keep    keep the run's temp dir (module, engine data, logs) and its Kafka topics
#   --no-limit  skip "the limit" (transactional copy loop and function HTTP round trip)
#   --workers 1,2,4  run the AddToCart throughput phase once per worker count (default 1),
#             each on a fresh cluster; the first count also gets the latency phase
#   --peers LIST  then these peers (always in the order statefun, kstreams, restate), each
#             with the same driver phases and checks (statefun, kstreams) or its own driver
#             (restate), and one table keyflow/peer with a chart (<timestamp>.svg):
#             statefun: StateFun 3.3.0 on a local Flink MiniCluster (bench/statefun/, Maven,
#               ~210 MB on first use), once per checkpoint interval in STATEFUN_INTERVALS
#               (default "10s,1s");
#             kstreams: Kafka Streams 4.4 exactly_once_v2 (bench/kstreams/, Maven, ~25 MB);
#             restate: Restate 1.7 (bench/restate/, npm; RESTATE_RECORDS AddToCart calls,
#               default 10,000)
#   --restate  the same as --peers restate
#
# Builds the release binaries, starts the broker when it is not running (and stops it again at
# the end), starts the shopping-cart functions, measures "the limit" (copy loop, HTTP round
# trip), starts one engine worker (per --workers count: N workers) with a fresh cluster name
# and fresh ingress topics, waits for /ready, runs the driver, prints a table and writes
# bench/results/<timestamp>.json. Everything it started is stopped on exit.
#
# Environment: ENGINE_ARGS (extra `keyflow run` flags, e.g. "--commit-interval 20ms"; each
# run is a new cluster, direct ingress by default with ingress topics the engine creates with
# the cluster's partition count: "--direct-ingress false" measures routed ingress),
# KAFKA_BOOTSTRAP (default 127.0.0.1:9092), CARGO_TARGET_DIR, BENCH_NO_BUILD=1 (skip the build).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
QUICK=0
KEEP=0
LIMIT=1
LIMIT_RAN=0
PEERS=()
WORKER_COUNTS=(1)
DRIVER_EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --keep) KEEP=1 ;;
    --no-limit) LIMIT=0 ;;
    --restate) PEERS+=(restate) ;;
    --peers) shift; IFS=, read -r -a P <<<"${1:-}"; PEERS+=("${P[@]}") ;;
    --peers=*) IFS=, read -r -a P <<<"${1#--peers=}"; PEERS+=("${P[@]}") ;;
    --workers) shift; IFS=, read -r -a WORKER_COUNTS <<<"${1:-}" ;;
    --workers=*) IFS=, read -r -a WORKER_COUNTS <<<"${1#--workers=}" ;;
    --) shift; DRIVER_EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

for n in "${WORKER_COUNTS[@]}"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --workers takes positive counts, e.g. 1,2,4 (got '$n')" >&2; exit 2; }
done
[[ ${#WORKER_COUNTS[@]} -gt 0 ]] || { echo "run.sh: --workers needs at least one count" >&2; exit 2; }
has_peer() { local p; for p in "${PEERS[@]}"; do [[ "$p" == "$1" ]] && return 0; done; return 1; }
for p in "${PEERS[@]}"; do
  case "$p" in
    statefun|kstreams|restate) ;;
    *) echo "run.sh: unknown peer '$p' (known: statefun, kstreams, restate)" >&2; exit 2 ;;
  esac
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
ENGINE_PIDS=()
ALL_ENGINE_PIDS=()
RUN_IDS=()
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
  local p
  for p in "${ALL_ENGINE_PIDS[@]}"; do stop_pid engine "$p"; done
  stop_pid functions "$FUNCTIONS_PID"
  if [[ -d "$WORK" ]]; then
    mkdir -p "$RESULTS"
    local f
    for f in "$WORK"/engine-*.log; do
      [[ -f "$f" ]] || continue
      # One worker of the main run: <stamp>.engine.log as before; others by run and worker.
      if [[ "$f" == "$WORK/engine-$RUN_ID-w1.log" && ! -f "$WORK/engine-$RUN_ID-w2.log" ]]; then
        cp "$f" "$RESULTS/$STAMP.engine.log"
      else
        cp "$f" "$RESULTS/$STAMP.$(basename "$f")"
      fi
    done
    [[ -f "$WORK/functions.log" ]] && cp "$WORK/functions.log" "$RESULTS/$STAMP.functions.log"
  fi
  if [[ $KEEP -eq 0 && -x "$BIN/keyflow-bench" ]] && [[ ${#RUN_IDS[@]} -gt 0 || $LIMIT_RAN -eq 1 ]]; then
    local rid rids=("$RUN_ID") # RUN_ID's topics include the limit's
    [[ ${#RUN_IDS[@]} -gt 0 ]] && rids=("${RUN_IDS[@]}") # RUN_IDS[0] is RUN_ID
    for rid in "${rids[@]}"; do
      "$BIN/keyflow-bench" cleanup --bootstrap "$KAFKA_BOOTSTRAP" --run-id "$rid" 2>&1 | sed 's/^/  /' >&2 || true
    done
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
  elif [[ ${#ALL_ENGINE_PIDS[@]} -gt 0 ]]; then
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
if [[ "${BENCH_NO_BUILD:-0}" == 1 ]]; then
  say "BENCH_NO_BUILD=1: using the release binaries as they are (A/B runs of swapped binaries)"
else
  say "building release binaries (cargo build --release -p keyflow-engine -p shopping-cart-functions -p keyflow-bench --bins)"
  (cd "$REPO" && cargo build --release -p keyflow-engine -p shopping-cart-functions -p keyflow-bench --bins) \
    || die "build failed"
fi
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


# 4. Module for one run id: the repository's module.yaml with that run's ingress topics and
# consumer group.
make_module() { # make_module RUN_ID -> prints the module path
  local rid="$1" module="$WORK/module-$1.yaml"
  sed -E \
    -e "s/^( *- topic: )(add-to-cart|clear-cart|checkout|restock-items) *$/\1\2-$rid/" \
    -e "s/^( *consumerGroupId: ).*$/\1$rid-ingress/" \
    "$REPO/module.yaml" >"$module"
  for t in add-to-cart clear-cart checkout restock-items; do
    grep -q -- "- topic: $t-$rid\$" "$module" \
      || die "module.yaml has no ingress topic '$t' in the expected form; bench/run.sh needs updating"
  done
  echo "$module"
}
make_module "$RUN_ID" >/dev/null

# 4b. The limit, before the engine starts (nothing else runs meanwhile): a transactional
# consume-produce copy loop over as many records as the AddToCart phase makes hops (3 per
# record), and the function HTTP round trip alone. The driver reports the engine as ratios.
LIMIT_ARGS=()
if [[ $LIMIT -eq 1 ]]; then
  ADDS=$(( QUICK == 1 ? 10000 : 100000 ))
  for ((i = 0; i < ${#DRIVER_EXTRA[@]}; i++)); do
    [[ "${DRIVER_EXTRA[$i]}" == --adds ]] && ADDS="${DRIVER_EXTRA[$((i + 1))]:-$ADDS}"
    [[ "${DRIVER_EXTRA[$i]}" == --adds=* ]] && ADDS="${DRIVER_EXTRA[$i]#--adds=}"
  done
  LIMIT_PIDS=()
  [[ -n "$BROKER_PID" ]] && LIMIT_PIDS+=(--pid "broker=$BROKER_PID")
  say "the limit: transactional copy loop over $(( 3 * ADDS )) records"
  LIMIT_RAN=1
  "$BIN/keyflow-bench" limit-copy --bootstrap "$KAFKA_BOOTSTRAP" --run-id "$RUN_ID" \
    --records $(( 3 * ADDS )) "${LIMIT_PIDS[@]}" --json-out "$WORK/limit-copy.json" \
    || die "limit-copy failed"
  say "the limit: function HTTP round trip ($(( QUICK == 1 ? 3 : 5 )) s, 8 clients)"
  "$BIN/keyflow-bench" limit-http --url "http://127.0.0.1:$FPORT" --clients 8 \
    --secs $(( QUICK == 1 ? 3 : 5 )) --pid "functions=$FUNCTIONS_PID" --json-out "$WORK/limit-http.json" \
    || die "limit-http failed"
  LIMIT_ARGS=(--limit-copy "$WORK/limit-copy.json" --limit-http "$WORK/limit-http.json")
fi

# 5. Engine: N workers of a fresh cluster, data under the temp dir. The workers get distinct
# --worker-id, --admin-addr and --data-dir, and no HTTP ingress.
# shellcheck disable=SC2206
EXTRA_ENGINE=(${ENGINE_ARGS:-})
# The benchmark uses Kafka ingress only: no HTTP ingress (its default port may be taken).
if [[ "${ENGINE_ARGS:-}" != *--ingress-addr* ]] && "$BIN/keyflow" run --help 2>/dev/null | grep -q -- '--ingress-addr'; then
  EXTRA_ENGINE=(--ingress-addr off "${EXTRA_ENGINE[@]}")
fi
start_engines() { # start_engines RUN_ID N: sets ENGINE_PIDS, ADMINS, ENGINE_LOGS
  local rid="$1" n="$2" module k port
  module="$(make_module "$rid")"
  ENGINE_PIDS=()
  ADMINS=()
  ENGINE_LOGS=()
  for ((k = 1; k <= n; k++)); do
    port="$("$BIN/keyflow-bench" free-port)"
    say "starting engine worker w$k of $n: cluster $rid, admin 127.0.0.1:$port ${EXTRA_ENGINE[*]}"
    FUNCTIONS_URL="http://127.0.0.1:$FPORT" NO_COLOR=1 \
      RUST_LOG="${ENGINE_LOG:-info,librdkafka=warn,rdkafka=warn}" \
      "$BIN/keyflow" run \
        --module "$module" \
        --cluster "$rid" \
        --worker-id "w$k" \
        --data-dir "$WORK/data-$rid" \
        --bootstrap "$KAFKA_BOOTSTRAP" \
        --admin-addr "127.0.0.1:$port" \
        "${EXTRA_ENGINE[@]}" >"$WORK/engine-$rid-w$k.log" 2>&1 &
    ENGINE_PIDS+=($!)
    ALL_ENGINE_PIDS+=($!)
    ADMINS+=("127.0.0.1:$port")
    ENGINE_LOGS+=("$WORK/engine-$rid-w$k.log")
  done
  local t0 i
  t0=$(date +%s)
  for i in "${!ADMINS[@]}"; do
    until [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://${ADMINS[$i]}/ready" || true)" == 200 ]]; do
      kill -0 "${ENGINE_PIDS[$i]}" 2>/dev/null || die "engine w$((i + 1)) exited before it was ready:
$(tail -n 30 "${ENGINE_LOGS[$i]}")"
      (( $(date +%s) - t0 < 90 )) || die "engine w$((i + 1)) not ready after 90 s:
$(tail -n 30 "${ENGINE_LOGS[$i]}")"
      sleep 0.2
    done
  done
  say "$n engine worker(s) ready after $(( $(date +%s) - t0 )) s"
}
stop_engines() {
  local i
  for i in "${!ENGINE_PIDS[@]}"; do stop_pid "engine w$((i + 1))" "${ENGINE_PIDS[$i]}"; done
  ENGINE_PIDS=()
}

# 6. Driver: once per worker count. The first count gets the whole benchmark (throughput,
# latency, the limit's ratios) in $STAMP.json; every further count a fresh cluster and run
# id, the throughput phase (and a 2 s latency phase, not reported) in $STAMP.w<N>.json.
LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
if awk -v l="${LOAD%% *}" 'BEGIN { exit !(l > 1.0) }'; then
  say "WARNING: load average $LOAD before the run: other work on this machine will disturb the figures"
fi
mkdir -p "$RESULTS"
GIT_REV="$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$REPO" && git diff --quiet HEAD -- engine functions protocol 2>/dev/null || echo +dirty)"
SUMMARY_ARGS=()
FIRST=1
for N in "${WORKER_COUNTS[@]}"; do
  if [[ $FIRST -eq 1 ]]; then RID="$RUN_ID"; OUT="$RESULTS/$STAMP.json"; else RID="$RUN_ID-w$N"; OUT="$RESULTS/$STAMP.w$N.json"; fi
  RUN_IDS+=("$RID")
  start_engines "$RID" "$N"
  ADMIN_LIST="$(IFS=,; echo "${ADMINS[*]}")"
  DRIVER_ARGS=(run
    --bootstrap "$KAFKA_BOOTSTRAP"
    --run-id "$RID"
    --admin "$ADMIN_LIST"
    --pid "functions=$FUNCTIONS_PID"
    --log "functions=$WORK/functions.log"
    --json-out "$OUT"
    --meta "git=$GIT_REV"
    --meta "kafka=${KAFKA_VERSION:-unknown}"
    --meta "engine_args=${ENGINE_ARGS:-}"
    --meta "workers=$N"
    --meta "broker_started_by_bench=$STARTED_BROKER"
    --meta "loadavg_before=$LOAD"
  )
  for i in "${!ENGINE_PIDS[@]}"; do
    DRIVER_ARGS+=(--pid "engine=${ENGINE_PIDS[$i]}")
    if [[ $N -eq 1 ]]; then DRIVER_ARGS+=(--log "engine=${ENGINE_LOGS[$i]}"); else DRIVER_ARGS+=(--log "engine-w$((i + 1))=${ENGINE_LOGS[$i]}"); fi
  done
  [[ -n "$BROKER_PID" ]] && DRIVER_ARGS+=(--pid "broker=$BROKER_PID")
  [[ $QUICK -eq 1 ]] && DRIVER_ARGS+=(--quick)
  if [[ $FIRST -eq 1 ]]; then DRIVER_ARGS+=("${LIMIT_ARGS[@]}"); else DRIVER_ARGS+=(--latency-secs 2 --latency-warmup-secs 0); fi
  DRIVER_ARGS+=("${DRIVER_EXTRA[@]}")
  say "running the driver: $N worker(s), run $RID"
  set +e
  "$BIN/keyflow-bench" "${DRIVER_ARGS[@]}"
  DRC=$?
  set -e
  for i in "${!ENGINE_PIDS[@]}"; do
    kill -0 "${ENGINE_PIDS[$i]}" 2>/dev/null || say "WARNING: engine w$((i + 1)) died during the run (log: $RESULTS/$STAMP.engine-$RID-w$((i + 1)).log)"
  done
  stop_engines
  SUMMARY_ARGS+=(--run "$N=$OUT")
  FIRST=0
  if [[ $DRC -ne 0 ]]; then RC=$DRC; say "driver failed with $N worker(s): not running the other counts"; break; fi
done

if [[ ${#WORKER_COUNTS[@]} -gt 1 ]]; then
  "$BIN/keyflow-bench" workers-summary "${SUMMARY_ARGS[@]}" --into "$RESULTS/$STAMP.json" || RC=1
fi

# 7. The peers, after the engine is stopped, each on fresh topics (run id <run>-<peer>), with
# the same driver phases; then one table keyflow/peer and a chart ($STAMP.svg).
PEER_ARGS=()
peer_done() { # peer_done NAME JSON RC
  if [[ $3 -ne 0 ]]; then RC=1; say "the $1 peer failed (exit code $3)"; fi
  [[ -f "$2" ]] && PEER_ARGS+=(--peer "$1=$2")
  return 0
}
PEER_QUICK=()
[[ $QUICK -eq 1 ]] && PEER_QUICK=(--quick)
if has_peer statefun && [[ $RC -eq 0 ]]; then
  IFS=, read -r -a SF_INTERVALS <<<"${STATEFUN_INTERVALS:-10s,1s}"
  for iv in "${SF_INTERVALS[@]}"; do
    RID="$RUN_ID-sf$iv"
    RUN_IDS+=("$RID")
    PJSON="$RESULTS/$STAMP.statefun-$iv.json"
    say "the StateFun peer, checkpoint interval $iv: run $RID"
    set +e
    BROKER_PID="$BROKER_PID" FUNCTIONS_PID="$FUNCTIONS_PID" "$BENCH_DIR/statefun/run.sh" \
      --bin "$BIN" --run-id "$RID" --module "$(make_module "$RID")" \
      --functions-url "http://127.0.0.1:$FPORT" --interval "$iv" --json-out "$PJSON" \
      "${PEER_QUICK[@]}" -- "${DRIVER_EXTRA[@]}"
    peer_done "statefun-$iv" "$PJSON" $?
    set -e
  done
fi
# The functions are not needed any more: stop them so that they take no CPU.
stop_pid functions "$FUNCTIONS_PID"
if has_peer kstreams && [[ $RC -eq 0 ]]; then
  RID="$RUN_ID-ks"
  RUN_IDS+=("$RID")
  PJSON="$RESULTS/$STAMP.kstreams.json"
  say "the Kafka Streams peer: run $RID"
  set +e
  BROKER_PID="$BROKER_PID" "$BENCH_DIR/kstreams/run.sh" --bin "$BIN" --run-id "$RID" \
    --json-out "$PJSON" "${PEER_QUICK[@]}" -- "${DRIVER_EXTRA[@]}"
  peer_done kstreams "$PJSON" $?
  set -e
fi
if has_peer restate && [[ $RC -eq 0 ]]; then
  RJSON="$RESULTS/$STAMP.restate.json"
  set +e
  "$BENCH_DIR/restate/run.sh" --records "${RESTATE_RECORDS:-10000}" --json-out "$RJSON" \
    --latency-secs "$(( QUICK == 1 ? 10 : 20 ))" --latency-warmup-secs "$(( QUICK == 1 ? 3 : 30 ))"
  peer_done restate "$RJSON" $?
  set -e
fi
if [[ ${#PEER_ARGS[@]} -gt 0 ]]; then
  "$BIN/keyflow-bench" peers --main "$RESULTS/$STAMP.json" "${PEER_ARGS[@]}" --svg "$RESULTS/$STAMP.svg" || RC=1
fi
