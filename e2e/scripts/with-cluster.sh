#!/usr/bin/env bash
# Runs a command against a fresh local control plane: builds (or reuses) it and KEDA, starts it in
# a temporary directory, runs "$@" with KUBECONFIG, LEVEE_KEDA_DIR and PATH (kubectl, helm,
# promtool from .cache/bin) set,
# and stops it again, whatever happens. `make e2e` and `make bench-controller` use it.
#   e2e/scripts/with-cluster.sh cargo test -p levee-e2e
set -euo pipefail
cd "$(dirname "$0")/../.."

bin_dir="$PWD/.cache/bin"
e2e/scripts/tools.sh install "$bin_dir" >/dev/null
e2e/scripts/promtool.sh install "$bin_dir" >/dev/null
e2e/scripts/controlplane.sh build >/dev/null
# KEDA's operator and adapter, for the suites that run levee beside it (built once, cached).
LEVEE_KEDA_DIR="$(e2e/scripts/keda.sh build)"
export LEVEE_KEDA_DIR

dir=$(mktemp -d -t levee-e2e.XXXXXX)
cleanup() {
  status=$?
  e2e/scripts/controlplane.sh down "$dir" || true
  if [ "$status" -ne 0 ] && [ -d "$dir/logs" ]; then
    echo "e2e: failed; the control plane's logs were in $dir/logs (tails below)" >&2
    tail -n 20 "$dir"/logs/*.log >&2 || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

e2e/scripts/controlplane.sh up "$dir" >/dev/null
export KUBECONFIG="$dir/admin.kubeconfig"
export PATH="$bin_dir:$PATH"
# The suites run target/debug/levee as a real process.
cargo build --bin levee
"$@"
