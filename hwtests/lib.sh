# Helpers shared by the hardware tests. Source it; needs DRGW_BIN.
# Every resource a test makes is registered for removal at exit.

work=$(mktemp -d /tmp/drgw-hwtest.XXXXXX)
cleanups=()
cleanup() {
  local index
  for ((index = ${#cleanups[@]} - 1; index >= 0; index--)); do
    eval "${cleanups[$index]}" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
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

# write_config NAME ADDRESS PORT: a config for an appliance under $work/NAME
write_config() {
  local name=$1 address=$2 port=$3 root="$work/$1"
  mkdir -p "$root"
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
[control]
socket = "$root/control.sock"
[volumes]
cache = "$root/cache"
retention = "$root/retention"
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

# link_state NAME PEER: the state of the link to PEER as NAME sees it
link_state() {
  json_get "$1" "next(p['link']['state'] for p in s['peers'] if p['name'] == '$2')"
}
link_is() { [ "$(link_state "$1" "$2")" = "$3" ]; }
link_is_not() { [ "$(link_state "$1" "$2")" != "$3" ]; }
