# Helpers for the appliance image hwtests: build the image once per commit,
# boot appliances from it under qemu (TCG, q35, OVMF), and reach them
# through the QEMU guest agent. Source it after hwtests/lib.sh and
# hwtests/vm/lib.sh.
#
# An appliance NAME lives in $work/NAME: a qcow2 overlay of the image as
# its boot disk, cache.qcow2 and retention.qcow2 (thin), OVMF variables,
# console.log (ttyS0), ga.sock (the guest agent). Its network is qemu's
# user network: the host reaches the appliance's 9443 and 10809 at
# 127.0.0.1:$(cat $work/NAME/port-9443) and port-10809, and the appliance
# reaches the host (and so the other appliances' forwarded ports) at
# 10.0.2.2.

image_dir_root=${DRGW_IMAGE_TEST_CACHE:-/var/cache/drgw-hwtests/image}
image_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd
ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd

# image_packages: qemu (vm_packages), OVMF, xmllint and genisoimage.
image_packages() {
  vm_packages
  local missing=()
  [ -f "$ovmf_code" ] || missing+=(ovmf)
  command -v xmllint >/dev/null || missing+=(libxml2-utils)
  command -v genisoimage >/dev/null || missing+=(genisoimage)
  ((${#missing[@]})) || return 0
  echo "image: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    fail "cannot install ${missing[*]}"
}

# image_ensure: sets image_out (the directory of the built image) and
# image_name (drgw-appliance-VERSION). Builds with scripts/image, putting in
# $DRGW_BIN, once for what goes into the image (image/, scripts/image,
# systemd/, docs/, the binary); later tests reuse it. One build at a time
# (a lock beside the cache).
image_ensure() {
  image_packages
  local repo key
  repo=$(cd "$image_here/../.." && pwd)
  key=$( (cd "$repo" && find image scripts/image systemd docs -type f ! -path 'image/out/*' | sort | xargs sha256sum
    sha256sum "$DRGW_BIN") | sha256sum | cut -c1-16)
  image_out=$image_dir_root/$key
  mkdir -p "$(dirname "$image_dir_root")"
  exec {image_lock}>"$image_dir_root.lock"
  flock "$image_lock"
  if ! ls "$image_out"/drgw-appliance-*.raw >/dev/null 2>&1; then
    rm -rf "$image_dir_root"
    mkdir -p "$image_out"
    echo "image: building (scripts/image) into $image_out"
    DRGW_IMAGE_BIN=$DRGW_BIN DRGW_IMAGE_OUT=$image_out "$repo/scripts/image" >"$image_dir_root/build.log" 2>&1 ||
      { tail -n 40 "$image_dir_root/build.log" >&2; fail "scripts/image failed"; }
    grep '^image:\|^  drgw' "$image_dir_root/build.log"
  fi
  flock -u "$image_lock"
  image_name=$(basename "$(ls "$image_out"/drgw-appliance-*.raw)" .raw)
}

# appliance_create NAME [DISK] [CACHE_GIB RETENTION_GIB]: the appliance's
# disks: an overlay of DISK (default the built raw image), and thin cache
# and retention disks (default 4 and 8 GiB; 0 leaves the disk out).
appliance_create() {
  local name=$1 disk=${2:-$image_out/$image_name.raw} cache=${3:-4} retention=${4:-8}
  local root=$work/$name format
  mkdir -p "$root"
  format=$(qemu-img info --output=json "$disk" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])')
  qemu-img create -q -f qcow2 -F "$format" -b "$disk" "$root/system.qcow2"
  rm -f "$root/cache.qcow2" "$root/retention.qcow2"
  ((cache == 0)) || qemu-img create -q -f qcow2 "$root/cache.qcow2" "${cache}G"
  ((retention == 0)) || qemu-img create -q -f qcow2 "$root/retention.qcow2" "${retention}G"
  cp "$ovmf_vars" "$root/vars.fd"
  free_port >"$root/port-9443"
  free_port >"$root/port-10809"
}

# appliance_ovf_env NAME KEY=VALUE...: gives the appliance OVF properties
# the way vSphere's ISO transport does: a CD-ROM holding ovf-env.xml (an
# OVF environment document, DMTF DSP0243), attached at its next boot.
appliance_ovf_env() {
  local name=$1 root=$work/$1 pair
  shift
  mkdir -p "$root/ovf-env"
  {
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo '<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"'
    echo '    xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" oe:id="">'
    echo '  <PropertySection>'
    for pair in "$@"; do
      echo "    <Property oe:key=\"${pair%%=*}\" oe:value=\"${pair#*=}\"/>"
    done
    echo '  </PropertySection>'
    echo '</Environment>'
  } >"$root/ovf-env/ovf-env.xml"
  xmllint --noout "$root/ovf-env/ovf-env.xml" || fail "appliance_ovf_env: bad XML"
  genisoimage -quiet -r -J -V OVF-ENV -o "$root/ovf-env.iso" "$root/ovf-env" ||
    fail "appliance_ovf_env: genisoimage failed"
}

# appliance_boot NAME: powers it on (in the background); the console log
# starts afresh. With a file $work/NAME/serials, the cache and retention
# disks carry the serials drgw-cache and drgw-retention; with
# $work/NAME/ovf-env.iso (appliance_ovf_env), a CD-ROM drive holds it.
appliance_boot() {
  local name=$1 root=$work/$1 disks=() role serial
  disks+=(-drive "file=$root/system.qcow2,if=none,id=system,format=qcow2"
    -device virtio-blk-pci,drive=system)
  for role in cache retention; do
    [ -f "$root/$role.qcow2" ] || continue
    serial=""
    [ -f "$root/serials" ] && serial=",serial=drgw-$role"
    disks+=(-drive "file=$root/$role.qcow2,if=none,id=$role,format=qcow2"
      -device "virtio-blk-pci,drive=$role$serial")
  done
  if [ -f "$root/ovf-env.iso" ]; then
    disks+=(-drive "file=$root/ovf-env.iso,if=none,id=ovfenv,media=cdrom,readonly=on,format=raw"
      -device ide-cd,drive=ovfenv,bus=ide.0)
  fi
  : >"$root/console.log"
  rm -f "$root/ga.sock"
  qemu-system-x86_64 -accel tcg -machine q35 -m 1024 -smp 1 -display none -monitor none \
    -drive "if=pflash,format=raw,readonly=on,file=$ovmf_code" -drive "if=pflash,format=raw,file=$root/vars.fd" \
    "${disks[@]}" \
    -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$(cat "$root/port-9443")-:9443,hostfwd=tcp:127.0.0.1:$(cat "$root/port-10809")-:10809" \
    -device virtio-net-pci,netdev=net0 \
    -chardev "socket,path=$root/ga.sock,server=on,wait=off,id=ga" \
    -device virtio-serial -device virtserialport,chardev=ga,name=org.qemu.guest_agent.0 \
    -serial "file:$root/console.log" 2>"$root/qemu.err" &
  echo $! >"$root/qemu.pid"
  on_exit "kill -9 $! 2>/dev/null"
  echo "$SECONDS" >"$root/booted-at"
}

# appliance_ga NAME [--timeout S] -- COMMAND...: runs COMMAND in it
appliance_ga() {
  local name=$1
  shift
  python3 "$image_here/ga.py" "$work/$name/ga.sock" exec "$@"
}

# appliance_wait_ready NAME [SECONDS]: waits until drgw.service is active
# and the console shows the banner with the fingerprint; prints how long
# the boot took.
appliance_wait_ready() {
  local name=$1 limit=${2:-300} root=$work/$1 deadline
  deadline=$((SECONDS + limit))
  until grep -aq '^  fingerprint ' "$root/console.log" 2>/dev/null; do
    kill -0 "$(cat "$root/qemu.pid")" 2>/dev/null || { tail -n 40 "$root/console.log" >&2; fail "$name: qemu exited ($(cat "$root/qemu.err"))"; }
    ((SECONDS < deadline)) || { tail -n 40 "$root/console.log" >&2; appliance_diagnose "$name"; fail "$name: no banner with a fingerprint within ${limit}s"; }
    sleep 1
  done
  python3 "$image_here/ga.py" "$root/ga.sock" ping 60 || fail "$name: the guest agent does not answer"
  until [ "$(appliance_ga "$name" --timeout 20 -- systemctl is-active drgw.service 2>/dev/null)" = active ]; do
    ((SECONDS < deadline)) || { appliance_diagnose "$name"; fail "$name: drgw.service is not active within ${limit}s"; }
    sleep 2
  done
  echo "$name: ready $((SECONDS - $(cat "$root/booted-at")))s after power-on"
}

# appliance_diagnose NAME: what failed, on stderr
appliance_diagnose() {
  {
    echo "--- $1: failed units, drgw's journal"
    appliance_ga "$1" --timeout 20 -- systemctl --failed --no-legend
    appliance_ga "$1" --timeout 20 -- journalctl -b -u drgw -u drgw-volumes -u drgw-firstboot --no-pager -n 40
  } >&2 2>&1 || true
}

# appliance_fingerprint NAME: the fingerprint the console's banner shows
appliance_fingerprint() {
  grep -a '^  fingerprint ' "$work/$1/console.log" | tail -n 1 | tr -d '\r' | awk '{ print $2 }'
}

# appliance_shutdown NAME: a clean power-off through the agent; waits for qemu
appliance_shutdown() {
  local name=$1 pid
  pid=$(cat "$work/$name/qemu.pid")
  appliance_ga "$name" --timeout 10 -- systemctl poweroff >/dev/null 2>&1 || true
  for _ in $(seq 120); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 1
  done
  fail "$name did not power off within 120 s"
}
