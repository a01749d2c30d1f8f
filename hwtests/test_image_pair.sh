#!/usr/bin/env bash
# Two appliances from one image replicate a disk (docs/appliance.md):
#   - appliances a and b boot from the same image, each with its own cache
#     and retention disks, on qemu's user network (TCG, OVMF); they come up
#     with different machine ids, hostnames and fingerprints;
#   - they are paired with the fingerprints their consoles show, through
#     the guest agent (no SSH, no password), and their link comes up;
#   - a drgw tap on the host, paired with a, serves a 64 MiB disk; random
#     data written through it (nbdcopy) is replicated through a to b, and a
#     bookmark exported by b over NBD (through b's firewall, opened for its
#     interface) reads back with the sha256 of what was written;
#   - b is rebooted (with a root password set and a file in /etc): its
#     identity, pairing, password and files are still there, replication
#     resumes where it stopped (a sends no more than what was written
#     since, no resync), and a second bookmark verifies too.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/vm/lib.sh"
source "$(dirname "$0")/image/lib.sh"

size=$((64 << 20))
image_ensure
for name in a b; do
  appliance_create "$name"
  appliance_boot "$name"
done
appliance_wait_ready a 600
appliance_wait_ready b 600
fa=$(appliance_fingerprint a) fb=$(appliance_fingerprint b)
[ -n "$fa" ] && [ -n "$fb" ] && [ "$fa" != "$fb" ] || fail "fingerprints: a $fa, b $fb"
ma=$(appliance_ga a -- cat /etc/machine-id) mb=$(appliance_ga b -- cat /etc/machine-id)
[ "$ma" != "$mb" ] || fail "both appliances have the machine id $ma"
ha=$(appliance_ga a -- hostname) hb=$(appliance_ga b -- hostname)
[ "$ha" != "$hb" ] || fail "both appliances are called $ha"
echo "a: $ha $fa; b: $hb $fb"

# status_of NAME EXPRESSION: a Python expression on NAME's status (as s)
status_of() {
  appliance_ga "$1" -- drgw status --json | python3 -c "import json, sys; s = json.load(sys.stdin); print($2)"
}
linked() { [ "$(status_of "$1" "next(p['link']['state'] for p in s['peers'] if p['name'] == '$2')")" = connected ]; }

appliance_ga a -- drgw pair add --name b --address "10.0.2.2:$(cat "$work/b/port-9443")" --fingerprint "$fb" >/dev/null ||
  fail "pair a -> b"
appliance_ga b -- drgw pair add --name a --address "10.0.2.2:$(cat "$work/a/port-9443")" --fingerprint "$fa" >/dev/null ||
  fail "pair b -> a"
wait_until 120 "the link a -> b" linked a b
wait_until 60 "the link b -> a" linked b a
echo "paired, link up"

# The tap on the host, paired with a.
tap=$work/tap
mkdir -p "$tap"
truncate -s "$size" "$tap/primary.img"
free_port >"$tap/nbd-port"
cat >"$tap/tap.toml" <<CONFIG
[tap]
name = "host-tap"
state_dir = "$tap/state"
[gateway]
address = "127.0.0.1:$(cat "$work/a/port-9443")"
fingerprint = "$fa"
[nbd]
address = "127.0.0.1"
port = $(cat "$tap/nbd-port")
[[disk]]
name = "disk-1"
path = "$tap/primary.img"
CONFIG
ft=$("$DRGW_BIN" --config "$tap/tap.toml" tap --print-fingerprint | awk '$1 == "fingerprint" { print $2 }')
appliance_ga a -- drgw pair add --name host-tap --tap --fingerprint "$ft" >/dev/null || fail "pair the tap"
appliance_ga a -- drgw protect disk-1 --group group-1 --tap host-tap --size "$size" --peer b >/dev/null ||
  fail "protect disk-1"
start_tap tap
attached() { [ "$(status_of a "any(d['name'] == 'disk-1' and d['attached'] for d in s['protected_disks'])")" = True ]; }
wait_until 60 "the tap attaches disk-1 at a" attached
uri=nbd://127.0.0.1:$(cat "$tap/nbd-port")/disk-1

# bookmarked NAME: b has applied the bookmark NAME
bookmarked() {
  [ "$(appliance_ga b -- drgw points group-1 --json |
    python3 -c "import json, sys; p = json.load(sys.stdin); print(any(q.get('bookmark') == '$1' and q['sequence'] <= p['applied_through'] for q in p['points']))")" = True ]
}
# exported_sha POINT: sha256 of the whole disk at POINT, read from b over NBD
exported_sha() {
  local answer name
  answer=$(appliance_ga b -- drgw export group-1 --point "$1" --json) || fail "export at $1"
  name=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])[0]["name"])' "$answer")
  nbdcopy "nbd://127.0.0.1:$(cat "$work/b/port-10809")/$name" - | sha256sum | cut -d' ' -f1
}

# verify_bookmark NAME FILE: once the tap has forwarded everything (the
# appliances run under TCG), bookmark NAME at a, wait for b to apply it, and
# check that b's export of it reads what FILE holds; prints the sha256.
verify_bookmark() {
  local want got
  wait_until 600 "the tap forwards its writes to a" tap_settled tap
  appliance_ga a -- drgw bookmark group-1 --name "$1" >/dev/null || fail "bookmark $1"
  wait_until 240 "b applies the bookmark $1" bookmarked "$1"
  want=$(sha256sum <"$2" | cut -d' ' -f1)
  got=$(exported_sha "bookmark:$1")
  [ "$got" = "$want" ] || fail "b's export of bookmark $1 reads $got, $2 holds $want"
  echo "$want"
}

# b's firewall lets NBD in on its interface only once told to.
interface=$(appliance_ga b -- ip -brief -family inet address show scope global | awk '{ print $1; exit }')
echo "add element inet drgw nbd_interfaces { \"$interface\" }" >"$work/nbd.nft"
appliance_ga b --input "$work/nbd.nft" -- sh -c 'cat >/etc/drgw/firewall.d/nbd.nft && systemctl reload nftables' ||
  fail "open NBD on b's $interface"

head -c "$size" /dev/urandom >"$work/data-1"
nbdcopy "$work/data-1" "$uri" || fail "nbdcopy into the tap"
want=$(verify_bookmark first "$work/data-1")
echo "64 MiB through a to b: bookmark first exported by b reads back the same ($want)"

# --- b reboots; its state stays, replication resumes where it stopped
echo "root:drgw-test-$(head -c 12 /dev/urandom | base64)" >"$work/password"
appliance_ga b --input "$work/password" -- chpasswd || fail "set b's root password"
appliance_ga b -- sh -c 'echo kept >/etc/drgw/kept-across-reboot' || fail "write in /etc"
boot_id=$(appliance_ga b -- cat /proc/sys/kernel/random/boot_id)
sent_before=$(status_of a "next(x['raw_bytes_sent'] for x in s['shipping'] if x['group'] == 'group-1')")
appliance_ga b --timeout 10 -- systemctl reboot >/dev/null 2>&1 || true
echo "$SECONDS" >"$work/b/booted-at"
sleep 5
head -c $((8 << 20)) /dev/urandom >"$work/data-2"
nbdcopy "$work/data-2" "$uri" || fail "nbdcopy while b reboots"
rebooted() {
  [ "$(python3 "$image_here/ga.py" "$work/b/ga.sock" exec --timeout 10 -- cat /proc/sys/kernel/random/boot_id 2>/dev/null ||
    echo "$boot_id")" != "$boot_id" ]
}
wait_until 600 "b's new boot" rebooted
appliance_wait_ready b 600
[ "$(appliance_fingerprint b)" = "$fb" ] || fail "b's fingerprint changed across the reboot"
[ "$(appliance_ga b -- cat /etc/machine-id)" = "$mb" ] || fail "b's machine id changed"
[ "$(appliance_ga b -- hostname)" = "$hb" ] || fail "b's hostname changed"
appliance_ga b -- passwd -S root | grep -q '^root P' || fail "b's root password did not survive the reboot"
[ "$(appliance_ga b -- cat /etc/drgw/kept-across-reboot)" = kept ] || fail "a file in /etc did not survive"
wait_until 120 "the link a -> b after b's reboot" linked a b
want=$(verify_bookmark second "$tap/primary.img")
sent_after=$(status_of a "next(x['raw_bytes_sent'] for x in s['shipping'] if x['group'] == 'group-1')")
resyncs=$(status_of a "len(s['resyncs'])")
sent=$((sent_after - sent_before))
((sent < (24 << 20))) || fail "a sent $sent bytes after b's reboot for 8 MiB written: a full resync?"
[ "$resyncs" = 0 ] || fail "a ran $resyncs resyncs"
echo "b rebooted: identity, pairing, password and /etc kept; replication resumed ($sent bytes sent for 8 MiB written, no resync); bookmark second verifies ($want)"
