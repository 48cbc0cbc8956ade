#!/bin/sh
# levee-e2e/producer: a producer pod of the kind suite. It answers its readiness probe on
# :${PORT:-8080} (busybox httpd: GET /ready) and, while RATE > 0, pushes RATE items a second onto
# the Redis list QUEUE at REDIS (host:port). Its Service sends it traffic only while it is Ready and
# levee's levee.dev/accepting gate is True.
set -eu
mkdir -p /tmp/www
echo ok >/tmp/www/ready
httpd -p "${PORT:-8080}" -h /tmp/www
redis="${REDIS:-redis:6379}"
rate="${RATE:-0}"
queue="${QUEUE:-jobs}"
while :; do
  if [ "$rate" -gt 0 ]; then
    i=0
    cmds=""
    while [ "$i" -lt "$rate" ]; do cmds="${cmds}RPUSH $queue x\r\n"; i=$((i + 1)); done
    printf "${cmds}QUIT\r\n" | nc "${redis%:*}" "${redis##*:}" >/dev/null || echo "producer: redis $redis unreachable" >&2
  fi
  sleep 1
done
