# Helpers shared by the hardware tests (and scripts/bench/resync.sh). Source
# it; needs DRGW_BIN. Every resource a test makes is registered for removal
# at exit. The work directory is made under HWTEST_DIR (default /tmp).

work=$(mktemp -d "${HWTEST_DIR:-/tmp}/drgw-hwtest.XXXXXX")
cleanups=()
cleanup() {
  local index
  for ((index = ${#cleanups[@]} - 1; index >= 0; index--)); do
    eval "${cleanups[$index]}" >/dev/null 2>&1 || true
  done
  # A process killed above may still be closing its files: try again once.
  rm -rf "$work" 2>/dev/null || { sleep 1; rm -rf "$work"; }
}
trap cleanup EXIT
on_exit() { cleanups+=("$1"); }

fail() {
  echo "FAIL: $*" >&2
  for log in "$work"/*/drgw.log; do
    [ -f "$log" ] && { echo "--- $log" >&2; tail -n 40 "$log" >&2; }
  done
  exit 1
}

# write_config NAME ADDRESS PORT [REPLICATION_EXTRA]: a config for an
# appliance under $work/NAME; REPLICATION_EXTRA (e.g. "point_interval_ms =
# 500") goes into [replication]. Its recovery NBD listener is on loopback at
# a free port, kept in $work/NAME/recovery-port (never the default 10809,
# which another appliance on this machine may hold). More sections may be
# appended to the file.
write_config() {
  local name=$1 address=$2 port=$3 extra=${4:-} root="$work/$1"
  mkdir -p "$root"
  free_port >"$root/recovery-port"
  cat >"$root/drgw.toml" <<CONFIG
[appliance]
name = "$name"
state_dir = "$root/state"
[replication]
address = "$address"
port = $port
heartbeat_interval_ms = 200
peer_timeout_ms = 1000
connect_retry_ms_max = 1000
$extra
[control]
socket = "$root/control.sock"
[volumes]
cache = "$root/cache"
retention = "$root/retention"
[recovery]
address = "127.0.0.1"
port = $(cat "$root/recovery-port")
[log]
level = "debug"
CONFIG
}

# start_daemon NAME [NETNS]: runs drgw serve, waits for its control socket
start_daemon() {
  local name=$1 netns=${2:-} root="$work/$1"
  if [ -n "$netns" ]; then
    ip netns exec "$netns" "$DRGW_BIN" serve --config "$root/drgw.toml" 2>>"$root/drgw.log" &
  else
    "$DRGW_BIN" serve --config "$root/drgw.toml" 2>>"$root/drgw.log" &
  fi
  echo $! >"$root/pid"
  on_exit "kill -9 $! 2>/dev/null"
  for _ in $(seq 100); do
    drgw_cli "$name" status --json >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "$name did not start"
}

drgw_cli() {
  local name=$1
  shift
  "$DRGW_BIN" --socket "$work/$name/control.sock" "$@"
}

# json_get NAME EXPRESSION: evaluates a Python expression on `status --json` (as s)
json_get() {
  drgw_cli "$1" status --json | python3 -c "import json, sys; s = json.load(sys.stdin); print($2)"
}

fingerprint() {
  drgw_cli "$1" pair show --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["fingerprint"])'
}

# wait_until SECONDS DESCRIPTION COMMAND...: polls every 0.1 s
wait_until() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "waited ${limit}s for: $what"
    sleep 0.1
  done
}

# veth_sites NS_A NS_B DEVICE_A DEVICE_B: two network namespaces joined by a
# veth pair, DEVICE_A at 192.0.2.1/24 in NS_A and DEVICE_B at 192.0.2.2/24
# in NS_B (documentation addresses that exist only inside them), loopback
# up in both; removed at exit (with every process still in them killed
# first by the cleanups registered after this one).
veth_sites() {
  local ns_a=$1 ns_b=$2 device_a=$3 device_b=$4 ns
  ip netns add "$ns_a"; on_exit "ip netns del $ns_a"
  ip netns add "$ns_b"; on_exit "ip netns del $ns_b"
  ip link add "$device_a" type veth peer name "$device_b"
  ip link set "$device_a" netns "$ns_a"
  ip link set "$device_b" netns "$ns_b"
  ip -n "$ns_a" addr add 192.0.2.1/24 dev "$device_a"
  ip -n "$ns_b" addr add 192.0.2.2/24 dev "$device_b"
  for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
  ip -n "$ns_a" link set "$device_a" up
  ip -n "$ns_b" link set "$device_b" up
}

# link_state NAME PEER: the state of the link to PEER as NAME sees it
link_state() {
  json_get "$1" "next(p['link']['state'] for p in s['peers'] if p['name'] == '$2')"
}
link_is() { [ "$(link_state "$1" "$2")" = "$3" ]; }
link_is_not() { [ "$(link_state "$1" "$2")" != "$3" ]; }

# replication_port NAME: the [replication] port of appliance NAME
replication_port() { sed -n 's/^port = //p' "$work/$1/drgw.toml" | head -n 1; }

# pair_gateways SOURCE TARGET: pins each appliance at the other on loopback
# (by fingerprint), then waits until both see the link connected
pair_gateways() {
  drgw_cli "$1" pair add --name "$2" --address "127.0.0.1:$(replication_port "$2")" \
    --fingerprint "$(fingerprint "$2")" >/dev/null || fail "pair $1 -> $2"
  drgw_cli "$2" pair add --name "$1" --address "127.0.0.1:$(replication_port "$1")" \
    --fingerprint "$(fingerprint "$1")" >/dev/null || fail "pair $2 -> $1"
  wait_until 20 "link up on $1" link_is "$1" "$2" connected
  wait_until 20 "link up on $2" link_is "$2" "$1" connected
}

# --- a source gateway with a tap on loopback (kill -9 tests) ---------------

# python_with_nbd: a python3 that can import libnbd's binding (python3-libnbd
# installs it for the system python, which a pyenv shim may hide).
python_with_nbd() {
  local candidate
  for candidate in ${PYTHON:-} /usr/bin/python3 python3; do
    "$candidate" -c "import nbd" >/dev/null 2>&1 && { echo "$candidate"; return 0; }
  done
  return 1
}

# free_port: a TCP port free on loopback at the moment of asking
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# signal_pidfile FILE [SIGNAL] [PATTERN]: signals the process FILE names, only
# if it is still alive and its command line still holds PATTERN (default
# $DRGW_BIN): never a reused pid
signal_pidfile() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  [ -n "$pid" ] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "${3:-$DRGW_BIN}" || return 0
  kill -"${2:-KILL}" "$pid" 2>/dev/null || true
}

# stop_pidfile FILE SIGNAL [SECONDS] [PATTERN]: signals and waits for the exit
# (of a child of this shell); fails the test if it outlives SECONDS (default 30)
stop_pidfile() {
  local file=$1 signal=$2 limit=${3:-30} pid
  pid=$(cat "$file")
  signal_pidfile "$file" "$signal" "${4:-$DRGW_BIN}"
  local deadline=$((SECONDS + limit))
  while kill -0 "$pid" 2>/dev/null && [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "pid $pid ($file) still alive ${limit}s after SIG$signal"
    sleep 0.02
  done
  wait "$pid" 2>/dev/null || true
}

# respawn_daemon NAME: (re)starts drgw serve for NAME like start_daemon, but
# registers one cleanup for whichever process $work/NAME/pid names at exit
respawn_daemon() {
  local name=$1 root="$work/$1"
  [ -f "$root/respawn-cleanup" ] || { on_exit "signal_pidfile $root/pid KILL"; touch "$root/respawn-cleanup"; }
  "$DRGW_BIN" serve --config "$root/drgw.toml" 2>>"$root/drgw.log" &
  echo $! >"$root/pid"
  for _ in $(seq 150); do
    drgw_cli "$name" status --json >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$root/pid")" 2>/dev/null || fail "$name exited at startup"
    sleep 0.1
  done
  fail "$name did not start"
}

# write_tap_config NAME GATEWAY_NAME DISK SIZE_BYTES [MODE]: a tap under
# $work/NAME serving a fresh primary $work/NAME/primary.img as DISK on a free
# port ($work/NAME/nbd-port), pinned to GATEWAY_NAME, which pairs it and
# protects DISK in group group-1; the group's id goes to $work/NAME/group-id
write_tap_config() {
  local name=$1 gateway=$2 disk=$3 size=$4 mode=${5:-async} root="$work/$1" port
  mkdir -p "$root"
  truncate -s "$size" "$root/primary.img"
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
path = "$root/primary.img"
mode = "$mode"
grain_bytes = 65536
extent_bytes = ${TAP_EXTENT_BYTES:-4194304}
CONFIG
  local tap_fingerprint
  tap_fingerprint=$("$DRGW_BIN" --config "$root/tap.toml" tap --print-fingerprint | awk '$1 == "fingerprint" { print $2 }')
  [ -n "$tap_fingerprint" ] || fail "tap $name printed no fingerprint"
  drgw_cli "$gateway" pair add --name "$name" --tap --fingerprint "$tap_fingerprint" >/dev/null
  drgw_cli "$gateway" protect "$disk" --group group-1 --tap "$name" --size "$size" --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["group_id"])' >"$root/group-id"
}

# start_tap NAME [NETNS]: (re)starts the tap (in network namespace NETNS if
# given); waits until it listens for NBD. Its log is $work/NAME/drgw.log (so
# `fail` shows it); one cleanup kills it at exit.
start_tap() {
  local name=$1 netns=${2:-} root="$work/$1" port
  local in_netns=()
  [ -z "$netns" ] || in_netns=(ip netns exec "$netns")
  port=$(cat "$root/nbd-port")
  [ -f "$root/respawn-cleanup" ] || { on_exit "signal_pidfile $root/pid KILL"; touch "$root/respawn-cleanup"; }
  "${in_netns[@]}" "$DRGW_BIN" --config "$root/tap.toml" tap 2>>"$root/drgw.log" &
  echo $! >"$root/pid"
  for _ in $(seq 150); do
    "${in_netns[@]}" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null && return 0
    kill -0 "$(cat "$root/pid")" 2>/dev/null || fail "tap $name exited at startup"
    sleep 0.1
  done
  fail "tap $name did not listen on $port"
}

# tap_status NAME EXPRESSION: a Python expression on the tap's status.json (as s)
tap_status() {
  python3 -c "import json, sys; s = json.load(open(sys.argv[1])); print($2)" "$work/$1/state/status.json"
}

# tap_settled NAME [SINCE]: linked, nothing pending, nothing dirty or lost,
# in a status written after the unix second SINCE (default: any)
tap_settled() {
  [ "$(tap_status "$1" "s['updated_unix_s'] > ${2:-0} and s['gateway_connected'] and s['pending_bytes'] == 0 and all(d['dirty_bytes'] == 0 and d['lost_bytes'] == 0 for d in s['disks'])")" = True ]
}

# disk_attached GATEWAY DISK: the gateway sees the tap attached for DISK
disk_attached() {
  [ "$(json_get "$1" "any(d['name'] == '$2' and d['attached'] for d in s['protected_disks'])")" = True ]
}
