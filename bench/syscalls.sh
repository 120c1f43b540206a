#!/usr/bin/env bash
# System calls per request, batchgate (worker_threads: 1) against nginx (one worker), under
# wrk -t1. While wrk runs, `perf stat` counts the server's syscall tracepoints for
# SYSCALLS_SECONDS and the script divides by the requests it answered in that window.
#
#   bench/syscalls.sh               # passthrough: GET /users/7 through each, in front of the mock;
#                                   # requests = sends / 2 (one to the upstream, one to the client)
#   bench/syscalls.sh coalesce      # a coalesced caller: GET /users/<random id> through a coalesce
#                                   # route (flush: adaptive; mock --latency 2ms --max-concurrent 8)
#                                   # against nginx answering from memory (bench/nginx-memory.conf.in);
#                                   # requests = wrk's req/s x SYSCALLS_SECONDS
#
# Prints, per server: receives (all, those that failed with EAGAIN, MSG_PEEK ones), sends and
# epoll_wait per request. SYSCALLS_CONNS (50 passthrough, 200 coalesce), SYSCALLS_SECONDS (3),
# BENCH_BUILD_DIR (build/bench), BENCH_SKIP_BUILD=1, BENCH_KEEP_TMP=1. Needs perf (linux-perf),
# wrk, nginx.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
BUILD_DIR=${BENCH_BUILD_DIR:-$ROOT/build/bench}
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

WORKLOAD=${1:-passthrough}
case $WORKLOAD in
    passthrough) CONNS=${SYSCALLS_CONNS:-50} ;;
    coalesce) CONNS=${SYSCALLS_CONNS:-200} ;;
    *) die "workload is passthrough or coalesce, not '$WORKLOAD'" ;;
esac
SECONDS_COUNTED=${SYSCALLS_SECONDS:-3}
P_MOCK=18281 P_GW=18290 P_ADMIN=18291 P_NGINX=18292
for tool in perf wrk nginx; do command -v "$tool" >/dev/null || die "$tool is not installed"; done

bench_init batchgate-syscalls
build_release batchgate batchgate-mock-upstream

printf 'listen: 127.0.0.1:%s\nadmin_listen: 127.0.0.1:%s\nworker_threads: 1\n' "$P_GW" "$P_ADMIN" >"$TMP/gw.yaml"
printf 'upstreams:\n  mock:\n    url: http://127.0.0.1:%s\n    max_connections: 256\n' "$P_MOCK" >>"$TMP/gw.yaml"
printf 'logging: {access_log: false}\nroutes:\n' >>"$TMP/gw.yaml"
if [[ $WORKLOAD = passthrough ]]; then
    printf '  - name: passthrough\n    match: {prefix: /}\n    upstream: mock\n' >>"$TMP/gw.yaml"
    start_mock mock "$P_MOCK" --users 100000
    start_nginx
    URL_PATH=/users/7 IDS=""
else
    users_route 5ms 100 10000 6KiB "flush: adaptive" >>"$TMP/gw.yaml"
    start_mock mock "$P_MOCK" --users 100000 --latency 2ms --max-concurrent 8
    start_nginx nginx "$BENCH_DIR/nginx-memory.conf.in"
    URL_PATH=/ IDS=100000
fi
start_gateway gw "$TMP/gw.yaml" "$P_GW" "$P_ADMIN"

# count NAME PID PORT: wrk against PORT, perf stat on PID in the middle of the run.
count() {
    local name=$1 pid=$2 port=$3 out=$TMP/$1.perf
    local url=http://127.0.0.1:$port$URL_PATH
    BENCH_RANDOM_IDS=$IDS wrk -t1 -c"$CONNS" -d1s -s "$BENCH_DIR/wrk.lua" "$url" >/dev/null 2>&1  # warm-up
    BENCH_RANDOM_IDS=$IDS wrk -t1 -c"$CONNS" -d"$((SECONDS_COUNTED + 2))s" -s "$BENCH_DIR/wrk.lua" "$url" >"$TMP/$name.wrk" 2>&1 &
    local wrk_pid=$!
    sleep 1
    perf stat -x, -o "$out" -p "$pid" \
        -e syscalls:sys_exit_sendmsg -e syscalls:sys_exit_sendto -e syscalls:sys_exit_writev -e syscalls:sys_exit_write \
        -e syscalls:sys_exit_recvfrom -e syscalls:sys_exit_recvfrom --filter 'ret < 0' \
        -e syscalls:sys_enter_recvfrom --filter 'flags & 2' \
        -e syscalls:sys_exit_read -e syscalls:sys_exit_readv -e syscalls:sys_exit_epoll_wait \
        -e syscalls:sys_exit_getsockopt \
        -e raw_syscalls:sys_enter -- sleep "$SECONDS_COUNTED" 2>/dev/null
    wait "$wrk_pid" || true
    awk -F, -v name="$name" -v rps="$(sed -n 's/^Requests\/sec: *//p' "$TMP/$name.wrk")" \
        -v by_rps="$([[ $WORKLOAD = coalesce ]] && echo "$SECONDS_COUNTED" || echo 0)" '
        $3 ~ /sys_exit_recvfrom/ { if (seen++) failed = $1; else recv = $1; next }
        $3 ~ /sys_enter_recvfrom/ { peek = $1; next }
        $3 ~ /sys_exit_(sendmsg|sendto|writev|write)$/ { send += $1; next }
        $3 ~ /sys_exit_(read|readv)$/ { read += $1; next }
        $3 ~ /epoll_wait/ { epoll = $1; next }
        $3 ~ /getsockopt/ { sockopt = $1; next }
        $3 ~ /raw_syscalls/ { all = $1; next }
        END {
            n = by_rps > 0 ? rps * by_rps : send / 2
            if (n == 0) { printf "%-10s no requests counted\n", name; exit }
            printf "%-10s %8.0f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f\n", name, rps, (recv + read) / n,
                   failed / n, peek / n, send / n, epoll / n, sockopt / n, (all - send - recv - read - epoll - sockopt) / n, all / n
        }' "$out"
}

if [[ $WORKLOAD = passthrough ]]; then
    log "passthrough GET /users/7, $CONNS connections, system calls per request (perf stat over ${SECONDS_COUNTED} s of wrk)"
else
    log "coalesced caller, GET /users/<random id>, $CONNS connections, system calls per caller (perf stat over" \
        "${SECONDS_COUNTED} s of wrk); nginx answers from memory"
fi
printf '%-10s %8s %7s %7s %7s %7s %7s %7s %7s %7s\n' server req/s recv EAGAIN peek send epoll sockopt other all
count batchgate "${PIDS[gw]}" "$P_GW"
NGINX_WORKER=$(pgrep -P "${PIDS[nginx]}" | head -1)
count nginx "${NGINX_WORKER:-${PIDS[nginx]}}" "$P_NGINX"
log "(recv: receives of any kind; EAGAIN: those that found nothing; peek: MSG_PEEK ones. sockopt:"
log " getsockopt, nginx's SO_ERROR check of a reused upstream connection. other: every other system"
log " call, e.g. timerfd_settime, epoll_ctl, accept.)"
