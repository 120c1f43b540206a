# Shared by the end-to-end scripts (sourced): a temporary directory, the servers they start
# (pids, killed on exit), their logs shown on failure (logs), fail/ok, the mock upstream and
# batchgate on ephemeral ports (start_mock, start_gateway), free ports, wait_http.
py=/usr/bin/python3; [[ -x $py ]] || py=python3
tmp=$(mktemp -d)
pids=()
logs=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  if ((rc != 0)); then
    for f in "${logs[@]}"; do
      [[ -s $tmp/$f ]] && { echo "--- last lines of $f"; tail -n 20 "$tmp/$f"; }
    done
  fi
  rm -rf "$tmp"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "FAIL $*"; exit 1; }
ok() { echo "ok   $*"; }

free_ports() {  # N: N free ports on 127.0.0.1, for servers that cannot report a port 0 (a race with other processes)
  "$py" -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()' "$1"
}

# wait_line FILE PATTERN SECONDS: prints the first line of FILE matching PATTERN (grep -E) once
# it is there; fails after SECONDS.
wait_line() {
  local end=$((SECONDS + $3)) line
  until line=$(grep -m1 -E "$2" "$1" 2>/dev/null); do
    ((SECONDS < end)) || return 1
    sleep 0.1
  done
  printf '%s\n' "$line"
}

# start_mock ARGS...: $mock_bin on 127.0.0.1, port 0 (the kernel's choice: no race with other
# processes for a port picked in advance), log mock.log; sets up_port from its "listening on"
# line.
start_mock() {
  "$mock_bin" --address 127.0.0.1 --port 0 "$@" >"$tmp/mock.log" 2>&1 &
  pids+=($!)
  local line
  line=$(wait_line "$tmp/mock.log" 'listening on' 10) || return 1
  up_port=${line##*:}
}

# start_gateway CONFIG: $gw_bin with CONFIG, whose listen and admin_listen say port 0, log
# gateway.log; sets gw_port and admin_port from its "batchgate started" line.
start_gateway() {
  "$gw_bin" --config "$1" >"$tmp/gateway.log" 2>&1 &
  pids+=($!)
  local line
  line=$(wait_line "$tmp/gateway.log" '"batchgate started"' 10) || return 1
  gw_port=$(sed -n 's/.*"listen":"[^"]*:\([0-9]*\)".*/\1/p' <<<"$line")
  admin_port=$(sed -n 's/.*"admin":"[^"]*:\([0-9]*\)".*/\1/p' <<<"$line")
  [[ -n $gw_port && -n $admin_port ]]
}

wait_http() {  # URL SECONDS: until URL answers 2xx
  local end=$((SECONDS + $2))
  until curl -fs -o /dev/null --max-time 1 "$1"; do
    ((SECONDS < end)) || return 1
    sleep 0.1
  done
}
