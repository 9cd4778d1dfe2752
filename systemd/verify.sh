#!/usr/bin/env bash
# Checks that the unit's LimitNOFILE holds the open-files budget of
# src/http/limits.rs, then checks systemd/outpost.service with
# `systemd-analyze verify` (must print nothing: unknown keys and bad values
# are only warnings there) and prints its `systemd-analyze security`
# exposure score. Needs no running systemd:
# it works on a throwaway root holding the host's units, the unit, and the
# outpost binary given (default target/debug/outpost).
#
#   systemd/verify.sh [PATH/TO/outpost]
#
# Skips the systemd-analyze part (exit 0, saying so) where it is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/debug/outpost}"

# The open-files budget (needs no systemd): LimitNOFILE, one value for soft
# and hard, must hold the HTTP endpoint's connections (and its listener and
# the connection being accepted) plus the descriptors kept for the rest of
# the gateway, as src/http/limits.rs sets them.
const() {
  sed -n "s/^pub const $1: [a-z0-9]* = \([0-9_]*\);.*/\1/p" src/http/limits.rs | tr -d _
}
max_conn=$(const MAX_CONNECTIONS)
reserve=$(const FD_RESERVE)
nofile=$(sed -n 's/^LimitNOFILE=\([0-9]*\)$/\1/p' systemd/outpost.service)
if [ -z "$max_conn" ] || [ -z "$reserve" ]; then
  echo "systemd/verify.sh: cannot read MAX_CONNECTIONS and FD_RESERVE from src/http/limits.rs" >&2
  exit 1
fi
if [ -z "$nofile" ]; then
  echo "systemd/verify.sh: the unit needs one LimitNOFILE=N (soft = hard)" >&2
  exit 1
fi
need=$((max_conn + 2 + reserve))
if [ "$nofile" -lt "$need" ]; then
  echo "systemd/verify.sh: LimitNOFILE=$nofile < $need ($max_conn HTTP connections + 2 + $reserve reserved)" >&2
  exit 1
fi
echo "systemd/verify.sh: LimitNOFILE=$nofile covers $max_conn HTTP connections + 2 + $reserve reserved"
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "systemd/verify.sh: systemd-analyze not installed; unit not verified"
  exit 0
fi
[ -x "$bin" ] || { echo "systemd/verify.sh: $bin is not built" >&2; exit 1; }
kill_bin=$(type -P kill || true)
case "$kill_bin" in /*) ;; *) echo "systemd/verify.sh: /bin/kill (procps) is needed by ExecReload" >&2; exit 1 ;; esac

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/bin" "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp "$bin" "$root/usr/bin/outpost"
cp "$kill_bin" "$root/bin/kill"
cp systemd/outpost.service "$root/usr/lib/systemd/system/outpost.service"

out=$(systemd-analyze verify --root="$root" outpost.service 2>&1) || {
  echo "$out" >&2
  echo "systemd/verify.sh: systemd-analyze verify failed" >&2
  exit 1
}
if [ -n "$out" ]; then
  echo "$out" >&2
  echo "systemd/verify.sh: systemd-analyze verify is not clean" >&2
  exit 1
fi
echo "systemd/verify.sh: systemd-analyze verify: clean"
systemd-analyze security --offline=true --root="$root" outpost.service 2>&1 | tail -n1
