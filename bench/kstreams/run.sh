#!/usr/bin/env bash
# The Kafka Streams peer of the keyflow benchmark (see docs/benchmarks.md): the shopping cart
# as a Kafka Streams 4.4 application (exactly_once_v2), driven by the same `keyflow-bench run`
# phases and checks as keyflow, on the same broker.
#
#   bench/kstreams/run.sh --bin DIR --run-id RUN --json-out PATH [--quick] [-- <driver flags>]
#
# DIR holds the release `keyflow-bench`. Builds the application with Maven on first use
# (target/, cached while the sources do not change), starts it with application.id
# `kstreams-<RUN>` (which creates the run's ingress topics and its two hop topics), waits until
# it is RUNNING, runs the driver with the ingress group `kstreams-<RUN>`, stops it, deletes the
# run's topics. Environment: KAFKA_BOOTSTRAP, KSTREAMS_THREADS (default 1), KSTREAMS_COMMIT_MS
# (default 100, exactly_once_v2's default), KSTREAMS_HEAP (default 1g), BROKER_PID (its CPU
# is measured).
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="" RUN="" OUT="" QUICK=() EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) shift; BIN="$1" ;;
    --run-id) shift; RUN="$1" ;;
    --json-out) shift; OUT="$1" ;;
    --quick) QUICK=(--quick) ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "kstreams/run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$BIN" && -n "$RUN" && -n "$OUT" ]] || { echo "kstreams/run.sh: --bin, --run-id and --json-out are required" >&2; exit 2; }
export KAFKA_BOOTSTRAP="${KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
say() { echo "[kstreams $(date +%H:%M:%S)] $*" >&2; }

# Build on first use, and again when a source is newer than the build.
STAMP_FILE="$DIR/target/.built"
if [[ ! -f "$STAMP_FILE" ]] || [[ -n "$(find "$DIR/pom.xml" "$DIR/src" -newer "$STAMP_FILE" -print -quit)" ]]; then
  say "building with Maven (first use downloads kafka-streams 4.4.0 and its dependencies, ~25 MB)"
  T=$(date +%s)
  (cd "$DIR" && mvn -q -B package -DskipTests) >&2 || { say "mvn package failed"; exit 1; }
  touch "$STAMP_FILE"
  say "built in $(( $(date +%s) - T )) s"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/keyflow-kstreams.XXXXXX")"
APP_PID=""
cleanup() {
  local rc=$?
  if [[ -n "$APP_PID" ]] && kill -0 "$APP_PID" 2>/dev/null; then
    kill -TERM "$APP_PID" 2>/dev/null || true
    timeout 30 tail --pid="$APP_PID" -f /dev/null 2>/dev/null || kill -KILL "$APP_PID" 2>/dev/null || true
  fi
  cp "$WORK/app.log" "${OUT%.json}.log" 2>/dev/null || true
  "$BIN/keyflow-bench" cleanup --bootstrap "$KAFKA_BOOTSTRAP" --run-id "$RUN" --prefix "kstreams-$RUN-" 2>&1 | sed 's/^/  /' >&2 || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

THREADS="${KSTREAMS_THREADS:-1}"
COMMIT_MS="${KSTREAMS_COMMIT_MS:-100}"
say "starting the application (kstreams-$RUN, $THREADS stream thread(s), commit.interval.ms $COMMIT_MS)"
KSTREAMS_THREADS="$THREADS" KSTREAMS_COMMIT_MS="$COMMIT_MS" KSTREAMS_STATE_DIR="$WORK/state" \
  java -Xmx"${KSTREAMS_HEAP:-1g}" -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
  -cp "$DIR/target/classes:$DIR/target/lib/*" dev.keyflow.bench.ShoppingCartStreams \
  "$KAFKA_BOOTSTRAP" "$RUN" >"$WORK/app.log" 2>&1 &
APP_PID=$!
touch "$WORK/app.log"
T=$(date +%s)
until grep -q -- "-> RUNNING" "$WORK/app.log"; do
  kill -0 "$APP_PID" 2>/dev/null || { say "the application exited:"; tail -30 "$WORK/app.log" >&2; exit 1; }
  (( $(date +%s) - T < 120 )) || { say "not RUNNING after 120 s:"; tail -30 "$WORK/app.log" >&2; exit 1; }
  sleep 0.2
done
say "RUNNING after $(( $(date +%s) - T )) s"

PIDS=(--pid "kstreams=$APP_PID")
[[ -n "${BROKER_PID:-}" ]] && PIDS+=(--pid "broker=$BROKER_PID")
"$BIN/keyflow-bench" run --system kstreams --bootstrap "$KAFKA_BOOTSTRAP" --run-id "$RUN" \
  --ingress-group "kstreams-$RUN" \
  --settle-topics "kstreams-$RUN-stock-requests,kstreams-$RUN-stock-answers" \
  "${PIDS[@]}" --log "kstreams=$WORK/app.log" --json-out "$OUT" \
  --meta "settings=Kafka Streams 4.4.0, exactly_once_v2, $THREADS stream thread(s), commit.interval.ms $COMMIT_MS, RocksDB stores with changelogs, 8 partitions" \
  "${QUICK[@]}" "${EXTRA[@]}"
