#!/usr/bin/env bash
# CI: the ARMv6 build (the armhf .deb's binary, for every 32-bit Raspberry
# Pi OS board) run as a Pi Zero / Zero W / Pi 1 would, under
# `qemu-arm-static -cpu arm1176`: cross/smoke-armv6.sh (--version, check on
# every example config, a short run that stores an alert with the upstream
# down, outbox list).
#
# The release build, the very binary packaging/build-deb.sh puts in the
# armhf .deb (release profile: fat LTO, one codegen unit, the standard
# library compiled for the ARM1176 too): a few minutes more than a debug
# build on CI's two cores, and what is tested is what ships.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
cross/build.sh armv6
echo "cross/ci-armv6.sh: armv6 release build took $(( $(date +%s) - start )) s"
cross/smoke-armv6.sh target/armv6/arm-unknown-linux-musleabihf/release/outpost
echo "cross/ci-armv6.sh: ok ($(( $(date +%s) - start )) s)"
