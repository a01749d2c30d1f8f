#!/usr/bin/env bash
# End-to-end replication benchmarks: `drgw tap` -> source `drgw serve` ->
# target `drgw serve`, all on loopback in a temporary directory.
#
#   scripts/bench/e2e.sh [throughput|lag|index|all] [DIR]    (default: all, /var/tmp)
#
#   throughput  CORPUS_MIB (default 1024) of a tar of /usr, nbdcopy'd into a
#               protected disk (async tap), bookmark, wait until the target has
#               applied it: corpus bytes / (copy start -> applied), beside
#               `zstd -1 -T1` of the same corpus (ratio; target >= 0.8). Also the
#               time to received, the compression ratio on the wire, and one
#               sha256 check of `drgw materialize --point latest`. RUNS runs
#               (default 3), alternating zstd / drgw, each drgw run on a fresh
#               pair; medians printed.
#   lag         fio --ioengine=nbd sequential 1 MiB writes at --rate=LAG_RATE
#               (default 100m, i.e. 100 MiB/s) at queue depth LAG_IODEPTH (default
#               1) for LAG_SECONDS (default 60) on a fresh pair
#               (disk of LAG_DISK_MIB, default CORPUS_MIB); then the source's
#               replication lag percentiles (staged -> durable at the target;
#               target p99 < 1000 ms), fio's achieved rate, and the time to
#               drain once fio stops.
#   index       a fresh pair with an INDEX_DISK_MIB (default 4096) disk, filled
#               sequentially, then INDEX_WRITE_MIB (default 1024) of 4 KiB random
#               writes (fio, queue depth 32) spread over the disk: growth of the
#               target's journal index memory per GiB written (target <= 1 %).
#
# Results go to stdout; progress and the exact commands run (`+ ...`) to
# stderr. It prints figures; it asserts nothing (exit 1 only when a run
# cannot finish: then the status and log excerpts of the processes are
# printed).
#
# Env: DRGW_BIN (a prebuilt drgw; skips the build, which otherwise is
#      `cargo build --release --bin drgw` into CARGO_TARGET_DIR or target/),
#      WAIT_SECONDS (default 600: how long to wait for the target to apply),
#      RETENTION_CAP_BYTES (default 64 GiB), TIMELINE=1 (print, for each
#      throughput run, one line a second of where the data is: tap, source
#      staging, shipping, target).
set -euo pipefail

part=${1:-all}
dir=${2:-/var/tmp}
case $part in throughput | lag | index | all) ;; *)
  echo "usage: scripts/bench/e2e.sh [throughput|lag|index|all] [DIR]" >&2
  exit 2
  ;;
esac
corpus_mib=${CORPUS_MIB:-1024}
runs=${RUNS:-3}
lag_seconds=${LAG_SECONDS:-60}
lag_rate=${LAG_RATE:-100m}
lag_disk_mib=${LAG_DISK_MIB:-$corpus_mib}
lag_iodepth=${LAG_IODEPTH:-1}
index_disk_mib=${INDEX_DISK_MIB:-4096}
index_write_mib=${INDEX_WRITE_MIB:-1024}
wait_seconds=${WAIT_SECONDS:-600}
retention_cap_bytes=${RETENTION_CAP_BYTES:-$((64 << 30))}
root=$(cd "$(dirname "$0")/../.." && pwd)

"$root/scripts/install-deps" >/dev/null
# shellcheck source=scripts/bench/lib.sh
source "$root/scripts/bench/lib.sh"
bin=$(bench_drgw_bin "$root")
mkdir -p "$dir"
work=$(mktemp -d "$dir/drgw-e2e.XXXXXX")
run_pids=() # the processes of the pair running now (earlier ones are stopped)
cleanup() {
  for pid in "${run_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
show() { echo "+ $*" >&2; } # the exact commands, on stderr beside the progress
json() {                    # EXPRESSION on the JSON document `d` read from stdin
  python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}
calc() { python3 -c "print($1)"; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
cli() { # WHO ARGS...: drgw on the control socket of source or target
  local who=$1
  shift
  "$bin" --socket "$run/$who/control.sock" "$@"
}

gateway_config() { # WHO PORT STAGING_BYTES
  cat <<CONFIG
[appliance]
name = "bench-$1"
state_dir = "$run/$1/state"
[replication]
address = "127.0.0.1"
port = $2
[control]
socket = "$run/$1/control.sock"
[volumes]
cache = "$run/$1/cache"
retention = "$run/$1/retention"
[staging]
capacity_bytes = $3
[retention]
cap_bytes = $retention_cap_bytes
[recovery]
port = $(port)
[log]
level = "info"
CONFIG
}

start_gateway() { # WHO STAGING_BYTES
  local gateway_port
  gateway_port=$(port)
  mkdir -p "$run/$1"
  gateway_config "$1" "$gateway_port" "$2" >"$run/$1.toml"
  show "$bin" serve --config "$run/$1.toml"
  "$bin" serve --config "$run/$1.toml" 2>"$run/$1.log" &
  run_pids+=($!)
  echo $! >"$run/$1.pid"
  echo "$gateway_port" >"$run/$1.port"
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
  diagnose
  return 1
}

pin() { # ON NAME FINGERPRINT: pins gateway NAME on gateway ON
  show drgw pair add --name "$2" --address "127.0.0.1:$(<"$run/$2.port")" --fingerprint "$3" "(on the $1)"
  cli "$1" pair add --name "$2" --address "127.0.0.1:$(<"$run/$2.port")" --fingerprint "$3" >/dev/null
}

# A fresh source, target and tap serving disk-1 of DISK_MIB in group `bench`.
start_pair() { # DISK_MIB
  local disk_mib=$1 staging_bytes target_fp source_fp tap_fp
  run=$work/run-$((++run_count))
  run_pids=()
  mkdir -p "$run"
  staging_bytes=$(((disk_mib * 2 > 8192 ? disk_mib * 2 : 8192) << 20))
  start_gateway source "$staging_bytes"
  start_gateway target "$staging_bytes"
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
  truncate -s "${disk_mib}M" "$run/primary.img"
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
  show drgw pair add --name tap-1 --tap --fingerprint "$tap_fp" "(on the source)"
  cli source pair add --name tap-1 --tap --fingerprint "$tap_fp" >/dev/null
  show drgw protect disk-1 --group bench --tap tap-1 --size "${disk_mib}M" "(on the source)"
  cli source protect disk-1 --group bench --tap tap-1 --size "${disk_mib}M" >/dev/null
  show "$bin" --config "$run/tap.toml" tap
  "$bin" --config "$run/tap.toml" tap 2>"$run/tap.log" &
  run_pids+=($!)
  echo $! >"$run/tap.pid"
  wait_status source 30 'any(x["name"] == "disk-1" and x["attached"] for x in d["protected_disks"])'
  uri=nbd://127.0.0.1:$nbd_port/disk-1
}

stop_pair() { # stops this run's processes; its files go with it
  local pid
  for pid in "${run_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${run_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  run_pids=()
  rm -rf "$run"
}

# Takes bookmark NAME on the source; prints its sequence. Retries while the
# tap's barrier times out (its forwarding is behind), saying so.
bookmark() { # NAME
  local attempt answer
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    if answer=$(cli source bookmark bench --name "$1" --json 2>"$run/bookmark.err"); then
      json 'd["sequence"]' <<<"$answer"
      return 0
    fi
    echo "bookmark $1 attempt $attempt failed: $(cat "$run/bookmark.err")" >&2
  done
  diagnose
  return 1
}

# Polls the target until it has applied SEQUENCE; prints the seconds from
# START (unix time, fractional) to received and to applied.
wait_applied() { # SEQUENCE START
  if ! python3 - "$bin" "$run/target/control.sock" "$1" "$2" "$wait_seconds" <<'PY'; then
import json, subprocess, sys, time
binary, socket, sequence, start, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
received = None
deadline = time.time() + limit
while True:
    status = json.loads(subprocess.run([binary, "--socket", socket, "status", "--json"],
                                       check=True, capture_output=True).stdout)
    now = time.time()
    groups = status["target_groups"]
    if groups:
        if received is None and groups[0]["received_through"] >= sequence:
            received = now - start
        if groups[0]["applied_through"] >= sequence:
            print(f"{received:.3f} {now - start:.3f}")
            sys.exit(0)
    if now > deadline:
        print(f"target did not apply sequence {sequence} within {limit:.0f} s", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.1)
PY
    diagnose
    return 1
  fi
}

# What the processes say when something did not finish: status and logs.
diagnose() {
  echo "--- source status (groups, shipping, peers):" >&2
  cli source status --json 2>&1 | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({k: d[k] for k in ("groups","shipping","peers")}, indent=1))' >&2 || true
  echo "--- target status (target_groups, target_problems):" >&2
  cli target status --json 2>&1 | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({k: d[k] for k in ("target_groups","target_problems")}, indent=1))' >&2 || true
  echo "--- tap status.json:" >&2
  cat "$run/tap/state/status.json" >&2 2>/dev/null || true
  local log
  for log in source target tap; do
    echo "--- $log.log (last 30 lines):" >&2
    tail -n 30 "$run/$log.log" >&2 || true
  done
}

# CPU seconds (user + system) each process has used since it started.
cpu_check() {
  local who ticks
  ticks=$(getconf CLK_TCK)
  for who in source target tap; do
    printf '%s %s s  ' "$who" "$(awk -v t="$ticks" '{printf "%.1f", ($14 + $15) / t}' "/proc/$(<"$run/$who.pid")/stat")"
  done
  echo
}

# Warnings and errors the three processes logged during this run (the
# certificate refusals while pairing are the two `pair add` racing the dial).
log_check() {
  echo "  cpu: $(cpu_check)"
  local log count
  for log in source target tap; do
    count=$(grep -cE '\b(WARN|ERROR)\b' "$run/$log.log" || true)
    echo "  $log.log: $count WARN/ERROR lines"
    grep -E '\b(WARN|ERROR)\b' "$run/$log.log" | sed -E 's/^[^ ]+ +//' | sort | uniq -c | sort -rn | head -n 5 | sed 's/^/    /' || true
  done
}

machine() {
  echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, kernel $(uname -r), $(df -T "$work" | awk 'NR==2 {print $2}') at $dir, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "drgw: $bin ($("$bin" --version 2>/dev/null || echo unknown version))"
}

make_corpus() { # CORPUS_MIB of tar of /usr, repeated if /usr is smaller
  local want=$((corpus_mib << 20)) have
  corpus=$work/corpus.tar
  show "tar -cf - -C / usr | head -c $want >corpus.tar"
  : >"$corpus"
  while (($(stat -c %s "$corpus") < want)); do
    have=$(stat -c %s "$corpus")
    { tar -cf - -C / usr 2>/dev/null || true; } | head -c $((want - have)) >>"$corpus"
    (($(stat -c %s "$corpus") > have)) || { echo "tar of /usr produced nothing" >&2; return 1; }
  done
  truncate -s "$want" "$corpus"
}

zstd_run() { # prints MB/s of input of `zstd -1 -T1`
  local started ended
  started=$(date +%s.%N)
  zstd -q -1 -T1 -c "$corpus" >/dev/null
  ended=$(date +%s.%N)
  calc "round($((corpus_mib << 20)) / 1e6 / ($ended - $started), 1)"
}

# With TIMELINE=1: samples tap, source and target once a second into
# $run/timeline (a background process of the run, stopped with it).
start_timeline() {
  [[ ${TIMELINE:-0} == 1 ]] || return 0
  python3 - "$bin" "$run" >"$run/timeline" <<'PY' &
import json, subprocess, sys, time
binary, run = sys.argv[1], sys.argv[2]
status = lambda who: json.loads(subprocess.run([binary, "--socket", f"{run}/{who}/control.sock", "status", "--json"],
                                               capture_output=True).stdout or "{}")
mib = lambda b: f"{b / 2**20:7.0f}"
print("     s  tap-pending-MiB  staged-MiB  staged-seq  shipped-raw-MiB  acked-seq  level  ack-ms  target-MiB  received-seq  applied-seq", flush=True)
start = time.time()
while True:
    try:
        tap = json.load(open(f"{run}/tap/state/status.json"))
        source, target = status("source"), status("target")
        group, ship = source["groups"][0], (source["shipping"] or [{}])[0]
        applied = (target["target_groups"] or [{}])[0]
        print(f"{time.time() - start:6.1f}  {mib(tap['pending_bytes'])}          {mib(group['bytes_on_disk'])}  {group['sequence_last_durable']:10}  "
              f"{mib(ship.get('raw_bytes_sent', 0))}          {ship.get('acknowledged_through', 0):9}  {ship.get('zstd_level', 0):5}  {ship.get('last_ack_latency_ms') or 0:6}  "
              f"{mib(applied.get('bytes_received', 0))}     {applied.get('received_through', 0):12}  {applied.get('applied_through', 0):11}", flush=True)
    except (OSError, ValueError, KeyError, IndexError) as error:
        print(f"{time.time() - start:6.1f}  ({error!r})", flush=True)
    time.sleep(1)
PY
  run_pids+=($!)
}

# One drgw run on a fresh pair; sets run_mbs, run_copy_s, run_received_s,
# run_bookmark_s, run_applied_s, run_wire_ratio, run_zstd_level (no
# subshell: the trap must know its processes).
drgw_run() { # NUMBER
  local started copied bookmarked sequence times
  start_pair "$corpus_mib" >&2
  start_timeline
  started=$(date +%s.%N)
  nbdcopy "$corpus" "$uri"
  copied=$(date +%s.%N)
  sequence=$(bookmark "copied-$1")
  bookmarked=$(date +%s.%N)
  times=$(wait_applied "$sequence" "$started")
  read -r run_wire_ratio run_zstd_level < <(cli source status --json |
    json '"%.2f %d" % (d["shipping"][0]["raw_bytes_sent"] / max(1, d["shipping"][0]["wire_bytes_sent"]), d["shipping"][0]["zstd_level"])')
  echo "  run $1 logs:" >&2
  log_check >&2
  if (($1 == 1)); then verify >&2; fi
  if [[ ${TIMELINE:-0} == 1 ]]; then cat "$run/timeline" >&2; fi
  stop_pair
  read -r run_received_s run_applied_s <<<"$times"
  run_copy_s=$(calc "round($copied - $started, 3)")
  run_bookmark_s=$(calc "round($bookmarked - $started, 3)")
  run_mbs=$(calc "round($((corpus_mib << 20)) / 1e6 / $run_applied_s, 1)")
}

verify() { # sha256 of the replica's latest point against the corpus
  local out=$run/materialized.img expected actual
  show drgw materialize bench --point latest --disk disk-1 --out materialized.img "(on the target)"
  cli target materialize bench --point latest --disk disk-1 --out "$out" >/dev/null
  expected=$(sha256sum "$corpus" | cut -d' ' -f1)
  actual=$(sha256sum "$out" | cut -d' ' -f1)
  if [[ $expected == "$actual" ]]; then verified=OK; else verified="MISMATCH (corpus $expected, materialized $actual)"; fi
  echo "  materialize latest: sha256 $verified"
  rm -f "$out"
}

throughput() {
  local zstd_runs=() drgw_runs=() received_runs=() applied_runs=() copy_runs=() bookmark_runs=() wire_runs=() level_runs=() i
  make_corpus
  local zstd_ratio
  zstd_ratio=$(calc "round($((corpus_mib << 20)) / $(zstd -q -1 -T1 -c "$corpus" | wc -c), 2)")
  show nbdcopy corpus.tar "nbd://127.0.0.1:PORT/disk-1"
  show drgw bookmark bench --name copied-N --json "(on the source)"
  show "drgw status --json (on the target, every 0.1 s until .target_groups[0].applied_through >= the bookmark's sequence)"
  show zstd -q -1 -T1 -c corpus.tar ">/dev/null"
  verified="not checked"
  for i in $(seq "$runs"); do
    zstd_runs+=("$(zstd_run)")
    drgw_run "$i"
    drgw_runs+=("$run_mbs") received_runs+=("$run_received_s") applied_runs+=("$run_applied_s")
    copy_runs+=("$run_copy_s") bookmark_runs+=("$run_bookmark_s") wire_runs+=("$run_wire_ratio")
    level_runs+=("$run_zstd_level")
    echo "run $i: zstd -1 -T1 ${zstd_runs[-1]} MB/s; drgw $run_mbs MB/s end to end (copy $run_copy_s s, bookmark staged $run_bookmark_s s, received $run_received_s s, applied $run_applied_s s, wire ratio $run_wire_ratio at zstd level $run_zstd_level)" >&2
  done
  local zstd_median drgw_median
  zstd_median=$(median "${zstd_runs[@]}")
  drgw_median=$(median "${drgw_runs[@]}")
  echo
  echo "== throughput: ${corpus_mib} MiB tar of /usr, $runs run(s)"
  echo "zstd -1 -T1          median $zstd_median MB/s (runs: ${zstd_runs[*]}), ratio $zstd_ratio"
  echo "drgw end to end      median $drgw_median MB/s (runs: ${drgw_runs[*]})"
  echo "  copy done after    ${copy_runs[*]} s (nbdcopy, async tap)"
  echo "  bookmark staged    ${bookmark_runs[*]} s (its tap barrier: every acknowledged write staged at the source)"
  echo "  received after     ${received_runs[*]} s"
  echo "  applied after      ${applied_runs[*]} s"
  echo "  wire ratio         ${wire_runs[*]} (raw_bytes_sent / wire_bytes_sent; zstd levels at the end: ${level_runs[*]})"
  echo "  materialize latest sha256 against the corpus: $verified"
  echo "ratio                $(calc "round($drgw_median / $zstd_median, 2)") drgw/zstd (target >= 0.8)"
}

lag() {
  local sequence started times
  start_pair "$lag_disk_mib" >&2
  show fio --name=lag --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth="$lag_iodepth" --rate="$lag_rate" --time_based --runtime="$lag_seconds" --refill_buffers --output-format=json
  fio --name=lag --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth="$lag_iodepth" --rate="$lag_rate" --time_based --runtime="$lag_seconds" \
    --refill_buffers --output-format=json --output="$run/fio.json" >/dev/null
  started=$(date +%s.%N)
  sequence=$(bookmark drained)
  times=$(wait_applied "$sequence" "$started")
  cli source status --json >"$run/source.json"
  echo
  echo "== lag: fio --rw=write --bs=1M --iodepth=$lag_iodepth --rate=$lag_rate for $lag_seconds s, disk $lag_disk_mib MiB"
  echo "fio achieved         $(json 'round(d["jobs"][0]["write"]["bw_bytes"] / 1e6, 1)' <"$run/fio.json") MB/s ($(json 'round(d["jobs"][0]["write"]["io_bytes"] / 2**20)' <"$run/fio.json") MiB written; fio's clat p99 $(json 'round(d["jobs"][0]["write"]["clat_ns"]["percentile"]["99.000000"] / 1e6, 1)' <"$run/fio.json") ms)"
  python3 - "$(json 'd["jobs"][0]["write"]["bw_bytes"]' <"$run/fio.json")" "$(numfmt --from=iec "${lag_rate^^}")" <<'PY'
import sys
reached = float(sys.argv[1]) / float(sys.argv[2])
if reached < 0.9:
    print(f"  NOTE: fio reached {reached:.0%} of the requested rate: the lag below is at that rate")
PY
  json '"lag (staged -> durable at target): p50 %s ms, p99 %s ms, max %s ms, %s samples" % tuple(d["groups"][0][k] for k in ("lag_p50_ms", "lag_p99_ms", "lag_max_ms", "lag_samples"))' <"$run/source.json"
  echo "  (target p99 < 1000 ms; the samples are the last 20,000 tap appends at most)"
  echo "drained after fio    received ${times% *} s, applied ${times#* } s (bookmark after fio ended -> target)"
  echo "wire ratio           $(json '"%.2f (zstd level %d)" % (d["shipping"][0]["raw_bytes_sent"] / max(1, d["shipping"][0]["wire_bytes_sent"]), d["shipping"][0]["zstd_level"])' <"$run/source.json")"
  echo "logs:"
  log_check
  stop_pair
}

index() {
  local sequence started before after
  start_pair "$index_disk_mib" >&2
  show fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 --size="${index_disk_mib}M" --refill_buffers
  fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 --size="${index_disk_mib}M" \
    --refill_buffers --output-format=json --output="$run/fill.json" >/dev/null
  started=$(date +%s.%N)
  sequence=$(bookmark filled)
  wait_applied "$sequence" "$started" >"$run/fill.times"
  cli target status --json >"$run/before.json"
  show fio --name=random --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=32 --size="${index_disk_mib}M" --io_size="${index_write_mib}M" --refill_buffers
  fio --name=random --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=32 --size="${index_disk_mib}M" \
    --io_size="${index_write_mib}M" --refill_buffers --output-format=json --output="$run/random.json" >/dev/null
  started=$(date +%s.%N)
  sequence=$(bookmark random)
  wait_applied "$sequence" "$started" >"$run/random.times"
  cli target status --json >"$run/after.json"
  before=$(json 'd["target_groups"][0]["index_memory_bytes"]' <"$run/before.json")
  after=$(json 'd["target_groups"][0]["index_memory_bytes"]' <"$run/after.json")
  echo
  echo "== index: disk $index_disk_mib MiB filled sequentially, then $index_write_mib MiB of 4 KiB random writes"
  echo "fill                 $(json 'round(d["jobs"][0]["write"]["bw_bytes"] / 1e6, 1)' <"$run/fill.json") MB/s (fio), applied $(cut -d' ' -f2 "$run/fill.times") s after fio ended"
  echo "random writes        $(json 'round(d["jobs"][0]["write"]["iops"])' <"$run/random.json") IOPS (fio), applied $(cut -d' ' -f2 "$run/random.times") s after fio ended"
  echo "index memory         after fill $before B, after random writes $after B"
  echo "journal              after fill $(json 'd["target_groups"][0]["journal_bytes"]' <"$run/before.json") B, after random writes $(json 'd["target_groups"][0]["journal_bytes"]' <"$run/after.json") B; points $(json 'd["target_groups"][0]["points"]' <"$run/after.json")"
  echo "index growth         $(calc "round(($after - $before) / ($index_write_mib << 20) * 100, 3)") % of the bytes written ($(calc "round(($after - $before) / ($index_write_mib * 256), 1)") B per 4 KiB write; target <= 1 %)"
  echo "logs:"
  log_check
  stop_pair
}

run_count=0
machine
case $part in
  throughput) throughput ;;
  lag) lag ;;
  index) index ;;
  all)
    throughput
    lag
    index
    ;;
esac
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
