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
  apt-get update -qq
  local version
  version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  apt-get install -y -qq --no-install-recommends --allow-downgrades \
    "${missing[@]}" "qemu-utils=$version" >/dev/null
}

# vm_kernel: sets vm_vmlinuz and vm_moddir (the directory of its modules,
# empty when virtio-blk is built in). Uses an installed kernel that has
# virtio-blk, else unpacks Debian's linux-image-amd64 into $vm_cache once
# (apt-get download + dpkg-deb -x: no hooks run, /boot is untouched).
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
  if ! ls "$vm_cache"/kernel/boot/vmlinuz-* >/dev/null 2>&1; then
    echo "vm: unpacking Debian's kernel package into $vm_cache/kernel"
    local package download
    package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    [ -n "$package" ] || { apt-get update -qq &&
      package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}'); }
    download=$(mktemp -d)
    (cd "$download" && apt-get download -qq "$package" 2>/dev/null) || fail "apt-get download $package"
    rm -rf "$vm_cache/kernel.tmp"
    mkdir -p "$vm_cache/kernel.tmp"
    dpkg-deb -x "$download"/*.deb "$vm_cache/kernel.tmp"
    rm -rf "$download" "$vm_cache/kernel"
    mv "$vm_cache/kernel.tmp" "$vm_cache/kernel"
  fi
  vm_vmlinuz=$(ls "$vm_cache"/kernel/boot/vmlinuz-* | head -n 1)
  version=${vm_vmlinuz##*/vmlinuz-}
  vm_moddir=$vm_cache/kernel/lib/modules/$version
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
    offset=$(grep -abo $'\xfd7zXZ\x00' "$vm_vmlinuz" | head -n 1 | cut -d: -f1)
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

# tap_setup GATEWAY DISK SIZE MODE: writes $work/tap/tap.toml for one disk
# (a primary file $work/tap/primary.img of SIZE bytes, or a mirror disk when
# MODE is mirror), pairs the tap with GATEWAY and protects DISK there in
# group-1. Sets tap_port and tap_group (the gateway's group id).
tap_setup() {
  local gateway=$1 disk=$2 size=$3 mode=$4 root="$work/tap"
  mkdir -p "$root"
  tap_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local where
  if [ "$mode" = mirror ]; then
    where="size_bytes = $size"
  else
    truncate -s "$size" "$root/primary.img"
    where="path = \"$root/primary.img\""
  fi
  cat >"$root/tap.toml" <<CONFIG
[tap]
name = "tap-1"
state_dir = "$root/state"
[gateway]
address = "127.0.0.1:$(gateway_port "$gateway")"
fingerprint = "$(fingerprint "$gateway")"
[nbd]
address = "127.0.0.1"
port = $tap_port
[log]
level = "debug"
[[disk]]
name = "$disk"
mode = "$mode"
$where
CONFIG
  local tap_fingerprint
  tap_fingerprint=$("$DRGW_BIN" --config "$root/tap.toml" tap --print-fingerprint | awk '$1 == "fingerprint" {print $2}')
  drgw_cli "$gateway" pair add --name tap-1 --tap --fingerprint "$tap_fingerprint" >/dev/null
  tap_group=$(drgw_cli "$gateway" protect "$disk" --group group-1 --tap tap-1 --size "$size" --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["group_id"])')
}

gateway_port() { sed -n 's/^port = //p' "$work/$1/drgw.toml" | head -n 1; }

# tap_start GATEWAY DISK: runs the tap, waits until the gateway sees DISK attached
tap_start() {
  local gateway=$1 disk=$2 root="$work/tap"
  "$DRGW_BIN" --config "$root/tap.toml" tap 2>>"$root/drgw.log" &
  tap_pid=$!
  on_exit "kill -9 $tap_pid 2>/dev/null"
  wait_until 20 "the tap attaches $disk" disk_attached "$gateway" "$disk"
}

disk_attached() {
  [ "$(json_get "$1" "any(d['name'] == '$2' and d['attached'] for d in s['protected_disks'])")" = True ]
}

# tap_settled: the tap's status.json shows every forward acknowledged
tap_settled() {
  python3 - "$work/tap/state/status.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
ok = s["gateway_connected"] and s["pending_bytes"] == 0 and all(
    d["dirty_bytes"] == 0 and d["lost_bytes"] == 0 for d in s["disks"])
sys.exit(0 if ok else 1)
PY
}

# stop_pid PID: SIGTERM and wait
stop_pid() {
  kill -TERM "$1"
  wait "$1" || fail "process $1 exited with status $?"
}

# replay_group GATEWAY GROUP SIZE OUT: `drgw staging replay` of the group
replay_group() {
  "$DRGW_BIN" staging replay "$work/$1/cache/staging/group-$2" --size "$3" --out "$4" ||
    fail "drgw staging replay"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }
