#!/usr/bin/env bash
# The StateFun peer of the keyflow benchmark (see docs/benchmarks.md): the real Apache Flink
# StateFun 3.3.0 runtime (StatefulFunctionsJob on a local Flink 1.16.2 MiniCluster, one JVM)
# running the run's module.yaml against the same broker and the same shopping-cart-functions,
# driven by the same `keyflow-bench run` phases and checks as keyflow.
#
#   bench/statefun/run.sh --bin DIR --run-id RUN --module PATH --functions-url URL
#                         --interval 10s --json-out PATH [--quick] [-- <driver flags>]
#
# DIR holds the release `keyflow-bench`; PATH is the run's module (bench/run.sh writes it:
# the repository's module.yaml with the run's ingress topics and group `<RUN>-ingress`); its
# `${FUNCTIONS_URL:-..}` and `${KAFKA_BOOTSTRAP:-..}` are filled in here. --interval is Flink's
# checkpoint interval: the exactly-once Kafka egress commits (receipts become visible) and the
# ingress commits its offsets only when a checkpoint completes. Builds with Maven on first use
# (~210 MB of jars in target/lib, cached). Environment: KAFKA_BOOTSTRAP, STATEFUN_PARALLELISM
# (default 2), STATEFUN_HEAP (default 2g), BROKER_PID, FUNCTIONS_PID (their CPU is measured).
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="" RUN="" MODULE="" FURL="" INTERVAL="10s" OUT="" QUICK=() EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) shift; BIN="$1" ;;
    --run-id) shift; RUN="$1" ;;
    --module) shift; MODULE="$1" ;;
    --functions-url) shift; FURL="$1" ;;
    --interval) shift; INTERVAL="$1" ;;
    --json-out) shift; OUT="$1" ;;
    --quick) QUICK=(--quick) ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "statefun/run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$BIN" && -n "$RUN" && -n "$MODULE" && -n "$FURL" && -n "$OUT" ]] \
  || { echo "statefun/run.sh: --bin, --run-id, --module, --functions-url and --json-out are required" >&2; exit 2; }
export KAFKA_BOOTSTRAP="${KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
say() { echo "[statefun $(date +%H:%M:%S)] $*" >&2; }

STAMP_FILE="$DIR/target/.built"
if [[ ! -f "$STAMP_FILE" ]] || [[ -n "$(find "$DIR/pom.xml" "$DIR/src" -newer "$STAMP_FILE" -print -quit)" ]]; then
  say "building with Maven (first use downloads statefun-flink-distribution 3.3.0 and Flink 1.16.2, ~210 MB)"
  T=$(date +%s)
  (cd "$DIR" && mvn -q -B package -DskipTests) >&2 || { say "mvn package failed"; exit 1; }
  touch "$STAMP_FILE"
  say "built in $(( $(date +%s) - T )) s"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/keyflow-statefun.XXXXXX")"
JVM_PID=""
cleanup() {
  local rc=$?
  if [[ -n "$JVM_PID" ]] && kill -0 "$JVM_PID" 2>/dev/null; then
    kill -TERM "$JVM_PID" 2>/dev/null || true
    timeout 30 tail --pid="$JVM_PID" -f /dev/null 2>/dev/null || kill -KILL "$JVM_PID" 2>/dev/null || true
  fi
  cp "$WORK/statefun.log" "${OUT%.json}.log" 2>/dev/null || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

# The module with this run's addresses: StateFun 3.3 reads ${...} literally.
sed -E -e "s#\\\$\\{FUNCTIONS_URL:-[^}]*\\}#$FURL#g" -e "s#\\\$\\{KAFKA_BOOTSTRAP:-[^}]*\\}#$KAFKA_BOOTSTRAP#g" \
  "$MODULE" >"$WORK/module.yaml"
if grep -v '^ *#' "$WORK/module.yaml" | grep -q '\${'; then
  say "the module still has a \${...} placeholder: $(grep -v '^ *#' "$WORK/module.yaml" | grep -m1 '\${')"; exit 1
fi
"$BIN/keyflow-bench" topics --bootstrap "$KAFKA_BOOTSTRAP" --run-id "$RUN" --partitions 8

# Flink 1.16 on Java 17 needs these opens (Flink's own list for Java 17, from 1.18 on).
JAVA_OPENS=()
for p in java.lang java.net java.io java.nio sun.nio.ch java.lang.reflect java.text java.time \
  java.util java.util.concurrent java.util.concurrent.atomic java.util.concurrent.locks; do
  JAVA_OPENS+=("--add-opens=java.base/$p=ALL-UNNAMED")
done
say "starting StateFun 3.3.0 (checkpoint interval $INTERVAL, parallelism ${STATEFUN_PARALLELISM:-2})"
STATEFUN_PARALLELISM="${STATEFUN_PARALLELISM:-2}" \
  java -Xmx"${STATEFUN_HEAP:-2g}" "${JAVA_OPENS[@]}" \
  -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
  -Dorg.slf4j.simpleLogger.log.org.apache.flink.runtime.checkpoint.CheckpointCoordinator=info \
  -cp "$DIR/target/classes:$DIR/target/lib/*" org.apache.flink.statefun.flink.core.StateFunLauncher \
  "$WORK/module.yaml" "$INTERVAL" "$WORK/flink" >"$WORK/statefun.log" 2>&1 &
JVM_PID=$!
touch "$WORK/statefun.log"
T=$(date +%s)
until grep -q "Completed checkpoint" "$WORK/statefun.log"; do
  kill -0 "$JVM_PID" 2>/dev/null || { say "StateFun exited:"; tail -40 "$WORK/statefun.log" >&2; exit 1; }
  (( $(date +%s) - T < 180 )) || { say "no completed checkpoint after 180 s:"; tail -40 "$WORK/statefun.log" >&2; exit 1; }
  sleep 0.5
done
say "job running (first checkpoint completed) after $(( $(date +%s) - T )) s"

PIDS=(--pid "statefun=$JVM_PID")
[[ -n "${BROKER_PID:-}" ]] && PIDS+=(--pid "broker=$BROKER_PID")
[[ -n "${FUNCTIONS_PID:-}" ]] && PIDS+=(--pid "functions=$FUNCTIONS_PID")
"$BIN/keyflow-bench" run --system "statefun-$INTERVAL" --bootstrap "$KAFKA_BOOTSTRAP" --run-id "$RUN" \
  --ingress-group "$RUN-ingress" --settle-secs 2 \
  "${PIDS[@]}" --log "statefun=$WORK/statefun.log" --json-out "$OUT" \
  --meta "settings=StateFun 3.3.0 on Flink 1.16.2 (local MiniCluster, parallelism ${STATEFUN_PARALLELISM:-2}), checkpoint interval $INTERVAL, exactly-once Kafka egress, RocksDB incremental checkpoints on local disk, the same module.yaml and shopping-cart-functions" \
  "${QUICK[@]}" "${EXTRA[@]}"
