#!/usr/bin/env bash
# Builds (or reuses) Prometheus' promtool from its Go module, to check and unit-test levee's alert
# rules (charts/levee/files/alerts.yaml, e2e/alerts/).
#
#   e2e/scripts/promtool.sh install BINDIR   promtool into BINDIR; prints BINDIR
#
# Built with `remove_all_sd` (Prometheus' own build tag, 3.10+): without the service-discovery
# providers (the cloud SDKs, Kubernetes' client), which checking and testing rules never uses and
# which were most of the build. Cached in ${LEVEE_CACHE:-$HOME/.cache/levee} by version, tags and
# Go version: a cold build takes minutes, a cached one nothing.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib/go-install.sh"

# Prometheus v3.x; its Go module is versioned v0.3xx.
PROMETHEUS_MODULE_VERSION=v0.316.0

case "${1:-}" in
  install)
    [[ $# -eq 2 ]] || { echo "usage: $0 install BINDIR" >&2; exit 2; }
    go_install_cached promtool github.com/prometheus/prometheus/cmd/promtool "$PROMETHEUS_MODULE_VERSION" "$2" \
      remove_all_sd
    (cd "$2" && pwd)
    ;;
  *)
    echo "usage: $0 install BINDIR" >&2
    exit 2
    ;;
esac
