#!/usr/bin/env bash
# `make e2e-kind`: levee's image running as pods in a kind cluster, built and run with no registry.
#
#   e2e/scripts/kind.sh [all]   up, then the kind suite (e2e/tests/kind.rs) against levee's pods,
#                               then down
#   e2e/scripts/kind.sh suite   `all` when a Docker daemon answers (or CI=true starts one); else
#                               says loudly why the kind suite was skipped and exits 0 (make test)
#   e2e/scripts/kind.sh up      create the cluster, load the images, helm install levee; leaves it
#                               running and prints KUBECONFIG=... (.cache/kind/kubeconfig)
#   e2e/scripts/kind.sh down    delete the cluster
#
# `up`:
#   1. makes sure Docker answers (scripts/docker.sh: exit 3 when it doesn't and CI isn't true);
#   2. kind: the one on PATH, or kind v0.33.0 built from its Go module (e2e/kind/node-image.sh);
#   3. the node image: LEVEE_KIND_NODE_IMAGE if set; else the offline one (e2e/kind/node-image.sh,
#      everything built here) when LEVEE_KIND_OFFLINE=1, CI=true or it was built before; else
#      kind's published default (users with a registry);
#   4. creates the cluster of e2e/kind/cluster.yaml; on a cgroup v1 host the kubelet's
#      KubeletConfiguration gets failCgroupV1: false (kubelet 1.35+ refuses v1 otherwise);
#   5. builds levee's image (make static, scripts/image.sh) and the test images
#      (e2e/kind/test-images.sh: Redis, a producer, a worker) and `kind load`s them;
#   6. `helm install`s charts/levee with levee running as pods (3 replicas sharing the policies,
#      leaderElection.ownership=shards, the chart's certificate) and checks: every replica Ready,
#      each holding its ring Lease, the APIService Available through the ClusterIP Service,
#      external.metrics.k8s.io discovery.
# The test images' names are in .cache/kind/images (role=image per line) for the suite.
# `all` then runs e2e/tests/kind.rs (ignored elsewhere): a burst, the policy's owner pod deleted,
# helm upgrade, the drain, the policies deleted and helm uninstall, all against levee's own pods.
# KIND_CLUSTER_NAME overrides the cluster's name (levee-e2e).
set -euo pipefail
cd "$(dirname "$0")/../.."
cluster="${KIND_CLUSTER_NAME:-levee-e2e}"
state="$PWD/.cache/kind"
kubeconfig="$state/kubeconfig"
image="${LEVEE_IMAGE:-levee:e2e}" # LEVEE_IMAGE: an image already built (skips make static/image)
log() { echo "e2e-kind: $*" >&2; }

kind_cmd() {
  if command -v kind >/dev/null 2>&1; then
    command -v kind
  else
    e2e/kind/node-image.sh kind
  fi
}

node_image() {
  if [[ -n "${LEVEE_KIND_NODE_IMAGE:-}" ]]; then
    echo "$LEVEE_KIND_NODE_IMAGE"
  elif [[ "${LEVEE_KIND_OFFLINE:-}" == 1 || "${CI:-}" == true ]] ||
    compgen -G "${LEVEE_CACHE:-$HOME/.cache/levee}/kind/levee-kind_node_*.tar.zst" >/dev/null; then
    e2e/kind/node-image.sh build
  fi # else kind's default
}

# e2e/kind/cluster.yaml, plus failCgroupV1: false when Docker's host runs cgroup v1
cluster_config() {
  cat e2e/kind/cluster.yaml
  if [[ "$(docker info -f '{{.CgroupVersion}}')" == 1 ]]; then
    printf '%s\n' "  - |" "    kind: KubeletConfiguration" "    failCgroupV1: false"
  fi
}

up() {
  local kind node config start=$SECONDS
  scripts/docker.sh
  mkdir -p "$state"
  kind="$(kind_cmd)"
  node="$(node_image)"
  config="$state/cluster.yaml"
  cluster_config >"$config"
  local bin_dir="$PWD/.cache/bin"
  e2e/scripts/tools.sh install "$bin_dir" >/dev/null
  export PATH="$bin_dir:$PATH"

  "$kind" delete cluster --name "$cluster" >/dev/null 2>&1 || true
  log "creating cluster $cluster (node image: ${node:-the default of kind})"
  "$kind" create cluster --name "$cluster" --config "$config" --kubeconfig "$kubeconfig" \
    ${node:+--image "$node"} --wait 180s
  export KUBECONFIG="$kubeconfig"
  kubectl -n kube-system wait --for=condition=Ready pod -l k8s-app=kube-dns --timeout=120s >/dev/null
  log "cluster up (node Ready, CoreDNS Ready) after $((SECONDS - start))s"

  if [[ -z "${LEVEE_IMAGE:-}" ]]; then
    scripts/static.sh >/dev/null
    IMAGE="$image" scripts/image.sh
  fi
  local images
  images="$(e2e/kind/test-images.sh)"
  {
    echo "levee=$image"
    echo "$images" | sed -E 's#^levee-e2e/([a-z]+):.*#\1=&#'
  } >"$state/images"
  # shellcheck disable=SC2086
  "$kind" load docker-image --name "$cluster" "$image" $images

  log "helm install of the chart with $image as pods"
  helm install levee charts/levee --namespace levee-system --create-namespace \
    --set image.repository="${image%:*}" --set image.tag="${image##*:}" --set image.pullPolicy=Never \
    --set replicas=3 --set leaderElection.ownership=shards --wait --timeout 3m
  kubectl -n levee-system rollout status deployment/levee --timeout=120s
  local holders=""
  for _ in $(seq 60); do
    holders="$(kubectl -n levee-system get leases -l levee.dev/shards=levee \
      -o jsonpath='{range .items[*]}{.spec.holderIdentity}{"\n"}{end}' 2>/dev/null || true)"
    [[ "$(grep -c . <<<"$holders")" == 3 ]] && break
    sleep 1
  done
  [[ "$(grep -c . <<<"$holders")" == 3 ]] || { log "three ring Leases expected, found: $holders"; exit 1; }
  local holder
  for holder in $holders; do
    kubectl -n levee-system get pod "$holder" >/dev/null # each ring Lease is held by one of the pods
  done
  kubectl wait --for condition=Available apiservice/v1beta1.external.metrics.k8s.io --timeout=120s
  kubectl get --raw /apis/external.metrics.k8s.io/v1beta1 | grep -q levee_pending
  log "levee runs as 3 pods sharing the policies ($(echo $holders)) and serves external.metrics.k8s.io ($((SECONDS - start))s)"
  echo "KUBECONFIG=$kubeconfig"
}

down() {
  "$(kind_cmd)" delete cluster --name "$cluster"
  rm -f "$kubeconfig"
}

all() {
  local start=$SECONDS
  trap down EXIT
  up
  export KUBECONFIG="$kubeconfig" PATH="$PWD/.cache/bin:$PATH"
  cargo test -p levee-e2e --test kind -- --ignored --nocapture
  log "the kind suite passed in $((SECONDS - start))s (cluster, images, install and tests)"
}

suite() {
  local why
  if ! why="$(scripts/docker.sh 2>&1)"; then
    {
      echo
      echo "################################################################################"
      echo "# make test: the kind suite (levee's image as pods on kind) was SKIPPED:"
      echo "#   $why"
      echo "# Everything else ran. CI=true make test installs and starts Docker and runs it."
      echo "################################################################################"
    } >&2
    echo "make test: the kind suite was SKIPPED (see above)" >&2
    return 0
  fi
  all
}

case "${1:-all}" in
  up | down | all | suite) "${1:-all}" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
