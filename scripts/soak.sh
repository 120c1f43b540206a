#!/usr/bin/env bash
# Fault soak: the real batchgate binary in front of batchgate-mock-upstream with random faults
# (resets, stalls, late and slow answers, garbage, truncated bodies, 429/500/503), driven by
# batchgate-soak-client with coalesced reads (A, B), coalesced writes (C, D) and passthrough calls
# under many credentials, a config swap + SIGHUP every second and a SIGTERM at the end.
# Prints the client's table plus the gateway's exit status; exits non-zero on any unanswered,
# doubled, crossed or wrong answer, a lost or doubled write, a crash or a non-zero gateway exit.
# Everything listens on 127.0.0.1 (free ports), and every wait below is bounded.
#
#   scripts/soak.sh                                     # CI size: 30,000 requests, 3% faults
#   scripts/soak.sh --requests 1000000 --max-seconds 900  # the by-hand soak
#
# Binaries come from --build-dir (default build/test), or BATCHGATE_BIN / MOCK_BIN / CLIENT_BIN.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="$here/build/test"
requests=30000
fault_rate=0.03
seed=1
connections=128
credentials=32
max_seconds=120
threads=1
fault_kinds=""
keep=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-dir) build_dir="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    --fault-rate) fault_rate="$2"; shift 2 ;;
    --fault-kinds) fault_kinds="$2"; shift 2 ;;   # the mock's --fault-kinds (default: its default mix)
    --seed) seed="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --credentials) credentials="$2"; shift 2 ;;
    --max-seconds) max_seconds="$2"; shift 2 ;;
    --client-threads) threads="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

gateway_bin="${BATCHGATE_BIN:-$build_dir/batchgate}"
mock_bin="${MOCK_BIN:-$build_dir/batchgate-mock-upstream}"
client_bin="${CLIENT_BIN:-$build_dir/batchgate-soak-client}"
for b in "$gateway_bin" "$mock_bin" "$client_bin"; do
  [[ -x "$b" ]] || { echo "soak.sh: missing binary $b (build batchgate batchgate-mock-upstream batchgate-soak-client)" >&2; exit 2; }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/batchgate-soak.XXXXXX")"
mock_pid=""
gateway_pid=""
cleanup() {
  # Only the two processes this script started, by pid.
  [[ -n "$gateway_pid" ]] && kill -KILL "$gateway_pid" 2>/dev/null || true
  [[ -n "$mock_pid" ]] && kill -TERM "$mock_pid" 2>/dev/null || true
  [[ -n "$mock_pid" ]] && wait "$mock_pid" 2>/dev/null || true
  if [[ $keep -eq 1 ]]; then echo "soak.sh: logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# Waits (at most 10 s) for a line matching $2 in file $1 and prints it.
wait_line() {
  for _ in $(seq 1 100); do
    if line="$(grep -m1 -- "$2" "$1" 2>/dev/null)"; then echo "$line"; return 0; fi
    sleep 0.1
  done
  echo "soak.sh: timed out waiting for '$2' in $1" >&2
  tail -n 20 "$1" >&2 || true
  return 1
}

# 1. The upstream: every call draws a fault with probability $fault_rate.
"$mock_bin" --address 127.0.0.1 --port 0 --threads 2 --users 1000 \
  --tag-owner --state-endpoint --fault-rate "$fault_rate" --fault-seed "$seed" \
  --stall-for 3s --slow-max 200ms ${fault_kinds:+--fault-kinds "$fault_kinds"} \
  >"$work/mock.out" 2>"$work/mock.err" &
mock_pid=$!
mock_line="$(wait_line "$work/mock.out" "listening on")"
mock_port="${mock_line##*:}"

# 2. Two variants of the gateway config; the client swaps them in before each SIGHUP.
make_config() {
  sed -e "s/@UPSTREAM_PORT@/$mock_port/" -e "s/@MAX_WAIT@/$1/" -e "s/@MAX_ITEMS@/$2/" \
    "$here/tests/soak/soak.yaml.in" >"$3"
}
make_config 2ms 50 "$work/a.yaml"
make_config 5ms 100 "$work/b.yaml"
cp "$work/a.yaml" "$work/live.yaml"
"$gateway_bin" --check-config "$work/live.yaml" >/dev/null

# 3. The gateway.
"$gateway_bin" --config "$work/live.yaml" >"$work/gateway.out" 2>"$work/gateway.err" &
gateway_pid=$!
started="$(wait_line "$work/gateway.err" "batchgate started")"
listen="$(grep -o '"listen":"[^"]*"' <<<"$started" | tr -d '"')"
admin="$(grep -o '"admin":"[^"]*"' <<<"$started" | tr -d '"')"
gateway_port="${listen##*:}"
admin_port="${admin##*:}"
echo "soak.sh: mock upstream pid $mock_pid on 127.0.0.1:$mock_port (fault rate $fault_rate, seed $seed)," \
     "gateway pid $gateway_pid on 127.0.0.1:$gateway_port (admin $admin_port), $requests requests"

# 4. The load. The client bounds itself by --max-seconds; `timeout` is the backstop.
client_status=0
timeout --signal=KILL $((max_seconds + 90)) "$client_bin" --port "$gateway_port" --admin-port "$admin_port" \
  --upstream-port "$mock_port" --gateway-pid "$gateway_pid" --requests "$requests" \
  --connections "$connections" --threads "$threads" --credentials "$credentials" --users 1000 \
  --deadline-ms 5000 --max-seconds "$max_seconds" --reload-ms 1000 \
  --reload-configs "$work/a.yaml,$work/b.yaml" --config-path "$work/live.yaml" --seed "$seed" \
  || client_status=$?

# 5. The gateway got SIGTERM from the client: it must drain and exit 0 (bounded wait: drain_timeout 8s).
gateway_status=""
for _ in $(seq 1 300); do
  if ! kill -0 "$gateway_pid" 2>/dev/null; then break; fi
  sleep 0.1
done
if kill -0 "$gateway_pid" 2>/dev/null; then
  echo "soak.sh: the gateway did not exit within 30 s of SIGTERM; killing it" >&2
  kill -KILL "$gateway_pid" 2>/dev/null || true
  gateway_status="hung"
fi
set +e
wait "$gateway_pid"
code=$?
set -e
gateway_pid=""
[[ -z "$gateway_status" ]] && gateway_status="$code"

# 6. Mock: still alive (it was never meant to stop) and stops cleanly.
mock_alive=1
kill -0 "$mock_pid" 2>/dev/null || mock_alive=0
kill -TERM "$mock_pid" 2>/dev/null || true
wait "$mock_pid" 2>/dev/null || true
mock_pid=""

echo "gateway exit status: $gateway_status$( [[ "$gateway_status" =~ ^[0-9]+$ && "$gateway_status" -gt 128 ]] && echo " (signal $((gateway_status - 128)): CRASH)")"
echo "gateway stderr: $(wc -l <"$work/gateway.err") lines; most frequent messages:"
grep -o '"msg":"[^"]*"' "$work/gateway.err" | sort | uniq -c | sort -rn | head -8 | sed 's/^/    /' || true
if grep -qiE 'sanitizer|runtime error|terminate called|Segmentation' "$work/gateway.err"; then
  echo "gateway stderr reports a sanitizer/runtime error:"; grep -iE 'sanitizer|runtime error|terminate called' "$work/gateway.err" | head -5
  client_status=1
fi
[[ $mock_alive -eq 1 ]] || { echo "soak.sh: the mock upstream died during the soak" >&2; client_status=1; }

if [[ $client_status -eq 0 && "$gateway_status" == "0" ]]; then
  echo "soak verdict: PASS"
  exit 0
fi
echo "soak verdict: FAIL (client $client_status, gateway exit $gateway_status)"
exit 1
