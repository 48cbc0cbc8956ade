#!/usr/bin/env bash
# `make e2e`: builds (or reuses) the local control plane, starts it in a temporary directory,
# runs the end-to-end suite (the levee-e2e crate) against it, and stops it again, whatever
# happens. kubectl and helm come from e2e/scripts/tools.sh into .cache/bin.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin_dir="$PWD/.cache/bin"
e2e/scripts/tools.sh install "$bin_dir" >/dev/null
e2e/scripts/controlplane.sh build >/dev/null

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
# The suite runs target/debug/levee as a real process.
cargo build --bin levee
cargo test -p levee-e2e "$@"
