#!/usr/bin/env bash
# Runs a command against a fresh local control plane: builds (or reuses) it and KEDA, starts it in
# a temporary directory, runs "$@" with KUBECONFIG, LEVEE_KEDA_SRC and PATH (kubectl, helm,
# promtool from .cache/bin) set,
# and stops it again, whatever happens. `make e2e` and `make bench-controller` use it.
#   e2e/scripts/with-cluster.sh e2e/scripts/suites.sh   (make e2e: the suites, two lanes side by side)
set -euo pipefail
cd "$(dirname "$0")/../.."

bin_dir="$PWD/.cache/bin"
e2e/scripts/tools.sh install "$bin_dir" >/dev/null
e2e/scripts/promtool.sh install "$bin_dir" >/dev/null
e2e/scripts/controlplane.sh build >/dev/null
# KEDA, for the suites that run levee beside it: its module at once (CRDs, proto), its binaries
# built once and cached (the KEDA suites build them when they start). With LEVEE_KEDA_PREBUILD=1
# (make e2e) a cold build (minutes) starts now in the background, at the lowest priority, while
# the first suites run (they mostly wait on the cluster); the KEDA suites then wait for it. The
# benchmarks leave it off: nothing else may compete for the CPU they measure.
LEVEE_KEDA_SRC="$(e2e/scripts/keda.sh source)"
export LEVEE_KEDA_SRC
if [[ "${LEVEE_KEDA_PREBUILD:-0}" == 1 ]]; then
  mkdir -p .cache
  nice -n 19 e2e/scripts/keda.sh build >.cache/keda-build.log 2>&1 &
fi

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
