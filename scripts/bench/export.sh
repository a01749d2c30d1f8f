#!/usr/bin/env bash
# Recovery export benchmark (issue 5): how long a hypervisor waits between
# `drgw export` of a point of a large disk with a long history and its first
# read, beside the same NBD client against a plain file served by `qemu-nbd`.
#
#   scripts/bench/export.sh [DIR]        (default /var/tmp)
#
# One source `drgw serve`, one target `drgw serve` and one `drgw tap` on
# loopback (as scripts/bench/e2e.sh starts them), one disk of SIZE (default
# 16G, a sparse file) in group `bench`, the source taking a crash-consistent
# point every POINT_INTERVAL_MS (default 100). HISTORY: WRITES (default
# 1048576) 4 KiB random writes spread over the whole disk (fio
# --ioengine=nbd, queue depth 32, a block at most once per round), in ROUNDS
# (default 4) each ended by a bookmark, for at most HISTORY_SECONDS (default
# 300) in all (the number reached is printed); then wait until the target
# applied everything. Then, for the OLDEST point (every write of the history
# is after it: the point reader walks every index entry), the MIDDLE one and
# `latest`, RUNS times (default 3), alternating with the reference:
#
#   export    `drgw export bench --point seq:N --disk disk-1 --json` (on the target)
#   info      `nbdinfo URI`: the handshake, then it reads the disk's first
#             sectors to say what they hold (file(1) takes most of its time
#             on the reference): the first read of the export, where the
#             point reader builds its overlay of changed ranges
#   read      then connect again and read the first 4 KiB (libnbd from
#             python, in process), as a hypervisor does at once
#   map       `nbdinfo --map URI` when the export offers base:allocation
#   total     export + info + read
#
# then `drgw unexport NAME`. Reference: `qemu-nbd -r` serving a sparse file of
# SIZE, the same info and read (started once; no export step). Medians and the
# ratio of times drgw/reference (of info + read, and of the total) are
# printed: below 1, drgw answered sooner.
#
# Results go to stdout; progress and the commands run (`+ ...`) to stderr. It
# prints figures; it asserts nothing (exit 1 only when a run cannot finish).
#
# With COMPARE_BIN (another drgw binary, e.g. a build before a change), the
# target is then stopped and started again with it on the same history (its
# index rebuilt from the undo log) and the exports are measured again: a
# before/after on one history.
#
# Env: DRGW_BIN (a prebuilt drgw; skips the build, which otherwise is
#      `cargo build --release --bin drgw` into CARGO_TARGET_DIR or target/),
#      COMPARE_BIN, SIZE, WRITES, HISTORY_SECONDS, ROUNDS, POINT_INTERVAL_MS,
#      RUNS, WAIT_SECONDS (default 1800: how long to wait for the target to
#      apply the history).
set -euo pipefail

dir=${1:-/var/tmp}
size=${SIZE:-16G}
writes=${WRITES:-1048576}
rounds=${ROUNDS:-4}
history_seconds=${HISTORY_SECONDS:-300}
point_interval_ms=${POINT_INTERVAL_MS:-100}
runs=${RUNS:-3}
wait_seconds=${WAIT_SECONDS:-1800}
root=$(cd "$(dirname "$0")/../.." && pwd)
numfmt --from=iec "$size" >/dev/null # refuses a malformed SIZE before anything starts

"$root/scripts/install-deps" >/dev/null
# shellcheck source=scripts/bench/lib.sh
source "$root/scripts/bench/lib.sh"
bin=$(bench_drgw_bin "$root")
mkdir -p "$dir"
run=$(mktemp -d "$dir/drgw-export.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
show() { echo "+ $*" >&2; }
json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
calc() { python3 -c "print($1)"; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
cli() { # WHO ARGS...
  local who=$1
  shift
  "$bin" --socket "$run/$who/control.sock" "$@"
}

gateway_config() { # WHO PORT RECOVERY_PORT
  cat <<CONFIG
[appliance]
name = "bench-$1"
state_dir = "$run/$1/state"
[replication]
address = "127.0.0.1"
port = $2
point_interval_ms = $point_interval_ms
[control]
socket = "$run/$1/control.sock"
[volumes]
cache = "$run/$1/cache"
retention = "$run/$1/retention"
[staging]
capacity_bytes = $((8 << 30))
[recovery]
address = "127.0.0.1"
port = $3
[log]
level = "info"
CONFIG
}

start_gateway() { # WHO [BINARY]: with BINARY, starts WHO again on its state
  local gateway_port binary=${2:-$bin}
  if [[ ! -e $run/$1.toml ]]; then
    gateway_port=$(port)
    mkdir -p "$run/$1"
    gateway_config "$1" "$gateway_port" "$(port)" >"$run/$1.toml"
    echo "$gateway_port" >"$run/$1.port"
  fi
  show "$binary" serve --config "$run/$1.toml"
  "$binary" serve --config "$run/$1.toml" 2>>"$run/$1.log" &
  pids+=($!)
  echo $! >"$run/$1.pid"
  for _ in $(seq 150); do cli "$1" status >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "$1 gateway did not start:" >&2
  cat "$run/$1.log" >&2
  return 1
}

wait_status() { # WHO SECONDS PYTHON-CONDITION-ON-d
  for _ in $(seq $(($2 * 5))); do
    [[ $(cli "$1" status --json | json "$3") == True ]] && return 0
    sleep 0.2
  done
  echo "$1: waited $2 s for: $3" >&2
  for log in source target tap; do
    echo "--- $log.log (last 20 lines):" >&2
    tail -n 20 "$run/$log.log" >&2 || true
  done
  return 1
}

pin() { # ON NAME FINGERPRINT
  show drgw pair add --name "$2" --address "127.0.0.1:$(<"$run/$2.port")" --fingerprint "$3" "(on the $1)"
  cli "$1" pair add --name "$2" --address "127.0.0.1:$(<"$run/$2.port")" --fingerprint "$3" >/dev/null
}

start_pair() { # source, target and a tap serving disk-1 of SIZE in group bench
  local source_fp target_fp tap_fp nbd_port
  start_gateway source
  start_gateway target
  source_fp=$(cli source pair show --json | json 'd["fingerprint"]')
  target_fp=$(cli target pair show --json | json 'd["fingerprint"]')
  # The side whose fingerprint sorts first dials: pin on the other one first.
  if [[ $(LC_ALL=C sort <<<"$source_fp"$'\n'"$target_fp" | head -n1) == "$source_fp" ]]; then
    pin target source "$source_fp"
    pin source target "$target_fp"
  else
    pin source target "$target_fp"
    pin target source "$source_fp"
  fi
  wait_status source 30 'any(p["name"] == "target" and p["link"]["state"] == "connected" for p in d["peers"])'
  nbd_port=$(port)
  truncate -s "$size" "$run/primary.img"
  cat >"$run/tap.toml" <<CONFIG
[tap]
name = "tap-1"
state_dir = "$run/tap/state"
[gateway]
address = "127.0.0.1:$(<"$run/source.port")"
fingerprint = "$source_fp"
[nbd]
address = "127.0.0.1"
port = $nbd_port
[log]
level = "info"
[[disk]]
name = "disk-1"
path = "$run/primary.img"
mode = "async"
CONFIG
  tap_fp=$("$bin" --config "$run/tap.toml" tap --print-fingerprint | awk '/^fingerprint/ {print $2}')
  cli source pair add --name tap-1 --tap --fingerprint "$tap_fp" >/dev/null
  show drgw protect disk-1 --group bench --tap tap-1 --size "$size" "(on the source)"
  cli source protect disk-1 --group bench --tap tap-1 --size "$size" >/dev/null
  show "$bin" --config "$run/tap.toml" tap
  "$bin" --config "$run/tap.toml" tap 2>"$run/tap.log" &
  pids+=($!)
  wait_status source 30 'any(x["name"] == "disk-1" and x["attached"] for x in d["protected_disks"])'
  tap_uri=nbd://127.0.0.1:$nbd_port/disk-1
}

bookmark() { # NAME: prints its sequence (retries while the tap's barrier times out)
  local attempt answer
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    if answer=$(cli source bookmark bench --name "$1" --json 2>"$run/bookmark.err"); then
      json 'd["sequence"]' <<<"$answer"
      return 0
    fi
    echo "bookmark $1 attempt $attempt failed: $(cat "$run/bookmark.err")" >&2
  done
  return 1
}

wait_applied() { # SEQUENCE
  local applied
  for _ in $(seq $((wait_seconds))); do
    applied=$(cli target status --json | json '(d["target_groups"] or [{"applied_through": 0}])[0]["applied_through"]')
    ((applied >= $1)) && return 0
    sleep 1
  done
  echo "target did not apply sequence $1 within $wait_seconds s (applied $applied)" >&2
  return 1
}

# The history: WRITES 4 KiB random writes over the whole disk in ROUNDS fio
# runs (each block written at most once per round), a bookmark after each.
history() {
  local per_round=$((writes / rounds)) seconds=$((history_seconds / rounds)) i sequence started ended
  show fio --name=history --ioengine=nbd --uri="$tap_uri" --rw=randwrite --bs=4k --iodepth=32 --size="$size" --number_ios=$per_round --runtime=$seconds --randseed=ROUND
  started=$(now)
  for i in $(seq "$rounds"); do
    fio --name=history --ioengine=nbd --uri="$tap_uri" --rw=randwrite --bs=4k --iodepth=32 --size="$size" \
      --number_ios="$per_round" --runtime="$seconds" --randseed="$i" --output-format=json --output="$run/fio-$i.json" >/dev/null
    sequence=$(bookmark "round-$i")
    echo "  round $i: $(json 'round(d["jobs"][0]["write"]["iops"])' <"$run/fio-$i.json") IOPS, $(json 'd["jobs"][0]["write"]["total_ios"]' <"$run/fio-$i.json") writes, bookmark at sequence $sequence, $(calc "round($(now) - $started)") s" >&2
  done
  ended=$(now)
  last_sequence=$sequence
  wait_applied "$sequence"
  history_written_s=$(calc "round($ended - $started, 1)")
  history_applied_s=$(calc "round($(now) - $started, 1)")
  history_writes=0
  for i in $(seq "$rounds"); do
    history_writes=$((history_writes + $(json 'd["jobs"][0]["write"]["total_ios"]' <"$run/fio-$i.json")))
  done
}

# Connects to URI and reads its first 4 KiB: prints the seconds taken.
first_read() { # URI
  /usr/bin/python3 - "$1" <<'PY'
import nbd, sys, time
started = time.monotonic()
handle = nbd.NBD()
handle.connect_uri(sys.argv[1])
data = handle.pread(4096, 0)
elapsed = time.monotonic() - started
assert len(data) == 4096
handle.shutdown()
print(f"{elapsed:.4f}")
PY
}

timed() { # COMMAND...: runs it quietly, prints its seconds
  local started
  started=$(now)
  "$@" >/dev/null 2>"$run/timed.err" || { cat "$run/timed.err" >&2; return 1; }
  calc "round($(now) - $started, 4)"
}

map_supported() { # URI
  nbdinfo --can base:allocation "$1" 2>/dev/null
}

start_reference() {
  local reference_port
  reference_port=$(port)
  truncate -s "$size" "$run/reference.img"
  show qemu-nbd -r -f raw -b 127.0.0.1 -p "$reference_port" -x ref -t reference.img
  qemu-nbd -r -f raw -b 127.0.0.1 -p "$reference_port" -x ref -t "$run/reference.img" &
  pids+=($!)
  reference_uri=nbd://127.0.0.1:$reference_port/ref
  for _ in $(seq 50); do nbdinfo "$reference_uri" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "qemu-nbd did not start" >&2
  return 1
}

# One drgw run on POINT: sets export_s, info_s, read_s, map_s, total_s.
drgw_run() { # POINT-SPEC
  local started answer uri name
  started=$(now)
  answer=$(cli target export bench --point "$1" --disk disk-1 --json)
  export_s=$(calc "round($(now) - $started, 4)")
  uri=$(json 'd[0]["uri"]' <<<"$answer")
  name=$(json 'd[0]["name"]' <<<"$answer")
  info_s=$(timed nbdinfo "$uri")
  read_s=$(first_read "$uri")
  total_s=$(calc "round($export_s + $info_s + $read_s, 4)")
  if map_supported "$uri"; then map_s=$(timed nbdinfo --map "$uri"); else map_s=n/a; fi
  cli target unexport "$name" >/dev/null
}

reference_run() { # sets ref_info_s, ref_read_s, ref_map_s
  ref_info_s=$(timed nbdinfo "$reference_uri")
  ref_read_s=$(first_read "$reference_uri")
  ref_map_s=$(timed nbdinfo --map "$reference_uri")
}

measure() { # LABEL POINT-SPEC
  local exports=() infos=() reads=() maps=() totals=() ref_infos=() ref_reads=() ref_maps=() i
  for i in $(seq "$runs"); do
    reference_run
    ref_infos+=("$ref_info_s") ref_reads+=("$ref_read_s") ref_maps+=("$ref_map_s")
    drgw_run "$2"
    exports+=("$export_s") infos+=("$info_s") reads+=("$read_s") maps+=("$map_s") totals+=("$total_s")
    echo "  $1 run $i: export $export_s s, nbdinfo $info_s s, 4 KiB read $read_s s, nbdinfo --map $map_s, total $total_s s; qemu-nbd: nbdinfo $ref_info_s s, read $ref_read_s s, --map $ref_map_s s" >&2
  done
  local drgw_ready reference_ready
  drgw_ready=$(calc "round($(median "${infos[@]}") + $(median "${reads[@]}"), 4)")
  reference_ready=$(calc "round($(median "${ref_infos[@]}") + $(median "${ref_reads[@]}"), 4)")
  echo "$1 ($2): total median $(median "${totals[@]}") s (runs: ${totals[*]}; target < 1 s)"
  echo "  export $(median "${exports[@]}") s (${exports[*]}); nbdinfo $(median "${infos[@]}") s (${infos[*]}); read $(median "${reads[@]}") s (${reads[*]}); --map ${maps[*]}"
  echo "  qemu-nbd: nbdinfo $(median "${ref_infos[@]}") s (${ref_infos[*]}); read $(median "${ref_reads[@]}") s (${ref_reads[*]}); --map $(median "${ref_maps[@]}") s"
  echo "  ratio nbdinfo + read: $(calc "round($drgw_ready / $reference_ready, 2)") x qemu-nbd; total (with the export): $(calc "round($(median "${totals[@]}") / $reference_ready, 2)") x"
}

echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, kernel $(uname -r), $(df -T "$run" | awk 'NR==2 {print $2}') at $dir, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "drgw: $bin ($("$bin" --version 2>/dev/null || echo unknown version))"
start_pair >&2
history
cli target status --json >"$run/target.json"
cli target points bench --json >"$run/points.json"
oldest=$(json 'd["points"][0]["sequence"]' <"$run/points.json")
middle=$(json 'd["points"][len(d["points"]) // 2]["sequence"]' <"$run/points.json")
echo
echo "== history: disk $size (sparse), $history_writes writes of 4 KiB at random over the disk in $rounds rounds, written in $history_written_s s, applied at the target after $history_applied_s s"
echo "target: $(json 'd["target_groups"][0]["points"]' <"$run/target.json") points (sequences $oldest..$(json 'd["points"][-1]["sequence"]' <"$run/points.json"), over $(json 'round((d["points"][-1]["unix_ms"] - d["points"][0]["unix_ms"]) / 1000)' <"$run/points.json") s), index memory $(json 'd["target_groups"][0]["index_memory_bytes"]' <"$run/target.json") B, journal $(json 'd["target_groups"][0]["journal_bytes"]' <"$run/target.json") B"
start_reference >&2
show drgw export bench --point seq:N --disk disk-1 --json "(on the target)"
show nbdinfo URI
show "python3: nbd.NBD().connect_uri(URI); pread(4096, 0)"
show nbdinfo --map URI
show drgw unexport NAME "(on the target)"
echo
echo "== exports: $runs run(s) each, alternating with qemu-nbd -r on a sparse $size file"
measure oldest "seq:$oldest"
measure middle "seq:$middle"
measure latest latest
if [[ -n ${COMPARE_BIN:-} ]]; then
  show "kill the target; $COMPARE_BIN serve --config target.toml"
  kill "$(<"$run/target.pid")"
  while kill -0 "$(<"$run/target.pid")" 2>/dev/null; do sleep 0.1; done
  started=$(now)
  start_gateway target "$COMPARE_BIN" >&2
  wait_applied "$last_sequence"
  bin=$COMPARE_BIN
  echo
  echo "== the same exports, the target restarted with $COMPARE_BIN ($("$bin" --version 2>/dev/null || echo unknown version); open and index rebuilt in $(calc "round($(now) - $started, 1)") s)"
  measure oldest "seq:$oldest"
  measure middle "seq:$middle"
  measure latest latest
fi
echo
echo "target log: $(grep -cE '\b(WARN|ERROR)\b' "$run/target.log" || true) WARN/ERROR lines"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
