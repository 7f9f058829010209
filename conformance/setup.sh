#!/usr/bin/env bash
# Installs the conformance function services, one per official StateFun SDK (see README.md):
#   python  a virtualenv in python/.venv with requirements.txt (apache-flink-statefun 3.3.0, aiohttp)
#   js      npm ci in js/ (apache-flink-statefun 3.3.0 from package-lock.json)
#   java    mvn package in java/ -> java/target/keyflow-conformance-java.jar (statefun-sdk-java 3.3.0)
#   go      go build in go/ -> go/bin/conformance-go (statefun-sdk-go/v3 v3.3.0)
#
# Usage: conformance/setup.sh [python] [js] [java] [go]      (no argument: all four)
#
# Idempotent and fast when nothing changed: each step records a hash of its inputs (and of the
# toolchain's version) next to what it built, and is skipped while that hash still matches.
# Exit status: 0 when every SDK asked for is installed; 3 when a toolchain is missing (the
# others are still installed; the message names what to install); 1 on any other failure.
set -euo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$DIR"

say() { echo "conformance/setup.sh: $*" >&2; }

# One setup at a time (the test driver may call this while scripts/test.sh does).
exec 9>"$DIR/.setup.lock"
flock 9

# A short hash of the given files' names and contents plus extra text ($EXTRA).
inputs_hash() {
  {
    printf '%s\n' "${EXTRA:-}"
    for f in "$@"; do
      printf '%s\n' "$f"
      cat "$f"
    done
  } | sha256sum | cut -c1-32
}

# up_to_date STAMP HASH: whether STAMP holds HASH.
up_to_date() { [[ -f "$1" && "$(cat "$1")" == "$2" ]]; }

missing=()
need() {
  local sdk=$1
  shift
  local tool
  for tool in "$@"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      say "SKIP $sdk: \`$tool\` is not installed (needed for the $sdk SDK's conformance service)"
      missing+=("$sdk:$tool")
      return 1
    fi
  done
}

setup_python() {
  need python python3 || return 0
  local hash stamp=python/.venv/.keyflow-stamp
  hash=$(EXTRA="$(python3 --version 2>&1)" inputs_hash python/requirements.txt)
  if up_to_date "$stamp" "$hash"; then
    say "python: up to date (python/.venv)"
    return
  fi
  say "python: creating python/.venv and installing python/requirements.txt"
  rm -rf python/.venv
  python3 -m venv python/.venv
  python/.venv/bin/pip install --disable-pip-version-check --no-input -q -r python/requirements.txt
  python/.venv/bin/python -c 'import statefun, aiohttp'
  echo "$hash" >"$stamp"
}

setup_js() {
  need js node npm || return 0
  local hash stamp=js/node_modules/.keyflow-stamp
  hash=$(EXTRA="$(node --version)" inputs_hash js/package.json js/package-lock.json)
  if up_to_date "$stamp" "$hash"; then
    say "js: up to date (js/node_modules)"
    return
  fi
  say "js: npm ci"
  (cd js && npm ci --no-audit --no-fund --loglevel=error >&2)
  echo "$hash" >"$stamp"
}

setup_java() {
  need java java mvn || return 0
  local hash stamp=java/target/.keyflow-stamp sources
  mapfile -t sources < <(find java/src -type f | LC_ALL=C sort)
  hash=$(EXTRA="$(java -version 2>&1 | head -1)" inputs_hash java/pom.xml "${sources[@]}")
  if up_to_date "$stamp" "$hash" && [[ -f java/target/keyflow-conformance-java.jar ]]; then
    say "java: up to date (java/target/keyflow-conformance-java.jar)"
    return
  fi
  say "java: mvn package"
  rm -f "$stamp"
  # Offline first (everything is usually in ~/.m2 already); online when something is missing.
  (cd java && { mvn -B -q -o package >/dev/null 2>&1 || mvn -B -q package; })
  echo "$hash" >"$stamp"
}

setup_go() {
  need go go || return 0
  local hash stamp=go/bin/.keyflow-stamp sources
  mapfile -t sources < <(find go -maxdepth 1 -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) | LC_ALL=C sort)
  hash=$(EXTRA="$(go version)" inputs_hash "${sources[@]}")
  if up_to_date "$stamp" "$hash" && [[ -x go/bin/conformance-go ]]; then
    say "go: up to date (go/bin/conformance-go)"
    return
  fi
  say "go: go build"
  rm -f "$stamp"
  mkdir -p go/bin
  (cd go && go build -o bin/conformance-go .)
  echo "$hash" >"$stamp"
}

sdks=("$@")
if ((${#sdks[@]} == 0)); then
  sdks=(python js java go)
fi
for sdk in "${sdks[@]}"; do
  case "$sdk" in
    python | js | java | go) "setup_$sdk" ;;
    *)
      say "unknown SDK \`$sdk\`; known: python js java go"
      exit 1
      ;;
  esac
done

if ((${#missing[@]} > 0)); then
  say "missing toolchains: ${missing[*]}"
  exit 3
fi
