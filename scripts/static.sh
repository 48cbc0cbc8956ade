#!/usr/bin/env bash
# Builds the static (musl) levee the container image holds, without Docker, and checks that it
# is static: target/x86_64-unknown-linux-musl/release/levee. Run the end-to-end suite with it:
#   LEVEE_BIN=$PWD/target/x86_64-unknown-linux-musl/release/levee make e2e
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
# ring compiles C: the musl toolchain's gcc wrapper.
if ! command -v musl-gcc >/dev/null 2>&1; then
  echo "static: installing musl-tools with apt-get"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq -o DPkg::Lock::Timeout=600 musl-tools >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
# One optimisation unit over the whole program: a 28 % smaller binary, whose mapped code is a
# quarter of levee's resident memory at 1,000 policies (docs/benchmarks.md#scale). It takes about
# 7.5 minutes here instead of 3; dev and glibc release builds keep the default profile.
CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
  cargo build --release --locked --target "$target" --bin levee
binary="target/$target/release/levee"
if ldd "$binary" 2>&1 | grep -q '=>'; then
  echo "static: $binary links shared libraries:" >&2
  ldd "$binary" >&2
  exit 1
fi
# Nothing from the environment: no PATH, HOME or certificates.
(cd / && env -i "$OLDPWD/$binary" version)
echo "static: $binary"
