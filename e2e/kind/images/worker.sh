#!/bin/sh
# levee-e2e/worker: a worker pod of the kind suite: pops RATE items a second (default 5) from the
# Redis list QUEUE at REDIS (host:port). The HPA scales these on levee_pending.
set -eu
redis="${REDIS:-redis:6379}"
rate="${RATE:-5}"
queue="${QUEUE:-jobs}"
while :; do
  i=0
  cmds=""
  while [ "$i" -lt "$rate" ]; do cmds="${cmds}LPOP $queue\r\n"; i=$((i + 1)); done
  printf "${cmds}QUIT\r\n" | nc "${redis%:*}" "${redis##*:}" >/dev/null || echo "worker: redis $redis unreachable" >&2
  sleep 1
done
