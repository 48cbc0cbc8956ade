#!/usr/bin/env bash
# `make image`: levee's container image (Dockerfile, FROM scratch) from the static binary of
# `make static`, built with no pull. IMAGE overrides the tag (default levee:dev).
#   scripts/image.sh            build it (needs `make static` first and a Docker daemon)
set -euo pipefail
cd "$(dirname "$0")/.."
image="${IMAGE:-levee:dev}"
binary=target/x86_64-unknown-linux-musl/release/levee
ca=/etc/ssl/certs/ca-certificates.crt
[[ -x "$binary" ]] || { echo "image: $binary is missing: run make static" >&2; exit 1; }
[[ -f "$ca" ]] || { echo "image: no CA bundle at $ca (Debian: apt-get install ca-certificates)" >&2; exit 1; }
scripts/docker.sh

# The context holds only what the image holds, with fixed owners, modes and times, so the layers
# are the same for the same binary and CA bundle.
ctx="$(mktemp -d -t levee-image.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/root/etc/ssl/certs"
cp Dockerfile "$ctx/"
install -m 0755 "$binary" "$ctx/levee"
install -m 0644 "$ca" "$ctx/root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$ctx/root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$ctx/root/etc/group"
chmod 0644 "$ctx/root/etc/passwd" "$ctx/root/etc/group" "$ctx/Dockerfile"
find "$ctx/root" -type d -exec chmod 0755 {} +
find "$ctx" -exec touch -h -d @0 {} +
# the legacy builder (BuildKit needs buildx, not always installed); its output only if it fails
out="$(DOCKER_BUILDKIT=0 docker build -t "$image" "$ctx" 2>&1)" || { echo "$out" >&2; exit 1; }
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "image: $image ($((size / 1024 / 1024)) MiB; $(docker image inspect -f '{{.Id}}' "$image"))"
