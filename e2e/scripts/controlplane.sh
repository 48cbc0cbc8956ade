#!/usr/bin/env bash
# A local Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager, and a fake kubelet whose pods "run" without
# containers) for levee's end-to-end tests. See e2e/controlplane/README.md.
#
#   e2e/scripts/controlplane.sh build           build (or reuse) the binary; prints its path
#   e2e/scripts/controlplane.sh up DIR [--port N] [--fake-kubelet=false]
#                                               start an empty cluster in DIR, wait until it
#                                               is usable; prints KUBECONFIG=... and SERVER=...
#   e2e/scripts/controlplane.sh down DIR        stop it (no-op when it isn't running)
#
# The binary is built from e2e/controlplane (upstream Kubernetes as Go
# modules) and cached in ${LEVEE_CACHE:-$HOME/.cache/levee} under a hash of
# its sources, the Go version and the build flags: a cold build takes
# minutes, a cached one nothing. DIR gets pki/, etcd/, logs/ (one log per
# component), up.log, up.pid, admin.kubeconfig and, once usable, ready.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$(cd "$here/../controlplane" && pwd)"
cache="${LEVEE_CACHE:-$HOME/.cache/levee}"

# The version the binary reports (kubectl version, /version, clients'
# compatibility checks): a module build leaves it at v0.0.0-master, so set
# it the way Kubernetes' own build does, from the version in go.mod.
kube_version() {
  awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$src/go.mod"
}

ldflags() {
  local v major minor pkg flags="-s -w"
  v="$(kube_version)"
  major="${v#v}"; major="${major%%.*}"
  minor="${v#v*.}"; minor="${minor%%.*}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit="
  done
  echo "$flags"
}

build() {
  local flags key bin tmp start
  flags="$(ldflags)"
  # Everything that changes the binary goes into its name.
  key="$(
    cd "$src"
    {
      go env GOVERSION GOOS GOARCH
      echo "$flags CGO_ENABLED=0"
      for f in go.mod go.sum *.go; do echo "== $f"; cat "$f"; done
    } | sha256sum | cut -c1-16
  )"
  bin="$cache/controlplane-$key"
  if [[ -x "$bin" ]]; then
    echo "$bin"
    return
  fi
  mkdir -p "$cache"
  # One build at a time (scripts/prebuild.sh starts one in the background): whoever comes second
  # waits for it and reuses it.
  exec 9>"$cache/controlplane.lock"
  flock 9
  if [[ -x "$bin" ]]; then
    echo "$bin"
    return
  fi
  tmp="$bin.tmp.$$"
  echo "controlplane: building $bin (a cold build takes several minutes)" >&2
  start=$SECONDS
  # nice: the build takes every core for minutes; leave room for the rest.
  # -trimpath and -s -w: smaller binary, less link time; -mod=mod: tolerate
  # a go.sum missing lines for this platform. CGO_ENABLED=0, as e2e/kind/node-image.sh builds
  # the node's Kubernetes from the same go.mod: with the same settings the second build reuses
  # every package the first compiled (Go's build cache), instead of compiling all of it again.
  (cd "$src" && CGO_ENABLED=0 nice -n 10 go build -mod=mod -trimpath -ldflags="$flags" -o "$tmp" .)
  mv -f "$tmp" "$bin"
  echo "controlplane: built in $((SECONDS - start))s" >&2
  # Older builds are dead weight (120 MB each).
  find "$cache" -maxdepth 1 -type f -regextype posix-extended \
    -regex '.*/controlplane-[0-9a-f]{16}' ! -path "$bin" -delete
  echo "$bin"
}

pid_of() { # prints the pid of DIR's running `up`, or fails
  local pid
  pid="$(cat "$1/up.pid" 2>/dev/null)" || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

up() {
  local dir="$1"; shift
  local bin pid deadline
  bin="$(build)"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if pid_of "$dir" >/dev/null; then
    echo "controlplane: already running in $dir; stopping it first" >&2
    down "$dir"
  fi
  rm -f "$dir/ready"
  # Detached from this shell's stdin/out: it outlives this script, until `down`.
  nohup "$bin" up --dir "$dir" "$@" >"$dir/up.log" 2>&1 </dev/null &
  pid=$!
  deadline=$((SECONDS + 300))
  until [[ -f "$dir/ready" ]]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "controlplane: failed to start; $dir/up.log says:" >&2
      tail -n 40 "$dir/up.log" >&2
      return 1
    fi
    if ((SECONDS > deadline)); then
      echo "controlplane: not ready after 300s; stopping it. $dir/up.log says:" >&2
      tail -n 40 "$dir/up.log" >&2
      down "$dir"
      return 1
    fi
    sleep 0.2
  done
  cat "$dir/ready"
}

down() {
  local dir="$1" pid i
  if ! pid="$(pid_of "$dir")"; then
    rm -f "$dir/up.pid" "$dir/ready" # left behind if `up` was SIGKILLed
    echo "controlplane: not running in $dir" >&2
    return 0
  fi
  # `up` stops its children in order (each in its own process group) and
  # waits for them before it exits.
  kill -TERM "$pid"
  for ((i = 0; i < 600; i++)); do # 60s: each child gets 15s before SIGKILL
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    # Its children were started with a parent-death signal: they go too.
    echo "controlplane: up (pid $pid) did not stop; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
  fi
  rm -f "$dir/up.pid" "$dir/ready"
  echo "controlplane: stopped ($dir)" >&2
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

case "${1:-}" in
  build) [[ $# -eq 1 ]] || usage; build ;;
  up) [[ $# -ge 2 ]] || usage; shift; up "$@" ;;
  down) [[ $# -eq 2 ]] || usage; down "$2" ;;
  *) usage ;;
esac
