#!/usr/bin/env bash
# Resync benchmark: `drgw resync` of a disk whose primary changed behind the
# tap's back, against `rsync --inplace --no-whole-file` of the same image,
# both over the same shaped link between two sites.
#
#   scripts/bench/resync.sh [DIR]    (default /var/tmp; as root; DIR needs
#                                     about 3 x DISK_MIB free, 1.5 x with
#                                     SITE_B_RAM=1)
#
# Sites: network namespace A holds the source gateway and the tap, B the
# target gateway, joined by a veth pair (hwtests/lib.sh `veth_sites`). The
# link: `tc qdisc ... tbf rate RATE` (default 100mbit) on the egress of both
# ends of the veth, and DELAY_MS (default 10) each way added by
# scripts/bench/delay_proxy.py (netem is not available): the gateways pin
# each other at a proxy's address (one proxy each way, as either may dial),
# rsync goes through a third; every proxy forwards across the veth.
#
# Setup, once, on the unshaped link (so that it does not take minutes):
# a disk of DISK_MIB (default 4096) filled with incompressible data through
# the tap (nbdcopy), replicated until the target applied everything, the
# replica checked equal (sha256) to the primary, and a copy of the primary
# made for rsync's destination (a file of its own at B's side, not the
# replica). Then the link is shaped, and RUNS times (default 3):
#
#   diverge  stop the tap; overwrite CHANGE_PERCENT (default 1) % of the
#            disk's 4 KiB blocks (distinct, at random, random contents)
#            straight in the primary file: writes the tap never saw; start
#            the tap again
#   drgw     drgw resync group-1 --json, on the source: the time of the
#            command, and the time until the target has applied all the
#            source staged by then (the resent blocks ship after the
#            command returns: start -> applied is the figure compared);
#            then the replica's sha256 against the primary's
#   rsync    rsync --inplace --no-whole-file --ignore-times --stats PRIMARY
#            rsync://PROXY/bench/copy.img (to `rsync --daemon` in B; only
#            --ignore-times added: never skip the file on size and mtime);
#            then the copy's sha256 against the primary's
#
# The page cache is dropped before each of drgw and rsync. Bytes on the wire
# are the veth's counters (Ethernet frames, each direction) before and after
# each; rsync's own --stats totals are printed beside them. Both destinations
# start every run equal to the primary before it diverged.
#
# Results go to stdout (each run, then medians, and the ratio drgw/rsync of
# the times, target <= 0.5); progress and the commands run (`+ ...`) to
# stderr. It prints figures; it asserts nothing (exit 1 when a run cannot
# finish or a copy does not match the primary; the processes' logs follow).
#
# Env: DRGW_BIN (a prebuilt drgw; skips the build, which otherwise is
#      `cargo build --release --bin drgw` into CARGO_TARGET_DIR or target/),
#      DISK_MIB, CHANGE_PERCENT, RUNS, RATE (tc units, default 100mbit),
#      DELAY_MS (one way), WAIT_SECONDS (default 900: how long to wait for
#      the target to apply), SITE_B_RAM=1 (site B's files, the target
#      gateway's and rsync's destination, on an ext4 of 3 x DISK_MIB in
#      memory, a loop device over a file on a tmpfs, mounted for the run:
#      for a DIR without room for three copies, or to give B storage apart
#      from A's as when deployed; needs about 2.3 x DISK_MIB of RAM free;
#      both tools read B's side from memory then. Not a bare tmpfs: the
#      target's pre-image reads seek holes, SEEK_HOLE, which tmpfs answers
#      by walking the file's pages up to the next hole, the end of a full
#      replica: 16 ms a write at 4 GiB).
set -euo pipefail

dir=${1:-/var/tmp}
disk_mib=${DISK_MIB:-4096}
change_percent=${CHANGE_PERCENT:-1}
runs=${RUNS:-3}
rate=${RATE:-100mbit}
delay_ms=${DELAY_MS:-10}
wait_seconds=${WAIT_SECONDS:-900}
root=$(cd "$(dirname "$0")/../.." && pwd)

if [[ $(id -u) != 0 ]]; then
  echo "resync.sh: needs root (network namespaces, tc, dropping the page cache)" >&2
  exit 2
fi
"$root/scripts/install-deps" >/dev/null
# shellcheck source=scripts/bench/lib.sh
source "$root/scripts/bench/lib.sh"
DRGW_BIN=$(bench_drgw_bin "$root")
export DRGW_BIN
mkdir -p "$dir"
export HWTEST_DIR=$dir
# shellcheck source=hwtests/lib.sh
source "$root/hwtests/lib.sh" # $work, on_exit, fail, the daemon and tap helpers
trap 'exit 130' INT TERM

ns_a=drgw-rsa-$$ ns_b=drgw-rsb-$$ device_a=rsa$$ device_b=rsb$$
address_a=192.0.2.1 address_b=192.0.2.2
size_bytes=$((disk_mib << 20))
site_b=$work/target # the target gateway's files (write_config), and rsync's destination
primary=$work/tap/primary.img # where write_tap_config puts it

show() { echo "+ $*" >&2; } # the exact commands, on stderr beside the progress
calc() { python3 -c "print($1)"; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
mib() { calc "round($1 / 2**20, 1)"; }
drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

# in_background NAME NETNS COMMAND...: runs COMMAND in NETNS, output in
# $work/NAME.log, stopped at exit
in_background() {
  local name=$1 netns=$2
  shift 2
  ip netns exec "$netns" "$@" >"$work/$name.log" 2>&1 &
  echo $! >"$work/$name.pid"
  on_exit "stop_background $!"
}
stop_background() { # PID: a child of this shell; waits for its last words
  kill "$1" 2>/dev/null || return 0
  wait "$1" 2>/dev/null || true
}

# start_proxy NAME NETNS LISTEN UPSTREAM: a delay_proxy.py at delay 0, set to
# DELAY_MS by `shape`
start_proxy() {
  echo 0 >"$work/$1.delay"
  show ip netns exec "$2" delay_proxy.py "$3" "$4" 0 --delay-file "$1.delay"
  in_background "$1" "$2" python3 "$root/scripts/bench/delay_proxy.py" "$3" "$4" 0 --delay-file "$work/$1.delay"
  wait_until 10 "proxy $1 listening" grep -q '^listening' "$work/$1.log"
}

start_rsync_daemon() {
  mkdir -p "$site_b/rsync"
  cat >"$work/rsyncd.conf" <<CONFIG
use chroot = no
[bench]
  path = $site_b/rsync
  read only = no
  uid = root
  gid = root
CONFIG
  show ip netns exec "$ns_b" rsync --daemon --no-detach --config=rsyncd.conf --address=$address_b --port=873
  in_background rsyncd "$ns_b" rsync --daemon --no-detach --config="$work/rsyncd.conf" \
    --address=$address_b --port=873 --log-file="$work/rsyncd.transfers.log"
  wait_until 10 "rsync daemon listening" bash -c "ip netns exec $ns_b ss -Hltn 'sport = :873' | grep -q ."
  start_proxy proxy-rsync "$ns_a" "$address_a:8873" "$address_b:873"
}

# An ext4 in memory mounted at $site_b; unmounted at exit, after the
# processes are stopped (cleanups run last first).
site_b_in_ram() {
  local size_mib=$((disk_mib * 3))
  mkdir -p "$work/ram" "$site_b"
  show mount -t tmpfs -o size=$((size_mib + 64))m drgw-site-b ram "&& mkfs.ext4 ram/site-b.ext4 ($size_mib MiB) && mount -o loop,discard ram/site-b.ext4 target"
  mount -t tmpfs -o size=$((size_mib + 64))m drgw-site-b "$work/ram"
  on_exit "umount -l $work/ram"
  truncate -s "${size_mib}M" "$work/ram/site-b.ext4"
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$work/ram/site-b.ext4"
  mount -o loop,discard "$work/ram/site-b.ext4" "$site_b"
  on_exit "umount -l $site_b"
}

# Two gateways in A and B pinned at each other's proxy, a tap in A serving
# disk-1 of group-1, the link up.
start_sites() {
  veth_sites "$ns_a" "$ns_b" "$device_a" "$device_b"
  [[ ${SITE_B_RAM:-0} != 1 ]] || site_b_in_ram
  local who staging_bytes=$((size_bytes * 2 > 8 << 30 ? size_bytes * 2 : 8 << 30))
  for who in source target; do
    write_config "$who" 0.0.0.0 9443
    # The defaults (1 s heartbeats, 5 s timeout), not the hwtests' quick ones.
    sed -i '/^heartbeat_interval_ms\|^peer_timeout_ms/d' "$work/$who/drgw.toml"
    # The journal keeps 1 GiB of history at most: the setup's 4 GiB is not
    # needed as history, and the disk holds three copies already.
    cat >>"$work/$who/drgw.toml" <<CONFIG
[staging]
capacity_bytes = $staging_bytes
[retention]
cap_bytes = $((1 << 30))
CONFIG
  done
  start_daemon source "$ns_a"
  start_daemon target "$ns_b"
  start_proxy proxy-source "$ns_a" "$address_a:9444" "$address_b:9443"
  start_proxy proxy-target "$ns_b" "$address_b:9444" "$address_a:9443"
  show drgw pair add --name target --address $address_a:9444 "(on the source: its proxy)"
  drgw_cli source pair add --name target --address "$address_a:9444" --fingerprint "$(fingerprint target)" >/dev/null
  show drgw pair add --name source --address $address_b:9444 "(on the target: its proxy)"
  drgw_cli target pair add --name source --address "$address_b:9444" --fingerprint "$(fingerprint source)" >/dev/null
  wait_until 30 "link up on the source" link_is source target connected
  wait_until 30 "link up on the target" link_is target source connected
  write_tap_config tap source disk-1 "$size_bytes"
  show ip netns exec "$ns_a" drgw tap --config tap/tap.toml
  start_tap tap "$ns_a"
  wait_until 30 "the tap attached" disk_attached source disk-1
}

# Waits until the tap has forwarded everything and the target applied all
# the source staged.
settle() {
  wait_until "$wait_seconds" "the tap settled" tap_settled tap
  local staged
  staged=$(json_get source "s['groups'][0]['sequence_last_durable']")
  wait_until "$wait_seconds" "the target applied sequence $staged" applied_through "$staged"
}
applied_through() { [[ $(json_get target "(s['target_groups'] or [{}])[0].get('applied_through', 0) >= $1") == True ]]; }

# The seconds from START until the target has applied SEQUENCE (polled
# every 0.1 s).
seconds_to_applied() { # SEQUENCE START
  python3 - "$DRGW_BIN" "$work/target/control.sock" "$1" "$2" "$wait_seconds" <<'PY' || fail "the target did not apply sequence $1 within $wait_seconds s"
import json, subprocess, sys, time
binary, socket, sequence, start, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
while True:
    status = json.loads(subprocess.run([binary, "--socket", socket, "status", "--json"],
                                       check=True, capture_output=True).stdout)
    groups = status["target_groups"]
    if groups and groups[0]["applied_through"] >= sequence:
        print(f"{time.time() - start:.3f}")
        sys.exit(0)
    if time.time() - start > limit:
        sys.exit(1)
    time.sleep(0.1)
PY
}

fill() {
  local uri
  uri="nbd://127.0.0.1:$(<"$work/tap/nbd-port")/disk-1"
  show "openssl enc -aes-128-ctr -pass pass:drgw -nosalt </dev/zero | head -c $size_bytes | ip netns exec $ns_a nbdcopy - $uri"
  { openssl enc -aes-128-ctr -pass pass:drgw -nosalt </dev/zero 2>/dev/null || true; } |
    head -c "$size_bytes" | ip netns exec "$ns_a" nbdcopy - "$uri"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# same FILE: FILE's sha256 is the primary's (both read at once)
same() {
  show sha256sum tap/primary.img "$1"
  sha "$primary" >"$work/primary.sha256" &
  sha "$1" >"$work/other.sha256"
  wait $!
  [[ $(<"$work/primary.sha256") == "$(<"$work/other.sha256")" ]]
}

# Overwrites CHANGE_PERCENT % of the primary's 4 KiB blocks with the tap
# stopped; sets `changed` (bytes).
diverge() {
  stop_pidfile "$work/tap/pid" TERM 60
  show "python3: ${change_percent} % of the 4 KiB blocks of tap/primary.img, distinct, at random, random contents; fsync"
  python3 - "$primary" "$change_percent" >"$work/changed" <<'PY'
import os, random, sys
path, percent = sys.argv[1], float(sys.argv[2])
blocks = os.path.getsize(path) // 4096
chosen = sorted(random.sample(range(blocks), int(blocks * percent / 100)))
descriptor = os.open(path, os.O_WRONLY)
for block in chosen:
    os.pwrite(descriptor, os.urandom(4096), block * 4096)
os.fsync(descriptor)
os.close(descriptor)
print(len(chosen) * 4096)
PY
  changed=$(<"$work/changed")
  local restarted
  restarted=$(date +%s)
  start_tap tap "$ns_a"
  wait_until 30 "the tap attached" disk_attached source disk-1
  wait_until 60 "the tap settled" tap_settled tap "$restarted"
}

shape() {
  local device netns name
  for netns in "$ns_a" "$ns_b"; do
    device=$([[ $netns == "$ns_a" ]] && echo "$device_a" || echo "$device_b")
    show ip netns exec "$netns" tc qdisc add dev "$device" root tbf rate "$rate" burst 64kb latency 50ms
    ip netns exec "$netns" tc qdisc add dev "$device" root tbf rate "$rate" burst 64kb latency 50ms
  done
  for name in proxy-source proxy-target proxy-rsync; do
    echo "$delay_ms" >"$work/$name.delay"
    kill -HUP "$(<"$work/$name.pid")"
  done
  show "delay_proxy.py: $delay_ms ms each way (SIGHUP)"
  sleep 2
}

wire() { # the bytes A sent and received on the veth
  ip -n "$ns_a" -j -s link show dev "$device_a" |
    python3 -c 'import json,sys; d=json.load(sys.stdin)[0]["stats64"]; print(d["tx"]["bytes"], d["rx"]["bytes"])'
}

# The link's round trip as the gateways measure it (heartbeats), in ms.
round_trip_ms() {
  json_get source "round(next(p['link']['round_trip_us'] or 0 for p in s['peers'] if p['name'] == 'target') / 1000, 1)"
}

# One drgw resync; sets drgw_command_s, drgw_job_s, drgw_applied_s,
# drgw_differing, drgw_sent, drgw_received.
drgw_run() {
  local started returned record staged before after
  drop_caches
  wait_until 30 "link up" link_is source target connected
  read -r -a before < <(wire)
  started=$(now)
  record=$(drgw_cli source resync group-1 --json) || fail "drgw resync failed"
  returned=$(now)
  staged=$(json_get source "s['groups'][0]['sequence_last_durable']")
  drgw_applied_s=$(seconds_to_applied "$staged" "$started")
  read -r -a after < <(wire)
  [[ $(python3 -c 'import json,sys; print(json.load(sys.stdin)["phase"])' <<<"$record") == "done" ]] ||
    fail "resync did not end done: $record"
  drgw_command_s=$(calc "round($returned - $started, 3)")
  read -r drgw_job_s drgw_differing < <(python3 -c 'import json,sys; d=json.load(sys.stdin)
print((d["finished_unix_ms"] - d["started_unix_ms"]) / 1000, d["differing_bytes"])' <<<"$record")
  drgw_sent=$((after[0] - before[0])) drgw_received=$((after[1] - before[1]))
}

# One rsync; sets rsync_s, rsync_sent, rsync_received, rsync_stats.
rsync_run() {
  local started before after
  drop_caches
  read -r -a before < <(wire)
  started=$(now)
  ip netns exec "$ns_a" rsync --inplace --no-whole-file --ignore-times --stats \
    "$primary" "rsync://$address_a:8873/bench/copy.img" >"$work/rsync.out" 2>&1 ||
    fail "rsync failed: $(cat "$work/rsync.out")"
  rsync_s=$(calc "round($(now) - $started, 3)")
  read -r -a after < <(wire)
  rsync_sent=$((after[0] - before[0])) rsync_received=$((after[1] - before[1]))
  rsync_stats=$(grep -E '^(Literal data|Matched data|Total bytes sent|Total bytes received):' "$work/rsync.out" |
    sed -E 's/ bytes$//; s/,//g' | paste -sd ';' | sed 's/;/; /g')
}

machine() {
  echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, kernel $(uname -r), $(df -T "$work" | awk 'NR==2 {print $2}') at $dir, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "drgw: $DRGW_BIN ($("$DRGW_BIN" --version 2>/dev/null || echo unknown version)); $(rsync --version | head -n1)"
  echo "files: site A (primary, staging) in $dir, site B (replica, journal, rsync's copy) $([[ ${SITE_B_RAM:-0} == 1 ]] && echo "on an ext4 in memory" || echo "there too")"
}

machine
echo "setup: ${disk_mib} MiB disk, sites in $ns_a and $ns_b, unshaped link" >&2
start_sites
start_rsync_daemon
setup_started=$(now)
fill
settle
replica=$(json_get target "s['target_groups'][0]['disks'][0]['path']")
same "$replica" || fail "after the setup, the replica differs from the primary"
show cp tap/primary.img target/rsync/copy.img
cp "$primary" "$site_b/rsync/copy.img"
echo "setup: filled, replicated, replica checked and copied in $(calc "round($(now) - $setup_started)") s" >&2
shape
echo "link: $rate each way (tbf), $delay_ms ms each way (proxy); drgw round trip $(round_trip_ms) ms (heartbeats)"
show drgw resync group-1 --json "(on the source; then the target's status every 0.1 s until it applied what the source staged)"
show ip netns exec "$ns_a" rsync --inplace --no-whole-file --ignore-times --stats tap/primary.img "rsync://$address_a:8873/bench/copy.img"

command_runs=() job_runs=() applied_runs=() rsync_runs=() ratio_runs=() command_ratio_runs=()
drgw_wire_runs=() rsync_wire_runs=() changed_runs=() differing_runs=()
for run in $(seq "$runs"); do
  diverge
  drgw_run
  same "$replica" || fail "run $run: the replica differs from the primary after the resync"
  rsync_run
  same "$site_b/rsync/copy.img" || fail "run $run: rsync's copy differs from the primary"
  ratio=$(calc "round($drgw_applied_s / $rsync_s, 3)")
  command_ratio=$(calc "round($drgw_command_s / $rsync_s, 3)")
  command_runs+=("$drgw_command_s") job_runs+=("$drgw_job_s") applied_runs+=("$drgw_applied_s")
  rsync_runs+=("$rsync_s") ratio_runs+=("$ratio") command_ratio_runs+=("$command_ratio")
  drgw_wire_runs+=("$((drgw_sent + drgw_received))") rsync_wire_runs+=("$((rsync_sent + rsync_received))")
  changed_runs+=("$changed") differing_runs+=("$drgw_differing")
  echo "run $run: changed $(mib "$changed") MiB ($((changed / 4096)) blocks); drgw resync command $drgw_command_s s (job $drgw_job_s s), applied at the target $drgw_applied_s s, differing_bytes $(mib "$drgw_differing") MiB, wire A->B $(mib "$drgw_sent") MiB, B->A $(mib "$drgw_received") MiB; rsync $rsync_s s, wire A->B $(mib "$rsync_sent") MiB, B->A $(mib "$rsync_received") MiB ($rsync_stats); ratio drgw/rsync $ratio (command only $command_ratio); replica and copy sha256 OK"
  echo "  round trip $(round_trip_ms) ms; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done

echo
echo "== resync: ${disk_mib} MiB disk, ${change_percent} % of its 4 KiB blocks changed, $rate + $delay_ms ms each way, $runs run(s), medians"
echo "changed              $(mib "$(median "${changed_runs[@]}")") MiB; drgw differing_bytes $(mib "$(median "${differing_runs[@]}")") MiB"
echo "drgw resync          command $(median "${command_runs[@]}") s (runs: ${command_runs[*]}; job ${job_runs[*]} s)"
echo "                     applied at the target $(median "${applied_runs[@]}") s (runs: ${applied_runs[*]})"
echo "rsync                $(median "${rsync_runs[@]}") s (runs: ${rsync_runs[*]})"
echo "wire bytes (both directions, veth) drgw $(mib "$(median "${drgw_wire_runs[@]}")") MiB, rsync $(mib "$(median "${rsync_wire_runs[@]}")") MiB"
echo "ratio                $(median "${ratio_runs[@]}") drgw (to applied) / rsync (runs: ${ratio_runs[*]}; target <= 0.5); command only $(median "${command_ratio_runs[@]}")"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
