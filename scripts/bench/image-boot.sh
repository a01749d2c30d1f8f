#!/usr/bin/env bash
# Power-on to ready of the appliance image under qemu (TCG, q35, OVMF), as
# docs/benchmarks.md reports it: RUNS (default 3) first boots of fresh
# copies of the raw image with their cache and retention disks, one at a
# time; "ready" is drgw.service active and the banner with the fingerprint
# on the serial console. Prints each run and the median; with the
# appliance's own systemd-analyze figures (firmware excluded) beside them.
# Needs root; builds the image like the hwtests (hwtests/image/lib.sh) with
# DRGW_BIN (default target/release/drgw, built if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${RUNS:-3}
if [ -z "${DRGW_BIN:-}" ]; then
  cargo build --release --bin drgw --quiet
  DRGW_BIN=$PWD/target/release/drgw
fi
export DRGW_BIN
source hwtests/lib.sh
source hwtests/vm/lib.sh
source hwtests/image/lib.sh
image_ensure
times=()
for run in $(seq "$runs"); do
  appliance_create "boot-$run"
  started=$SECONDS
  appliance_boot "boot-$run"
  appliance_wait_ready "boot-$run" 600 >/dev/null
  took=$((SECONDS - started))
  times+=("$took")
  userspace=$(appliance_ga "boot-$run" -- systemd-analyze | head -n 1)
  echo "run $run: power-on to ready ${took}s ($userspace)"
  appliance_shutdown "boot-$run"
done
median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(((runs + 1) / 2))p")
echo "image $image_name: power-on to ready, median of $runs: ${median}s (runs: ${times[*]})"
