#!/usr/bin/env bash
# Benchmarks NBD ingest through `drgw tap` (replication on: primary write,
# dirty map, forward to a source gateway that stages it durably) against
# `qemu-nbd` serving a plain file (no replication), with the same clients:
#   1. nbdcopy of SIZE (default 2 GiB) of incompressible data   (target >= 0.8)
#   2. fio --ioengine=nbd 4 KiB random writes, queue depth 32    (target >= 0.7)
# Runs alternate tap / qemu-nbd, RUNS times each (default 3); medians and
# ratios are printed. Usage: scripts/bench/tap.sh [DIR] (default /var/tmp)
# Env: DRGW_BIN (a prebuilt drgw; skips the release build), SIZE_MIB, RUNS,
# FIO_SECONDS, PARTS (default "copy iops": which of the two to run),
# CACHE_DIR (where the gateway's cache volume goes; default beside the
# primary, on the same disk: set it to another disk to model the deployed
# layout, where the source gateway stages on its own cache volume).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=${1:-/var/tmp}
size_mib=${SIZE_MIB:-2048}
runs=${RUNS:-3}
fio_seconds=${FIO_SECONDS:-20}
scripts/install-deps >/dev/null
parts=${PARTS:-copy iops}
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh
bin=$(bench_drgw_bin "$PWD")
work=$(mktemp -d "$root/drgw-bench.XXXXXX")
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

gateway_port=$(port) tap_port=$(port) plain_port=$(port)
cat >"$work/gateway.toml" <<CONFIG
[appliance]
name = "bench-gateway"
state_dir = "$work/gateway/state"
[replication]
address = "127.0.0.1"
port = $gateway_port
[control]
socket = "$work/gateway/control.sock"
[volumes]
cache = "${CACHE_DIR:-$work/gateway}/cache"
retention = "$work/gateway/retention"
[staging]
capacity_bytes = $(( (size_mib * 4 + 1024) << 20 ))
[log]
level = "warn"
CONFIG
mkdir -p "$work/gateway"
"$bin" serve --config "$work/gateway.toml" 2>"$work/gateway.log" & pids+=($!)
for _ in $(seq 100); do "$bin" --socket "$work/gateway/control.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
gateway_fp=$("$bin" --socket "$work/gateway/control.sock" pair show --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["fingerprint"])')

truncate -s "${size_mib}M" "$work/primary.img" "$work/plain.img"
cat >"$work/tap.toml" <<CONFIG
[tap]
name = "bench-tap"
state_dir = "$work/tap/state"
[gateway]
address = "127.0.0.1:$gateway_port"
fingerprint = "$gateway_fp"
[nbd]
address = "127.0.0.1"
port = $tap_port
[log]
level = "warn"
[[disk]]
name = "disk"
path = "$work/primary.img"
CONFIG
tap_fp=$("$bin" --config "$work/tap.toml" tap --print-fingerprint | awk '/^fingerprint/ {print $2}')
"$bin" --socket "$work/gateway/control.sock" pair add --name bench-tap --tap --fingerprint "$tap_fp" >/dev/null
"$bin" --socket "$work/gateway/control.sock" protect disk --group bench --tap bench-tap --size "${size_mib}M" >/dev/null
"$bin" --config "$work/tap.toml" tap 2>"$work/tap.log" & pids+=($!)
qemu-nbd --fork --persistent --format=raw --cache=none --aio=native --export-name=disk --bind=127.0.0.1 --port="$plain_port" "$work/plain.img" \
  --pid-file="$work/qemu-nbd.pid"
pids+=("$(cat "$work/qemu-nbd.pid")")
for _ in $(seq 100); do nbdinfo "nbd://127.0.0.1:$tap_port/disk" >/dev/null 2>&1 && break; sleep 0.1; done
head -c "$((size_mib << 20))" /dev/urandom >"$work/data.bin"

settle() { # waits until a fresh tap status shows every forward acknowledged
  local since_ms
  since_ms=$(($(date +%s%N) / 1000000))
  for _ in $(seq 600); do
    python3 - "$work/tap/state/status.json" "$since_ms" <<'PY' && return 0
import json, sys
s = json.load(open(sys.argv[1]))
fresh = s.get("updated_unix_ms", 0) > int(sys.argv[2])
sys.exit(0 if fresh and s["gateway_connected"] and s["pending_bytes"] == 0 and all(d["dirty_bytes"] == 0 for d in s["disks"]) else 1)
PY
    sleep 0.2
  done
  echo "tap did not settle" >&2; return 1
}
copy_mbps() { # URI -> MB/s of nbdcopy
  local started ended
  started=$(date +%s.%N)
  nbdcopy "$work/data.bin" "$1"
  ended=$(date +%s.%N)
  echo "scale=1; $size_mib * 1.048576 / ($ended - $started)" | bc
}
fio_iops() { # URI -> write IOPS
  fio --name=rand --ioengine=nbd --uri="$1" --rw=randwrite --bs=4k --iodepth=32 --size="${size_mib}M" \
    --time_based --runtime="$fio_seconds" --output-format=json --output="$work/fio.json" >/dev/null 2>&1
  python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["jobs"][0]["write"]["iops"]))' "$work/fio.json"
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

tap_copy=() plain_copy=() tap_iops=() plain_iops=()
for run in $(seq "$runs"); do
  if [[ $parts == *copy* ]]; then
    tap_copy+=("$(copy_mbps "nbd://127.0.0.1:$tap_port/disk")"); settle
    plain_copy+=("$(copy_mbps "nbd://127.0.0.1:$plain_port/disk")")
    echo "run $run: nbdcopy tap ${tap_copy[-1]} MB/s, qemu-nbd ${plain_copy[-1]} MB/s"
  fi
  if [[ $parts == *iops* ]]; then
    tap_iops+=("$(fio_iops "nbd://127.0.0.1:$tap_port/disk")"); settle
    plain_iops+=("$(fio_iops "nbd://127.0.0.1:$plain_port/disk")")
    echo "run $run: 4k randwrite qd32 tap ${tap_iops[-1]} IOPS, qemu-nbd ${plain_iops[-1]} IOPS"
  fi
done
echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(df -T "$root" | awk 'NR==2 {print $2}') at $root, load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ $parts == *copy* ]]; then
  tc=$(median "${tap_copy[@]}") pc=$(median "${plain_copy[@]}")
  echo "nbdcopy ${size_mib} MiB incompressible: tap $tc MB/s, qemu-nbd $pc MB/s, ratio $(echo "scale=2; $tc / $pc" | bc) (target >= 0.8)"
fi
if [[ $parts == *iops* ]]; then
  ti=$(median "${tap_iops[@]}") pi=$(median "${plain_iops[@]}")
  echo "4 KiB random writes qd32 (${fio_seconds}s): tap $ti IOPS, qemu-nbd $pi IOPS, ratio $(echo "scale=2; $ti / $pi" | bc) (target >= 0.7)"
fi
