#!/usr/bin/env bash
# The guest's module load order (hwtests/vm/lib.sh, vm_module_order) is
# resolved from modules.dep whatever order the file lists: every module after
# the modules it needs, built-in modules skipped, a module that is neither
# built in nor listed, or a dependency cycle, refused with its name.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/vm/lib.sh"

tree=$work/modules
mkdir -p "$tree"
# As Debian 6.1's: virtio_blk and virtio_pci need virtio, which needs
# virtio_ring; listed in an order that loading top to bottom would fail.
cat >"$tree/modules.dep" <<'DEP'
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz:
kernel/drivers/virtio/virtio-mmio.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
DEP
echo "kernel/drivers/base/firmware_loader/firmware_class.ko" >"$tree/modules.builtin"

order=$(vm_module_order "$tree" virtio_pci virtio_blk | cut -d' ' -f1 | tr '\n' ' ')
echo "order: $order"
position() { echo "$order" | tr ' ' '\n' | grep -nx "$1" | cut -d: -f1; }
for pair in "virtio_ring virtio" "virtio virtio_pci" "virtio_pci_modern_dev virtio_pci" \
  "virtio_pci_legacy_dev virtio_pci" "virtio virtio_blk" "virtio_ring virtio_blk"; do
  set -- $pair
  [ -n "$(position "$1")" ] && [ -n "$(position "$2")" ] || fail "$1 or $2 missing from the order"
  (($(position "$1") < $(position "$2"))) || fail "$1 loads after $2: $order"
done
[ "$(echo "$order" | wc -w)" = 6 ] || fail "expected 6 modules (no virtio_mmio), got: $order"
path=$(vm_module_order "$tree" virtio_blk | awk '$1 == "virtio_blk" { print $2 }')
[ "$path" = "$tree/kernel/drivers/block/virtio_blk.ko.xz" ] || fail "virtio_blk's path: $path"
# A name with a dash, as modules.dep files it, resolves too.
vm_module_order "$tree" virtio-mmio | grep -q '^virtio_mmio ' || fail "virtio-mmio not resolved"

# Built in: nothing to load.
[ -z "$(vm_module_order "$tree" firmware_class)" ] || fail "a built-in module was listed"

# Neither built in nor listed: refused, naming it.
if error=$(vm_module_order "$tree" virtio_scsi 2>&1); then
  fail "an unknown module was accepted: $error"
fi
echo "$error" | grep -q "virtio_scsi is neither built in nor in" || fail "unclear error: $error"

# A cycle: refused, naming it.
echo "kernel/drivers/virtio/virtio_ring.ko.xz: kernel/drivers/block/virtio_blk.ko.xz" >>"$tree/modules.dep"
sed -i '/^kernel\/drivers\/virtio\/virtio_ring.ko.xz:$/d' "$tree/modules.dep"
if error=$(vm_module_order "$tree" virtio_blk 2>&1); then
  fail "a dependency cycle was accepted: $error"
fi
echo "$error" | grep -q "cycle" || fail "unclear error: $error"
echo "module order resolved; unknown modules and cycles refused"
