#!/usr/bin/env bash
# The images the kind suite runs besides levee's, built here with no pull; prints their names.
#   levee-e2e/redis:<v>     Debian's redis-server (the binary and the libraries it links) on an
#                           empty base
#   levee-e2e/producer:1    Debian's busybox-static + e2e/kind/images/producer.sh
#   levee-e2e/worker:1      Debian's busybox-static + e2e/kind/images/worker.sh
# Images already in Docker are reused (their tags carry a hash of what they are made of).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
debian="$("$here/node-image.sh" debian)"
busybox="$("$here/node-image.sh" busybox)"
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
build() { # build IMAGE CONTEXT: the legacy builder (nothing pulled); its output only if it fails
  local out
  out="$(DOCKER_BUILDKIT=0 docker build -t "$1" "$2" 2>&1)" || { echo "$out" >&2; return 1; }
}
tag() { { echo "$debian $busybox"; cat "$@"; } | sha256sum | cut -c1-8; }

redis="levee-e2e/redis:$(tag "${BASH_SOURCE[0]}")"
if ! have_image "$redis"; then
  ctx="$(mktemp -d -t levee-e2e-redis.XXXXXX)"
  # redis-server and its shared libraries, copied out of a Debian container
  docker run --rm -v "$ctx:/out" "$debian" bash -ec '
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1
    mkdir -p /out/root/usr/bin /out/root/tmp /out/root/data /out/root/etc
    cp /usr/bin/redis-server /usr/bin/redis-cli /out/root/usr/bin/
    for lib in $(ldd /usr/bin/redis-server /usr/bin/redis-cli | grep -oE "/[^ ]+\.so[^ ]*" | sort -u); do
      mkdir -p "/out/root$(dirname "$lib")"; cp -L "$lib" "/out/root$lib"
    done
    printf "root:x:0:0:root:/root:/bin/false\nredis:x:999:999:redis:/data:/bin/false\n" >/out/root/etc/passwd
    printf "root:x:0:\nredis:x:999:\n" >/out/root/etc/group
    chmod 1777 /out/root/tmp; chown 999:999 /out/root/data
    redis-server --version >/out/version'
  echo "test-images: $(cat "$ctx/version")" >&2
  printf '%s\n' "FROM scratch" "COPY root/ /" "USER 999:999" "WORKDIR /data" "EXPOSE 6379" \
    'ENTRYPOINT ["/usr/bin/redis-server"]' \
    'CMD ["--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no"]' >"$ctx/Dockerfile"
  build "$redis" "$ctx"
  rm -rf "$ctx"
fi

for role in producer worker; do
  image="levee-e2e/$role:$(tag "$here/images/$role.sh")"
  if ! have_image "$image"; then
    ctx="$(mktemp -d -t "levee-e2e-$role.XXXXXX")"
    install -m 0755 "$here/images/$role.sh" "$ctx/$role"
    printf '%s\n' "FROM $busybox" "COPY $role /bin/$role" "USER 65534:65534" "ENTRYPOINT [\"/bin/$role\"]" >"$ctx/Dockerfile"
    build "$image" "$ctx"
    rm -rf "$ctx"
  fi
  echo "$image"
done
echo "$redis"
