#!/usr/bin/env bash
# The Restate peer of the keyflow benchmark (see docs/benchmarks.md): the shopping-cart flow
# as Restate virtual objects (cart per user, stock per item), driven like keyflow-bench's
# AddToCart throughput phase: N AddToCart calls (default 100,000; --quick 10,000) for 1,000
# users x 100 items with C calls in flight (default 1,000: every user at once, as keyflow-bench
# produces everything at once), then one checkout per user.
#
# Then the latency phase, as keyflow-bench's: 100 checkouts/s of one-item baskets for S
# seconds (default 10), each timed from send to its receipt (the response), after W seconds
# of the same checkouts that are not measured (the warm-up; default 30, --quick 3).
#
#   bench/restate/run.sh [--quick] [--records N] [--concurrency C] [--latency-secs S]
#                        [--latency-warmup-secs W] [--json-out PATH]
#
# npm installs @restatedev/restate-server 1.7.x and @restatedev/restate-sdk 1.16.x here on
# first use. Writes bench/results/<timestamp>.restate.json (or PATH); prints the figures and the CPU
# split (restate-server, the Node service, the Node driver).
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RESULTS="$DIR/../results"
RECORDS=100000
CONC=1000
LAT_SECS=10
WARM_SECS=30
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) RECORDS=10000; WARM_SECS=3 ;;
    --records) shift; RECORDS="$1" ;;
    --concurrency) shift; CONC="$1" ;;
    --latency-secs) shift; LAT_SECS="$1" ;;
    --latency-warmup-secs) shift; WARM_SECS="$1" ;;
    --json-out) shift; OUT="$1" ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "restate/run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
say() { echo "[restate $(date +%H:%M:%S)] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat" 2>/dev/null || echo 0; }

[[ -x "$DIR/node_modules/.bin/restate-server" ]] || (cd "$DIR" && npm install --no-audit --no-fund >&2)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/keyflow-restate.XXXXXX")"
SERVER_PID=""
SERVICE_PID=""
cleanup() {
  local rc=$?
  for p in "$SERVICE_PID" "$SERVER_PID"; do
    if [[ -n "$p" ]]; then kill -TERM "$p" 2>/dev/null || true; fi
  done
  for p in "$SERVICE_PID" "$SERVER_PID"; do
    [[ -n "$p" ]] && { timeout 30 tail --pid="$p" -f /dev/null 2>/dev/null || kill -KILL "$p" 2>/dev/null || true; }
  done
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

# The native binary (so that its CPU is measured), else the npm shim.
SERVER_BIN="$DIR/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server"
[[ -x "$SERVER_BIN" ]] || SERVER_BIN="$DIR/node_modules/.bin/restate-server"
INGRESS="$(free_port)"; ADMIN="$(free_port)"; FABRIC="$(free_port)"; SVC="$(free_port)"
say "starting restate-server (ingress $INGRESS, admin $ADMIN)"
RESTATE_INGRESS__BIND_ADDRESS="127.0.0.1:$INGRESS" RESTATE_ADMIN__BIND_ADDRESS="127.0.0.1:$ADMIN" \
  RESTATE_BIND_PORT="$FABRIC" RESTATE_LISTEN_MODE=tcp \
  "$SERVER_BIN" --no-logo --base-dir "$WORK/data" --node-name bench \
  >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
say "starting the Node service on $SVC"
node "$DIR/service.mjs" "$SVC" >"$WORK/service.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$ADMIN/health" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$WORK/server.log" >&2; exit 1; }
  sleep 0.2
done
for _ in $(seq 1 50); do
  curl -sf -X POST "http://127.0.0.1:$ADMIN/deployments" -H 'content-type: application/json' \
    -d "{\"uri\": \"http://127.0.0.1:$SVC\"}" >"$WORK/register.json" 2>/dev/null && break
  sleep 0.2
done
grep -q cart "$WORK/register.json" || { say "registration failed"; cat "$WORK/register.json" "$WORK/server.log" >&2; exit 1; }
sleep 1
say "driving $RECORDS AddToCart calls, $CONC in flight"
mkdir -p "$RESULTS"
[[ -n "$OUT" ]] || OUT="$RESULTS/$(date -u +%Y%m%dT%H%M%SZ).restate.json"
S0="$(cpu "$SERVER_PID")"; V0="$(cpu "$SERVICE_PID")"
node "$DIR/driver.mjs" "http://127.0.0.1:$INGRESS" "$RECORDS" "$CONC" "$WORK/driver.json" 100 "$LAT_SECS" "$WARM_SECS" &
DRIVER=$!
D1=0
while kill -0 "$DRIVER" 2>/dev/null; do D1="$(cpu "$DRIVER")"; sleep 0.2; done
wait "$DRIVER"
S1="$(cpu "$SERVER_PID")"; V1="$(cpu "$SERVICE_PID")"
python3 - "$WORK/driver.json" "$OUT" "$(awk "BEGIN{print $S1-$S0}")" "$(awk "BEGIN{print $V1-$V0}")" "$D1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["cpu_seconds"] = {"restate-server": float(sys.argv[3]), "service": float(sys.argv[4]), "driver": float(sys.argv[5])}
d["versions"] = {"restate-server": "1.7.x", "restate-sdk": "1.16.x"}
json.dump(d, open(sys.argv[2], "w"), indent=2)
c = d["cpu_seconds"]; tot = sum(c.values())
print(f"Restate peer: {d['records']:,} AddToCart, {d['concurrency']} in flight")
print(f"  first call -> last receipt               {d['seconds']:.2f} s")
print(f"  throughput                               {d['records_per_s']:,.0f} records/s")
print(f"  AddToCart call p50 / p99                 {d['add_call_ms']['p50']:.1f} / {d['add_call_ms']['p99']:.1f} ms")
print(f"  quantity in receipts / added             {d['quantity_in_receipts']:,} / {d['quantity_added']:,}  {'OK' if d['quantity_ok'] else 'MISMATCH'}")
l = d["latency"]
print(f"Restate checkout -> receipt latency ({l['checkouts']:,} checkouts at {l['rate_per_s']}/s)")
print(f"  p50 / p99 / p99.9 / max                  {l['ms']['p50']:.1f} / {l['ms']['p99']:.1f} / {l['ms']['p999']:.1f} / {l['ms']['max']:.1f} ms")
print("  CPU s, both phases (share): " + " / ".join(f"{k} {v:.1f} ({100*v/max(tot,1e-9):.0f}%)" for k, v in c.items()))
print(f"  results written to {sys.argv[2]}")
PY
