#!/usr/bin/env bash
# Builds outpost for Raspberry Pi boards with Debian's cross toolchains:
#
#   cross/build.sh                  # release, aarch64 and armv6
#   cross/build.sh --debug aarch64  # a debug build of one target (CI)
#
# Targets (short names accepted):
#   aarch64 = aarch64-unknown-linux-gnu      Pi 3/4/5, Zero 2 W with a 64-bit OS
#   armv6   = arm-unknown-linux-musleabihf   32-bit Raspberry Pi OS, every Pi
#             (Zero, Zero W and 1 are ARMv6); static, the armhf .deb's binary
#   armv7   = armv7-unknown-linux-gnueabihf  Pi 2 and up only (SIGILL on ARMv6)
#   x86_64  = x86_64-unknown-linux-gnu       this machine (for the amd64 .deb)
#
# Installs what is missing: the cross linkers through apt
# (gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf) and the Rust targets
# through rustup. Binaries land in target/<triple>/<profile>/outpost (armv6:
# target/armv6/<triple>/<profile>/outpost) and are copied to
# dist/outpost-<triple>; the release profile strips them.
#
# rumqttc is built with rustls on `ring` (not aws-lc-rs), so the only C code
# is ring's, compiled by the same cross gcc: no cmake, no sysroot to fetch.
# People who prefer Docker can use `cross build --release --target ...`
# instead (see Cross.toml).
#
# armv6 is different: no ARMv6 C library for Debian's cross gcc (its armhf
# is ARMv7 Thumb-2, which an ARM1176 cannot run), and no prebuilt Rust
# standard library for the target from rustup here. So: zig (PyPI package
# ziglang, pip-installed when missing) is the C compiler and linker through
# cross/zig-cc, and brings musl, crt1.o and libunwind built for the ARM1176;
# the standard library is compiled from rustup's rust-src component with
# -Zbuild-std (RUSTC_BOOTSTRAP=1 on the stable toolchain, for this one
# cargo command; same compiler as the other targets), with panic_unwind so
# `panic = "unwind"` holds. Static musl: no glibc version to depend on.
# (zig's libc is musl with zig's own malloc.) What ARMv6 code costs on a
# Pi 2 to 5 against armv7: cross/isa-cost.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
targets=()
for a in "$@"; do
  case "$a" in
    --debug) profile=debug ;;
    --release) profile=release ;;
    aarch64|arm64|aarch64-unknown-linux-gnu) targets+=(aarch64-unknown-linux-gnu) ;;
    armv6|armhf|arm-unknown-linux-musleabihf) targets+=(arm-unknown-linux-musleabihf) ;;
    armv7|armv7-unknown-linux-gnueabihf) targets+=(armv7-unknown-linux-gnueabihf) ;;
    x86_64|amd64|x86_64-unknown-linux-gnu) targets+=(x86_64-unknown-linux-gnu) ;;
    -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
    *) echo "cross/build.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu arm-unknown-linux-musleabihf)

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

# zig for armv6, pinned: a shipped binary should not change with a zig
# release. Its caches stay in target/ (`cargo clean` clears them).
zig_version=0.17.1
armv6_setup() {
  if [ "$(python3 -m ziglang version 2>/dev/null)" != "$zig_version" ]; then
    echo "cross/build.sh: installing ziglang==$zig_version (pip)"
    python3 -m pip install -q --disable-pip-version-check "ziglang==$zig_version"
  fi
  ZIG="$(python3 -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')"
  rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src
  local t=ARM_UNKNOWN_LINUX_MUSLEABIHF
  export ZIG
  export ZIG_GLOBAL_CACHE_DIR="$PWD/target/zig-cache" ZIG_LOCAL_CACHE_DIR="$PWD/target/zig-cache"
  export CC_arm_unknown_linux_musleabihf="$PWD/cross/zig-cc"
  export AR_arm_unknown_linux_musleabihf="$ZIG ar"
  export "CARGO_TARGET_${t}_LINKER=$PWD/cross/zig-cc"
  # zig brings crt1.o and musl (rustup's self-contained copies come with
  # the prebuilt standard library, which is not used here).
  export "CARGO_TARGET_${t}_RUSTFLAGS=-C link-self-contained=no -C target-cpu=arm1176jzf-s"
}

installed=$(rustup target list --installed 2>/dev/null || true)
for t in "${targets[@]}"; do
  if [ "$t" = arm-unknown-linux-musleabihf ]; then
    armv6_setup
  else
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
  fi
done

jobs="${CARGO_BUILD_JOBS:-2}"
mkdir -p dist
for t in "${targets[@]}"; do
  flags=(--locked --bin outpost --target "$t" -j "$jobs")
  [ "$profile" = release ] && flags+=(--release)
  start=$(date +%s)
  if [ "$t" = arm-unknown-linux-musleabihf ]; then
    # A target dir of its own: RUSTC_BOOTSTRAP reaches the build scripts
    # too, and some (proc-macro2's) rebuild on its change, so sharing
    # target/debug's host crates with the other builds would rebuild them
    # (and all that depends on them) at every switch.
    RUSTC_BOOTSTRAP=1 cargo build "${flags[@]}" -Zbuild-std=std,panic_unwind --target-dir target/armv6
    bin="target/armv6/$t/$profile/outpost"
  else
    cargo build "${flags[@]}"
    bin="target/$t/$profile/outpost"
  fi
  cp "$bin" "dist/outpost-$t"
  echo "cross/build.sh: $t ($profile) built in $(( $(date +%s) - start )) s: $bin, $(stat -c %s "$bin") bytes"
done
