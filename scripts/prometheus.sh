#!/usr/bin/env bash
# Debian's `prometheus` package (prometheus and promtool), unpacked into the project's tools dir
# for engine/tests/dashboard.rs, which scrapes a worker with it and runs every query of the
# Grafana dashboard (deploy/grafana/dashboards/keyflow.json). No root install: the .deb is
# fetched with `apt-get download` and unpacked with `dpkg-deb -x`; nothing runs as a service.
#
#   scripts/prometheus.sh install   fetch and unpack (skipped when already there)
#   scripts/prometheus.sh bin       print the directory holding prometheus and promtool
#
# Environment:
#   KEYFLOW_TOOLS   the tools dir, default <repo>/.tools (git-ignored); the package goes to
#                   $KEYFLOW_TOOLS/prometheus, its binaries to $KEYFLOW_TOOLS/prometheus/usr/bin
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
TOOLS="${KEYFLOW_TOOLS:-$REPO_ROOT/.tools}"
HOME_DIR="$TOOLS/prometheus"
BIN="$HOME_DIR/usr/bin"

say() { echo "prometheus.sh: $*" >&2; }
die() { echo "prometheus.sh: ERROR: $*" >&2; exit 1; }

installed() { "$BIN/prometheus" --version >/dev/null 2>&1 && "$BIN/promtool" --version >/dev/null 2>&1; }

install() {
  if installed; then
    say "prometheus: $("$BIN/prometheus" --version 2>&1 | head -n1) (in $BIN)"
    return 0
  fi
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || die "apt-get and dpkg-deb not found: this installs Debian's prometheus package; elsewhere put prometheus and promtool (2.x) into $BIN"
  local tmp
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  # As root, apt downloads as user _apt, who cannot write to a private temp dir.
  download() { (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root prometheus >&2); }
  if ! download; then
    # A fresh machine may have no package lists yet.
    local sudo=""
    if [[ $(id -u) -ne 0 ]]; then
      command -v sudo >/dev/null || die "apt-get download prometheus failed and apt-get update needs root (or sudo)"
      sudo="sudo"
    fi
    say "apt-get download prometheus failed; apt-get update and again ..."
    $sudo apt-get update -q >&2
    download || die "apt-get download prometheus failed (is a Debian package mirror reachable?)"
  fi
  local deb
  deb="$(ls "$tmp"/prometheus_*.deb)"
  rm -rf "$HOME_DIR"
  mkdir -p "$HOME_DIR"
  dpkg-deb -x "$deb" "$HOME_DIR"
  installed || die "unpacked $(basename "$deb") into $HOME_DIR, but $BIN/prometheus or promtool does not run"
  say "installed $(basename "$deb"): $BIN/prometheus, $BIN/promtool"
}

case "${1:-}" in
  install) install ;;
  bin) echo "$BIN" ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
