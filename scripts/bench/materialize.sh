#!/usr/bin/env bash
# Materialize benchmark: `drgw materialize` (raw) of a recovery point
# against a plain sequential copy of the same bytes on the same file system.
#
#   scripts/bench/materialize.sh [DIR]        (default /var/tmp)
#
# Builds a source, a target and a tap on loopback (as e2e.sh), protects one
# disk of SIZE (default 4G; the issue's figure: SIZE=16G), fills it
# completely with fio (1 MiB sequential writes), takes bookmark `full`, then
# overwrites HISTORY_PERCENT (default 10) of it with random 1 MiB writes and
# takes bookmark `later`, so the point `full` is read partly from the undo
# log. Then RUNS times (default 3), alternating, after dropping the page
# cache (when root):
#
#   dd     dd if=REPLICA of=OUT bs=4M iflag=direct oflag=direct conv=fsync
#   fio    (if installed) fio reading REPLICA and writing OUT at once,
#          sequential 4 MiB, O_DIRECT, io_uring, end_fsync: the copy's two
#          halves in parallel, an upper bound for any copy
#   drgw   drgw materialize bench --point bookmark:full --disk disk-1 --out OUT
#          (wall time of the command: it returns once the image is fsynced)
#
# Fairness: the disk is fully written, so dd, which reads and writes every
# byte, and materialize, which skips zero grains, move the same bytes. dd
# reads the replica (the latest state); materialize reads the older point
# (replica plus undo): it does more work, not less. Prints each run and the
# median ratio drgw/dd (throughput; target >= 0.8).
#
# Env: DRGW_BIN (prebuilt drgw, else `cargo build --release`), SIZE, RUNS,
# HISTORY_PERCENT, WAIT_SECONDS (default 900).
set -euo pipefail

dir=${1:-/var/tmp}
size=${SIZE:-4G}
runs=${RUNS:-3}
history_percent=${HISTORY_PERCENT:-10}
wait_seconds=${WAIT_SECONDS:-900}
root=$(cd "$(dirname "$0")/../.." && pwd)

"$root/scripts/install-deps" >/dev/null
# shellcheck source=scripts/bench/lib.sh
source "$root/scripts/bench/lib.sh"
bin=$(bench_drgw_bin "$root")
size_bytes=$("$bin" --version >/dev/null && python3 -c "
s='$size'; m={'K':10,'M':20,'G':30,'T':40}
print(int(s[:-1]) << m[s[-1].upper()] if s[-1].upper() in m else int(s))")
mkdir -p "$dir"
work=$(mktemp -d "$dir/drgw-mat.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
show() { echo "+ $*" >&2; }
json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
calc() { python3 -c "print($1)"; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
cli() { local who=$1; shift; "$bin" --socket "$work/$who/control.sock" "$@"; }
now() { date +%s.%N; }

start_gateway() { # WHO
  local p
  p=$(port)
  mkdir -p "$work/$1"
  cat >"$work/$1.toml" <<CONFIG
[appliance]
name = "bench-$1"
state_dir = "$work/$1/state"
[replication]
address = "127.0.0.1"
port = $p
[control]
socket = "$work/$1/control.sock"
[volumes]
cache = "$work/$1/cache"
retention = "$work/$1/retention"
[staging]
capacity_bytes = $((size_bytes > 8 << 30 ? size_bytes : 8 << 30))
[log]
level = "info"
CONFIG
  show "$bin" serve --config "$work/$1.toml"
  "$bin" serve --config "$work/$1.toml" 2>"$work/$1.log" &
  pids+=($!)
  echo "$p" >"$work/$1.port"
  for _ in $(seq 150); do cli "$1" status >/dev/null 2>&1 && return 0; sleep 0.1; done
  cat "$work/$1.log" >&2
  return 1
}

wait_status() { # WHO SECONDS CONDITION-ON-d
  for _ in $(seq $(($2 * 5))); do
    [[ $(cli "$1" status --json | json "$3") == True ]] && return 0
    sleep 0.2
  done
  echo "$1: waited $2 s for: $3" >&2
  tail -n 30 "$work/$1.log" >&2
  return 1
}

start_sites() {
  local source_fp target_fp tap_fp nbd_port
  start_gateway source
  start_gateway target
  source_fp=$(cli source pair show --json | json 'd["fingerprint"]')
  target_fp=$(cli target pair show --json | json 'd["fingerprint"]')
  cli target pair add --name source --address "127.0.0.1:$(<"$work/source.port")" --fingerprint "$source_fp" >/dev/null
  cli source pair add --name target --address "127.0.0.1:$(<"$work/target.port")" --fingerprint "$target_fp" >/dev/null
  wait_status source 30 'any(p["link"]["state"] == "connected" for p in d["peers"])'
  nbd_port=$(port)
  truncate -s "$size_bytes" "$work/primary.img"
  cat >"$work/tap.toml" <<CONFIG
[tap]
name = "tap-1"
state_dir = "$work/tap/state"
[gateway]
address = "127.0.0.1:$(<"$work/source.port")"
fingerprint = "$source_fp"
[nbd]
address = "127.0.0.1"
port = $nbd_port
[log]
level = "info"
[[disk]]
name = "disk-1"
path = "$work/primary.img"
mode = "async"
CONFIG
  tap_fp=$("$bin" --config "$work/tap.toml" tap --print-fingerprint | awk '/^fingerprint/ {print $2}')
  cli source pair add --name tap-1 --tap --fingerprint "$tap_fp" >/dev/null
  cli source protect disk-1 --group bench --tap tap-1 --size "$size_bytes" >/dev/null
  show "$bin" --config "$work/tap.toml" tap
  "$bin" --config "$work/tap.toml" tap 2>"$work/tap.log" &
  pids+=($!)
  wait_status source 30 'any(x["name"] == "disk-1" and x["attached"] for x in d["protected_disks"])'
  uri=nbd://127.0.0.1:$nbd_port/disk-1
}

bookmark() { # NAME: takes it, waits until the target applied it
  local sequence attempt
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    sequence=$(cli source bookmark bench --name "$1" --json 2>/dev/null | json 'd["sequence"]') && break
    echo "bookmark $1: attempt $attempt failed, retrying" >&2
    sleep 2
  done
  wait_status target "$wait_seconds" "d['target_groups'] and d['target_groups'][0]['applied_through'] >= $sequence"
}

drop_caches() {
  sync
  if [[ $(id -u) == 0 ]]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

start_sites
show fio --ioengine=nbd --rw=write --bs=1M --size="$size_bytes" "(fill)"
fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 --size="$size_bytes" >/dev/null
bookmark full
history_bytes=$((size_bytes * history_percent / 100 / (1 << 20) * (1 << 20)))
show fio --ioengine=nbd --rw=randwrite --bs=1M --io_size="$history_bytes" "(history)"
fio --name=history --ioengine=nbd --uri="$uri" --rw=randwrite --bs=1M --iodepth=8 \
  --size="$size_bytes" --io_size="$history_bytes" >/dev/null
bookmark later
replica=$(ls "$work"/target/retention/groups/*/disk-*.img)
out=$work/out.img
echo "materialize benchmark: SIZE=$size ($size_bytes bytes) fully written, ${history_percent} % overwritten after the point; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"

dd_rates=() fio_rates=() drgw_rates=() ratios=()
for run in $(seq "$runs"); do
  rm -f "$out" "$out.drgw-materialize"
  drop_caches
  show dd if="$replica" of="$out" bs=4M iflag=direct oflag=direct conv=fsync
  start=$(now)
  dd if="$replica" of="$out" bs=4M iflag=direct oflag=direct conv=fsync status=none
  dd_seconds=$(calc "$(now) - $start")
  dd_rate=$(calc "$size_bytes / $dd_seconds / 1e6")
  rm -f "$out"
  fio_rate=-
  if command -v fio >/dev/null; then
    drop_caches
    show fio read REPLICA + write OUT, 4M, direct, io_uring, end_fsync
    start=$(now)
    fio --ioengine=io_uring --direct=1 --bs=4M --iodepth=4 --size="$size_bytes" \
      --name=read --filename="$replica" --rw=read \
      --name=write --filename="$out" --rw=write --end_fsync=1 >/dev/null
    fio_rate=$(calc "round($size_bytes / ($(now) - $start) / 1e6, 1)")
    fio_rates+=("$fio_rate")
    rm -f "$out"
  fi
  drop_caches
  show drgw materialize bench --point bookmark:full --disk disk-1 --out "$out"
  start=$(now)
  result=$(cli target materialize bench --point bookmark:full --disk disk-1 --out "$out" --json)
  drgw_seconds=$(calc "$(now) - $start")
  drgw_rate=$(calc "$size_bytes / $drgw_seconds / 1e6")
  ratio=$(calc "round($drgw_rate / $dd_rate, 3)")
  dd_rates+=("$dd_rate") drgw_rates+=("$drgw_rate") ratios+=("$ratio")
  printf 'run %d: dd %.1f MB/s, fio %s MB/s, drgw materialize %.1f MB/s (job %.2f s, direct_io %s, data %s bytes), ratio drgw/dd %s\n' \
    "$run" "$dd_rate" "$fio_rate" "$drgw_rate" "$(json 'd["seconds"]' <<<"$result")" \
    "$(json 'd["direct_io"]' <<<"$result")" "$(json 'd["data_bytes"]' <<<"$result")" "$ratio"
  rm -f "$out"
done
printf 'median: dd %.1f MB/s, fio %s MB/s, drgw materialize %.1f MB/s, ratio drgw/dd %s (target >= 0.8)\n' \
  "$(median "${dd_rates[@]}")" "$([[ ${#fio_rates[@]} -gt 0 ]] && median "${fio_rates[@]}" || echo -)" \
  "$(median "${drgw_rates[@]}")" "$(median "${ratios[@]}")"
