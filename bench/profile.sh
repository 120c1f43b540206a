#!/usr/bin/env bash
# Where batchgate spends its CPU per request: runs one workload against a Release gateway
# (worker_threads: 1, access log off, as in bench/run.sh) and records it with `perf`.
#
#   bench/profile.sh passthrough     # GET /users/7 through a prefix passthrough, mock without latency
#   bench/profile.sh coalesce        # GET /users/<random>, coalesce route, mock 2 ms per call, 8 at once
#
# Prints: the gateway's CPU per request (µs, from /proc/PID/stat over the measured run), the top
# symbols by self time, and self time summed by component (asio, beast, prometheus, malloc,
# kernel, ...). PROFILE_DURATION (6s), PROFILE_CONNS (50 / 200), PROFILE_THREADS (1),
# PROFILE_TOP (40), BENCH_BUILD_DIR (build/bench), BENCH_SKIP_BUILD=1, BENCH_KEEP_TMP=1.
# PROFILE_CALLGRAPH="--call-graph dwarf,16384" records call chains too (with BENCH_KEEP_TMP=1,
# `perf report -i TMP/perf.data --children` then gives time spent under each function).
# Needs perf (Debian: linux-perf) and wrk; perf needs root or kernel.perf_event_paranoid <= 1.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
BUILD_DIR=${BENCH_BUILD_DIR:-$ROOT/build/bench}
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

WORKLOAD=${1:-passthrough}
DURATION=${PROFILE_DURATION:-6s}
THREADS=${PROFILE_THREADS:-1}
TOP=${PROFILE_TOP:-40}
P_MOCK=18181 P_GW=18190 P_ADMIN=18191
case $WORKLOAD in
    passthrough) CONNS=${PROFILE_CONNS:-50} ;;
    coalesce) CONNS=${PROFILE_CONNS:-200} ;;
    *) die "workload is passthrough or coalesce, not '$WORKLOAD'" ;;
esac
command -v perf >/dev/null || die "perf is not installed (apt-get install linux-perf)"
command -v wrk >/dev/null || die "wrk is not installed"

bench_init batchgate-profile
build_release batchgate batchgate-mock-upstream

{
    printf 'listen: 127.0.0.1:%s\nadmin_listen: 127.0.0.1:%s\nworker_threads: %s\n' "$P_GW" "$P_ADMIN" "$THREADS"
    printf 'upstreams:\n  mock:\n    url: http://127.0.0.1:%s\n    max_connections: 256\n' "$P_MOCK"
    printf 'logging: {access_log: false}\nroutes:\n'
    if [[ $WORKLOAD = passthrough ]]; then
        printf '  - name: passthrough\n    match: {prefix: /}\n    upstream: mock\n'
    else
        users_route 5ms 100 10000 6KiB
    fi
} >"$TMP/gw.yaml"

if [[ $WORKLOAD = passthrough ]]; then
    start_mock mock "$P_MOCK" --users 100000
    URL="http://127.0.0.1:$P_GW/users/7"
    IDS=""
else
    start_mock mock "$P_MOCK" --users 100000 --latency 2ms --max-concurrent 8
    URL="http://127.0.0.1:$P_GW/"
    IDS=100000
fi
start_gateway gw "$TMP/gw.yaml" "$P_GW" "$P_ADMIN"
GW=${PIDS[gw]}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
wrk_run() {  # wrk_run SECONDS: prints the WRK_RESULT line
    BENCH_RANDOM_IDS=$IDS wrk -t1 -c"$CONNS" -d"$1" --latency -s "$BENCH_DIR/wrk.lua" "$URL" 2>&1 | grep WRK_RESULT || true
}

wrk_run 1s >/dev/null   # warm-up: connections, pools, allocator
# Measured run (no perf): CPU per request.
t0=$(cpu_ticks "$GW")
RESULT=$(wrk_run "$DURATION")
t1=$(cpu_ticks "$GW")
REQS=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$RESULT")
HZ=$(getconf CLK_TCK)
log "workload: $WORKLOAD, $CONNS connections, $DURATION, worker_threads $THREADS"
log "wrk: $RESULT"
awk -v t="$((t1 - t0))" -v hz="$HZ" -v n="${REQS:-0}" \
    'BEGIN { if (n > 0) printf "gateway CPU: %.2f s for %d requests = %.1f us per request\n", t / hz, n, t / hz * 1e6 / n }'

# Profiled run.
perf record ${PROFILE_CALLGRAPH:-} -F 1999 -p "$GW" -o "$TMP/perf.data" -- sleep "${DURATION%s}" >"$TMP/perf.log" 2>&1 &
PERF=$!
wrk_run "$DURATION" >/dev/null
wait "$PERF" || true
perf report -i "$TMP/perf.data" --no-children --sort symbol --stdio 2>/dev/null |
    grep -v '^#' | grep -v '^$' | sed -e 's/[[:space:]-]*$//' | cut -c1-180 | head -n "$TOP" || true

log ""
log "self time by component:"
perf report -i "$TMP/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -v '^#' | grep '%' |
    awk '{
        pct = $1; sub(/%/, "", pct); dso = $2; sym = ""; for (i = 4; i <= NF; ++i) sym = sym " " $i
        c = "other"
        if (dso ~ /kernel/) c = "kernel"
        else if (dso ~ /libc/ && sym ~ /(malloc|free|_int_|cfree|realloc|calloc|tcache)/) c = "malloc/free"
        else if (dso ~ /libc/) c = "libc (memcpy, strings, locks)"
        else if (dso ~ /libstdc/) c = "libstdc++"
        else if (dso ~ /libyaml|libssl|libcrypto/) c = dso
        else if (sym ~ /prometheus/) c = "prometheus-cpp"
        else if (sym ~ /_Sp_counted|__shared_count|shared_ptr/) c = "shared_ptr reference counts"
        else if (sym ~ /beast::http::basic_fields|basic_parser|beast::http::detail/) c = "beast http (fields, parser, serializer)"
        else if (sym ~ /strand|scheduler|epoll_reactor|timer_queue|asio::detail/) c = "asio (scheduler, strands, timers, reactor)"
        else if (sym ~ /nlohmann/) c = "nlohmann json"
        else if (sym ~ /batchgate/) c = "batchgate"
        s[c] += pct
    }
    END { for (c in s) printf "  %6.2f%%  %s\n", s[c], c }' | sort -rn || true
