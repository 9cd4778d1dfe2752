#!/usr/bin/env bash
# Builds the .deb packages:
#
#   packaging/build-deb.sh                 # arm64, armhf and amd64
#   packaging/build-deb.sh amd64           # one architecture
#   packaging/build-deb.sh --no-build amd64  # package binaries already built
#
# Output: dist/outpost_<version>_<arch>.deb. Each installs
#   /usr/bin/outpost
#   /etc/outpost/outpost.toml, /etc/outpost/rules.toml   (conffiles: an
#       upgrade keeps your edits; config/outpost.toml and config/rules.toml)
#   /usr/lib/systemd/system/outpost.service              (enabled, not started)
#   /usr/share/doc/outpost/README.md
# and its maintainer scripts (packaging/deb/) create the `outpost` system
# user in group dialout and /var/lib/outpost. An upgrade leaves
# /var/lib/outpost alone, so alerts waiting in the outbox survive it; only
# `dpkg --purge` deletes it.
#
# armhf holds the ARMv6 build (cross/build.sh armv6: static musl), so one
# package serves every 32-bit Raspberry Pi OS board, Pi Zero and Pi 1
# included. Before packaging it, cross/smoke-armv6.sh runs that very binary
# under qemu-arm -cpu arm1176; its preinst (packaging/deb/preinst-armhf)
# refuses a 64-bit kernel that cannot run ARMv6 barriers in 32-bit programs.
#
# Plain dpkg-deb: no cargo-deb to install, nothing beyond dpkg and the
# cross toolchains cross/build.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
arches=()
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    amd64|arm64|armhf) arches+=("$a") ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $a (amd64, arm64, armhf, --no-build)" >&2; exit 2 ;;
  esac
done
[ ${#arches[@]} -gt 0 ] || arches=(arm64 armhf amd64)

triple() {
  case "$1" in
    amd64) echo x86_64-unknown-linux-gnu ;;
    arm64) echo aarch64-unknown-linux-gnu ;;
    armhf) echo arm-unknown-linux-musleabihf ;;
  esac
}

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || { echo "build-deb.sh: no version in Cargo.toml" >&2; exit 1; }

if [ "$build" = 1 ]; then
  ts=()
  for a in "${arches[@]}"; do ts+=("$(triple "$a")"); done
  cross/build.sh --release "${ts[@]}"
fi

mkdir -p dist
for arch in "${arches[@]}"; do
  bin="target/$(triple "$arch")/release/outpost"
  [ "$arch" != armhf ] || bin="target/armv6/$(triple "$arch")/release/outpost"
  [ -x "$bin" ] || { echo "build-deb.sh: $bin is missing (run without --no-build)" >&2; exit 1; }
  root="target/deb/outpost_${version}_${arch}"
  rm -rf "$root"
  install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/etc/outpost" \
    "$root/usr/lib/systemd/system" "$root/usr/share/doc/outpost"
  install -m 0755 "$bin" "$root/usr/bin/outpost"
  install -m 0640 config/outpost.toml "$root/etc/outpost/outpost.toml"
  install -m 0644 config/rules.toml "$root/etc/outpost/rules.toml"
  install -m 0644 systemd/outpost.service "$root/usr/lib/systemd/system/outpost.service"
  install -m 0644 README.md "$root/usr/share/doc/outpost/README.md"
  install -m 0644 packaging/deb/conffiles "$root/DEBIAN/conffiles"
  install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
  if [ "$arch" = armhf ]; then
    # Never package an armhf binary a Pi Zero cannot run.
    cross/smoke-armv6.sh "$bin"
    install -m 0755 packaging/deb/preinst-armhf "$root/DEBIAN/preinst"
  fi

  # The newest glibc symbol version the binary needs is the libc6 it
  # depends on; a static binary (armhf) needs none.
  if readelf -l "$bin" | grep -q INTERP; then
    glibc=$(grep -aoE 'GLIBC_2\.[0-9]+(\.[0-9]+)?' "$bin" | sort -uV | tail -n1 | sed 's/GLIBC_//')
    libc="libc6 (>= ${glibc:-2.31}), "
  else
    libc=""
  fi
  size_kib=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
  cat > "$root/DEBIAN/control" <<CONTROL
Package: outpost
Version: $version
Architecture: $arch
Maintainer: outpost developers <outpost@localhost>
Installed-Size: $size_kib
Depends: ${libc}adduser, procps
Section: net
Priority: optional
Description: IoT edge gateway: sensor rules on the device, durable alerts over MQTT
 outpost reads sensor readings from USB serial ports and local MQTT topics,
 evaluates threshold rules on the device (limits with hysteresis, sustained
 conditions, rates, windows, silent sensors) and sends alerts to an upstream
 MQTT broker. Alerts wait in a durable outbox while the link is down and
 drain in order when it is back.
CONTROL
  out="dist/outpost_${version}_${arch}.deb"
  dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
  echo "build-deb.sh: $out ($(stat -c %s "$out") bytes; binary $(stat -c %s "$bin") bytes; Depends: ${libc}adduser, procps)"
done
