#!/usr/bin/env bash
# Renders manifests/ (plain YAML, `kubectl apply -f manifests/`) from charts/levee with its default
# values, except tls.userProvided=true: a rendered file cannot hold a generated key, so the
# Deployment mounts the Secret levee-tls and the APIService verifies levee against a caBundle,
# both written by one documented step (`levee serving-cert`, docs/operations.md#installing).
#   scripts/render-manifests.sh [OUTDIR]   (default: manifests; a test compares the two)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-manifests}"
helm="${HELM:-helm}"
mkdir -p "$out"
header="# Generated from charts/levee by scripts/render-manifests.sh (make manifests). Do not edit."
cat > "$out/00-namespace.yaml" <<YAML
$header
apiVersion: v1
kind: Namespace
metadata:
  name: levee-system
YAML
{ echo "$header"; cat charts/levee/crds/levee.dev_backpressurepolicies.yaml; } > "$out/01-crd.yaml"
{ echo "$header"; "$helm" template levee charts/levee --namespace levee-system --set tls.userProvided=true; } \
  > "$out/02-levee.yaml"
