#!/usr/bin/env bash
# `make test` (and so CI, .ci/run): every check and every test, phase by phase. The long cold
# builds (the control plane, promtool, KEDA, kind's node image, the image's static binary) start
# in the background right after the dependencies (scripts/prebuild.sh) and are joined where they
# are needed. At the end, passed or failed, a table says how long each phase and each background
# build took (also in .cache/test-phases.tsv), with a loud warning when the run passed 60 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache
phases="$PWD/.cache/test-phases.tsv"
prebuild="$PWD/.cache/prebuild"
: >"$phases"
run_start=$SECONDS
warn_after=3600

phase() { # phase NAME CMD...: runs CMD, records how long it took
  local name="$1" start=$SECONDS status=0
  shift
  echo "make test: phase $name" >&2
  "$@" || status=$?
  printf '%s\t%s\t%s\n' "$name" "$((SECONDS - start))" "$status" >>"$phases"
  return "$status"
}

report() {
  local status=$? total=$((SECONDS - run_start))
  scripts/prebuild.sh stop "$prebuild" 2>/dev/null || true
  {
    echo
    echo "make test: where the time went (seconds)"
    printf '  %-28s %8s  %s\n' phase seconds result
    awk -F '\t' '{ printf "  %-28s %8d  %s\n", $1, $2, ($3 == 0 ? "ok" : "FAILED (" $3 ")") }' "$phases"
    if [[ -s "$prebuild/times.tsv" ]]; then
      echo "  background builds, beside the phases above:"
      awk -F '\t' '{ printf "  %-28s %8d  %s\n", "  " $1, $2, ($3 == 0 ? "ok" : "failed: see .cache/prebuild/" $1 ".log") }' \
        "$prebuild/times.tsv"
    fi
    printf '  %-28s %8d  (%d min %d s)\n' total "$total" $((total / 60)) $((total % 60))
    if ((total > warn_after)); then
      echo "################################################################################"
      echo "# make test took $((total / 60)) minutes: more than $((warn_after / 60)). CI stops a run at 90."
      echo "# The table above says which phase grew; docs/benchmarks.md#kind has the last figures."
      echo "################################################################################"
    fi
  } >&2
  exit "$status"
}
trap report EXIT

# One Cargo build directory for every clone on this machine: the dependencies compile once; the
# final binaries stay in the clone's target/. Cargo judges a workspace crate fresh by its files'
# times, and two clones' crates share artifact names: so the run holds the directory's lock (two
# runs on one machine take turns) and first touches the clone's tracked files, which makes them
# newer than anything another clone built there. Past 40 GB it starts afresh.
# LEVEE_SHARED_BUILD_DIR=0, or a CARGO_BUILD_BUILD_DIR of your own, turns it off.
if [[ "${LEVEE_SHARED_BUILD_DIR:-1}" != 0 && -z "${CARGO_BUILD_BUILD_DIR:-}" ]]; then
  export CARGO_BUILD_BUILD_DIR="$HOME/.cache/levee/cargo-build"
  mkdir -p "$CARGO_BUILD_BUILD_DIR"
  exec {shared_build_lock}>"$CARGO_BUILD_BUILD_DIR.lock"
  if ! flock -n "$shared_build_lock"; then
    echo "make test: another run holds $CARGO_BUILD_BUILD_DIR; waiting for it" >&2
    flock "$shared_build_lock"
  fi
  git ls-files -z | xargs -0 touch -c --
  if (($(du -s --block-size=1G "$CARGO_BUILD_BUILD_DIR" | cut -f1) > 40)); then
    echo "make test: $CARGO_BUILD_BUILD_DIR is over 40 GB; starting it afresh" >&2
    rm -rf "$CARGO_BUILD_BUILD_DIR" && mkdir -p "$CARGO_BUILD_BUILD_DIR"
  fi
  echo "make test: Cargo's build directory (shared by this machine's clones): $CARGO_BUILD_BUILD_DIR" >&2
fi

phase deps scripts/deps.sh
# Docker first, in the foreground: what dockerd starts inherits its priority, and the background
# builds run at nice 19.
if [[ "${CI:-}" == true ]]; then
  phase docker scripts/docker.sh
fi
scripts/prebuild.sh start "$prebuild"
phase lint make --no-print-directory lint
phase unit cargo test
phase e2e env LEVEE_KEDA_PREBUILD=1 e2e/scripts/with-cluster.sh e2e/scripts/suites.sh
phase kind e2e/scripts/kind.sh suite
echo "make test: all green"
