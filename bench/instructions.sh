#!/usr/bin/env bash
# User-space instructions per request, counted by valgrind's callgrind: a figure the shared,
# noisy machine cannot move (CPU time per request varies 10-20% from run to run here; this
# varies by about 1%), for A/B comparisons of a change to the data path and for the user-space
# side of issue 13's targets. The kernel's share (sends, receives, epoll) is not counted: see
# bench/syscalls.sh for that side. Under callgrind each server runs 20-50x slower, so the
# figures are per request, never per second.
#
#   bench/instructions.sh                 # passthrough (batchgate, nginx) and a coalesced caller
#   bench/instructions.sh passthrough     # GET /users/7 through batchgate, then through nginx
#   bench/instructions.sh coalesce        # GET /users/<random>, coalesce route (bench/profile.sh's)
#
# Each server (worker_threads: 1 / one nginx process, master_process off) runs under callgrind
# in front of the bundled mock; wrk warms it up for 3 s, callgrind's counters are zeroed, wrk
# runs INSTRUCTIONS_SECONDS (10), the counters are dumped and divided by wrk's requests. The
# coalesce line also gives the mean batch size (the per-caller share of a batch call shrinks
# with it). Needs valgrind (Debian: valgrind), wrk and nginx. BENCH_BUILD_DIR (build/bench),
# BENCH_SKIP_BUILD=1, BENCH_KEEP_TMP=1 (keeps each callgrind.out for callgrind_annotate).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
BUILD_DIR=${BENCH_BUILD_DIR:-$ROOT/build/bench}
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

WHAT=${1:-all}
SECONDS_MEASURED=${INSTRUCTIONS_SECONDS:-10}
P_MOCK=18481 P_GW=18490 P_ADMIN=18491 P_NGINX=18492
case $WHAT in all | passthrough | coalesce) ;; *) die "what is passthrough, coalesce or nothing (both), not '$WHAT'" ;; esac
for tool in valgrind callgrind_control wrk nginx; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

bench_init batchgate-instructions
build_release batchgate batchgate-mock-upstream

# measure NAME URL CONNS IDS: warm-up, zero, measured wrk run, dump; prints "IR REQUESTS".
measure() {
    local name=$1 url=$2 conns=$3 ids=$4 pid=${PIDS[$1]} result requests out
    run_wrk() {
        BENCH_RANDOM_IDS=$ids wrk -t1 -c"$conns" -d"$1" --timeout 10s -s "$BENCH_DIR/wrk.lua" "$url" 2>&1 |
            grep WRK_RESULT || true
    }
    run_wrk 3s >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    result=$(run_wrk "${SECONDS_MEASURED}s")
    callgrind_control -d "$pid" >/dev/null 2>&1
    requests=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$result")
    [[ ${requests:-0} -gt 0 ]] || die "$name: wrk made no requests ($result)"
    for _ in $(seq 1 50); do  # the dump is written by the process itself
        out=$(ls -t "$TMP/$name".out.* 2>/dev/null | head -1 || true)
        [[ -n $out ]] && grep -qs '^totals:\|^summary:' "$out" && break
        sleep 0.2
    done
    [[ -n $out ]] || die "$name: callgrind wrote no dump"
    echo "$(grep -m1 '^totals:\|^summary:' "$out" | awk '{ print $2 }') $requests"
}

start_under_callgrind() {  # NAME ARGS...: the server under callgrind, its PID in PIDS[NAME]
    local name=$1; shift
    valgrind --tool=callgrind --callgrind-out-file="$TMP/$name.out" "$@" >"$TMP/$name.log" 2>&1 &
    PIDS[$name]=$!
}

per_request() { awk -v ir="$1" -v n="$2" 'BEGIN { printf "%.0f", ir / n }'; }

gateway_config() {  # WORKLOAD: the gateway's YAML (bench/profile.sh's)
    printf 'listen: 127.0.0.1:%s\nadmin_listen: 127.0.0.1:%s\nworker_threads: 1\n' "$P_GW" "$P_ADMIN"
    printf 'upstreams:\n  mock:\n    url: http://127.0.0.1:%s\n    max_connections: 256\n' "$P_MOCK"
    printf 'logging: {access_log: false}\nroutes:\n'
    if [[ $1 = passthrough ]]; then
        printf '  - name: passthrough\n    match: {prefix: /}\n    upstream: mock\n'
    else
        users_route 5ms 100 10000 6KiB
    fi
}

# The gateway runs itself again with a larger malloc cache (README: Allocator), but not under
# valgrind (it would run valgrind's wrapper again): hand it the same setting here, so the count is
# of the allocator it runs with. INSTRUCTIONS_GLIBC_TUNABLES="" counts glibc's default instead.
GW_TUNABLES=${INSTRUCTIONS_GLIBC_TUNABLES-glibc.malloc.tcache_count=256}
start_gateway_under_callgrind() {  # WORKLOAD
    gateway_config "$1" >"$TMP/gw-$1.yaml"
    GLIBC_TUNABLES=$GW_TUNABLES start_under_callgrind "gw-$1" "$BUILD_DIR/batchgate" --config "$TMP/gw-$1.yaml"
    wait_http "http://127.0.0.1:$P_ADMIN/metrics" "gw-$1" || { cat "$TMP/gw-$1.log" >&2; die "gateway did not start"; }
}

stop() { kill -TERM "${PIDS[$1]}" 2>/dev/null || true; wait "${PIDS[$1]}" 2>/dev/null || true; unset "PIDS[$1]"; }

log "user-space instructions per request (callgrind; kernel not counted), wrk -t1, ${SECONDS_MEASURED} s measured; batchgate with GLIBC_TUNABLES=${GW_TUNABLES:-(none: glibc default)}"
NGINX_PER=""
if [[ $WHAT != coalesce ]]; then
    start_mock mock "$P_MOCK" --users 100000
    start_gateway_under_callgrind passthrough
    res=$(measure gw-passthrough "http://127.0.0.1:$P_GW/users/7" 50 "")
    read -r ir n <<<"$res"
    GW_PER=$(per_request "$ir" "$n")
    stop gw-passthrough
    dir=$TMP/nginx
    mkdir -p "$dir"
    sed -e "s#@DIR@#$dir#g" -e "s#@LISTEN_PORT@#$P_NGINX#g" -e "s#@UPSTREAM_PORT@#$P_MOCK#g" \
        -e "s#@USER@#$(id -un)#g" -e "s#@WORKERS@#1#g" "$BENCH_DIR/nginx.conf.in" >"$dir/nginx.conf"
    start_under_callgrind nginx nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g "master_process off;"
    wait_http "http://127.0.0.1:$P_NGINX/users/7" nginx || { cat "$dir/error.log" >&2; die "nginx did not start"; }
    res=$(measure nginx "http://127.0.0.1:$P_NGINX/users/7" 50 "")
    read -r ir_n n_n <<<"$res"
    NGINX_PER=$(per_request "$ir_n" "$n_n")
    stop nginx
    stop mock
    log "passthrough, 50 connections:   batchgate $GW_PER   nginx $NGINX_PER   ratio $(awk -v a="$GW_PER" -v b="$NGINX_PER" 'BEGIN { printf "%.2f", a / b }')"
fi
if [[ $WHAT != passthrough ]]; then
    start_mock mock "$P_MOCK" --users 100000 --latency 2ms --max-concurrent 8
    start_gateway_under_callgrind coalesce
    res=$(measure gw-coalesce "http://127.0.0.1:$P_GW/" 200 100000)
    read -r ir n <<<"$res"
    metrics=$(curl -s --max-time 30 "http://127.0.0.1:$P_ADMIN/metrics")
    batches=$(awk '/^batchgate_batch_size_count\{route="users"\}/ { print $2 }' <<<"$metrics")
    items=$(awk '/^batchgate_batch_size_sum\{route="users"\}/ { print $2 }' <<<"$metrics")
    CO_PER=$(per_request "$ir" "$n")
    stop gw-coalesce
    line="coalesced caller, 200 connections: batchgate $CO_PER (mean batch $(awk -v s="${items:-0}" -v c="${batches:-0}" 'BEGIN { printf "%.0f", (c > 0 ? s / c : 0) }') items)"
    [[ -n $NGINX_PER ]] && line+="   ÷ nginx passthrough $(awk -v a="$CO_PER" -v b="$NGINX_PER" 'BEGIN { printf "%.2f", a / b }')"
    log "$line"
fi
