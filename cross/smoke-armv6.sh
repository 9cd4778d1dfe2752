#!/usr/bin/env bash
# Runs an ARMv6 outpost binary as a Pi Zero / Zero W / Pi 1 would:
# under `qemu-arm-static -cpu arm1176` (their CPU; qemu stops at the first
# ARMv7-only instruction with SIGILL, as the board does).
#
#   cross/smoke-armv6.sh target/armv6/arm-unknown-linux-musleabihf/debug/outpost
#
# 1. the ELF says ARMv6, no Thumb-2 (the linker merges every object's
#    attributes: one ARMv7 object anywhere makes it say v7);
# 2. `--version`;
# 3. `check` on every example gateway config;
# 4. a short `run` with the upstream broker down: a [[simulate]] source
#    (qemu's user mode lacks the termios ioctls a serial port needs, so no
#    pty here) fires a rule, the alert is stored in the outbox (its log and checkpoint), SIGTERM
#    stops the gateway cleanly, and `outbox list` reads the alert back.
#
# Used by cross/ci-armv6.sh (CI) and packaging/build-deb.sh, on the same
# release binary (the one that goes into the armhf .deb). Installs
# qemu-user-static (apt) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:?usage: cross/smoke-armv6.sh BINARY}
[ -x "$bin" ] || { echo "smoke-armv6.sh: $bin is not an executable" >&2; exit 1; }

if ! command -v qemu-arm-static >/dev/null 2>&1; then
  echo "smoke-armv6.sh: installing qemu-user-static (apt)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null
fi
run() { qemu-arm-static -cpu arm1176 "$bin" "$@"; }
fail() { echo "smoke-armv6.sh: $*" >&2; exit 1; }

# 1. ARM, 32-bit, static, and ARMv6 in its build attributes.
head -c 20 "$bin" | od -An -tx1 | tr -d ' \n' | grep -q '^7f454c4601.*2800$' ||
  fail "$bin is not a 32-bit ARM ELF"
attrs=$(readelf -A "$bin")
grep -q 'Tag_CPU_arch: v6' <<<"$attrs" || fail "$bin is not built for ARMv6: $(grep Tag_CPU_arch: <<<"$attrs")"
if grep -q 'Thumb-2' <<<"$attrs"; then fail "$bin contains Thumb-2 code (ARMv7)"; fi
if readelf -l "$bin" | grep -q INTERP; then fail "$bin is dynamically linked"; fi

# 2.
version=$(run --version)
[ "$version" = "outpost $(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)" ] ||
  fail "unexpected --version output: $version"
echo "smoke-armv6.sh: under qemu-arm -cpu arm1176: $version"

# 3. Every example gateway config (the files with a [gateway] table; the
# others are the rules files they name, checked through them).
configs=$(grep -l '^\[gateway\]' config/*.toml config/examples/*.toml)
[ -n "$configs" ] || fail "no example configs found"
for c in $configs; do
  run check --config "$c" >/dev/null || { run check --config "$c"; exit 1; }
  echo "smoke-armv6.sh: under qemu-arm -cpu arm1176: outpost check --config $c: ok"
done

# 4. The upstream is a port nobody listens on: free a moment ago.
work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/outpost.toml" <<TOML
[gateway]
id = "smoke-armv6"
state_dir = "state"
rules = ["rules.toml"]

[upstream]
url = "mqtt://127.0.0.1:$port"

[outbox]
flush = "always"

[http]
listen = ""

# Always 40 degrees: the rule below fires on the first reading.
[[simulate]]
sensor = "smoke/t1"
metric = "temperature"
interval = "200ms"
base = 40.0
amplitude = 0.0
period = "1m"
TOML
cat > "$work/rules.toml" <<'TOML'
[[rule]]
id = "smoke-hot"
sensor = "smoke/*"
metric = "temperature"
above = 30.0
clear = 29.0
severity = "critical"
message = "{sensor} is {value:.1}, above {threshold}"
TOML
run check --config "$work/outpost.toml" >/dev/null

# The gateway's READY=1 (sd_notify, as under systemd) comes when every task
# runs; its SIGTERM handler is installed right after it, so a SIGTERM sent
# before READY would kill it instead of stopping it: wait for READY first.
python3 - "$work/notify" >"$work/notified" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(120)
while True:
    msg = s.recv(4096).decode()
    if "READY=1" in msg.split("\n"):
        print("READY=1", flush=True)
        break
PY
listener=$!
deadline=$(( $(date +%s) + 10 ))
until [ -S "$work/notify" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "the notify listener did not start"
  sleep 0.1
done
# qemu itself in the background (not the `run` function: its subshell
# would take the SIGTERM and leave qemu running).
NOTIFY_SOCKET="$work/notify" qemu-arm-static -cpu arm1176 "$bin" run --config "$work/outpost.toml" >"$work/log" 2>&1 &
pid=$!
# Wait (at most 60 s: qemu is slow) for READY, the alert's log line, which
# the gateway writes once the alert is stored, and the upstream found down.
deadline=$(( $(date +%s) + 60 ))
until grep -q READY=1 "$work/notified" && grep -q 'alert id=.*rule=smoke-hot' "$work/log" &&
  grep -q 'upstream link lost' "$work/log"; do
  kill -0 "$pid" 2>/dev/null || { cat "$work/log" >&2; fail "outpost run exited early"; }
  [ "$(date +%s)" -lt "$deadline" ] || { cat "$work/log" >&2; fail "no alert within 60 s"; }
  sleep 0.2
done
wait "$listener"
kill -TERM "$pid"
deadline=$(( $(date +%s) + 30 ))
while kill -0 "$pid" 2>/dev/null; do
  [ "$(date +%s)" -lt "$deadline" ] || { cat "$work/log" >&2; fail "no clean stop within 30 s of SIGTERM"; }
  sleep 0.2
done
status=0
wait "$pid" || status=$?
pid=""
[ "$status" -eq 0 ] || { cat "$work/log" >&2; fail "outpost run exited with $status after SIGTERM"; }
grep -q 'outpost stopped' "$work/log" || { cat "$work/log" >&2; fail "no 'outpost stopped' line"; }

list=$(run outbox list --config "$work/outpost.toml")
grep -Eq '^ +1 .* critical +firing +smoke-hot +smoke/t1 ' <<<"$list" ||
  { echo "$list" >&2; fail "outbox list does not show the stored alert"; }
grep -Eq '^[1-9][0-9]* alerts? waiting' <<<"$list" || { echo "$list" >&2; fail "outbox list: nothing waiting"; }
echo "smoke-armv6.sh: under qemu-arm -cpu arm1176: run with the upstream down stored $(grep -Eo '^[0-9]+ alerts? waiting' <<<"$list"), read back by outbox list"
