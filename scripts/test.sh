#!/usr/bin/env bash
# The whole test suite (also the CI entry point via .ci/run):
#   1. machine setup (scripts/setup.sh, idempotent)
#   2. lint, fail fast: cargo fmt --check, cargo clippy -D warnings (KEYFLOW_SKIP_LINT=1 skips)
#   3. start the Kafka broker unless one is already running (and stop it again at the end)
#   4. run every suite in SUITES (cargo test --workspace, then whatever later steps add)
# Exit status: 0 if all suites pass, else the status of the first failing suite.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
cd "$REPO_ROOT"

export KAFKA_PORT="${KAFKA_PORT:-9092}"
export KEYFLOW_BOOTSTRAP="${KEYFLOW_BOOTSTRAP:-127.0.0.1:$KAFKA_PORT}"

say() { echo "test.sh: $*" >&2; }
banner() { echo >&2; echo "==== test.sh: $* ====" >&2; }

# ---- Test suites ------------------------------------------------------------------------------
# To add a suite: write a function here (runs from the repo root with the broker up and
# KEYFLOW_BOOTSTRAP exported; non-zero exit = failure) and append its name to SUITES.
suite_cargo_test() {
  cargo test --workspace --no-fail-fast
}

# Functions written with the official StateFun SDKs (Python, JavaScript, Java, Go; see
# conformance/README.md): installs their services (a virtualenv, npm ci, a shaded jar, a Go
# binary; skipped when unchanged). Runs BEFORE suite_cargo_test, whose
# engine/tests/conformance_sdks.rs plays them against the engine. A missing toolchain fails
# here (and, with CI set, in that test too) instead of skipping silently.
suite_conformance_setup() {
  conformance/setup.sh
}

# The playthrough scenarios against a real stack: the function service and two engine workers
# (playthrough/stack.sh) on ports and a data dir of their own, so that a running demo
# (scripts/demo.sh) is not disturbed. A subshell, so that its EXIT trap (stop the stack) is its own.
suite_playthrough() (
  export WORKER_PREFIX=test-worker ADMIN_BASE_PORT=18090 FUNCTIONS_PORT=11108
  export KEYFLOW_DATA_DIR="$REPO_ROOT/.data/playthrough-test"
  export KEYFLOW_BIN="$REPO_ROOT/target/debug/keyflow" FUNCTIONS_BIN="$REPO_ROOT/target/debug/shopping-cart-functions"
  local demo=0
  KEYFLOW_DATA_DIR="$REPO_ROOT/.data" playthrough/stack.sh status >/dev/null 2>&1 || demo=$?
  if ((demo != 3)); then
    echo "suite_playthrough: the demo stack (.data/run) is running on this broker; its workers would share the cluster with these: stop it first (playthrough/stack.sh stop)" >&2
    exit 1
  fi
  cargo build -p keyflow-engine -p shopping-cart-functions --bins || exit
  rm -rf "$KEYFLOW_DATA_DIR"
  trap 'playthrough/stack.sh stop' EXIT
  playthrough/stack.sh start || exit
  playthrough/run-all.sh
)

# The applications of apps/ (docs/apps/), one after the other: each one's stack on ports and a
# data dir of their own, its playthrough scenarios (playthrough/app.sh APP run), then stop.
suite_apps() (
  export WORKER_PREFIX=test-app-worker ADMIN_BASE_PORT=18190 INGRESS_BASE_PORT=18280
  local app rc=0 failed=()
  cargo build -p keyflow-engine --bins || exit
  for app in $(playthrough/app.sh list); do
    echo "---- $app" >&2
    # Convention: the package that builds the function service has the binary's name.
    cargo build --bins -p "$(sed -n 's/^FUNCTIONS_BIN_NAME=//p' "apps/$app/app.env")" || exit
    rm -rf "$REPO_ROOT/.data/apps-test/$app"
    KEYFLOW_DATA_DIR="$REPO_ROOT/.data/apps-test/$app" KEYFLOW_CLUSTER="test-$app" \
      FUNCTIONS_PORT=11200 KEYFLOW_BIN="$REPO_ROOT/target/debug/keyflow" \
      playthrough/app.sh "$app" run || { rc=$?; failed+=("$app"); }
  done
  ((rc == 0)) || echo "suite_apps: failed: ${failed[*]}" >&2
  exit "$rc"
)

# The benchmark's quick mode (docs/benchmarks.md): release build, 10,000 AddToCart records,
# 10 s of checkout latency, the limit, then every peer with the same driver phases: StateFun
# 3.3 with a 1 s checkpoint interval only (the 10 s one adds ~2.5 min and tests nothing
# more), Kafka Streams 4.4, Restate. Maven and npm install the peers on first use (StateFun
# ~240 MB and Kafka Streams ~130 MB in ~/.m2: about 3.5 min on a fresh machine); once
# installed, StateFun and Kafka Streams add about 3.5 min to the run. Figures are printed, never asserted (timing goals belong in
# benchmarks); it fails only when a correctness check does (quantities, duplicate receipts,
# dead letters, errors in the logs) or something does not start.
suite_bench_quick() {
  KAFKA_BOOTSTRAP="$KEYFLOW_BOOTSTRAP" STATEFUN_INTERVALS=1s \
    bench/run.sh --quick --peers statefun,kstreams,restate
}

# The engine's source layout (scripts/check-layout.sh): no cycle among engine/src's top-level
# modules, the partition module clear of the HTTP ingress, no source file over 600 lines; the
# script's self-test first. Needs no broker.
suite_layout() {
  scripts/check-layout.sh --self-test && scripts/check-layout.sh
}

SUITES=(
  suite_layout
  suite_conformance_setup
  suite_cargo_test
  suite_playthrough
  suite_apps
  suite_bench_quick
)
# -----------------------------------------------------------------------------------------------

banner "setup"
scripts/setup.sh

if [[ "${KEYFLOW_SKIP_LINT:-0}" == 1 ]]; then
  say "KEYFLOW_SKIP_LINT=1: skipping cargo fmt / clippy (local iterations only; CI never sets it)"
else
  banner "cargo fmt --all --check"
  cargo fmt --all --check
  banner "cargo clippy --workspace --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
fi

banner "Kafka broker"
STARTED_BROKER=0
stop_broker() {
  if ((STARTED_BROKER)); then
    say "stopping the broker this script started"
    scripts/kafka.sh stop || true
  fi
}
trap stop_broker EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if scripts/kafka.sh status >/dev/null 2>&1; then
  say "broker already running ($(scripts/kafka.sh status)); using it and leaving it running"
else
  STARTED_BROKER=1
  scripts/kafka.sh start
fi

status=0
summary=()
for suite in "${SUITES[@]}"; do
  banner "$suite"
  t0=$(date +%s)
  rc=0
  "$suite" || rc=$?
  summary+=("$(printf '%-28s %s (%ss)' "$suite" "$([[ $rc -eq 0 ]] && echo ok || echo "FAILED rc=$rc")" $(( $(date +%s) - t0 )))")
  if ((rc != 0 && status == 0)); then status=$rc; fi
done

banner "summary"
printf '  %s\n' "${summary[@]}" >&2
if ((status == 0)); then say "all suites passed"; else say "FAILED (exit $status)"; fi
exit "$status"
