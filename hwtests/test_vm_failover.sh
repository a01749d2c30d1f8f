#!/usr/bin/env bash
# A VM fails over to the target site and finds its data there. A source
# gateway, a target gateway (paired both ways, by fingerprint) and a tap
# with one 64 MiB protected disk, all on loopback; the source stages a
# crash-consistent point every 500 ms.
#   0. "Old contents" (a 0xa5 pattern) go into the region through the tap
#      (qemu-io); bookmark `before` is taken on the source.
#   1. Boot 1 from the tap's export: the guest writes a random pattern over
#      the region and prints its sha256. The target applies it.
#   2. Failover to `latest`; boot 2 from the failed-over export
#      (nbd://127.0.0.1:RECOVERY_PORT/group-1-DISK): the guest only reads
#      the region; its sha256 is the pattern's. Failover cancelled.
#   3. Failover to `bookmark:before`; boot 3 reads the old contents'
#      sha256, not the pattern's. Cancelled: replication resumes (the
#      source ships again without a problem and the target catches up).
#   4. Failover to `latest` once more and commit it; boot 4 from the
#      committed export reads the pattern. VM_FAILOVER_COMMIT=0 leaves this
#      step out (one boot less). The whole test took 66 s to 5 min here,
#      by load (TCG boots of 8 to 60 s; builds shared the 2 cores).
# "Boots from the export" means what the other VM hwtests mean: qemu (TCG)
# does a direct kernel boot (-kernel/-initrd from hwtests/vm) with the
# export as the guest's virtio-blk disk; no bootloader is on the disk.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/vm/lib.sh"

disk=vm-disk size=$((64 << 20)) offset_mb=8 mb=16 group=group-1
command -v qemu-io >/dev/null || vm_skip "qemu-io missing (qemu-utils)"
started=$SECONDS
elapsed() { echo "[$((SECONDS - started))s]"; }

vm_prepare
write_config source 127.0.0.1 "$(free_port)" "point_interval_ms = 500"
write_config target 127.0.0.1 "$(free_port)"
printf '[retention]\nsegment_bytes = 16777216\n' >>"$work/target/drgw.toml"
start_daemon source
start_daemon target
pair_gateways source target
write_tap_config tap source "$disk" "$size" async
start_tap tap
wait_until 20 "the tap attaches $disk" disk_attached source "$disk"
tap_uri="nbd://127.0.0.1:$(cat "$work/tap/nbd-port")/$disk"
recovery_uri="nbd://127.0.0.1:$(cat "$work/target/recovery-port")/$group-$disk"
echo "$(elapsed) source, target (paired both ways) and tap up"

# --- helpers on the two sides ----------------------------------------------

# points_json EXPRESSION: a Python expression on the target's `points --json` (as p)
points_json() {
  drgw_cli target points "$group" --json | python3 -c "import json, sys; p = json.load(sys.stdin); print($1)"
}
source_sequence() { json_get source "s['groups'][0]['sequence_last_durable']"; }
# target_has SEQUENCE: the target applied through SEQUENCE and holds a point at or after it
target_has() {
  [ "$(points_json "p['applied_through'] >= $1 and any(q['sequence'] >= $1 for q in p['points'])")" = True ]
}
# shipping_clean SEQUENCE: the source ships without a problem, acknowledged through SEQUENCE
shipping_clean() {
  [ "$(json_get source "s['shipping'][0]['problem'] is None and s['shipping'][0]['acknowledged_through'] >= $1")" = True ]
}
# failover POINT: fails the group over on the target; checks the export's address
failover() {
  local answer uri
  answer=$(drgw_cli target failover "$group" --point "$1" --json) || fail "failover to $1"
  uri=$(python3 -c 'import json, sys; a = json.loads(sys.argv[1]); print(next(e["uri"] for e in a["exports"] if e["disk"] == sys.argv[2]))' "$answer" "$disk")
  [ "$uri" = "$recovery_uri" ] || fail "failover to $1 exports $uri, expected $recovery_uri: $answer"
  echo "$(elapsed) failed over to $1: $(python3 -c 'import json, sys; a = json.loads(sys.argv[1]); print(a["state"], json.dumps(a.get("point")))' "$answer")"
}
cancel() {
  drgw_cli target failover "$group" --cancel >/dev/null || fail "failover --cancel"
  echo "$(elapsed) failover cancelled"
}

# --- 0. old contents and bookmark `before` ---------------------------------

qemu-io -f raw -c "write -P 0xa5 ${offset_mb}M ${mb}M" "$tap_uri" >"$work/qemu-io.out" 2>&1 ||
  fail "qemu-io write: $(cat "$work/qemu-io.out")"
old_sha=$(python3 -c "import hashlib; print(hashlib.sha256(bytes([0xa5]) * ($mb << 20)).hexdigest())")
wait_until 30 "the tap settles after the old contents" tap_settled tap "$(date +%s)"
drgw_cli source bookmark "$group" --name before >/dev/null || fail "bookmark before"
echo "$(elapsed) old contents written through the tap (sha256 $old_sha); bookmark 'before' taken"

# --- 1. boot 1 from the tap: the guest writes the pattern ------------------

vm_boot "$work/console-1.log" "$tap_uri" write "$offset_mb" "$mb"
wrote=$(vm_field "$work/console-1.log" WROTE sha256)
read_back=$(vm_field "$work/console-1.log" READ sha256)
[ -n "$wrote" ] || fail "the guest did not report its pattern"
[ "$read_back" = "$wrote" ] || fail "the guest read back $read_back, wrote $wrote"
[ "$wrote" != "$old_sha" ] || fail "the pattern equals the old contents"
wait_until 60 "the tap settles after boot 1" tap_settled tap "$(date +%s)"
sequence=$(source_sequence)
wait_until 60 "the target applies through sequence $sequence" target_has "$sequence"
echo "$(elapsed) boot 1 wrote sha256 $wrote; target applied through $(points_json "p['applied_through']") (source at $sequence)"

# --- 2. failover to latest: boot 2 reads the pattern -----------------------

failover latest
vm_boot "$work/console-2.log" "$recovery_uri" read "$offset_mb" "$mb"
at_latest=$(vm_field "$work/console-2.log" READ sha256)
[ "$at_latest" = "$wrote" ] || fail "after failover to latest the guest read $at_latest, expected the pattern $wrote"
echo "$(elapsed) boot 2 (failover to latest) read sha256 $at_latest: the pattern"
cancel

# --- 3. failover to bookmark:before: boot 3 reads the old contents ---------

failover bookmark:before
vm_boot "$work/console-3.log" "$recovery_uri" read "$offset_mb" "$mb"
at_before=$(vm_field "$work/console-3.log" READ sha256)
[ "$at_before" = "$old_sha" ] ||
  fail "after failover to bookmark:before the guest read $at_before, expected the old contents $old_sha (pattern: $wrote)"
echo "$(elapsed) boot 3 (failover to bookmark:before) read sha256 $at_before: the old contents"
cancel

# Replication resumes: the source ships again without a problem and the
# target applies what the source staged since. The source retries a
# refused group every 30 s (ship::REFUSED_RETRY), so this takes up to 30 s.
sequence=$(source_sequence)
wait_until 90 "the source ships through $sequence without a problem" shipping_clean "$sequence"
wait_until 60 "the target applies through sequence $sequence" target_has "$sequence"
echo "$(elapsed) replication resumed: source shipping clean, target applied through $(points_json "p['applied_through']") (source at $sequence)"

# --- 4. failover to latest and commit: boot 4 reads the pattern ------------

if [ "${VM_FAILOVER_COMMIT:-1}" = 1 ]; then
  failover latest
  drgw_cli target commit "$group" >/dev/null || fail "commit"
  echo "$(elapsed) committed"
  vm_boot "$work/console-4.log" "$recovery_uri" read "$offset_mb" "$mb"
  committed=$(vm_field "$work/console-4.log" READ sha256)
  [ "$committed" = "$wrote" ] || fail "from the committed export the guest read $committed, expected the pattern $wrote"
  echo "$(elapsed) boot 4 (committed) read sha256 $committed: the pattern"
fi
echo "$(elapsed) done"
