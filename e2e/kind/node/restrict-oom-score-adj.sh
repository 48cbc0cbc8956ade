#!/bin/sh
# ExecStartPre of containerd in the node (10-restrict-oom-score-adj.conf). Where the node lacks
# CAP_SYS_RESOURCE (some sandboxes, levee's CI machines among them, withhold it from dockerd, so
# even a privileged container has none), no process may lower an oom_score_adj: runc then fails
# every pod with "nsexec: failed to update /proc/self/oom_score_adj: Permission denied". There,
# containerd's restrict_oom_score_adj (what kind sets for rootless nodes) keeps each container's
# score at or above containerd's own. Elsewhere, nothing changes.
set -eu
bnd="$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)"
if [ $(((0x$bnd >> 24) & 1)) -eq 0 ]; then # CAP_SYS_RESOURCE is capability 24
  sed -i 's/^\(\s*restrict_oom_score_adj = \)false/\1true/' /etc/containerd/config.toml
fi
