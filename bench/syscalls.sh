#!/usr/bin/env bash
# System calls per passthrough request: batchgate (worker_threads: 1) and nginx (one worker),
# each in front of the bundled mock, GET /users/7 under wrk -t1. While wrk runs, `perf stat`
# counts the server's syscall tracepoints for SYSCALLS_SECONDS and the script divides by the
# requests it answered in that window (its sends / 2: one to the upstream, one to the client).
#
#   bench/syscalls.sh
#
# Prints, per server: receives (all, those that failed with EAGAIN, MSG_PEEK ones), sends and
# epoll_wait per request. SYSCALLS_CONNS (50), SYSCALLS_SECONDS (3), BENCH_BUILD_DIR
# (build/bench), BENCH_SKIP_BUILD=1, BENCH_KEEP_TMP=1. Needs perf (linux-perf), wrk, nginx.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
BUILD_DIR=${BENCH_BUILD_DIR:-$ROOT/build/bench}
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

CONNS=${SYSCALLS_CONNS:-50}
SECONDS_COUNTED=${SYSCALLS_SECONDS:-3}
P_MOCK=18281 P_GW=18290 P_ADMIN=18291 P_NGINX=18292
for tool in perf wrk nginx; do command -v "$tool" >/dev/null || die "$tool is not installed"; done

bench_init batchgate-syscalls
build_release batchgate batchgate-mock-upstream

printf 'listen: 127.0.0.1:%s\nadmin_listen: 127.0.0.1:%s\nworker_threads: 1\n' "$P_GW" "$P_ADMIN" >"$TMP/gw.yaml"
printf 'upstreams:\n  mock:\n    url: http://127.0.0.1:%s\n    max_connections: 256\n' "$P_MOCK" >>"$TMP/gw.yaml"
printf 'logging: {access_log: false}\nroutes:\n  - name: passthrough\n    match: {prefix: /}\n    upstream: mock\n' >>"$TMP/gw.yaml"

start_mock mock "$P_MOCK" --users 100000
start_gateway gw "$TMP/gw.yaml" "$P_GW" "$P_ADMIN"
start_nginx

# count NAME PID PORT: wrk against PORT, perf stat on PID in the middle of the run.
count() {
    local name=$1 pid=$2 port=$3 out=$TMP/$1.perf
    wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$port/users/7" >/dev/null 2>&1  # warm-up
    wrk -t1 -c"$CONNS" -d"$((SECONDS_COUNTED + 2))s" "http://127.0.0.1:$port/users/7" >"$TMP/$name.wrk" 2>&1 &
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
    awk -F, -v name="$name" -v rps="$(sed -n 's/^Requests\/sec: *//p' "$TMP/$name.wrk")" '
        $3 ~ /sys_exit_recvfrom/ { if (seen++) failed = $1; else recv = $1; next }
        $3 ~ /sys_enter_recvfrom/ { peek = $1; next }
        $3 ~ /sys_exit_(sendmsg|sendto|writev|write)$/ { send += $1; next }
        $3 ~ /sys_exit_(read|readv)$/ { read += $1; next }
        $3 ~ /epoll_wait/ { epoll = $1; next }
        $3 ~ /getsockopt/ { sockopt = $1; next }
        $3 ~ /raw_syscalls/ { all = $1; next }
        END {
            n = send / 2
            if (n == 0) { printf "%-10s no requests counted\n", name; exit }
            printf "%-10s %8.0f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f\n", name, rps, (recv + read) / n,
                   failed / n, peek / n, send / n, epoll / n, sockopt / n, (all - send - recv - read - epoll - sockopt) / n, all / n
        }' "$out"
}

log "passthrough GET /users/7, $CONNS connections, system calls per request (perf stat over ${SECONDS_COUNTED} s of wrk)"
printf '%-10s %8s %7s %7s %7s %7s %7s %7s %7s %7s\n' server req/s recv EAGAIN peek send epoll sockopt other all
count batchgate "${PIDS[gw]}" "$P_GW"
NGINX_WORKER=$(pgrep -P "${PIDS[nginx]}" | head -1)
count nginx "${NGINX_WORKER:-${PIDS[nginx]}}" "$P_NGINX"
log "(recv: receives of any kind; EAGAIN: those that found nothing; peek: MSG_PEEK ones. sockopt:"
log " getsockopt, nginx's SO_ERROR check of a reused upstream connection. other: every other system"
log " call, e.g. timerfd_settime, epoll_ctl, accept.)"
