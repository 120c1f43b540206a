#!/usr/bin/env bash
# Scale-out, measured (issue 14): three batchgate replicas (deploy/scaleout/replica.yaml.in)
# behind HAProxy (deploy/scaleout/haproxy.cfg.in), once hashing on the partition key
# (balance hdr(Authorization), hash-type consistent) and once round robin, in front of the mock
# upstream (reference API A, GET /users?ids=...). wrk sends GET /users/<random id> with one of
# SCALE_PARTITIONS Authorization tokens per request, so SCALE_PARTITIONS partitions.
#
# For each balance: a steady run with all three replicas, then a run during which replica r3 is
# stopped (SIGTERM: it drains) halfway through. Prints per run: client calls, callers not answered
# 2xx (non-2xx, socket errors, timeouts: "lost"), upstream calls per 1000 client calls and callers
# per batch call (both counted by the mock upstream itself), p50 and p99. Asserts nothing.
#
# Environment (all optional):
#   SCALE_DURATION=10      seconds per run (the stop comes at half)
#   SCALE_CONNS=100        wrk connections (wrk -t1)
#   SCALE_PARTITIONS=30    distinct Authorization tokens
#   SCALE_FLUSH=window     the route's flush policy (window | adaptive)
#   SCALE_MAX_WAIT=5ms     the route's max_wait
#   SCALE_LATENCY=1ms      the mock's cost per call
#   SCALE_PORT_BASE=18400  ports BASE+1 .. BASE+23 on 127.0.0.1
#   BENCH_SKIP_BUILD=1, BENCH_BUILD_DIR=build/bench, BENCH_BUILD_JOBS=N, BENCH_KEEP_TMP=1 as in run.sh
set -uo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
BUILD_DIR=${BENCH_BUILD_DIR:-$ROOT/build/bench}
[[ $BUILD_DIR = /* ]] || BUILD_DIR=$ROOT/$BUILD_DIR
. "$BENCH_DIR/lib.sh"

DURATION=${SCALE_DURATION:-10}
CONNS=${SCALE_CONNS:-100}
PARTITIONS=${SCALE_PARTITIONS:-30}
FLUSH=${SCALE_FLUSH:-window}
MAX_WAIT=${SCALE_MAX_WAIT:-5ms}
LATENCY=${SCALE_LATENCY:-1ms}
BASE=${SCALE_PORT_BASE:-18400}
P_MOCK=$((BASE + 1)) P_HASH=$((BASE + 2)) P_RR=$((BASE + 3))

for tool in haproxy wrk curl python3; do
    command -v "$tool" >/dev/null || die "$tool not found (bash scripts/install-deps.sh haproxy wrk)"
done
bench_init scaleout
build_release batchgate batchgate-mock-upstream

start_mock mock "$P_MOCK" --latency "$LATENCY" --state-endpoint
start_replica() {  # start_replica N
    local n=$1
    sed -e "s|@PORT@|$((BASE + 10 + n))|" -e "s|@ADMIN_PORT@|$((BASE + 20 + n))|" \
        -e "s|@UPSTREAM@|http://127.0.0.1:$P_MOCK|" -e "s|@FLUSH@|$FLUSH|" -e "s|@MAX_WAIT@|$MAX_WAIT|" \
        "$ROOT/deploy/scaleout/replica.yaml.in" >"$TMP/r$n.yaml"
    start_gateway "r$n" "$TMP/r$n.yaml" $((BASE + 10 + n)) $((BASE + 20 + n))
}
for n in 1 2 3; do start_replica "$n"; done
sed -e "s|@HASH_PORT@|$P_HASH|" -e "s|@RR_PORT@|$P_RR|" \
    -e "s|@R1@|$((BASE + 11))|" -e "s|@R2@|$((BASE + 12))|" -e "s|@R3@|$((BASE + 13))|" \
    -e "s|@A1@|$((BASE + 21))|" -e "s|@A2@|$((BASE + 22))|" -e "s|@A3@|$((BASE + 23))|" \
    "$ROOT/deploy/scaleout/haproxy.cfg.in" >"$TMP/haproxy.cfg"
haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
PIDS[haproxy]=$!
wait_http "http://127.0.0.1:$P_HASH/users/1" haproxy || { cat "$TMP/haproxy.log" >&2; die "haproxy did not start"; }
wait_http "http://127.0.0.1:$P_RR/users/1" haproxy || die "haproxy did not start"

# upstream_calls: "LIST SINGLE" calls the mock has received on GET /users?ids= and GET /users/{id}.
upstream_calls() {
    local state
    state=$(curl -fs --max-time 5 "http://127.0.0.1:$P_MOCK/__soak/state") || die "the mock's state endpoint did not answer"
    python3 -c 'import json, sys; c = json.loads(sys.argv[1])["calls"]; print(c.get("users_list", 0), c.get("users_single", 0))' "$state"
}

wrk_run() {  # wrk_run PORT OUTFILE
    BENCH_RANDOM_IDS=1000 BENCH_PARTITIONS=$PARTITIONS timeout $((DURATION + 30)) \
        wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$BENCH_DIR/wrk.lua" "http://127.0.0.1:$1/" >"$2" 2>&1
}

log "scale-out: 3 replicas (worker_threads 1, flush $FLUSH, max_wait $MAX_WAIT) behind HAProxy, $PARTITIONS partitions"
log "(Authorization tokens), wrk -t1 -c$CONNS ${DURATION}s per run, mock upstream ${LATENCY} per call; $(haproxy -v | head -1 | awk '{print $1, $3}')"
log ""
printf '%-12s %-26s %9s %6s %14s %14s %9s %9s\n' balance run "calls" lost "up/1000 calls" "callers/batch" "p50 ms" "p99 ms"
row() {  # row BALANCE RUN WRK_OUT BEFORE AFTER
    local res; res=$(grep WRK_RESULT "$3") || { log "$1 $2: wrk printed no result"; cat "$3"; return; }
    python3 - "$1" "$2" "$res" "$4" "$5" <<'PY'
import sys
balance, run, res, before, after = sys.argv[1:]
w = dict(kv.split("=") for kv in res.split()[1:])
requests = int(w["requests"])
lost = int(w["non2xx"]) + int(w["sockerr"]) + int(w["timeouts"])
l0, s0 = map(int, before.split()); l1, s1 = map(int, after.split())
lists, singles = l1 - l0, s1 - s0
per1000 = 1000 * (lists + singles) / requests if requests else 0
per_batch = (requests - lost) / lists if lists else 0
print(f"{balance:<12} {run:<26} {requests:>9} {lost:>6} {per1000:>14.1f} {per_batch:>14.1f} "
      f"{int(w['p50_us']) / 1000:>9.2f} {int(w['p99_us']) / 1000:>9.2f}")
PY
}

for balance in hash roundrobin; do
    port=$P_HASH; [[ $balance = roundrobin ]] && port=$P_RR
    # warm-up (connections, the concurrency limit), not counted
    SAVED=$DURATION; DURATION=2; wrk_run "$port" "$TMP/warm.out"; DURATION=$SAVED

    before=$(upstream_calls)
    wrk_run "$port" "$TMP/$balance-steady.out"
    row "$balance" "3 replicas" "$TMP/$balance-steady.out" "$before" "$(upstream_calls)"

    before=$(upstream_calls)
    wrk_run "$port" "$TMP/$balance-stop.out" &
    wrk_pid=$!
    sleep $((DURATION / 2))
    stop r3 TERM
    r3_rc=$STOP_RC
    wait "$wrk_pid"
    row "$balance" "r3 stopped at $((DURATION / 2))s (exit $r3_rc)" "$TMP/$balance-stop.out" "$before" "$(upstream_calls)"
    mv "$TMP/r3.log" "$TMP/r3-$balance-stopped.log"  # start_replica writes a new r3.log
    start_replica 3
    sleep 1.5  # HAProxy's checks take r3 back after rise 2 x inter 200ms
done
log ""
log "lost: callers wrk saw answered other than 2xx, or not at all (socket errors, timeouts)."
log "up/1000 calls and callers/batch: from the mock upstream's own count of GET /users?ids= and GET /users/{id}."
