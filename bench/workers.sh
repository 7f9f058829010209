# Sourced by bench/restore.sh and bench/failover.sh, after they set NAME (their log prefix):
# the release binaries (built unless BENCH_NO_BUILD=1), a temp dir WORK, the shopping-cart
# functions, and workers of a cluster started in the background; every process it started is
# killed when the script exits.
#
# Environment: KAFKA_BOOTSTRAP (default 127.0.0.1:9092; the broker must be running),
# CARGO_TARGET_DIR, BENCH_NO_BUILD=1, ENGINE_ARGS (extra `keyflow run` flags for every worker).

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
export KAFKA_BOOTSTRAP="${KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
WORK="$(mktemp -d -t "keyflow-$NAME.XXXXXX")"
PIDS=()
say() { echo "[$NAME $(date +%H:%M:%S)] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
  say "building release binaries"
  (cd "$REPO" && cargo build --release -p keyflow-engine -p shopping-cart-functions -p keyflow-bench --bins) >&2
fi
now() { date +%s.%N; }
port() { "$BIN/keyflow-bench" free-port; }

FPORT="$(port)"
"$BIN/shopping-cart-functions" --listen "127.0.0.1:$FPORT" >"$WORK/functions.log" 2>&1 &
PIDS+=($!)

# module_for RID: writes $WORK/module-RID.yaml, the repo's module.yaml with ingress topics and
# consumer group of their own (`<topic>-RID`, `RID-ingress`).
module_for() {
  sed -E -e "s/^( *- topic: )(add-to-cart|clear-cart|checkout|restock-items) *$/\1\2-$1/" \
    -e "s/^( *consumerGroupId: ).*$/\1$1-ingress/" "$REPO/module.yaml" >"$WORK/module-$1.yaml"
}

# start_worker RID WID ADMIN_PORT [FLAGS...]: starts `keyflow run` of cluster RID in the
# background (data under $WORK/data-RID, log $WORK/RID-WID.log) with FLAGS and ENGINE_ARGS;
# sets WPID.
start_worker() {
  local rid="$1" wid="$2" admin="$3"
  shift 3
  # shellcheck disable=SC2086
  FUNCTIONS_URL="http://127.0.0.1:$FPORT" NO_COLOR=1 RUST_LOG="info,librdkafka=warn,rdkafka=warn" \
    "$BIN/keyflow" run --module "$WORK/module-$rid.yaml" --cluster "$rid" --worker-id "$wid" \
    --data-dir "$WORK/data-$rid" --bootstrap "$KAFKA_BOOTSTRAP" --admin-addr "127.0.0.1:$admin" \
    --ingress-addr off "$@" ${ENGINE_ARGS:-} \
    >>"$WORK/$rid-$wid.log" 2>&1 &
  WPID=$!
  PIDS+=("$WPID")
}

# wait_ready ADMIN_PORT PID LOG: waits for the worker's /ready (up to 900 s).
wait_ready() {
  local t0=$SECONDS
  until [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/ready" || true)" == 200 ]]; do
    kill -0 "$2" 2>/dev/null || die "worker exited: $(tail -n 20 "$3")"
    (( SECONDS - t0 < 900 )) || die "worker not ready after 900 s: $(tail -n 20 "$3")"
    sleep 0.1
  done
}
