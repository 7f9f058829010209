#!/usr/bin/env bash
# Idempotent machine setup for a fresh Debian machine (run as root): system packages needed to
# build the workspace (rdkafka's cmake build, protobuf), tool checks, the Kafka broker jars and
# Debian's prometheus package unpacked into .tools/ (for the dashboard test).
# Safe to re-run: every step is skipped when already done.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

say() { echo "setup.sh: $*" >&2; }
die() { echo "setup.sh: ERROR: $*" >&2; exit 1; }

APT_PACKAGES=(cmake libcurl4-openssl-dev protobuf-compiler openssl curl)

# --- system packages ---------------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
  if dpkg -s "$p" >/dev/null 2>&1; then
    say "package $p: installed"
  else
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root (or sudo) to install: ${missing[*]}"
    SUDO="sudo"
  fi
  say "installing missing packages: ${missing[*]} (apt-get update + install) ..."
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
  say "installed: ${missing[*]}"
fi

# --- toolchains --------------------------------------------------------------------------------
command -v cargo >/dev/null \
  || die "cargo not found: install Rust (https://rustup.rs) and make sure ~/.cargo/bin is on PATH"
say "cargo: $(cargo --version)"
for comp in fmt clippy; do
  if ! cargo "$comp" --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null; then
      say "adding rustup component for cargo $comp ..."
      rustup component add "$([[ $comp == fmt ]] && echo rustfmt || echo clippy)" >&2
    else
      die "cargo $comp not available and rustup not found"
    fi
  fi
done

command -v java >/dev/null \
  || die "java not found: the Kafka broker needs a Java 17+ runtime (apt-get install openjdk-17-jre-headless)"
java_major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
[[ -n "$java_major" && "$java_major" -ge 17 ]] \
  || die "Java 17+ required for Kafka 4.x, found: $(java -version 2>&1 | head -n1)"
say "java: $(java -version 2>&1 | head -n1)"

command -v mvn >/dev/null \
  || die "mvn not found: needed to fetch the Kafka broker from Maven Central (apt-get install maven)"
say "mvn: $(mvn -v 2>/dev/null | head -n1 | sed 's/\x1b\[[0-9;]*m//g')"

# --- Kafka broker jars -------------------------------------------------------------------------
"$REPO_ROOT/scripts/kafka.sh" install

# --- Prometheus (Debian's package, unpacked into .tools/; engine/tests/dashboard.rs) ----------
"$REPO_ROOT/scripts/prometheus.sh" install
say "done"
