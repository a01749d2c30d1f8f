#!/usr/bin/env bash
# Promise 1 under kill -9 of the source gateway. A source gateway and a tap
# (async mode, 64 MiB disk) on loopback; a workload (hwtests/workload.py)
# writes 64 KiB blocks through the tap the whole time and logs every write
# the NBD server acknowledged. KILL9_ITERATIONS times (default 20): once the
# tap is attached, wait a random 0.2-1.5 s, kill -9 the gateway, wait a
# random 0.05-0.5 s, restart it (same config and state). Then stop the
# workload, wait until the tap is settled (linked, nothing pending, nothing
# dirty), and check:
#   (a) the primary holds, at every offset written, the last acknowledged
#       write (the workload drains on SIGTERM, so every write was answered);
#   (b) the gateway's staged records, replayed (`drgw staging replay`, gateway
#       stopped), equal the primary byte for byte: the streams converged.
# KILL9_SEED makes the random waits repeatable; it is printed.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)
# KILL9_KEEP=DIR: keep the work directory (logs, images, maps) there after the run
[ -n "${KILL9_KEEP:-}" ] && on_exit "rm -rf ${KILL9_KEEP}; cp -a $work ${KILL9_KEEP}"

iterations=${KILL9_ITERATIONS:-20}
disk_bytes=$((64 << 20))
seed=${KILL9_SEED:-$(( $(date +%s) % 32768 ))}
RANDOM=$seed
python=$(python_with_nbd) || fail "python3 cannot import nbd: install python3-libnbd (scripts/install-deps)"
command -v sha256sum >/dev/null || fail "sha256sum missing"
echo "kill -9 gateway: $iterations iterations, seed $seed, disk $((disk_bytes >> 20)) MiB"

# random_sleep MIN_MS MAX_MS: sleeps a random time in [MIN, MAX] ms; prints it in s
random_sleep() {
  local ms=$(($1 + RANDOM % ($2 - $1 + 1)))
  local text="$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
  sleep "$text"
  echo "$text"
}

write_config gateway 127.0.0.1 "$(free_port)"
respawn_daemon gateway
write_tap_config tap gateway disk-1 "$disk_bytes"
group_id=$(cat "$work/tap/group-id")
start_tap tap
wait_until 30 "the tap attaches disk-1" disk_attached gateway disk-1

"$python" "$here/workload.py" run --uri "nbd://127.0.0.1:$(cat "$work/tap/nbd-port")/disk-1" \
  --log "$work/workload.log" --size "$disk_bytes" --seed "$seed" \
  >"$work/workload.out" 2>"$work/workload.err" &
echo $! >"$work/workload.pid"
on_exit "signal_pidfile $work/workload.pid KILL workload.py"

started_ns=$(date +%s%N)
reattach_max=0
for ((iteration = 1; iteration <= iterations; iteration++)); do
  before=$(date +%s%N)
  wait_until 60 "the tap re-attaches disk-1 (iteration $iteration)" disk_attached gateway disk-1
  reattach_ms=$((($(date +%s%N) - before) / 1000000))
  ((reattach_ms > reattach_max)) && reattach_max=$reattach_ms
  alive=$(random_sleep 200 1500)
  kill -0 "$(cat "$work/workload.pid")" 2>/dev/null ||
    fail "the workload died during iteration $iteration: $(cat "$work/workload.out" "$work/workload.err")"
  stop_pidfile "$work/gateway/pid" KILL 10
  acked=$(grep -c '^A' "$work/workload.log" || true)
  down=$(random_sleep 50 500)
  respawn_daemon gateway
  echo "iteration $iteration: tap attached after ${reattach_ms} ms, gateway killed after ${alive} s, down ${down} s; $acked writes acknowledged so far"
done

stop_pidfile "$work/workload.pid" TERM 60 workload.py
summary=$(cat "$work/workload.out")
echo "workload: $summary"
[ "$("$python" -c 'import json, sys; s = json.loads(sys.argv[1]); print(s["end"] == "stopped" and s["write_error"] is None and s["unacknowledged"] == 0)' "$summary")" = True ] ||
  fail "the workload did not end cleanly: $summary $(cat "$work/workload.err")"
stopped_at=$(date +%s)
settle_started=$SECONDS
wait_until 180 "the tap settles (linked, nothing pending, nothing dirty)" tap_settled tap "$stopped_at"
settle_s=$((SECONDS - settle_started))
resynced=$(tap_status tap "s['resynced_bytes']")
connections=$(tap_status tap "s['connections']")

# (a) every acknowledged write is on the primary, as last acknowledged
"$python" "$here/workload.py" verify --strict --primary "$work/tap/primary.img" --log "$work/workload.log" \
  >"$work/verify.out" 2>"$work/verify.err" || fail "primary check: $(cat "$work/verify.out" "$work/verify.err")"
echo "primary check: $(cat "$work/verify.out")"

# (b) the staged stream converged with the primary
stop_pidfile "$work/tap/pid" TERM 30
stop_pidfile "$work/gateway/pid" TERM 60
"$DRGW_BIN" staging replay "$work/gateway/cache/staging/group-$group_id" --out "$work/replay.img" \
  --size "$disk_bytes" --json >"$work/replay.out" 2>&1 || fail "staging replay: $(cat "$work/replay.out")"
echo "staging replay: $(cat "$work/replay.out")"
primary_sum=$(sha256sum <"$work/tap/primary.img" | cut -d' ' -f1)
replay_sum=$(sha256sum <"$work/replay.img" | cut -d' ' -f1)
if [ "$primary_sum" != "$replay_sum" ]; then
  "$python" "$here/workload.py" verify --strict --primary "$work/replay.img" --log "$work/workload.log" >&2 || true
  fail "streams did not converge: primary sha256 $primary_sum, staged records replayed $replay_sum"
fi

acknowledged=$(grep -c '^A' "$work/workload.log")
# Not a verdict, a figure: links the tap dropped in its handshake because a
# HEARTBEAT came before the gateway's ATTACH answer (each costs a backoff).
handshake_drops=$(grep -c 'expected ATTACH of .*, got HEARTBEAT' "$work/tap/drgw.log" || true)
elapsed=$(printf '%.1f' "$(echo "($(date +%s%N) - $started_ns) / 1000000000" | bc -l)")
echo "figures: iterations $iterations, writes acknowledged $acknowledged ($((acknowledged * 64 / 1024)) MiB)," \
  "bytes resynced $resynced ($((resynced >> 20)) MiB), tap connections $connections," \
  "handshakes dropped on an early HEARTBEAT $handshake_drops," \
  "slowest re-attach ${reattach_max} ms, settle ${settle_s} s, time ${elapsed} s"
echo "PASS: kill -9 of the gateway x$iterations: every acknowledged write on the primary, staging replay == primary ($primary_sum)"
