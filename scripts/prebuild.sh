#!/usr/bin/env bash
# The long cold builds `make test` needs later, started at its beginning in the background so that
# they use the cores the foreground leaves idle (the suites mostly wait on the API server), and
# joined where they are needed: each build below takes a lock, so the script that needs the
# result waits for the build under way instead of starting a second one, then finds it cached.
#
#   scripts/prebuild.sh start DIR   starts both chains in the background, at the lowest priority,
#                                   each in its own process group (DIR/go.pid, DIR/rust.pid); each
#                                   step's log and its time go to DIR (<step>.log, times.tsv)
#   scripts/prebuild.sh stop DIR    stops both chains and whatever they started
#
# Go chain (one Go build cache for all of them; what they share is compiled once), in the order
# the suites need them: Kafka's jars (a Maven fetch, no build: first, being mostly a download),
# nats-server, the local control plane, promtool, KEDA, then kind's node image (only when
# the kind suite will run: a Docker daemon answers or CI=true). Rust chain: the image's static
# binary (scripts/static.sh), again only when the kind suite will run. A failed step is reported
# by the script that needs it, when it tries again in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."

# step DIR NAME CMD...: runs CMD at nice 19, its output in DIR/NAME.log, its time in DIR/times.tsv
step() {
  local dir="$1" name="$2" start=$SECONDS status=0
  shift 2
  nice -n 19 "$@" >"$dir/$name.log" 2>&1 </dev/null || status=$?
  printf '%s\t%s\t%s\n' "$name" "$((SECONDS - start))" "$status" >>"$dir/times.tsv"
  return "$status"
}

kind_will_run() { [[ "${CI:-}" == true ]] || docker info >/dev/null 2>&1; }

go_chain() {
  local dir="$1"
  # Kafka's jars and nats-server first: the unit phase's Kafka and JetStream tests need them,
  # before anything else here.
  step "$dir" kafka scripts/kafka.sh install || true
  step "$dir" nats-server scripts/nats-server.sh install "$PWD/.cache/bin" || true
  step "$dir" natscli scripts/nats-server.sh install-cli "$PWD/.cache/bin" || true
  step "$dir" controlplane e2e/scripts/controlplane.sh build || true
  step "$dir" promtool e2e/scripts/promtool.sh install "$PWD/.cache/bin" || true
  step "$dir" keda e2e/scripts/keda.sh build || true
  if kind_will_run; then
    # Docker itself is started by scripts/test.sh, not here: containers would inherit nice 19.
    step "$dir" kind e2e/kind/node-image.sh kind || true
    step "$dir" kind-node-image e2e/kind/node-image.sh build || true
    step "$dir" kind-test-images e2e/kind/test-images.sh || true
  fi
}

rust_chain() {
  local dir="$1"
  if kind_will_run; then
    step "$dir" static-binary scripts/static.sh || true
  fi
}

start() {
  local dir="$1" chain
  rm -rf "$dir"
  mkdir -p "$dir"
  : >"$dir/times.tsv"
  for chain in go rust; do
    setsid "$0" chain "$chain" "$dir" </dev/null >>"$dir/chains.log" 2>&1 &
    echo $! >"$dir/$chain.pid"
  done
}

stop() {
  local dir="$1" chain pid
  for chain in go rust; do
    pid="$(cat "$dir/$chain.pid" 2>/dev/null)" || continue
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
}

case "${1:-}" in
  start) [[ $# -eq 2 ]] && start "$2" ;;
  stop) [[ $# -eq 2 ]] && stop "$2" ;;
  chain) [[ $# -eq 3 ]] && "$2_chain" "$3" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
