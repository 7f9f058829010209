#!/usr/bin/env bash
# Usage: conformance/bound.sh PARENT_PID COMMAND [ARGS...]
# Runs COMMAND while process PARENT_PID lives: when the parent is gone (the test process
# ended, however it ended), or when this script gets SIGTERM/SIGINT, COMMAND gets SIGTERM, then
# SIGKILL 5 s later if still running. The conformance test starts every service and the
# engine this way, so that none outlives it.
set -u
parent=$1
shift
"$@" &
child=$!
stop() {
  kill -TERM "$child" 2>/dev/null
  for _ in $(seq 50); do
    kill -0 "$child" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$child" 2>/dev/null
  wait "$child" 2>/dev/null
  exit "${1:-0}"
}
trap 'stop 143' TERM
trap 'stop 130' INT
while kill -0 "$parent" 2>/dev/null; do
  if ! kill -0 "$child" 2>/dev/null; then
    wait "$child"
    exit $?
  fi
  sleep 0.3 &
  wait $!
done
stop 0
