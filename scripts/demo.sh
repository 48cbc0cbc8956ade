#!/usr/bin/env bash
# `make demo`: a real redis-server, a burst of jobs, and levee deciding tick by tick.
# A producer pushes jobs faster than a worker drains them; levee's circuit opens at critical,
# waits out its minimum open time, half-opens below warning and closes at recovery. Everything
# runs on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

levee=target/release/levee
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
pids+=($!)
cli() { redis-cli -p "$port" "$@" >/dev/null; }
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

echo "== levee demo: redis on 127.0.0.1:$port, policy examples/demo-policy.yaml"
"$levee" check -f examples/demo-policy.yaml
"$levee" sample -f examples/demo-policy.yaml --redis-url "redis://127.0.0.1:$port/0" > "$work/ticks.log" &
pids+=($!)
tail -n +1 -s 0.2 -f "$work/ticks.log" | awk '
  /->/ { print "   >>> " $0; fflush(); next }
  /state=/ { n++; key = $3 " " $4; if (key != last || n % 4 == 0) { print $1 "  " $3 " " $4 " " $5 "  " $6 " " $7; fflush() }; last = key }' &
pids+=($!)

echo "== producers push a burst: 1500 jobs in 3 s (workers drain 60 per second)"
for round in $(seq 6); do
  args=(); for i in $(seq 125); do args+=("job-$round-$i"); done
  cli RPUSH bull:demo-events:wait "${args[@]}"
  cli RPUSH demo:retry "${args[@]}"
  sleep 0.5
done
echo "== workers drain the backlog"
deadline=$((SECONDS + 60))
while [ $SECONDS -lt $deadline ]; do
  for key in bull:demo-events:wait demo:retry; do cli LPOP "$key" 15; done
  sleep 0.5
  if grep -q "HalfOpen -> Closed" "$work/ticks.log"; then break; fi
done
sleep 2

transitions=$(grep -c -- '->' "$work/ticks.log" || true)
peak=$(grep -o 'pending=[0-9]*' "$work/ticks.log" | cut -d= -f2 | sort -n | tail -1)
echo
echo "== summary: peak pending $peak, $transitions transitions:"
grep -- '->' "$work/ticks.log" | sed 's/^ */   /'
if grep -q "HalfOpen -> Closed" "$work/ticks.log"; then
  echo "== the circuit opened under the burst and closed after the drain."
else
  echo "== the circuit did not close within 60 s" >&2
  exit 1
fi
echo "   (Producer pods held back and workers scaled by the HPA: make e2e shows them on the local"
echo "    Kubernetes control plane; see README: Status.)"
