#!/usr/bin/env bash
# CI: the ARMv6 build (the armhf .deb's binary, for every 32-bit Raspberry
# Pi OS board) run as a Pi Zero / Zero W / Pi 1 would, under
# `qemu-arm-static -cpu arm1176`: cross/smoke-armv6.sh (--version, check on
# every example config, a short run that stores an alert with the upstream
# down, outbox list).
#
# A debug build without debuginfo, like cross/ci.sh's: the release profile
# (fat LTO, one codegen unit, and here the standard library compiled too)
# takes several times longer on CI's two cores. Same target, CPU, C
# compiler, linker and libc as the release build, so an instruction an
# ARM1176 lacks shows up here as well; packaging/build-deb.sh runs the same
# smoke test on the release binary before it packages it.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
CARGO_PROFILE_DEV_DEBUG=0 cross/build.sh --debug armv6
echo "cross/ci-armv6.sh: armv6 debug build took $(( $(date +%s) - start )) s"
cross/smoke-armv6.sh target/armv6/arm-unknown-linux-musleabihf/debug/outpost
echo "cross/ci-armv6.sh: ok ($(( $(date +%s) - start )) s)"
