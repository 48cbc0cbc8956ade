#!/usr/bin/env bash
# Builds (or reuses) Prometheus' promtool from its Go module, to check and unit-test levee's alert
# rules (charts/levee/files/alerts.yaml, e2e/alerts/). Release binaries can't be downloaded on
# this project's machines; the Go module proxy can be reached.
#
#   e2e/scripts/promtool.sh install BINDIR   promtool into BINDIR; prints BINDIR
#
# Cached in ${LEVEE_CACHE:-$HOME/.cache/levee} by version and Go version: a cold build takes
# several minutes, a cached one nothing.
set -euo pipefail

# Prometheus v3.x; its Go module is versioned v0.3xx.
PROMETHEUS_MODULE_VERSION=v0.316.0

install() {
  local bindir="$1" cache key bin tmp start
  cache="${LEVEE_CACHE:-$HOME/.cache/levee}"
  key="$(go env GOVERSION GOOS GOARCH | tr '\n' '-')${PROMETHEUS_MODULE_VERSION}"
  bin="$cache/promtool-$key"
  mkdir -p "$cache"
  # One build at a time (scripts/prebuild.sh starts one in the background).
  exec 9>"$cache/promtool.lock"
  flock 9
  if [[ ! -x "$bin" ]]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    echo "promtool: building $PROMETHEUS_MODULE_VERSION (a cold build takes several minutes)" >&2
    start=$SECONDS
    (cd "$tmp" && GOBIN="$tmp/bin" GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 10 go install -trimpath -ldflags="-s -w" \
      "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION")
    mv -f "$tmp/bin/promtool" "$bin"
    echo "promtool: built in $((SECONDS - start))s" >&2
  fi
  mkdir -p "$bindir"
  if ! cmp -s "$bin" "$bindir/promtool"; then
    cp "$bin" "$bindir/promtool.tmp"
    mv -f "$bindir/promtool.tmp" "$bindir/promtool"
  fi
  (cd "$bindir" && pwd)
}

case "${1:-}" in
  install)
    [[ $# -eq 2 ]] || { echo "usage: $0 install BINDIR" >&2; exit 2; }
    install "$2"
    ;;
  *)
    echo "usage: $0 install BINDIR" >&2
    exit 2
    ;;
esac
