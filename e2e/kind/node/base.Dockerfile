# kind's node base (kind v0.33.0 images/base/Dockerfile), built with no pull: FROM a Debian rootfs
# made here with debootstrap and `docker import`ed, kind's own files from its Go module, and
# containerd, runc, crictl and the CNI plugins built here from their Go modules at kind's versions.
# e2e/kind/node-image.sh stages the context (files/, bin/, cni/) and names the FROM image.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE} AS build
COPY files/ /
# kind's packages (images/base/Dockerfile) but nfs-common, open-iscsi and fuse-overlayfs (network
# storage tests and rootless mode, which levee's suite uses neither of).
RUN chmod 0755 /kind /kind/bin /kind/bin/* /usr/local/bin/* \
    && DEBIAN_FRONTEND=noninteractive clean-install \
      systemd \
      conntrack iptables nftables iproute2 ethtool util-linux mount kmod \
      libseccomp2 pigz \
      e2fsprogs \
      bash ca-certificates curl jq procps \
    && find /lib/systemd/system/sysinit.target.wants/ -name "systemd-tmpfiles-setup.service" -delete \
    && rm -f /lib/systemd/system/multi-user.target.wants/* \
    && rm -f /etc/systemd/system/*.wants/* \
    && rm -f /lib/systemd/system/local-fs.target.wants/* \
    && rm -f /lib/systemd/system/sockets.target.wants/*udev* \
    && rm -f /lib/systemd/system/sockets.target.wants/*initctl* \
    && rm -f /lib/systemd/system/basic.target.wants/* \
    && echo "ReadKMsg=no" >> /etc/systemd/journald.conf \
    && ln -sf /usr/lib/systemd/systemd /sbin/init \
    && systemctl enable kubelet.service \
    && systemctl enable containerd.service \
    && systemctl enable undo-mount-hacks.service \
    && systemctl mask systemd-binfmt.service \
    && mkdir -p /etc/kubernetes/manifests
COPY bin/containerd bin/ctr bin/containerd-shim-runc-v2 bin/crictl /usr/local/bin/
COPY bin/runc /usr/local/sbin/runc
COPY cni/ /opt/cni/bin/
# levee's: without CAP_SYS_RESOURCE (some sandboxes), restrict_oom_score_adj (see the script)
COPY restrict-oom-score-adj.sh /kind/bin/
COPY 10-restrict-oom-score-adj.conf /etc/systemd/system/containerd.service.d/
# The sandbox (pause) image is the one kubeadm of this Kubernetes asks for, preloaded below.
ARG PAUSE_IMAGE
RUN ctr oci spec \
        | jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
        | jq 'del(.process.rlimits)' \
        > /etc/containerd/cri-base.json \
    && sed -i "s#^\(\s*sandbox_image = \).*#\1\"${PAUSE_IMAGE}\"#" /etc/containerd/config.toml \
    && grep -q "sandbox_image = \"${PAUSE_IMAGE}\"" /etc/containerd/config.toml \
    && chmod 0755 /kind/bin/restrict-oom-score-adj.sh \
    && grep -q '^\s*restrict_oom_score_adj = false' /etc/containerd/config.toml \
    && containerd --version && runc --version && crictl --version

# one layer, no whiteouts (as kind does)
FROM scratch
COPY --from=build / /
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]
