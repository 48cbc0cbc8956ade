#!/usr/bin/env bash
# Makes sure a Docker daemon answers (`docker info`), for `make image` and `make e2e-kind`.
#   - one answers: use it, change nothing (but put back its runc-capfilter if the cache lost it);
#   - none, and CI=true: install docker.io with apt (if dockerd is missing), start dockerd in the
#     background (log: ~/.cache/levee/dockerd.log) and wait until it answers;
#   - none, and not CI: exit 3 with one line saying why (a user's machine is never changed; `make
#     test` skips the kind suite and says so).
set -euo pipefail
cd "$(dirname "$0")/.."

answers() { docker info >/dev/null 2>&1; }

# dockerd outlives this run and this clone: what it runs and writes lives in the machine's cache.
cache="${LEVEE_CACHE:-$HOME/.cache/levee}"

# A daemon this script started runs containers through $cache/bin/runc-capfilter (below): when
# the cache was emptied while it ran, every container would fail ("fork/exec
# .../runc-capfilter: no such file or directory"), so the file is put back.
if answers; then
  if [[ "$(docker info --format '{{.DefaultRuntime}}' 2>/dev/null)" == capfilter && ! -x "$cache/bin/runc-capfilter" ]]; then
    echo "docker: dockerd runs containers through $cache/bin/runc-capfilter, which is gone: putting it back" >&2
    mkdir -p "$cache/bin"
    cp scripts/runc-capfilter "$cache/bin/runc-capfilter.tmp"
    mv -f "$cache/bin/runc-capfilter.tmp" "$cache/bin/runc-capfilter"
  fi
  exit 0
fi

if [[ "${CI:-}" != "true" ]]; then
  if ! command -v docker >/dev/null 2>&1; then
    why="no docker command"
  else
    why="no Docker daemon answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}"
  fi
  echo "docker: $why; start one (or run with CI=true to have it installed and started)" >&2
  exit 3
fi

as_root() { if [[ "$(id -u)" -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

if ! command -v dockerd >/dev/null 2>&1; then
  echo "docker: installing docker.io with apt-get" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq -o DPkg::Lock::Timeout=600 docker.io >/dev/null
fi

mkdir -p "$cache/bin"
log="$cache/dockerd.log"
args=()
# A capability bounding set short of the kernel's (a sandbox's) breaks `docker run --privileged`,
# hence kind: runc goes through scripts/runc-capfilter, which asks only for what can be granted.
bnd=$((16#$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)))
if ((bnd != (1 << ($(cat /proc/sys/kernel/cap_last_cap) + 1)) - 1)); then
  command -v jq >/dev/null || DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq -o DPkg::Lock::Timeout=600 jq >/dev/null
  echo "docker: this machine's capability bounding set is incomplete: runc via scripts/runc-capfilter" >&2
  cp scripts/runc-capfilter "$cache/bin/runc-capfilter.tmp"
  mv -f "$cache/bin/runc-capfilter.tmp" "$cache/bin/runc-capfilter"
  args+=(--add-runtime "capfilter=$cache/bin/runc-capfilter" --default-runtime capfilter)
fi

# Closes every descriptor past stderr: dockerd must not hold what the caller had open (make
# test's lock on the shared build directory would be held for as long as dockerd runs, and every
# later run would wait for it).
close_inherited() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd="${fd##*/}"
    if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
}
echo "docker: starting dockerd in the background (log: $log)" >&2
(close_inherited && as_root nohup dockerd "${args[@]}" >"$log" 2>&1 </dev/null) &
for ((i = 0; i < 120; i++)); do
  answers && { echo "docker: dockerd answers (after ${i}s)" >&2; exit 0; }
  sleep 1
done
echo "docker: dockerd did not answer within 120s; the end of $log:" >&2
tail -n 20 "$log" >&2
exit 1
