#!/usr/bin/env bash
# The shipped unit passes `systemd-analyze verify`, with the binary it names
# pointed at the one under test.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

unit="$work/drgw.service"
sed "s|/usr/bin/drgw|$DRGW_BIN|g" "$(dirname "$0")/../systemd/drgw.service" >"$unit"
output=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify: $output"
[ -z "$output" ] || fail "systemd-analyze verify printed warnings: $output"
for setting in Type=notify WatchdogSec= ProtectSystem=strict NoNewPrivileges=yes CapabilityBoundingSet=; do
  grep -q "^$setting" "$unit" || fail "unit lacks $setting"
done
echo "unit verified"
