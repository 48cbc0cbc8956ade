#!/usr/bin/env bash
# `make demo`: levee on a real Kubernetes control plane, end to end, and back to nothing.
#
# It starts a local control plane (e2e/controlplane: etcd, kube-apiserver with the aggregation
# layer, kube-controller-manager with the HPA controller, a fake kubelet) and a redis-server,
# installs levee with its Helm chart like a user would, runs `levee run` as a local process with
# the chart's ServiceAccount and certificate (this cluster has no nodes to run its image), applies
# examples/, pushes a burst of jobs, and prints what happens as it happens: the circuit opening,
# the producers held back (their pods leave the Service), the HPA scaling the workers, the drain,
# and the recovery. Workers drain faster the more replicas the HPA gives them. It stops everything
# it started, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

levee="${LEVEE_BIN:-$root/target/release/levee}"
bin_dir="$root/.cache/bin"
e2e/scripts/tools.sh install "$bin_dir" >/dev/null
export PATH="$bin_dir:$PATH"
e2e/scripts/controlplane.sh build >/dev/null

work=$(mktemp -d -t levee-demo.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() {
  status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  e2e/scripts/controlplane.sh down "$work/cluster" 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    echo "demo failed; levee's log (last 30 lines):" >&2
    tail -n 30 "$work/levee.log" >&2 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
started=$SECONDS
say() { printf '%4ss  %s\n' "$((SECONDS - started))" "$*"; }

say "starting a local control plane and redis-server (work dir $work)"
e2e/scripts/controlplane.sh up "$work/cluster" >/dev/null
export KUBECONFIG="$work/cluster/admin.kubeconfig"
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
cli() { redis-cli -p "$redis_port" "$@"; }

api_port=$(free_port)
metrics_port=$(free_port)
say "helm install levee charts/levee (replicas=0: levee runs here, its metrics API behind an ExternalName Service)"
helm install levee charts/levee --namespace levee-system --create-namespace \
  --set replicas=0 --set metricsApi.service.externalName=localhost \
  --set metricsApi.service.port="$api_port" >/dev/null
kubectl wait --for condition=Established crd/backpressurepolicies.levee.dev --timeout=60s >/dev/null

# levee as its own ServiceAccount, with the certificate the chart generated.
token=$(kubectl -n levee-system create token levee --duration=1h)
server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' \
  | base64 -d > "$work/cluster-ca.crt"
KUBECONFIG="$work/levee.kubeconfig" kubectl config set-cluster demo --server "$server" \
  --certificate-authority "$work/cluster-ca.crt" --embed-certs >/dev/null
KUBECONFIG="$work/levee.kubeconfig" kubectl config set-credentials levee --token "$token" >/dev/null
KUBECONFIG="$work/levee.kubeconfig" kubectl config set-context levee --cluster demo --user levee >/dev/null
KUBECONFIG="$work/levee.kubeconfig" kubectl config use-context levee >/dev/null
for key in tls.crt tls.key; do
  kubectl -n levee-system get secret levee-tls -o jsonpath="{.data.${key//./\\.}}" | base64 -d > "$work/$key"
done
KUBECONFIG="$work/levee.kubeconfig" POD_NAMESPACE=levee-system RUST_LOG=info "$levee" run \
  --metrics-addr "127.0.0.1:$metrics_port" --external-metrics-addr "127.0.0.1:$api_port" \
  --tls-cert-file "$work/tls.crt" --tls-key-file "$work/tls.key" --status-heartbeat 2s \
  > "$work/levee.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null && break; sleep 0.2; done
kubectl wait --for condition=Available apiservice/v1beta1.external.metrics.k8s.io --timeout=60s >/dev/null
say "levee is running; the external metrics API is Available through the aggregator"

say "kubectl apply -f examples/ (producer api: 3 pods behind a Service, worker: 1 pod, policy demo)"
kubectl create namespace jobs >/dev/null
sed 's/replicas: 2/replicas: 3/' examples/producer.yaml | kubectl apply -f - >/dev/null
kubectl apply -f examples/worker.yaml >/dev/null
sed "s|redis://127.0.0.1:6379/0|redis://127.0.0.1:$redis_port/0|" examples/demo-policy.yaml | kubectl apply -f - >/dev/null

pending_path="/apis/external.metrics.k8s.io/v1beta1/namespaces/jobs/levee_pending?labelSelector=policy%3Ddemo"
observe() { # prints: state level pending accepting-pods endpoints worker-replicas
  local state pending accepting endpoints workers
  state=$(kubectl -n jobs get bpp demo -o jsonpath='{.status.state} {.status.level}' 2>/dev/null)
  pending=$(kubectl get --raw "$pending_path" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["value"])' 2>/dev/null || echo "-")
  accepting=$(kubectl -n jobs get pods -l app=api -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="levee.dev/accepting")].status}{"\n"}{end}' | grep -c True || true)
  endpoints=$(kubectl -n jobs get endpointslices -l kubernetes.io/service-name=api -o jsonpath='{range .items[*].endpoints[*]}{.conditions.ready}{"\n"}{end}' | grep -c true || true)
  workers=$(kubectl -n jobs get deploy worker -o jsonpath='{.spec.replicas}')
  echo "${state:-- -} $pending $accepting $endpoints $workers"
}
until [ "$(observe | cut -d' ' -f1,4)" = "Closed 3" ]; do sleep 0.5; done
kubectl -n jobs get bpp demo
say "Closed: 3 of 3 api pods accepting and in the Service; 1 worker"

say "producers push a burst: 2,400 jobs in 2 s (two queues)"
for round in $(seq 4); do
  args=(); for i in $(seq 300); do args+=("job-$round-$i"); done
  cli RPUSH bull:demo-events:wait "${args[@]}" >/dev/null
  cli RPUSH demo:retry "${args[@]}" >/dev/null
  sleep 0.5
done

# Workers drain 5 jobs per replica per queue every half second, so scaling them out shows.
last="" last_said=0 peak=0 peak_workers=1 opened="" closed=""
deadline=$((SECONDS + 150))
while [ $SECONDS -lt $deadline ]; do
  read -r state level pending accepting endpoints workers <<<"$(observe)"
  # A line when the circuit, the producers or the workers change, else every 5 s.
  now="$state $level accepting=$accepting/3 in-service=$endpoints/3 workers=$workers"
  if [ "$now" != "$last" ] || [ $((SECONDS - last_said)) -ge 5 ]; then
    say "$state $level pending=$pending producers accepting=$accepting/3 in-service=$endpoints/3 workers=$workers"
    last=$now last_said=$SECONDS
  fi
  [[ "$pending" =~ ^[0-9]+$ ]] && [ "$pending" -gt "$peak" ] && peak=$pending
  [[ "$workers" =~ ^[0-9]+$ ]] && [ "$workers" -gt "$peak_workers" ] && peak_workers=$workers
  [ "$state" = Open ] && [ -z "$opened" ] && opened=$((SECONDS - started))
  if [ -n "$opened" ] && [ "$state" = Closed ]; then
    [ -z "$closed" ] && closed=$((SECONDS - started))
    [ "$workers" = 1 ] && [ "$accepting" = 3 ] && break
  fi
  for key in bull:demo-events:wait demo:retry; do cli LPOP "$key" $((5 * ${workers:-1})) >/dev/null; done
  sleep 0.5
done

echo
say "summary"
kubectl -n jobs get bpp demo
kubectl -n jobs get events --field-selector involvedObject.kind=BackpressurePolicy \
  --sort-by=.metadata.creationTimestamp -o custom-columns=REASON:.reason,MESSAGE:.message --no-headers \
  | sed 's/^/      /'
echo "      peak pending $peak; workers scaled 1 -> $peak_workers -> $workers; circuit Open at ${opened:-never}s, Closed at ${closed:-never}s"
if [ -z "$opened" ] || [ -z "$closed" ] || [ "$workers" != 1 ] || [ "$accepting" != 3 ]; then
  echo "demo: the circuit did not open and recover, or the workers did not scale back, within 150 s" >&2
  exit 1
fi
say "done: the burst opened the circuit, the producers were held back, the HPA scaled the workers out and back in; stopping everything"
