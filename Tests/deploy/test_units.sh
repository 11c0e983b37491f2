#!/usr/bin/env bash
# Every systemd unit under deploy/ passes `systemd-analyze verify` on the
# systemd this machine has (Debian 12: 252), with the unit's binaries
# pointed at this build: any line systemd prints about the unit (an unknown
# type or key, a bad value, a missing executable) fails the test.
#
#   Tests/deploy/test_units.sh BUILD_DIR
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "${1:?usage: test_units.sh BUILD_DIR}" && pwd)
command -v systemd-analyze >/dev/null || {
  echo "test_units: systemd-analyze not found (apt-get install systemd)" >&2
  exit 2
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failed=0
for unit in "$ROOT"/deploy/*.service; do
  name=$(basename "$unit")
  sed "s|/usr/local/bin/|$BUILD/|g" "$unit" >"$work/$name"
  # verify also loads the units this one names (network.target...): only
  # lines about this unit count.
  out=$(systemd-analyze verify --man=no "$work/$name" 2>&1 || true)
  about=$(grep -F "$name" <<<"$out" || true)
  if [[ -n $about ]]; then
    echo "FAIL $name:" >&2
    echo "$about" >&2
    failed=1
  else
    echo "ok   $name (systemd $(systemd-analyze --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p'))"
  fi
  # The reload runs kho exec on the unit's own control mount.
  grep -q '^Type=notify$' "$unit" || { echo "FAIL $name: Type= is not notify" >&2; failed=1; }
  grep -q '^ExecReload=.*kho exec' "$unit" || { echo "FAIL $name: no ExecReload= kho exec" >&2; failed=1; }
  grep -q '^LimitNOFILE=' "$unit" || { echo "FAIL $name: no LimitNOFILE=" >&2; failed=1; }
done
exit $failed
