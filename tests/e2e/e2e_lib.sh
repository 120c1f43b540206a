# Shared by the end-to-end scripts (sourced): a temporary directory, the servers they start
# (pids, killed on exit), their logs shown on failure (logs), fail/ok, free ports, wait_http.
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

free_ports() {  # N: N free ports on 127.0.0.1 (a tiny race with other processes is accepted)
  "$py" -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()' "$1"
}

wait_http() {  # URL SECONDS: until URL answers 2xx
  local end=$((SECONDS + $2))
  until curl -fs -o /dev/null --max-time 1 "$1"; do
    ((SECONDS < end)) || return 1
    sleep 0.1
  done
}
