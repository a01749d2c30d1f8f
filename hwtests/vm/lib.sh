# Guest helpers for the VM hwtests: a Debian kernel and a busybox initramfs
# whose /init (hwtests/vm/init) writes a pattern to /dev/vda. Source it after
# hwtests/lib.sh. Nothing here needs the network except, once, the Debian
# package mirror (qemu, busybox, the kernel package).
#
# Boot is a direct kernel boot (-kernel/-initrd) with the disk attached as
# virtio-blk: the guest never boots from the disk itself.

vm_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Where the kernel package is unpacked when the host has no usable kernel.
vm_cache=${DRGW_VM_CACHE:-/var/cache/drgw-hwtests}
vm_modules="virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk"

# vm_packages: installs qemu-system-x86, busybox-static and cpio if missing.
# qemu-utils is installed at qemu-system-x86's version: Debian's
# qemu-system-x86 breaks a newer qemu-utils (e.g. one from backports).
vm_packages() {
  local missing=()
  command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
  dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
  command -v cpio >/dev/null || missing+=(cpio)
  ((${#missing[@]})) || return 0
  echo "vm: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || vm_skip "apt-get update failed"
  local version
  version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  apt-get install -y -qq --no-install-recommends --allow-downgrades \
    "${missing[@]}" "qemu-utils=$version" >/dev/null || vm_skip "cannot install ${missing[*]}"
}

# vm_skip REASON: exit 77 (hwtests/run reports the test skipped)
vm_skip() {
  echo "SKIP: $*" >&2
  exit 77
}

# vm_kernel: sets vm_vmlinuz and vm_moddir (the directory of its modules,
# empty when virtio-blk is built in). Uses an installed kernel that has
# virtio-blk, else unpacks Debian's linux-image-amd64 once and keeps its
# kernel, config and virtio modules in $vm_cache/kernel-min (apt-get
# download + dpkg-deb -x: no hooks run, /boot is untouched).
vm_kernel() {
  local image version
  for image in /boot/vmlinuz-*; do
    [ -f "$image" ] || continue
    version=${image#/boot/vmlinuz-}
    if grep -q '^CONFIG_VIRTIO_BLK=y' "/boot/config-$version" 2>/dev/null &&
      grep -q '^CONFIG_VIRTIO_PCI=y' "/boot/config-$version"; then
      vm_vmlinuz=$image vm_moddir=""
      return 0
    fi
    if [ -n "$(find "/lib/modules/$version" -name virtio_blk.ko 2>/dev/null)" ]; then
      vm_vmlinuz=$image vm_moddir=/lib/modules/$version
      return 0
    fi
  done
  local kept=$vm_cache/kernel-min
  if ! ls "$kept"/boot/vmlinuz-* >/dev/null 2>&1; then
    echo "vm: unpacking Debian's kernel package into $kept"
    local package download
    package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    [ -n "$package" ] || { apt-get update -qq &&
      package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}'); }
    download=$(mktemp -d)
    (cd "$download" && apt-get download -qq "$package" 2>/dev/null) || vm_skip "apt-get download $package failed"
    dpkg-deb -x "$download"/*.deb "$download/root"
    rm -rf "$kept.tmp"
    mkdir -p "$kept.tmp/boot" "$kept.tmp/modules"
    cp "$download"/root/boot/vmlinuz-* "$download"/root/boot/config-* "$kept.tmp/boot/"
    local module
    for module in $vm_modules; do
      find "$download/root/lib/modules" -name "$module.ko*" -exec cp {} "$kept.tmp/modules/" \;
    done
    rm -rf "$download" "$kept"
    mv "$kept.tmp" "$kept"
  fi
  vm_vmlinuz=$(ls "$kept"/boot/vmlinuz-* | head -n 1)
  vm_moddir=$kept/modules
}

# vm_pvh: when the kernel can boot as PVH, unpacks its ELF vmlinux (once,
# into $vm_cache) and points vm_vmlinuz at it: qemu then enters the kernel
# directly, which under TCG saves decompressing it (xz) at every boot.
vm_pvh() {
  local version=${vm_vmlinuz##*/vmlinuz-} config elf offset
  config=$(dirname "$vm_vmlinuz")/config-$version
  grep -q '^CONFIG_PVH=y' "$config" 2>/dev/null || return 0
  elf=$vm_cache/vmlinux-$version
  if [ ! -s "$elf" ]; then
    offset=$(LC_ALL=C grep -abo $'\xfd7zXZ' "$vm_vmlinuz" | head -n 1 | cut -d: -f1)
    [ -n "$offset" ] || return 0
    mkdir -p "$vm_cache"
    tail -c +$((offset + 1)) "$vm_vmlinuz" | xz -dc >"$elf.tmp" 2>/dev/null || true
    if [ "$(head -c 4 "$elf.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
      mv "$elf.tmp" "$elf"
    else
      rm -f "$elf.tmp"
      return 0
    fi
  fi
  vm_vmlinuz=$elf
}

# vm_initramfs OUT: busybox + hwtests/vm/init + the virtio modules.
vm_initramfs() {
  local out=$1 root
  root=$(mktemp -d)
  mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
  cp /bin/busybox "$root/bin/busybox"
  cp "$vm_dir/init" "$root/init"
  chmod 755 "$root/init"
  if [ -n "$vm_moddir" ]; then
    local module path
    for module in $vm_modules; do
      path=$(find "$vm_moddir" -name "$module.ko*" | head -n 1)
      [ -n "$path" ] || continue
      case $path in
        *.xz) xz -dc "$path" >"$root/lib/modules/$module.ko" ;;
        *.zst) zstd -qdc "$path" >"$root/lib/modules/$module.ko" ;;
        *.gz) gzip -dc "$path" >"$root/lib/modules/$module.ko" ;;
        *) cp "$path" "$root/lib/modules/$module.ko" ;;
      esac
    done
  fi
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
  rm -rf "$root"
}

# vm_prepare: packages, kernel, and $work/initramfs.gz.
vm_prepare() {
  vm_packages
  vm_kernel
  vm_pvh
  vm_initrd=$work/initramfs.gz
  vm_initramfs "$vm_initrd"
  echo "vm: kernel $vm_vmlinuz, modules from ${vm_moddir:-built in}"
}

# vm_wait_console FILE SECONDS PID: waits for DRGW-DONE (or DRGW-FAILED) in
# the console log while the qemu process PID lives.
vm_wait_console() {
  local console=$1 limit=$2 pid=$3
  local deadline=$((SECONDS + limit))
  while ! grep -q '^DRGW-DONE' "$console" 2>/dev/null; do
    grep -q '^DRGW-FAILED' "$console" 2>/dev/null && fail "guest: $(grep '^DRGW-FAILED' "$console")"
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$console" >&2; fail "qemu exited before the guest was done"; }
    ((SECONDS < deadline)) || { tail -n 30 "$console" >&2; fail "guest not done within ${limit}s"; }
    sleep 0.2
  done
}

# vm_field CONSOLE LINE KEY: KEY's value on the guest's DRGW-LINE line.
vm_field() {
  grep "^DRGW-$2 " "$1" | tr -d '\r' | tr ' ' '\n' | sed -n "s/^$3=//p" | head -n 1
}

# vm_write_mirror_tap_config NAME GATEWAY DISK SIZE_BYTES: as
# write_tap_config (hwtests/lib.sh), but DISK is a mirror disk: no primary,
# its size in the config.
vm_write_mirror_tap_config() {
  local name=$1 gateway=$2 disk=$3 size=$4 root="$work/$1" port
  mkdir -p "$root"
  port=$(free_port)
  echo "$port" >"$root/nbd-port"
  echo "$disk" >"$root/disk"
  cat >"$root/tap.toml" <<CONFIG
[tap]
name = "$name"
state_dir = "$root/state"
[gateway]
address = "127.0.0.1:$(replication_port "$gateway")"
fingerprint = "$(fingerprint "$gateway")"
[nbd]
address = "127.0.0.1"
port = $port
[log]
level = "debug"
[[disk]]
name = "$disk"
mode = "mirror"
size_bytes = $size
CONFIG
  local tap_fingerprint
  tap_fingerprint=$("$DRGW_BIN" --config "$root/tap.toml" tap --print-fingerprint | awk '$1 == "fingerprint" { print $2 }')
  [ -n "$tap_fingerprint" ] || fail "tap $name printed no fingerprint"
  drgw_cli "$gateway" pair add --name "$name" --tap --fingerprint "$tap_fingerprint" >/dev/null
  drgw_cli "$gateway" protect "$disk" --group group-1 --tap "$name" --size "$size" --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["group_id"])' >"$root/group-id"
}

# vm_replay GATEWAY TAP SIZE OUT: `drgw staging replay` of the tap's group
vm_replay() {
  "$DRGW_BIN" staging replay "$work/$1/cache/staging/group-$(cat "$work/$2/group-id")" \
    --size "$3" --out "$4" || fail "drgw staging replay"
}

vm_sha() { sha256sum "$1" | cut -d' ' -f1; }

# vm_range_sha FILE OFFSET_MB MB: sha256 of MB MiB of FILE from OFFSET_MB MiB
vm_range_sha() {
  dd if="$1" bs=1M skip="$2" count="$3" 2>/dev/null | sha256sum | cut -d' ' -f1
}

# vm_boot CONSOLE URI JOB OFFSET_MB MB: boots the guest (TCG, direct kernel
# boot) with the NBD export URI as its virtio-blk disk, runs JOB (see
# hwtests/vm/init) on the region, waits until it powers off (150 s at most)
# and prints its DRGW- lines and how long it took.
vm_boot() {
  local console=$1 uri=$2 job=$3 offset_mb=$4 mb=$5 started=$SECONDS pid
  qemu-system-x86_64 -accel tcg -m 256 -smp 1 -nographic -no-reboot -nic none \
    -kernel "$vm_vmlinuz" -initrd "$vm_initrd" \
    -append "console=ttyS0 panic=-1 quiet drgw.job=$job drgw.offset_mb=$offset_mb drgw.mb=$mb" \
    -drive "file=$uri,format=raw,if=virtio,cache=none" \
    -serial "file:$console" -monitor none -display none 2>"$console.err" &
  pid=$!
  on_exit "kill -9 $pid 2>/dev/null"
  vm_wait_console "$console" 150 "$pid"
  wait "$pid" || fail "qemu exited with $? ($(cat "$console.err"))"
  echo "guest ($job, $uri) done in $((SECONDS - started))s"
  grep -a '^DRGW-' "$console" | tr -d '\r'
}
