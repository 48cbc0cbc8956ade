#!/usr/bin/env bash
# KEDA, built from its Go module (nothing prebuilt can be downloaded here), for the end-to-end
# tests and the KEDA benchmark that run levee beside the real thing.
#
#   e2e/scripts/keda.sh source    download KEDA's module (3 MB, seconds); prints its directory
#                                 (config/crd, pkg/scalers/externalscaler/externalscaler.proto)
#   e2e/scripts/keda.sh build     build (or reuse) KEDA's operator and metrics adapter; prints the
#                                 directory holding operator, adapter and src (the module). A
#                                 build already running (with-cluster.sh starts one in the
#                                 background) is waited for, not repeated.
#
# The version is the newest v2 release in the Go module proxy when this was written. The build
# runs in the module's own directory, so KEDA's go.mod (its replace and exclude directives)
# applies as upstream intends. It uses Go's own module and build caches, like every other Go build
# of the tests (what they share is compiled once), with cgo off as they are: a cold build
# downloads ~300 MB of modules and took 336 s on an otherwise idle 2-core machine (2026-12-01); a
# cached one nothing. The binaries live in ${LEVEE_CACHE:-$HOME/.cache/levee}/keda.
set -euo pipefail

KEDA_MODULE=github.com/kedacore/keda/v2
KEDA_VERSION=v2.21.0

cache="${LEVEE_CACHE:-$HOME/.cache/levee}/keda"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0

source_dir() {
  mkdir -p "$cache"
  go mod download -json "$KEDA_MODULE@$KEDA_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'
}

built() {
  [[ -x "$1/operator" && -x "$1/adapter" && -L "$1/src" ]]
}

build() {
  local key out src tmp start
  key="$({ go env GOVERSION GOOS GOARCH; echo CGO_ENABLED=0; } | sha256sum | cut -c1-12)"
  out="$cache/$KEDA_VERSION-$key"
  if built "$out"; then
    echo "$out"
    return
  fi
  mkdir -p "$cache"
  # One build at a time; whoever comes second waits for it and reuses it.
  exec 9>"$cache/build.lock"
  flock 9
  if built "$out"; then
    echo "$out"
    return
  fi
  src="$(source_dir)"
  tmp="$out.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  echo "keda: building $KEDA_MODULE@$KEDA_VERSION (operator, adapter) into $out: a cold build takes minutes" >&2
  start=$SECONDS
  # nice: the build takes every core for minutes; leave room for the rest.
  (cd "$src" && nice -n 10 go build -trimpath \
    -ldflags "-s -w -X=github.com/kedacore/keda/v2/version.Version=$KEDA_VERSION" \
    -o "$tmp/" ./cmd/operator ./cmd/adapter)
  ln -s "$src" "$tmp/src"
  rm -rf "$out"
  mv "$tmp" "$out"
  echo "keda: built in $((SECONDS - start))s" >&2
  echo "$out"
}

case "${1:-}" in
  source) source_dir ;;
  build) build ;;
  *)
    echo "usage: $0 source|build" >&2
    exit 2
    ;;
esac
