#!/usr/bin/env bash
# Makes sure a Docker daemon answers (`docker info`), for `make image` and `make e2e-kind`.
#   - one answers: use it, change nothing;
#   - none, and CI=true: install docker.io with apt (if dockerd is missing), start dockerd in the
#     background (log: .cache/dockerd.log) and wait until it answers;
#   - none, and not CI: exit 3 with one line saying why (a user's machine is never changed; `make
#     test` skips the kind suite and says so).
set -euo pipefail
cd "$(dirname "$0")/.."

answers() { docker info >/dev/null 2>&1; }

answers && exit 0

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
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq docker.io >/dev/null
fi

mkdir -p .cache
log="$PWD/.cache/dockerd.log"
echo "docker: starting dockerd in the background (log: $log)" >&2
as_root nohup dockerd >"$log" 2>&1 </dev/null &
for ((i = 0; i < 120; i++)); do
  answers && { echo "docker: dockerd answers (after ${i}s)" >&2; exit 0; }
  sleep 1
done
echo "docker: dockerd did not answer within 120s; the end of $log:" >&2
tail -n 20 "$log" >&2
exit 1
