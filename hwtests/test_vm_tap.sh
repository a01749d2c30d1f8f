#!/usr/bin/env bash
# A VM writes through the tap: qemu (TCG) boots a Debian kernel with a
# busybox initramfs (direct kernel boot, hwtests/vm/) and the tap's NBD
# export as its virtio-blk disk; the guest writes a random pattern to
# /dev/vda, syncs, reads it back and prints both sha256 on the console.
# Then the primary holds the pattern, the tap settles, and the gateway's
# staged records replayed (`drgw staging replay`) equal the primary.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/vm/lib.sh"

disk=vm-disk size=$((64 << 20)) offset_mb=8 mb=16

vm_prepare
write_config gw 127.0.0.1 "$(free_port)"
start_daemon gw
write_tap_config tap gw "$disk" "$size" async
start_tap tap
wait_until 20 "the tap attaches $disk" disk_attached gw "$disk"
echo "gateway and tap up; booting the guest"

console=$work/console.log
booted=$SECONDS
qemu-system-x86_64 -accel tcg -m 256 -smp 1 -nographic -no-reboot -nic none \
  -kernel "$vm_vmlinuz" -initrd "$vm_initrd" \
  -append "console=ttyS0 panic=-1 quiet drgw.job=write drgw.offset_mb=$offset_mb drgw.mb=$mb" \
  -drive "file=nbd://127.0.0.1:$(cat "$work/tap/nbd-port")/$disk,format=raw,if=virtio,cache=none" \
  -serial "file:$console" -monitor none -display none 2>"$work/qemu.err" &
qemu_pid=$!
on_exit "kill -9 $qemu_pid 2>/dev/null"
vm_wait_console "$console" 150 "$qemu_pid"
wait "$qemu_pid" || fail "qemu exited with $? ($(cat "$work/qemu.err"))"
echo "guest done in $((SECONDS - booted))s"
grep -a '^DRGW-' "$console"

wrote=$(vm_field "$console" WROTE sha256)
read_back=$(vm_field "$console" READ sha256)
[ -n "$wrote" ] || fail "the guest did not report its pattern"
[ "$read_back" = "$wrote" ] || fail "the guest read back $read_back, wrote $wrote"
primary=$work/tap/primary.img
in_primary=$(vm_range_sha "$primary" "$offset_mb" "$mb")
[ "$in_primary" = "$wrote" ] || fail "primary holds $in_primary where the guest wrote $wrote"
tail_block=$(dd if="$primary" bs=4096 skip=$((size / 4096 - 1)) count=1 2>/dev/null | sha256sum)
head_block=$(dd if="$primary" bs=4096 skip=$((offset_mb * 256)) count=1 2>/dev/null | sha256sum)
[ "$tail_block" = "$head_block" ] || fail "the last 4 KiB of the primary are not the pattern's first"
echo "primary holds what the guest wrote ($wrote)"

wait_until 60 "the tap settles" tap_settled tap
stop_pidfile "$work/tap/pid" TERM
stop_pidfile "$work/gw/pid" TERM
vm_replay gw tap "$size" "$work/replayed.img"
[ "$(vm_sha "$work/replayed.img")" = "$(vm_sha "$primary")" ] ||
  fail "staged records replayed ($(vm_sha "$work/replayed.img")) differ from the primary ($(vm_sha "$primary"))"
echo "staged stream replayed equals the primary ($(vm_sha "$primary"))"
