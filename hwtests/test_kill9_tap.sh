#!/usr/bin/env bash
# Promise 1 under kill -9 of the tap. A source gateway and a tap (async mode,
# 128 MiB disk, 64 KiB grains, 128 KiB extents) on loopback. KILL9_ITERATIONS
# times (default 20): a fresh
# workload (hwtests/workload.py) writes 64 KiB blocks through the tap and logs
# every write the NBD server acknowledged; after a random 0.2-1.5 s the tap is
# killed with SIGKILL (the workload sees the connection drop and exits with
# its log intact). Then, before anything restarts:
#   - every acknowledged write (all iterations so far) is on the primary: the
#     last acknowledged one, or a later write whose reply never came;
#   - the gateway is stopped (SIGTERM) and its staged records replayed
#     (`drgw staging replay`): every acknowledged write is in the replay or
#     its grain is set in the dirty map the tap left (64 KiB grains), and
#     every grain clean in that map is identical in the replay and the
#     primary.
# Then the gateway and the tap restart. On odd iterations (and the last) the
# test waits until the tap settles: the bytes it resynchronised must equal the
# dirty bytes its map held (only dirty regions, never the whole disk). On even
# ones the next workload starts at once, so the next kill may land while the
# tap reconnects or resynchronises. At the end the replayed staging equals the
# primary (the streams converge). KILL9_SEED makes the random waits repeatable.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)
# KILL9_KEEP=DIR: keep the work directory (logs, images, maps) there after the run
[ -n "${KILL9_KEEP:-}" ] && on_exit "rm -rf ${KILL9_KEEP}; cp -a $work ${KILL9_KEEP}"

iterations=${KILL9_ITERATIONS:-20}
# 128 KiB activity extents (2 grains) on a 128 MiB disk: the dirty map at a
# kill holds the extents written in the last seconds, so the test sees both
# grains and extents, and a resync bounded by them.
disk_bytes=$((128 << 20))
export TAP_EXTENT_BYTES=$((128 << 10))
seed=${KILL9_SEED:-$(( $(date +%s) % 32768 ))}
RANDOM=$seed
python=$(python_with_nbd) || fail "python3 cannot import nbd: install python3-libnbd (scripts/install-deps)"
command -v sha256sum >/dev/null || fail "sha256sum missing"
echo "kill -9 tap: $iterations iterations, seed $seed, disk $((disk_bytes >> 20)) MiB"

random_sleep() {
  local ms=$(($1 + RANDOM % ($2 - $1 + 1)))
  local text="$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
  sleep "$text"
  echo "$text"
}

# json_field JSON EXPRESSION: a Python expression on a JSON text (as s)
json_field() {
  "$python" -c "import json, sys; s = json.loads(sys.argv[1]); print($2)" "$1"
}

# replay_staging OUT: the group's staged records applied to a fresh image (gateway stopped)
replay_staging() {
  rm -f "$1"
  "$DRGW_BIN" staging replay "$work/gateway/cache/staging/group-$group_id" --out "$1" \
    --size "$disk_bytes" --json >"$work/replay.out" 2>&1 || fail "staging replay: $(cat "$work/replay.out")"
}

write_config gateway 127.0.0.1 "$(free_port)"
respawn_daemon gateway
write_tap_config tap gateway disk-1 "$disk_bytes"
group_id=$(cat "$work/tap/group-id")
start_tap tap
wait_until 30 "the tap attaches disk-1" disk_attached gateway disk-1
uri="nbd://127.0.0.1:$(cat "$work/tap/nbd-port")/disk-1"
map="$work/tap/state/dirty/disk-1.map"

started_ns=$(date +%s%N)
counter=1
logs=()
total_dirty=0 total_resynced=0 acknowledged_total=0 covered_total=0 settled_checks=0
for ((iteration = 1; iteration <= iterations; iteration++)); do
  log="$work/workload.$iteration.log"
  logs+=("$log")
  "$python" "$here/workload.py" run --uri "$uri" --log "$log" --size "$disk_bytes" \
    --seed "$((seed * 100 + iteration))" --counter-start "$counter" \
    >"$work/workload.out" 2>"$work/workload.err" &
  echo $! >"$work/workload.pid"
  [ "$iteration" = 1 ] && on_exit "signal_pidfile $work/workload.pid KILL workload.py"
  # The kill is timed from the workload's first write: a kill before it
  # connected (Python starting slowly on a loaded machine) would test nothing
  # and leave the workload retrying a dead port.
  wait_until 30 "the workload writes (iteration $iteration)" test -s "$log"
  alive=$(random_sleep 200 1500)
  kill -0 "$(cat "$work/workload.pid")" 2>/dev/null ||
    fail "the workload ended before the kill (iteration $iteration): $(cat "$work/workload.out" "$work/workload.err")"
  stop_pidfile "$work/tap/pid" KILL 10

  # The workload sees the connection drop and exits; its log holds what was acknowledged.
  stop_pidfile "$work/workload.pid" 0 30 workload.py
  summary=$(cat "$work/workload.out")
  [ -n "$summary" ] || fail "the workload printed no summary: $(cat "$work/workload.err")"
  [ "$(json_field "$summary" 's["end"].startswith("connection lost") and s["write_error"] is None')" = True ] ||
    fail "iteration $iteration: the workload did not end by losing the connection: $summary $(cat "$work/workload.err")"
  counter=$(json_field "$summary" 's["counter_next"]')
  acked=$(json_field "$summary" 's["acknowledged"]')
  acknowledged_total=$((acknowledged_total + acked))

  # The dirty map as the killed tap left it.
  cp "$map" "$work/map.$iteration"
  dirty=$("$python" "$here/workload.py" dirty "$work/map.$iteration")
  dirty_bytes=$(json_field "$dirty" 's["dirty_bytes"]')
  [ "$(json_field "$dirty" 's["header_ok"] and s["grain_bytes"] == 65536 and s["disk_bytes"] == '"$disk_bytes")" = True ] ||
    fail "iteration $iteration: dirty map header: $dirty"

  # Acknowledged writes: on the primary; in staging or in the dirty map.
  stop_pidfile "$work/gateway/pid" TERM 60
  replay_staging "$work/replay.img"
  "$python" "$here/workload.py" verify --primary "$work/tap/primary.img" --log "${logs[@]}" \
    --replay "$work/replay.img" --map "$work/map.$iteration" >"$work/verify.out" 2>"$work/verify.err" ||
    fail "iteration $iteration: $(cat "$work/verify.out" "$work/verify.err")"
  covered=$(json_field "$(cat "$work/verify.out")" 's["covered_by_dirty_map"]')
  covered_total=$((covered_total + covered))

  # Restart. Odd iterations (and the last) wait until the tap settles: it must
  # have resynchronised exactly its dirty grains. Even ones start the next
  # workload at once, so that kill lands while the tap reconnects or resyncs.
  respawn_daemon gateway
  rm -f "$work/tap/state/status.json"
  start_tap tap
  total_dirty=$((total_dirty + dirty_bytes))
  line="iteration $iteration: killed after ${alive} s; $acked writes acknowledged ($(json_field "$summary" 's["unacknowledged"]') unanswered);"
  line+=" dirty map $((dirty_bytes >> 10)) KiB ($covered offsets written covered by it)"
  if ((iteration % 2 == 1 || iteration == iterations)); then
    wait_until 120 "the tap settles after restart (iteration $iteration)" tap_settled tap
    resynced=$(tap_status tap "s['resynced_bytes']")
    total_resynced=$((total_resynced + resynced))
    settled_checks=$((settled_checks + 1))
    echo "$line; settled, resynced $((resynced >> 10)) KiB"
    ((resynced == dirty_bytes)) ||
      fail "iteration $iteration: the tap resynchronised $resynced bytes, its dirty map held $dirty_bytes"
  else
    echo "$line; next workload starts at once"
  fi
done

# The streams converge.
stop_pidfile "$work/tap/pid" TERM 30
stop_pidfile "$work/gateway/pid" TERM 60
replay_staging "$work/replay.img"
primary_sum=$(sha256sum <"$work/tap/primary.img" | cut -d' ' -f1)
replay_sum=$(sha256sum <"$work/replay.img" | cut -d' ' -f1)
[ "$primary_sum" = "$replay_sum" ] ||
  fail "streams did not converge: primary sha256 $primary_sum, staged records replayed $replay_sum"
"$python" "$here/workload.py" verify --primary "$work/tap/primary.img" --log "${logs[@]}" >/dev/null ||
  fail "final primary check"
# Each settled restart resent exactly its dirty grains (checked above). The
# dirty map holds what is unacknowledged plus the extents written in the
# last couple of seconds (hot extents stay marked: tap/tracker.rs), so with
# this workload, random writes over the disk, it can be much of the disk; it
# must still never add up to a whole-disk resync at every restart.
limit=$((settled_checks * disk_bytes))
((total_resynced < limit)) ||
  fail "resynchronised $total_resynced bytes over $settled_checks restarts: whole-disk resyncs (limit $limit)"

elapsed=$(printf '%.1f' "$(echo "($(date +%s%N) - $started_ns) / 1000000000" | bc -l)")
echo "figures: iterations $iterations, writes acknowledged $acknowledged_total ($((acknowledged_total * 64 / 1024)) MiB)," \
  "dirty at the kills $((total_dirty >> 10)) KiB; bytes resynced after the $settled_checks settled restarts" \
  "$total_resynced ($((total_resynced >> 10)) KiB, equal to their dirty maps; a whole-disk resync each time would be" \
  "$((settled_checks * disk_bytes >> 20)) MiB), time ${elapsed} s"
echo "PASS: kill -9 of the tap x$iterations: acknowledged writes on the primary and staged or dirty, only dirty grains resynced, staging replay == primary ($primary_sum)"
