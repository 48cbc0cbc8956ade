#!/usr/bin/env bash
# Builds (or reuses) nats-server from its Go module, for the JetStream tests (tests/nats.rs,
# e2e/tests/nats.rs), and NATS's own command-line tool (natscli's `nats`), whose `nats consumer
# info` gives the figures the tests compare levee's with.
#
#   scripts/nats-server.sh install BINDIR       nats-server into BINDIR; prints its path
#   scripts/nats-server.sh install-cli BINDIR   nats (natscli) into BINDIR; prints its path
#
# Cached in ${LEVEE_CACHE:-$HOME/.cache/levee} by version and Go version: a cold build takes about
# a minute (scripts/prebuild.sh starts it at the beginning of `make test`), a cached one nothing.
set -euo pipefail
source "$(dirname "$0")/lib/go-install.sh"

NATS_SERVER_VERSION=v2.15.3
# The newest natscli the module proxy served that builds on this Go (v0.5.1 is not to be used).
NATSCLI_VERSION=v0.5.0

case "${1:-}" in
  install)
    [[ $# -eq 2 ]] || { echo "usage: $0 install BINDIR" >&2; exit 2; }
    go_install_cached nats-server github.com/nats-io/nats-server/v2 "$NATS_SERVER_VERSION" "$2"
    echo "$(cd "$2" && pwd)/nats-server"
    ;;
  install-cli)
    [[ $# -eq 2 ]] || { echo "usage: $0 install-cli BINDIR" >&2; exit 2; }
    go_install_cached nats github.com/nats-io/natscli/nats "$NATSCLI_VERSION" "$2"
    echo "$(cd "$2" && pwd)/nats"
    ;;
  *)
    echo "usage: $0 install|install-cli BINDIR" >&2
    exit 2
    ;;
esac
