#!/usr/bin/env bash
# The appliance image (scripts/image, docs/appliance.md): every output is
# built and well formed, and the image boots under qemu (TCG, q35, OVMF)
# to drgw.service active with the banner on the serial console:
#   - qemu-img check passes on the qcow2 and the VMDK; the OVA is USTAR
#     with the .ovf first, then the .mf, then the disks; its manifest
#     verifies; its OVF parses (xmllint) with the elements users' tools
#     read; SHA256SUMS verifies; the package manifest lists the kernel,
#     systemd and drgw's services' packages;
#   - the raw image boots with its cache and retention disks and OVF
#     properties on an ISO (hostname, static address, gateway, DNS, NTP),
#     applied at first boot; both disks are found, laid out and mounted,
#     and drgw status shows them; the data
#     partition and the /etc overlay are mounted, / is read-only, no SSH
#     host keys and no root password exist;
#   - the VMDK taken out of the OVA boots with no cache disk and a
#     retention disk too small (named by its serial): both are reported on
#     the console and by drgw status, and the root disk is not used in
#     their place.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/vm/lib.sh"
source "$(dirname "$0")/image/lib.sh"

image_ensure
cd "$image_out"
name=$image_name

# --- the outputs
for file in "$name".{raw,qcow2,vmdk,ovf,ova,packages} SHA256SUMS; do
  [ -s "$file" ] || fail "scripts/image wrote no $file"
done
sha256sum --quiet -c SHA256SUMS || fail "SHA256SUMS does not verify"
qemu-img check -q "$name.qcow2" || fail "qemu-img check: $name.qcow2"
qemu-img check -q "$name.vmdk" || fail "qemu-img check: $name.vmdk"
[ "$(qemu-img info --output=json "$name.vmdk" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format-specific"]["data"]["create-type"])')" = streamOptimized ] ||
  fail "the VMDK is not streamOptimized"
for package in linux-image-amd64 systemd systemd-boot-efi nftables systemd-timesyncd open-vm-tools qemu-guest-agent; do
  grep -q "^$package	" "$name.packages" || fail "the package manifest lacks $package"
done
echo "outputs: $(wc -l <"$name.packages") packages; qcow2 and VMDK check clean"

mapfile -t members < <(tar -tf "$name.ova")
expected=("$name.ovf" "$name.mf" "$name-system.vmdk" "$name-cache.vmdk" "$name-retention.vmdk")
[ "${members[*]}" = "${expected[*]}" ] || fail "OVA members in the wrong order: ${members[*]}"
[ "$(dd if="$name.ova" bs=1 skip=257 count=5 2>/dev/null)" = ustar ] || fail "the OVA is not a USTAR archive"
ova=$work/ova
mkdir -p "$ova"
tar -xf "$name.ova" -C "$ova"
# The manifest's lines are "SHA256(file)= hex".
(cd "$ova" && sed -n 's/^SHA256(\(.*\))= \([0-9a-f]\{64\}\)$/\2  \1/p' "$name.mf" >check.sha256 &&
  [ "$(wc -l <check.sha256)" = 4 ] && [ "$(wc -l <"$name.mf")" = 4 ] && sha256sum --quiet -c check.sha256) ||
  fail "the OVA's manifest does not verify: $(cat "$ova/$name.mf")"
ovf=$ova/$name.ovf
xmllint --noout "$ovf" || fail "the OVF does not parse"
xpath() { xmllint --xpath "$1" "$ovf" 2>/dev/null; }
[[ $(xpath 'string(//*[local-name()="VirtualSystemType"])') =~ ^vmx-[0-9]+$ ]] || fail "no VirtualSystemType vmx-NN"
[ "$(xpath 'count(//*[local-name()="Disk"])')" = 3 ] || fail "the OVF does not declare three disks"
for type in 3 4 6 10 17; do # CPU, memory, SCSI controller, NIC, disk
  [ "$(xpath "count(//*[local-name()='Item'][*[local-name()='ResourceType']='$type'])")" -ge 1 ] ||
    fail "the OVF has no item of resource type $type"
done
[ "$(xpath 'string(//*[local-name()="Config"][@*[local-name()="key"]="firmware"]/@*[local-name()="value"])')" = efi ] ||
  fail "the OVF does not declare UEFI for VMware"
[ "$(xpath 'string(//*[local-name()="Machine"]/*[local-name()="Hardware"]/*[local-name()="Firmware"]/@type)')" = EFI ] ||
  fail "the OVF does not declare UEFI for VirtualBox"
for key in hostname address gateway dns ntp; do
  [ "$(xpath "count(//*[local-name()='ProductSection']/*[local-name()='Property'][@*[local-name()='key']='$key'])")" = 1 ] ||
    fail "the OVF declares no property $key"
done
echo "OVA: members in order, manifest verifies, OVF parses with CPU, memory, SCSI, three disks, NIC, UEFI, properties"

# --- the raw image boots, finds and mounts its volumes
cd "$work"
appliance_create raw "$image_out/$name.raw" 4 8
# OVF properties by the ISO transport: the name and a static address (the
# one qemu's user network expects, so the forwarded ports still reach it).
appliance_ovf_env raw hostname=drgw-site-a address=10.0.2.15/24 gateway=10.0.2.2 dns=10.0.2.3 ntp=10.0.2.2
appliance_boot raw
appliance_wait_ready raw 420
fingerprint=$(appliance_fingerprint raw)
[ -n "$fingerprint" ] || fail "no fingerprint on the console"
volumes=$(appliance_ga raw -- drgw status --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(" ".join("%s=%s:%s" % (v["role"], v["mount_point"], v["problem"]) for v in s["volumes"]))')
[ "$volumes" = "cache=/mnt/cache:None retention=/mnt/retention:None" ] || fail "volumes: $volumes"
appliance_ga raw -- findmnt -no OPTIONS / | grep -q '^ro' || fail "/ is not read-only"
appliance_ga raw -- findmnt -no FSTYPE /etc | grep -qx overlay || fail "/etc is not the overlay"
appliance_ga raw -- findmnt -no SOURCE /data | grep -q drgw-data || fail "/data is not the data partition"
appliance_ga raw -- sh -c 'ls /etc/ssh/ssh_host_*key* 2>/dev/null' && fail "the appliance has SSH host keys it did not make"
appliance_ga raw -- passwd -S root | grep -q '^root L' || fail "root is not locked"
wait_until 120 "the console offers to set the root password" \
  grep -aq '^Root login is disabled until a root password is set' "$work/raw/console.log"
# (is-enabled exits 1 when disabled)
[ "$(appliance_ga raw -- systemctl is-enabled ssh.service || true)" = disabled ] || fail "SSH is enabled"
appliance_ga raw -- nft list set inet drgw nbd_interfaces >/dev/null || fail "the firewall is not loaded"
echo "raw image: volumes mounted, / read-only, /etc overlay, no SSH keys, root locked, firewall up"
[ "$(appliance_ga raw -- hostname)" = drgw-site-a ] || fail "the OVF hostname was not set: $(appliance_ga raw -- hostname)"
grep -aq 'drgw-site-a' "$work/raw/console.log" || fail "the console banner does not show the OVF hostname"
appliance_ga raw -- networkctl status --no-pager | grep -q '70-drgw-static.network' ||
  fail "networkd does not use the static settings: $(appliance_ga raw -- networkctl status --no-pager)"
addresses=$(appliance_ga raw -- ip -4 -o addr show scope global)
grep -q ' 10\.0\.2\.15/24 ' <<<"$addresses" || fail "no static address 10.0.2.15/24: $addresses"
grep -q dynamic <<<"$addresses" && fail "the address came from DHCP, not the OVF properties: $addresses"
appliance_ga raw -- ip route show default | grep -q 'via 10\.0\.2\.2' || fail "no default route via the OVF gateway"
appliance_ga raw -- cat /etc/systemd/timesyncd.conf.d/drgw.conf | grep -qx 'NTP=10.0.2.2' || fail "the OVF NTP server was not set"
echo "OVF properties (ISO transport): hostname, static address, gateway, DNS, NTP applied"
appliance_shutdown raw

# --- the VMDK out of the OVA boots; missing and too small volumes reported
# (the small disk has the serial drgw-retention: it is the retention disk)
appliance_create ova "$ova/$name-system.vmdk" 0 0
qemu-img create -q -f qcow2 "$work/ova/retention.qcow2" 512M
touch "$work/ova/serials"
appliance_boot ova
appliance_wait_ready ova 420
# The banner prints the fingerprint first, the volumes after asking drgw
# (slow under TCG): give the rest of it time to arrive.
wait_until 120 "the console reports the missing cache disk" \
  grep -aq '! cache volume missing' "$work/ova/console.log"
wait_until 120 "the console reports the too small retention disk" \
  grep -aq '! retention volume missing: .* needs at least' "$work/ova/console.log"
problems=$(appliance_ga ova -- drgw status --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(sum(1 for v in s["volumes"] if v["problem"] and "disk is missing" in v["problem"]))')
[ "$problems" = 2 ] || fail "drgw status reports $problems missing volumes, expected 2"
appliance_ga ova -- sh -c 'lsblk -no PARTLABEL /dev/vdb | grep -q drgw' && fail "the too small disk was laid out"
grep -a '^  ! ' "$work/ova/console.log" | tr -d '\r' | sort -u
echo "VMDK from the OVA: boots; missing cache and too small retention disks reported, not replaced"
appliance_shutdown ova
