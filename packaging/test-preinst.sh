#!/usr/bin/env bash
# Tests packaging/deb/preinst-armhf on every case it tells apart: a fake
# `uname` (first on PATH) plays the kernel, OUTPOST_ABI_DIR the sysctl.
# Exits 1 on any failure. (No 'N passed, N failed' line: in .ci/run that
# line is scripts/test's, the count of the whole suite.)
set -uo pipefail
cd "$(dirname "$0")/.."
preinst=packaging/deb/preinst-armhf
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin"
passed=0
failed=0

# expect NAME WANT_STATUS WANT_STDERR_REGEX(- for nothing) UNAME CP15_MODE(- for none) [ARG]
expect() {
  local name=$1 want=$2 pattern=$3 machine=$4 mode=$5 arg=${6:-install}
  printf '#!/bin/sh\necho %s\n' "$machine" > "$work/bin/uname"
  chmod +x "$work/bin/uname"
  rm -rf "$work/abi"; mkdir -p "$work/abi"
  [ "$mode" = - ] || echo "$mode" > "$work/abi/cp15_barrier"
  local status=0
  PATH="$work/bin:$PATH" OUTPOST_ABI_DIR="$work/abi" sh "$preinst" "$arg" 2>"$work/err" || status=$?
  local said=1
  if [ "$pattern" = - ]; then [ ! -s "$work/err" ] || said=0; else grep -Eq "$pattern" "$work/err" || said=0; fi
  if [ "$status" -eq "$want" ] && [ "$said" = 1 ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "test-preinst.sh: FAILED $name: status $status (want $want), stderr:" >&2
    cat "$work/err" >&2
  fi
}

expect "ARMv6 kernel (Pi Zero)"          0 - armv6l -
expect "ARMv7 kernel (Pi 2, 3)"          0 - armv7l -
expect "64-bit kernel, hardware mode"    0 - aarch64 2
expect "64-bit kernel, emulated"         0 'abi.cp15_barrier = 1' aarch64 1
expect "64-bit kernel, undefined"        1 'abi.cp15_barrier = 0.*|SIGILL' aarch64 0
expect "64-bit kernel, no emulation"     1 'without CONFIG_CP15_BARRIER_EMULATION' aarch64 -
expect "linux32 personality, no emulation" 1 'arm64 package' armv8l -
expect "upgrade refused the same way"    1 'SIGILL' aarch64 - upgrade
expect "abort-upgrade is never refused"  0 - aarch64 - abort-upgrade

if [ "$failed" -ne 0 ]; then
  echo "test-preinst.sh: $failed of $((passed + failed)) cases FAILED" >&2
  exit 1
fi
echo "test-preinst.sh: all $passed cases ok"
