#!/usr/bin/env bash
# kind's node image, built here with no registry (nothing is pulled, ever):
#   - a Debian rootfs made with debootstrap and `docker import`ed;
#   - kind's base (e2e/kind/node/base.Dockerfile: kind v0.33.0's images/base, its files taken
#     from the kind Go module) with containerd, runc, crictl and the CNI plugins built from their
#     Go modules at the versions kind v0.33.0 pins;
#   - Kubernetes (kubelet, kubeadm, kubectl, kube-apiserver, kube-controller-manager,
#     kube-scheduler, kube-proxy) and etcd from the modules of e2e/controlplane/go.mod;
#   - every image the node runs, built here and imported into the node's containerd: the
#     control-plane components, kube-proxy, etcd, CoreDNS (the plugins of e2e/kind/coredns/main.go)
#     and pause at the tags kubeadm asks for,
#     local-path-provisioner (kind's default storage), and a busybox (Debian's busybox-static) that
#     writes the CNI configuration (e2e/kind/node/cni.yaml: kind's kindnetd has no source here).
#
#   e2e/kind/node-image.sh [build]   build or reuse it; prints its name (levee-kind/node:...)
#   e2e/kind/node-image.sh kind      build or reuse kind itself; prints its path
#   e2e/kind/node-image.sh coredns   build or reuse CoreDNS; prints the directory holding it
#   e2e/kind/node-image.sh debian    the Debian rootfs image; prints its name
#   e2e/kind/node-image.sh base      kind's base image (no Kubernetes); prints its name
#   e2e/kind/node-image.sh busybox   the busybox image (Debian's busybox-static); prints its name
#
# Everything is cached in ${LEVEE_CACHE:-~/.cache/levee}/kind under hashes of its inputs (each
# part under its own, so a change to one rebuilds only what depends on it), and the node image
# itself as a compressed `docker save` there, loaded back when Docker has lost it. Heavy builds
# run under `nice -n 19`. Timings go to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${LEVEE_CACHE:-$HOME/.cache/levee}/kind"

KIND_VERSION=v0.33.0
# kind v0.33.0's images/base/Dockerfile
CONTAINERD_VERSION=v2.3.4
RUNC_VERSION=v1.4.3
CRICTL_VERSION=v1.36.0
CNI_PLUGINS_VERSION=v1.9.1
# kubeadm v1.36.3's (cmd/kubeadm/app/constants): etcd 3.6.8-0, CoreDNS v1.14.2, pause 3.10.2
# (etcd's version is e2e/controlplane/go.mod's go.etcd.io/etcd/server/v3, v3.6.8: the same)
ETCD_TAG=3.6.8-0
COREDNS_VERSION=v1.14.2
PAUSE_TAG=3.10.2
# kind v0.33.0 builds v0.0.34 (images/local-path-provisioner/Makefile), which the Go module proxy
# refuses ("This module version is not available"); v0.0.30 is the newest it serves.
LOCAL_PATH_VERSION=v0.0.30
SUITE=trixie
KUBE_VERSION="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$root/e2e/controlplane/go.mod")"

log() { echo "node-image: $*" >&2; }
# key PARTS...: a short hash of its arguments and the Go toolchain
key() { { go env GOVERSION GOOS GOARCH; printf '%s\n' "$@"; } | sha256sum | cut -c1-12; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
timed() { # timed WHAT CMD...: runs CMD, logs how long it took
  local what="$1" start=$SECONDS
  shift
  "$@"
  log "$what: $((SECONDS - start))s"
}

# go_tools NAME CGO TAGS LDFLAGS PKG@VERSION...: `go install`s them into a cached directory;
# prints it
go_tools() {
  local name="$1" cgo="$2" tags="$3" ldflags="-s -w $4" dir tmp
  shift 4
  dir="$cache/bin/$name-$(key "$cgo" "$tags" "$ldflags" "$@")"
  if [[ ! -d "$dir" && -z "$names_only" ]]; then
    tmp="$dir.tmp.$$"
    rm -rf "$tmp"
    log "building $name ($*)"
    timed "$name built" env GOBIN="$tmp" GOFLAGS=-mod=mod CGO_ENABLED="$cgo" \
      nice -n 19 go install -trimpath -ldflags="$ldflags" -tags "$tags" "$@" >&2
    mv "$tmp" "$dir"
  fi
  echo "$dir"
}

kind_bin() {
  echo "$(go_tools kind 0 "" "" "sigs.k8s.io/kind@$KIND_VERSION")/kind"
}

kind_module() { # the kind module's source (for images/base/files and the storage manifest)
  GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" |
    sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'
}

# Kubernetes' binaries, built the way e2e/scripts/controlplane.sh builds its binary: the same
# go.mod and go.sum (the replace block pins the staging modules), the same version ldflags.
kube_bins() {
  local major minor flags pkg dir tmp
  major="${KUBE_VERSION#v}"; major="${major%%.*}"
  minor="${KUBE_VERSION#v*.}"; minor="${minor%%.*}"
  flags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit="
  done
  dir="$cache/bin/kubernetes-$(key "$flags" "$(cat "$root/e2e/controlplane/go.mod" "$root/e2e/controlplane/go.sum")")"
  if [[ ! -d "$dir" && -z "$names_only" ]]; then
    tmp="$dir.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp/src" "$tmp/bin"
    sed 's#^module .*#module levee.dev/e2e/kind/kubernetes#' "$root/e2e/controlplane/go.mod" >"$tmp/src/go.mod"
    cp "$root/e2e/controlplane/go.sum" "$tmp/src/"
    echo 'package kubernetes' >"$tmp/src/doc.go"
    log "building Kubernetes $KUBE_VERSION (a cold build takes tens of minutes)"
    (cd "$tmp/src" && timed "Kubernetes built" env CGO_ENABLED=0 nice -n 19 go build -mod=mod -trimpath \
      -ldflags="$flags" -o "$tmp/bin/" \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kubectl \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy >&2)
    # etcd at the version e2e/controlplane embeds (its module has replace directives: no go install)
    (cd "$tmp/src" && timed "etcd built" env CGO_ENABLED=0 nice -n 19 go build -mod=mod -trimpath \
      -ldflags='-s -w' -o "$tmp/bin/etcd" go.etcd.io/etcd/server/v3 >&2)
    mv "$tmp/bin" "$dir"
    rm -rf "$tmp"
    find "$cache/bin" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' ! -path "$dir" -exec rm -rf {} + # older ones
  fi
  echo "$dir"
}

# A Debian $SUITE rootfs (debootstrap, minbase) as a Docker image.
debian_image() {
  local mirror image tmp
  image="levee-kind/debian:$SUITE-$(key debootstrap minbase "$SUITE")"
  if [[ -z "$names_only" ]] && ! have_image "$image"; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 debootstrap >&2
    # the machine's own Debian mirror
    mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
      sed -n -E 's#^(deb|URIs:)[[:space:]]+(\[[^]]*\][[:space:]]+)?(https?://[^ ]*/debian)/?([[:space:]].*)?$#\3#p' | head -n1 || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    tmp="$(mktemp -d -p "$cache" rootfs.XXXXXX)"
    log "debootstrap $SUITE from $mirror"
    timed "debootstrap" sh -c 'nice -n 19 debootstrap --variant=minbase "$@" >"$0" 2>&1' \
      "$cache/debootstrap.log" "$SUITE" "$tmp" "$mirror" || { tail -n 20 "$cache/debootstrap.log" >&2; return 1; }
    tar -C "$tmp" -c . | docker import - "$image" >/dev/null
    rm -rf "$tmp"
  fi
  echo "$image"
}

# docker_build IMAGE CONTEXT [ARGS...]: the legacy builder (no BuildKit, nothing pulled)
docker_build() {
  local image="$1" ctx="$2" out
  shift 2
  out="$(DOCKER_BUILDKIT=0 docker build "$@" -t "$image" "$ctx" 2>&1)" || { echo "$out" >&2; return 1; }
}

# The node's base: kind's images/base on our Debian, with our containerd, runc, crictl, CNI.
base_image() {
  local debian="$1" containerd runc crictl cni kmod image ctx
  containerd="$(go_tools containerd 0 "no_aufs no_zfs no_btrfs no_devmapper" \
    "-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION")"
  # runc needs cgo (nsenter) and libseccomp
  dpkg -s libseccomp-dev >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 libseccomp-dev >&2
  runc="$(go_tools runc 1 "seccomp urfave_cli_no_docs" "" "github.com/opencontainers/runc@$RUNC_VERSION")"
  crictl="$(go_tools crictl 0 "" "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION")"
  cni="$(go_tools cni-plugins 0 "" "" \
    "github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_PLUGINS_VERSION" \
    "github.com/containernetworking/plugins/plugins/main/loopback@$CNI_PLUGINS_VERSION" \
    "github.com/containernetworking/plugins/plugins/main/ptp@$CNI_PLUGINS_VERSION" \
    "github.com/containernetworking/plugins/plugins/meta/portmap@$CNI_PLUGINS_VERSION")"
  image="levee-kind/base:$(key "$debian" "$containerd" "$runc" "$crictl" "$cni" "$KIND_VERSION" \
    "$PAUSE_TAG" "$(cat "$here/node/base.Dockerfile" "$here/node/restrict-oom-score-adj.sh" \
    "$here/node/10-restrict-oom-score-adj.conf")")"
  if [[ -z "$names_only" ]] && ! have_image "$image"; then
    kmod="$(kind_module)"
    ctx="$(mktemp -d -t levee-kind-base.XXXXXX)"
    cp -r "$kmod/images/base/files" "$ctx/files"
    chmod -R u+w "$ctx/files"
    find "$ctx/files" -type d -exec chmod 0755 {} +
    find "$ctx/files" -type f -exec chmod 0644 {} +
    chmod 0755 "$ctx/files/usr/local/bin/"* "$ctx/files/kind/bin/"*
    mkdir "$ctx/bin"
    cp "$containerd"/* "$runc"/* "$crictl"/* "$ctx/bin/"
    cp -r "$cni" "$ctx/cni"
    cp "$here/node/base.Dockerfile" "$ctx/Dockerfile"
    cp "$here/node/restrict-oom-score-adj.sh" "$here/node/10-restrict-oom-score-adj.conf" "$ctx/"
    log "building $image"
    timed "base image built" docker_build "$image" "$ctx" --build-arg "DEBIAN_IMAGE=$debian" \
      --build-arg "PAUSE_IMAGE=registry.k8s.io/pause:$PAUSE_TAG"
    rm -rf "$ctx"
  fi
  echo "$image"
}

# static_root DIR: the files an image of one static binary needs (distroless's, in short)
static_root() {
  mkdir -p "$1/etc/ssl/certs" "$1/tmp"
  chmod 1777 "$1/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$1/etc/group"
  echo 'hosts: files dns' >"$1/etc/nsswitch.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/"
}

# image_of IMAGE DOCKERFILE FILES...: builds IMAGE from DOCKERFILE (text) with FILES in its context
image_of() {
  local image="$1" dockerfile="$2" ctx
  shift 2
  ctx="$(mktemp -d -t levee-kind-img.XXXXXX)"
  static_root "$ctx/root"
  cp "$@" "$ctx/"
  printf '%s\n' "$dockerfile" >"$ctx/Dockerfile"
  docker_build "$image" "$ctx"
  rm -rf "$ctx"
}

# CoreDNS at kubeadm's version with the plugins of e2e/kind/coredns/main.go only (a module of its
# own beside that main, requiring CoreDNS alone, so its dependencies resolve as upstream's own
# go.mod selects them); prints the directory holding `coredns`.
coredns_bin() {
  local main="$here/coredns/main.go" dir tmp
  dir="$cache/bin/coredns-$(key "$COREDNS_VERSION" "-s -w" "$(cat "$main")")"
  if [[ ! -d "$dir" && -z "$names_only" ]]; then
    tmp="$dir.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp/src" "$tmp/bin"
    cp "$main" "$tmp/src/"
    printf 'module levee.dev/e2e/kind/coredns\n\ngo 1.25\n\nrequire github.com/coredns/coredns %s\n' \
      "$COREDNS_VERSION" >"$tmp/src/go.mod"
    log "building CoreDNS $COREDNS_VERSION (the plugins of $main)"
    (cd "$tmp/src" && timed "coredns built" env CGO_ENABLED=0 GOFLAGS=-mod=mod nice -n 19 \
      go build -trimpath -ldflags='-s -w' -o "$tmp/bin/coredns" . >&2)
    mv "$tmp/bin" "$dir"
    rm -rf "$tmp"
  fi
  echo "$dir"
}

# The images the node runs, as `docker save` archives in a cached directory; prints it.
node_images() {
  local debian="$1" kube="$2" coredns lpp dir tmp c pause_src
  coredns="$(coredns_bin)"
  lpp="$(go_tools local-path-provisioner 0 "" "" "github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION")"
  pause_src="$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
    sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')/build/pause/linux/pause.c"
  dir="$cache/images/$(key "$debian" "$kube" "$coredns" "$lpp" "$PAUSE_TAG" "$(cat "$pause_src")" \
    "$(declare -f node_images image_of static_root)")"
  if [[ -d "$dir" || -n "$names_only" ]]; then
    echo "$dir"
    return
  fi
  tmp="$dir.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  local start=$SECONDS
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    image_of "registry.k8s.io/$c:$KUBE_VERSION" "FROM scratch
COPY root/ /
COPY $c /usr/local/bin/$c
ENV PATH=/usr/local/bin:/usr/bin:/bin
USER 0:0
ENTRYPOINT [\"/usr/local/bin/$c\"]" "$kube/$c"
  done
  # kube-proxy runs iptables/nft: Debian's, on our Debian rootfs
  local ctx
  ctx="$(mktemp -d -t levee-kind-img.XXXXXX)"
  cp "$kube/kube-proxy" "$ctx/"
  printf '%s\n' "FROM $debian" \
    "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables nftables conntrack ipset kmod && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*" \
    "COPY kube-proxy /usr/local/bin/kube-proxy" >"$ctx/Dockerfile"
  docker_build "registry.k8s.io/kube-proxy:$KUBE_VERSION" "$ctx"
  rm -rf "$ctx"
  image_of "registry.k8s.io/etcd:$ETCD_TAG" "FROM scratch
COPY root/ /
COPY etcd /usr/local/bin/etcd
ENV PATH=/usr/local/bin:/usr/bin:/bin
ENTRYPOINT [\"/usr/local/bin/etcd\"]" "$kube/etcd"
  image_of "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "FROM scratch
COPY root/ /
COPY coredns /coredns
EXPOSE 53 53/udp
ENTRYPOINT [\"/coredns\"]" "$coredns/coredns"
  # pause: Kubernetes' own C source, static
  gcc -Os -static -DVERSION="$PAUSE_TAG" -o "$tmp/pause" "$pause_src"
  strip "$tmp/pause"
  image_of "registry.k8s.io/pause:$PAUSE_TAG" "FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT [\"/pause\"]" "$tmp/pause"
  rm "$tmp/pause"
  # busybox (Debian's busybox-static): the CNI writer, local-path's helper
  busybox_image "$debian" "levee-kind/busybox:$SUITE"
  image_of "levee-kind/local-path-provisioner:$LOCAL_PATH_VERSION" "FROM scratch
COPY root/ /
COPY local-path-provisioner /usr/local/bin/local-path-provisioner
ENTRYPOINT [\"/usr/local/bin/local-path-provisioner\"]" "$lpp/local-path-provisioner"
  for c in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
    docker save "registry.k8s.io/$c:$KUBE_VERSION" >"$tmp/$c.tar"
  done
  docker save "registry.k8s.io/etcd:$ETCD_TAG" >"$tmp/etcd.tar"
  docker save "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" >"$tmp/coredns.tar"
  docker save "registry.k8s.io/pause:$PAUSE_TAG" >"$tmp/pause.tar"
  docker save "levee-kind/busybox:$SUITE" >"$tmp/busybox.tar"
  docker save "levee-kind/local-path-provisioner:$LOCAL_PATH_VERSION" >"$tmp/local-path-provisioner.tar"
  # A build above that failed leaves no image, and `docker save` then an empty archive (this runs
  # in a command substitution, where a failure does not stop the script): never cache that.
  for c in "$tmp"/*.tar; do
    if [[ ! -s "$c" ]]; then
      echo "node-image: $(basename "$c") is empty: its image failed to build (above)" >&2
      rm -rf "$tmp"
      exit 1
    fi
  done
  mv "$tmp" "$dir"
  find "$cache/images" -mindepth 1 -maxdepth 1 -type d ! -path "$dir" -exec rm -rf {} + # older ones
  log "node's images built: $((SECONDS - start))s"
  echo "$dir"
}

# busybox_image DEBIAN IMAGE: Debian's busybox-static on an empty base (also a test image)
busybox_image() {
  local debian="$1" image="$2" ctx
  have_image "$image" && return
  ctx="$(mktemp -d -t levee-kind-img.XXXXXX)"
  docker run --rm -v "$ctx:/out" "$debian" sh -c \
    'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 busybox-static >/dev/null 2>&1 && cp /bin/busybox /out/' >&2
  mkdir -p "$ctx/root/bin" "$ctx/root/tmp" "$ctx/root/etc"
  chmod 1777 "$ctx/root/tmp"
  mv "$ctx/busybox" "$ctx/root/bin/busybox"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$ctx/root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$ctx/root/etc/group"
  printf '%s\n' "FROM scratch" "COPY root/ /" 'RUN ["/bin/busybox", "--install", "-s", "/bin"]' \
    "ENV PATH=/bin" 'CMD ["/bin/sh"]' >"$ctx/Dockerfile"
  docker_build "$image" "$ctx"
  rm -rf "$ctx"
}

# assemble IMAGE BASE KUBE IMAGES: what `kind build node-image` does, with no pull: the binaries
# in /usr/bin, /kind/version, the CNI and storage manifests, the images imported into containerd.
assemble() {
  local image="$1" base="$2" kube="$3" images="$4" id kmod b tar
  kmod="$(kind_module)"
  id="levee-kind-build-$$"
  docker run -d --name "$id" --entrypoint=sleep --security-opt seccomp=unconfined "$base" infinity >/dev/null
  # shellcheck disable=SC2064
  trap "docker rm -f -v $id >/dev/null 2>&1 || true" RETURN
  for b in kubelet kubeadm kubectl; do
    docker cp "$kube/$b" "$id:/usr/bin/$b"
  done
  docker exec "$id" sh -c 'chown root:root /usr/bin/kube* && chmod 0755 /usr/bin/kube* && mkdir -p /kind/manifests'
  printf '%s' "$KUBE_VERSION" | docker exec -i "$id" sh -c 'cat >/kind/version'
  sed "s#BUSYBOX_IMAGE#levee-kind/busybox:$SUITE#" "$here/node/cni.yaml" |
    docker exec -i "$id" sh -c 'cat >/kind/manifests/default-cni.yaml'
  # kind's own storage manifest (its Go source), with our images
  awk '/^const defaultStorageManifest = `/ { on = 1; next } on && /^`/ { exit } on' \
    "$kmod/pkg/build/nodeimage/const_storage.go" |
    sed -e "s#\` + storageProvisionerImage + \`#levee-kind/local-path-provisioner:$LOCAL_PATH_VERSION#" \
      -e "s#\` + storageHelperImage + \`#levee-kind/busybox:$SUITE#" |
    docker exec -i "$id" sh -c 'cat >/kind/manifests/default-storage.yaml'
  docker exec "$id" grep -q "levee-kind/local-path-provisioner" /kind/manifests/default-storage.yaml
  docker exec "$id" bash -c 'nohup containerd >/tmp/containerd.log 2>&1 &
    for i in $(seq 50); do [ -S /run/containerd/containerd.sock ] && ctr version >/dev/null 2>&1 && exit 0; sleep 0.2; done
    cat /tmp/containerd.log; exit 1'
  for tar in "$images"/*.tar; do
    docker exec -i "$id" ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned \
      --all-platforms --no-unpack --digests - <"$tar" 2>&1 >/dev/null | { grep -v 'cgroup v1 is deprecated' >&2 || true; }
  done
  docker exec "$id" ctr --namespace=k8s.io images list -q | grep -v -e '^sha256:' -e '^import-' >&2
  # (sleep, PID 1 here, reaps nobody: wait for a zombie)
  docker exec "$id" sh -c 'pkill -x containerd; while ps -C containerd -o stat= | grep -qv Z; do sleep 0.2; done; rm -f /tmp/containerd.log'
  docker commit \
    --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' \
    --change 'ENV HTTP_PROXY="" HTTPS_PROXY="" NO_PROXY=""' \
    "$id" "$image" >/dev/null
}

# node_image: the node image's name for these inputs; with names_only set, builds nothing
node_image() {
  local debian kube base images
  debian="$(debian_image)"
  kube="$(kube_bins)"
  base="$(base_image "$debian")"
  images="$(node_images "$debian" "$kube")"
  echo "levee-kind/node:$KUBE_VERSION-$(key "$base" "$kube" "$images" "$(cat "$here/node/cni.yaml")" \
    "$(declare -f assemble)")"
}

names_only=""

build() {
  local debian kube base images image archive start=$SECONDS
  mkdir -p "$cache"
  # One build at a time (scripts/prebuild.sh starts one in the background): whoever comes second
  # waits for it, then finds the image built.
  exec 9>"$cache/build.lock"
  flock 9
  # Cached (in Docker or as an archive): nothing else is needed, not even the parts.
  image="$(names_only=1 node_image)"
  archive="$cache/${image//[:\/]/_}.tar.zst"
  if ! have_image "$image"; then
    if [[ -f "$archive" ]]; then
      log "loading $image from $archive"
      timed "loaded" sh -c "zstd -dc '$archive' | docker load >/dev/null"
    else
      debian="$(debian_image)"
      kube="$(kube_bins)"
      base="$(base_image "$debian")"
      images="$(node_images "$debian" "$kube")"
      [[ "$(node_image)" == "$image" ]] # the same inputs, the same name
      log "assembling $image"
      timed "node image assembled" assemble "$image" "$base" "$kube" "$images"
      timed "node image saved to $archive" sh -c "docker save '$image' | nice -n 19 zstd -q -T0 -3 -o '$archive.tmp' && mv '$archive.tmp' '$archive'"
      # older node images are dead weight (about 400 MB each)
      find "$cache" -maxdepth 1 -name 'levee-kind_node_*.tar.zst' ! -path "$archive" -delete
    fi
  fi
  log "$image ready ($((SECONDS - start))s; $(($(docker image inspect -f '{{.Size}}' "$image") / 1024 / 1024)) MiB)"
  echo "$image"
}

case "${1:-build}" in
  build) build ;;
  kind) kind_bin ;;
  coredns) coredns_bin ;;
  debian) debian_image ;;
  base) base_image "$(debian_image)" ;;
  busybox) image="levee-kind/busybox:$SUITE"; busybox_image "$(debian_image)" "$image"; echo "$image" ;;
  *) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
