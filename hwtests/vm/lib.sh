# Guest helpers for the VM hwtests: a Debian kernel and a busybox initramfs
# whose /init (hwtests/vm/init) writes a pattern to /dev/vda. Source it after
# hwtests/lib.sh. Nothing here needs the network except, once, the Debian
# package mirror (qemu, busybox, the kernel package).
#
# Boot is a direct kernel boot (-kernel/-initrd) with the disk attached as
# virtio-blk: the guest never boots from the disk itself.

vm_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Where Debian's kernel package is unpacked, one directory per package
# version (DRGW_VM_CACHE overrides it).
vm_cache=${DRGW_VM_CACHE:-/var/cache/drgw-hwtests}
# What the guest needs to see /dev/vda; their dependencies are resolved from
# the chosen kernel's modules.dep when the initramfs is built.
vm_modules_wanted="virtio_pci virtio_blk"

# vm_packages: installs qemu-system-x86, busybox-static and cpio if missing.
# qemu-utils is installed at qemu-system-x86's version: Debian's
# qemu-system-x86 breaks a newer qemu-utils (e.g. one from backports).
vm_packages() {
  local missing=()
  command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
  dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
  command -v cpio >/dev/null || missing+=(cpio)
  command -v xz >/dev/null || missing+=(xz-utils)
  command -v depmod >/dev/null || missing+=(kmod)
  ((${#missing[@]})) || return 0
  echo "vm: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || fail "vm: apt-get update failed: cannot install ${missing[*]}"
  local version
  version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  apt-get install -y -qq --no-install-recommends --allow-downgrades \
    "${missing[@]}" "qemu-utils=$version" >/dev/null || fail "vm: cannot install ${missing[*]}"
}

# vm_skip REASON: exit 77 (hwtests/run reports the test skipped, with REASON)
vm_skip() {
  echo "SKIP: $*" >&2
  exit 77
}

# vm_kernel: chooses the guest kernel explicitly and prints which one and
# where it came from. Sets vm_vmlinuz, vm_kernel_version, vm_moddir (the
# kernel's module tree: modules.dep, modules.builtin, the .ko files) and
# vm_kernel_source. In order:
#   1. DRGW_VM_KERNEL=/path/vmlinuz-VERSION, its modules in DRGW_VM_MODULES
#      (default /lib/modules/VERSION): a kernel the operator names;
#   2. Debian's linux-image-amd64 at the version the machine's apt sources
#      offer now, unpacked (apt-get download + dpkg-deb -x: no hooks, /boot
#      untouched) into $vm_cache/PACKAGE_VERSION, reused while that package
#      version stays current; other versions there are removed.
# Whatever /boot holds is never picked up by chance. A kernel that cannot be
# had fails the test with the reason.
vm_kernel() {
  if [ -n "${DRGW_VM_KERNEL:-}" ]; then
    [ -f "$DRGW_VM_KERNEL" ] || fail "vm: DRGW_VM_KERNEL=$DRGW_VM_KERNEL is not a file"
    vm_vmlinuz=$DRGW_VM_KERNEL
    vm_kernel_version=${vm_vmlinuz##*/vmlinuz-}
    vm_moddir=${DRGW_VM_MODULES:-/lib/modules/$vm_kernel_version}
    vm_kernel_source="DRGW_VM_KERNEL"
  else
    vm_kernel_debian
  fi
  echo "vm: kernel $vm_kernel_version ($vm_vmlinuz) from $vm_kernel_source"
}

# vm_kernel_debian: case 2 of vm_kernel.
vm_kernel_debian() {
  local package version
  package=$(vm_kernel_package) || fail "vm: no kernel package: apt-cache knows no linux-image-amd64 dependency (apt-get update failed?)"
  version=$(apt-cache policy "$package" | awk '/Candidate:/ {print $2}')
  [ -n "$version" ] && [ "$version" != "(none)" ] || fail "vm: no candidate version of $package in the apt sources"
  local kept=$vm_cache/${package}_$version
  if ! ls "$kept"/boot/vmlinuz-* >/dev/null 2>&1; then
    vm_kernel_unpack "$package" "$version" "$kept"
  fi
  vm_vmlinuz=$(ls "$kept"/boot/vmlinuz-* | head -n 1)
  vm_kernel_version=${vm_vmlinuz##*/vmlinuz-}
  vm_moddir=$kept/modules/$vm_kernel_version
  vm_kernel_source="Debian package $package $version (cached in $kept)"
}

# vm_kernel_package: the linux-image-VERSION package linux-image-amd64
# depends on, after an apt-get update when the lists do not know it.
vm_kernel_package() {
  local package
  package=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  if [ -z "$package" ]; then
    apt-get update -qq >&2 || return 1
    package=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  fi
  [ -n "$package" ] && echo "$package"
}

# vm_kernel_unpack PACKAGE VERSION KEPT: downloads PACKAGE=VERSION, makes
# its modules.dep (depmod -b), keeps its kernel, config, modules.dep,
# modules.builtin and the modules the guest may need (drivers/virtio,
# drivers/block) under KEPT; removes other versions.
vm_kernel_unpack() {
  local package=$1 version=$2 kept=$3 download
  echo "vm: downloading $package $version into $kept"
  download=$(mktemp -d)
  chmod 755 "$download" && chown _apt "$download" 2>/dev/null || true
  (cd "$download" && apt-get download -qq "$package=$version") ||
    { rm -rf "$download"; fail "vm: apt-get download $package=$version failed (no kernel for the guest)"; }
  dpkg-deb -x "$download"/*.deb "$download/root" || { rm -rf "$download"; fail "vm: dpkg-deb -x of $package failed"; }
  rm -rf "$kept.tmp"
  mkdir -p "$kept.tmp/boot"
  cp "$download"/root/boot/vmlinuz-* "$download"/root/boot/config-* "$kept.tmp/boot/"
  local tree modules
  for tree in "$download"/root/lib/modules/*/; do
    # The package ships no modules.dep (its postinst runs depmod): make it.
    depmod -b "$download/root" "$(basename "$tree")" ||
      { rm -rf "$download"; fail "vm: depmod of $package failed"; }
    modules=$kept.tmp/modules/$(basename "$tree")
    mkdir -p "$modules"
    cp "$tree"/modules.dep "$tree"/modules.builtin "$modules/"
    (cd "$tree" && find kernel/drivers/virtio kernel/drivers/block -name '*.ko*' 2>/dev/null |
      cpio -pdm --quiet "$modules")
  done
  rm -rf "$download"
  find "$vm_cache" -mindepth 1 -maxdepth 1 -name 'linux-image-*' ! -name "$(basename "$kept").tmp" \
    -exec rm -rf {} + 2>/dev/null || true
  rm -rf "$vm_cache/kernel-min" "$vm_cache"/vmlinux-*
  mv "$kept.tmp" "$kept"
}

# vm_module_order MODDIR MODULE...: prints "name path" for each MODULE and
# every module it depends on (modules.dep of MODDIR), dependencies before
# the modules that need them; a built-in module prints nothing. Fails
# naming a module that is neither built in nor in modules.dep.
vm_module_order() {
  local moddir=$1
  shift
  [ -f "$moddir/modules.dep" ] || fail "vm: no modules.dep in $moddir"
  python3 - "$moddir" "$@" <<'PYTHON'
import os, sys

moddir, wanted = sys.argv[1], sys.argv[2:]

def name_of(path):
    base = os.path.basename(path)
    for suffix in (".xz", ".zst", ".gz"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base[: -len(".ko")].replace("-", "_")

paths, depends = {}, {}
with open(os.path.join(moddir, "modules.dep")) as dep:
    for line in dep:
        path, _, rest = line.partition(":")
        name = name_of(path)
        paths[name] = path
        depends[name] = [name_of(each) for each in rest.split()]
builtin = set()
builtin_path = os.path.join(moddir, "modules.builtin")
if os.path.exists(builtin_path):
    builtin = {name_of(line.strip()) for line in open(builtin_path) if line.strip()}

order, state = [], {}
def visit(name, chain):
    if state.get(name) == "done":
        return
    if state.get(name) == "visiting":
        sys.exit("vm: module dependency cycle: " + " -> ".join(chain + [name]))
    if name not in paths:
        if name in builtin:
            state[name] = "done"
            return
        sys.exit(f"vm: module {name} is neither built in nor in {moddir}/modules.dep")
    state[name] = "visiting"
    for dependency in depends[name]:
        visit(dependency, chain + [name])
    state[name] = "done"
    order.append(name)

for name in wanted:
    visit(name.replace("-", "_"), [])
for name in order:
    print(name, os.path.join(moddir, paths[name]))
PYTHON
}

# vm_pvh: when the kernel can boot as PVH, unpacks its ELF vmlinux and
# points vm_vmlinuz at it: qemu then enters the kernel directly, which under
# TCG saves decompressing it (xz) at every boot. A kernel from the cache
# keeps its ELF beside it; a named kernel's ELF is made in $work.
vm_pvh() {
  local config elf offset
  config=$(dirname "$vm_vmlinuz")/config-$vm_kernel_version
  grep -q '^CONFIG_PVH=y' "$config" 2>/dev/null || return 0
  case $vm_vmlinuz in
    "$vm_cache"/*) elf=$(dirname "$vm_vmlinuz")/vmlinux-$vm_kernel_version ;;
    *) elf=$work/vmlinux-$vm_kernel_version ;;
  esac
  if [ ! -s "$elf" ]; then
    offset=$(LC_ALL=C grep -abo $'\xfd7zXZ' "$vm_vmlinuz" | head -n 1 | cut -d: -f1)
    [ -n "$offset" ] || return 0
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

# vm_initramfs OUT: busybox + hwtests/vm/init + the modules the guest needs,
# decompressed, with /lib/modules/load-order naming them in the order
# modules.dep requires (the init loads them in that order).
vm_initramfs() {
  local out=$1 root order
  order=$(vm_module_order "$vm_moddir" $vm_modules_wanted) ||
    fail "vm: cannot resolve the modules of kernel $vm_kernel_version (above)"
  root=$(mktemp -d)
  mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
  cp /bin/busybox "$root/bin/busybox"
  cp "$vm_dir/init" "$root/init"
  chmod 755 "$root/init"
  local module path
  while read -r module path; do
    [ -n "$module" ] || continue
    [ -f "$path" ] || { rm -rf "$root"; fail "vm: module $module of kernel $vm_kernel_version is missing: $path"; }
    case $path in
      *.xz) xz -dc "$path" >"$root/lib/modules/$module.ko" ;;
      *.zst) zstd -qdc "$path" >"$root/lib/modules/$module.ko" ;;
      *.gz) gzip -dc "$path" >"$root/lib/modules/$module.ko" ;;
      *) cp "$path" "$root/lib/modules/$module.ko" ;;
    esac
    echo "$module" >>"$root/lib/modules/load-order"
  done <<<"$order"
  touch "$root/lib/modules/load-order"
  vm_modules_loaded=$(tr '\n' ' ' <"$root/lib/modules/load-order")
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
  echo "vm: guest loads, in order: ${vm_modules_loaded:-nothing (all built in)}"
}

# vm_wait_console FILE SECONDS PID: waits for DRGW-DONE (or DRGW-FAILED) in
# the console log while the qemu process PID lives.
vm_wait_console() {
  local console=$1 limit=$2 pid=$3
  local deadline=$((SECONDS + limit))
  while ! grep -q '^DRGW-DONE' "$console" 2>/dev/null; do
    if grep -q '^DRGW-FAILED' "$console" 2>/dev/null; then
      grep -a '^DRGW-' "$console" | tr -d '\r' >&2
      fail "guest: $(grep -a '^DRGW-FAILED' "$console" | tr -d '\r')"
    fi
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
