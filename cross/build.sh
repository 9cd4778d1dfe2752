#!/usr/bin/env bash
# Builds outpost for Raspberry Pi boards with Debian's cross toolchains:
#
#   cross/build.sh                  # release, aarch64 and armv7
#   cross/build.sh --debug aarch64  # a debug build of one target (CI)
#
# Targets (short names accepted):
#   aarch64 = aarch64-unknown-linux-gnu      Pi 3/4/5, Zero 2 W with a 64-bit OS
#   armv7   = armv7-unknown-linux-gnueabihf  32-bit Raspberry Pi OS (Pi 2 and up)
#   x86_64  = x86_64-unknown-linux-gnu       this machine (for the amd64 .deb)
#
# Installs what is missing: the cross linkers through apt
# (gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf) and the Rust targets
# through rustup. Binaries land in target/<triple>/<profile>/outpost and are
# copied to dist/outpost-<triple>; the release profile strips them.
#
# rumqttc is built with rustls on `ring` (not aws-lc-rs), so the only C code
# is ring's, compiled by the same cross gcc: no cmake, no sysroot to fetch.
# People who prefer Docker can use `cross build --release --target ...`
# instead (see Cross.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
targets=()
for a in "$@"; do
  case "$a" in
    --debug) profile=debug ;;
    --release) profile=release ;;
    aarch64|arm64|aarch64-unknown-linux-gnu) targets+=(aarch64-unknown-linux-gnu) ;;
    armv7|armhf|armv7-unknown-linux-gnueabihf) targets+=(armv7-unknown-linux-gnueabihf) ;;
    x86_64|amd64|x86_64-unknown-linux-gnu) targets+=(x86_64-unknown-linux-gnu) ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "cross/build.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_install() {
  echo "cross/build.sh: installing $* (apt)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need_apt=()
for t in "${targets[@]}"; do
  case "$t" in
    aarch64-unknown-linux-gnu)
      command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross) ;;
    armv7-unknown-linux-gnueabihf)
      command -v arm-linux-gnueabihf-gcc >/dev/null || need_apt+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross) ;;
  esac
done
[ ${#need_apt[@]} -eq 0 ] || apt_install "${need_apt[@]}"

installed=$(rustup target list --installed 2>/dev/null || true)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

jobs="${CARGO_BUILD_JOBS:-2}"
mkdir -p dist
for t in "${targets[@]}"; do
  flags=(--locked --bin outpost --target "$t" -j "$jobs")
  [ "$profile" = release ] && flags+=(--release)
  start=$(date +%s)
  cargo build "${flags[@]}"
  bin="target/$t/$profile/outpost"
  cp "$bin" "dist/outpost-$t"
  echo "cross/build.sh: $t ($profile) built in $(( $(date +%s) - start )) s: $bin, $(stat -c %s "$bin") bytes"
done
