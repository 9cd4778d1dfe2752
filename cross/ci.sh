#!/usr/bin/env bash
# CI: cross-builds outpost for aarch64 and runs it under qemu-user:
# `--version`, and `check` on the example configs.
#
# A debug build: the release profile (fat LTO, one codegen unit) takes
# several times longer on CI's two cores, and what is checked here is that
# the code and its C dependency (ring) build for and run on the target.
# `cross/build.sh` makes the release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-aarch64-static >/dev/null 2>&1; then
  echo "cross/ci.sh: installing qemu-user-static (apt)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null
fi

start=$(date +%s)
# No debuginfo: a smaller, faster-linking binary; nothing here reads it.
CARGO_PROFILE_DEV_DEBUG=0 cross/build.sh --debug aarch64
echo "cross/ci.sh: aarch64 debug build took $(( $(date +%s) - start )) s"

bin=target/aarch64-unknown-linux-gnu/debug/outpost
run() { qemu-aarch64-static -L /usr/aarch64-linux-gnu "$bin" "$@"; }

# It is an aarch64 binary: x86-64 code would not run under qemu-aarch64.
head -c 20 "$bin" | od -An -tx1 | tr -d ' \n' | grep -q '^7f454c46.*b700$' || {
  echo "cross/ci.sh: $bin is not an aarch64 ELF" >&2; exit 1; }

version=$(run --version)
echo "cross/ci.sh: under qemu-aarch64: $version"
[ "$version" = "outpost $(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)" ] || {
  echo "cross/ci.sh: unexpected --version output" >&2; exit 1; }

# Every example gateway config (the files with a [gateway] table; the
# others are the rules files they name, checked through them).
configs=$(grep -l '^\[gateway\]' config/*.toml config/examples/*.toml)
[ -n "$configs" ] || { echo "cross/ci.sh: no example configs found" >&2; exit 1; }
for c in $configs; do
  run check --config "$c" >/dev/null || { run check --config "$c"; exit 1; }
  echo "cross/ci.sh: under qemu-aarch64: outpost check --config $c: ok"
done
echo "cross/ci.sh: ok ($(( $(date +%s) - start )) s)"
