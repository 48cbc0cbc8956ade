#!/usr/bin/env bash
# Installs everything `make test` and `make demo` need on a fresh machine, and nothing twice:
# redis-server/redis-cli/redis-benchmark, openssl, iproute2 and iptables (the chaos tests' network
# namespaces), curl (apt), the real queue libraries the sampler
# tests write data with (BullMQ from npm, Celery, RQ and nats-py from PyPI, into .cache/venv, Sidekiq from
# apt).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for tool in redis-server:redis-server redis-cli:redis-tools redis-benchmark:redis-tools openssl:openssl \
  ip:iproute2 iptables:iptables curl:curl; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
# Sidekiq (and Ruby) from Debian: the latency tests write jobs with Sidekiq::Client.
ruby -e "require 'sidekiq'" >/dev/null 2>&1 || missing+=(ruby-sidekiq)
# Under CI the kind suite runs: what its builds need (scripts/docker.sh, scripts/static.sh,
# e2e/kind/node-image.sh) comes in this one apt run, since those builds then run side by side in
# the background (scripts/prebuild.sh) and two apt runs at once would fight over dpkg's lock.
if [ "${CI:-}" = true ]; then
  for tool in dockerd:docker.io musl-gcc:musl-tools debootstrap:debootstrap zstd:zstd jq:jq; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
  done
  dpkg -s libseccomp-dev >/dev/null 2>&1 || missing+=(libseccomp-dev)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]} with apt-get"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${missing[@]}" >/dev/null
fi
# The Debian package starts a system redis on :6379; the tests start their own, on free ports.

stamp() { sha256sum "$@" | sha256sum | cut -c1-16; }

producers=tests/producers
want=$(stamp "$producers/package.json" "$producers/package-lock.json")
if [ "$(cat "$producers/node_modules/.levee-stamp" 2>/dev/null)" != "$want" ]; then
  echo "deps: npm install (BullMQ, pinned in package.json and package-lock.json)"
  (cd "$producers" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$want" > "$producers/node_modules/.levee-stamp"
fi

want=$(stamp "$producers/requirements.txt")
if [ "$(cat .cache/venv/.levee-stamp 2>/dev/null)" != "$want" ]; then
  echo "deps: python venv (Celery, RQ, nats-py, kafka-python)"
  rm -rf .cache/venv
  python3 -m venv .cache/venv
  .cache/venv/bin/pip install -q --disable-pip-version-check -r "$producers/requirements.txt"
  echo "$want" > .cache/venv/.levee-stamp
fi
