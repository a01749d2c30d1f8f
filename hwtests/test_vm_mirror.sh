#!/usr/bin/env bash
# A running VM replicates through QMP blockdev-mirror: qemu (TCG) boots the
# busybox guest (direct kernel boot, hwtests/vm/) from its own local disk
# image, paused; over QMP the disk is mirrored (sync=full,
# copy-mode=write-blocking) to the tap's export of a mirror disk (no
# primary); once the job is ready the guest writes a random pattern; the
# job is ended without pivot. The gateway's staged records replayed
# (`drgw staging replay`) equal the VM's local disk image.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/vm/lib.sh"

disk=vm-mirror size=$((64 << 20)) offset_mb=8 mb=16

vm_prepare
write_config gw 127.0.0.1 "$(free_port)"
start_daemon gw
vm_write_mirror_tap_config tap gw "$disk" "$size"
start_tap tap
wait_until 20 "the tap attaches $disk" disk_attached gw "$disk"
echo "gateway and tap (mirror disk) up"

# The VM's own disk, with data before the mirror starts (the bulk copy)
# and zeroes elsewhere (copied as zeroes).
local_disk=$work/local.img
truncate -s "$size" "$local_disk"
head -c $((4 << 20)) /dev/urandom | dd of="$local_disk" bs=1M seek=40 conv=notrunc 2>/dev/null

console=$work/console.log
booted=$SECONDS
qemu-system-x86_64 -accel tcg -m 256 -smp 1 -nographic -no-reboot -no-shutdown -nic none -S \
  -kernel "$vm_vmlinuz" -initrd "$vm_initrd" \
  -append "console=ttyS0 panic=-1 quiet drgw.job=wait drgw.offset_mb=$offset_mb drgw.mb=$mb" \
  -blockdev "driver=file,filename=$local_disk,node-name=local-file,cache.direct=on" \
  -blockdev driver=raw,file=local-file,node-name=local \
  -device virtio-blk-pci,drive=local \
  -serial "file:$console" \
  -chardev "socket,id=control,path=$work/control.sock,server=on,wait=off" -serial chardev:control \
  -qmp "unix:$work/qmp.sock,server=on,wait=off" -monitor none -display none 2>"$work/qemu.err" &
qemu_pid=$!
on_exit "kill -9 $qemu_pid 2>/dev/null"
python3 "$(dirname "$0")/vm/qmp.py" --qmp "$work/qmp.sock" --control "$work/control.sock" \
  --console "$console" --device local --nbd-port "$(cat "$work/tap/nbd-port")" --export "$disk" --timeout 150 ||
  { grep -a '^DRGW-' "$console" >&2 || true; fail "QMP mirror choreography"; }
wait "$qemu_pid" || fail "qemu exited with $? ($(cat "$work/qemu.err"))"
echo "VM done in $((SECONDS - booted))s"
grep -a '^DRGW-' "$console"

wrote=$(vm_field "$console" WROTE sha256)
[ -n "$wrote" ] || fail "the guest did not report its pattern"
in_local=$(vm_range_sha "$local_disk" "$offset_mb" "$mb")
[ "$in_local" = "$wrote" ] || fail "the local disk holds $in_local where the guest wrote $wrote"

wait_until 30 "the tap settles" tap_settled tap
python3 - "$work/tap/state/status.json" <<'PY' || fail "the mirror disk failed requests or was read"
import json, sys
disk = json.load(open(sys.argv[1]))["disks"][0]
print(f"tap: mirror disk staged {disk['staged_bytes']} bytes; failed requests "
      f"{disk['failed_requests']}, retried forwards {disk['retried_forwards']}, "
      f"reads (refused) {disk['refused_reads']}")
sys.exit(0 if disk["failed_requests"] == 0 and disk["refused_reads"] == 0 else 1)
PY
stop_pidfile "$work/tap/pid" TERM
stop_pidfile "$work/gw/pid" TERM
vm_replay gw tap "$size" "$work/replayed.img"
[ "$(vm_sha "$work/replayed.img")" = "$(vm_sha "$local_disk")" ] ||
  fail "staged records replayed ($(vm_sha "$work/replayed.img")) differ from the VM's disk ($(vm_sha "$local_disk"))"
echo "staged stream replayed equals the VM's local disk ($(vm_sha "$local_disk"))"
