#!/usr/bin/env bash
# `make e2e-kind`, for machines with Docker and kind (it cannot run where there is no Docker
# engine, e.g. levee's CI machines, which use the local control plane instead):
#   1. creates the kind cluster of e2e/kind/cluster.yaml (deleted again at the end);
#   2. builds levee's image (Dockerfile) and loads it into the node (`kind load`);
#   3. `helm install`s charts/levee with that image and checks the in-cluster deployment: both
#      replicas Ready (real probes, non-root, read-only root), one of them holding the Lease, the
#      APIService Available through the ClusterIP Service with the chart's CA, and discovery of
#      external.metrics.k8s.io answering through the aggregator;
#   4. uninstalls it and runs the end-to-end suite (e2e/tests, the same code as `make e2e`)
#      against the kind cluster: levee runs as a local process, the HPA controller, kubelet,
#      EndpointSlices and aggregator are kind's. The metrics API test reaches that process through
#      the kind network's gateway (LEVEE_E2E_HOST_ADDRESS).
set -euo pipefail
cd "$(dirname "$0")/../.."
cluster="${KIND_CLUSTER_NAME:-levee-e2e}"
image="levee:e2e"
for tool in docker kind; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is required (make e2e needs neither)" >&2; exit 2; }
done
bin_dir="$PWD/.cache/bin"
e2e/scripts/tools.sh install "$bin_dir" >/dev/null
e2e/scripts/promtool.sh install "$bin_dir" >/dev/null
export PATH="$bin_dir:$PATH"

kubeconfig="$(mktemp -t levee-kind.XXXXXX)"
cleanup() {
  kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  rm -f "$kubeconfig"
}
trap cleanup EXIT
kind create cluster --name "$cluster" --config e2e/kind/cluster.yaml --kubeconfig "$kubeconfig" --wait 120s
export KUBECONFIG="$kubeconfig"

docker build -t "$image" .
kind load docker-image "$image" --name "$cluster"

echo "e2e-kind: helm install of the chart with $image"
helm install levee charts/levee --namespace levee-system --create-namespace \
  --set image.repository=levee --set image.tag=e2e --set image.pullPolicy=Never --wait --timeout 3m
kubectl -n levee-system rollout status deployment/levee --timeout=120s
holder=$(kubectl -n levee-system get lease levee -o jsonpath='{.spec.holderIdentity}')
kubectl -n levee-system get pod "$holder" >/dev/null # the Lease holder is one of the pods
kubectl wait --for condition=Available apiservice/v1beta1.external.metrics.k8s.io --timeout=120s
kubectl get --raw /apis/external.metrics.k8s.io/v1beta1 | grep -q levee_pending
echo "e2e-kind: in-cluster levee is Ready, led by $holder, and serves external.metrics.k8s.io"
helm uninstall levee --namespace levee-system --wait

gateway=$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | tr ' ' '\n' | grep -m1 '\.')
cargo build --bin levee
LEVEE_E2E_HOST_ADDRESS="$gateway" cargo test -p levee-e2e
