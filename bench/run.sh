#!/usr/bin/env bash
# batchgate loopback benchmark: builds Release binaries, runs every scenario once and prints
# figures. It asserts nothing about speed: the final summary compares against the targets
# (MET / MISSED) for information, and the script exits 0 unless something fails to start.
#
# Environment (all optional):
#   BENCH_DURATION=8s      length of every measured wrk run (seconds; "8" or "8s")
#   BENCH_WARMUP=1s        unmeasured wrk run before each measured one (0 = none)
#   BENCH_CALLERS=10000    waiting callers for the memory scenario
#   BENCH_SKIP_BUILD=1     use the binaries already in $BENCH_BUILD_DIR
#   BENCH_BUILD_DIR=build/bench
#   BENCH_KEEP_TMP=1       keep the temp dir (configs, logs) for inspection
#   BENCH_WRITES=0         skip scenario 5 (bench/writes.sh; its WRITES_* variables apply)
#
# Ports (127.0.0.1 only): 18081 mock (no latency), 18082 mock (2 ms, 8 concurrent),
# 18083 nginx, 18090/18091 gateway passthrough (traffic/admin), 18092/18093 gateway coalesce,
# 18094/18095 gateway memory scenario, 18101-18104 the write scenario (bench/writes.sh).
set -uo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
BUILD_DIR=${BENCH_BUILD_DIR:-$ROOT/build/bench}
[[ $BUILD_DIR = /* ]] || BUILD_DIR=$ROOT/$BUILD_DIR

secs() { local v=${1%s}; [[ $v =~ ^[0-9]+$ ]] || { echo "bad duration: $1" >&2; exit 2; }; echo "$v"; }
DURATION=$(secs "${BENCH_DURATION:-8s}")
WARMUP=$(secs "${BENCH_WARMUP:-1s}")
CALLERS=${BENCH_CALLERS:-10000}

P_MOCK=18081 P_MOCK_SLOW=18082 P_NGINX=18083
P_GW_PT=18090 P_GW_PT_ADMIN=18091
P_GW_CO=18092 P_GW_CO_ADMIN=18093
P_GW_MEM=18094 P_GW_MEM_ADMIN=18095

MAX_ID=100000          # mock --users and the random id range
WINDOW_MS=5            # coalesce max_wait in the fan-in / latency scenarios

. "$BENCH_DIR/lib.sh"   # log, die, processes and cleanup, build_release, scrape, msum
bench_init batchgate-bench

start_nginx() {
    local dir=$TMP/nginx
    port_free "$P_NGINX" || die "port $P_NGINX is already in use"
    mkdir -p "$dir"
    sed -e "s#@DIR@#$dir#g" -e "s#@LISTEN_PORT@#$P_NGINX#g" -e "s#@UPSTREAM_PORT@#$P_MOCK#g" \
        "$BENCH_DIR/nginx.conf.in" >"$dir/nginx.conf"
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$TMP/nginx.log" 2>&1 &
    PIDS[nginx]=$!
    if ! wait_http "http://127.0.0.1:$P_NGINX/users/7" nginx; then
        cat "$TMP/nginx.log" "$dir/error.log" >&2 2>/dev/null
        die "nginx did not start"
    fi
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# metrics (scrape, msum: lib.sh)
# ---------------------------------------------------------------------------------------------
# status breakdown of batchgate_requests_total for a route between two scrapes: "200:123 503:4"
status_delta() {
    local before=$1 after=$2 route=$3
    awk -v f="route=\"$route\"" '
        index($0, "batchgate_requests_total{") == 1 && index($0, f) > 0 {
            match($0, /status="[^"]*"/); st = substr($0, RSTART + 8, RLENGTH - 9)
            if (FILENAME == ARGV[1]) b[st] += $NF; else a[st] += $NF
        }
        END { for (st in a) if (a[st] - b[st] > 0) printf "%s:%.0f ", st, a[st] - b[st] }' \
        "$before" "$after"
}

# ---------------------------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------------------------
declare -A RPS=() P50=() P99=() NON2XX=() SOCKERR=()
declare -A CPU=()
ROW_FMT="%-40s %6s %11s %9s %9s %8s %8s %11s\n"
CLK_TCK=$(getconf CLK_TCK)

# cpu_ticks PID...: user+system clock ticks used so far by those processes
cpu_ticks() {
    local p t=0 f
    for p in "$@"; do
        f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        f=${f##*) }                        # fields after "pid (comm) "
        set -- $f
        t=$(( t + ${12} + ${13} ))         # utime, stime (fields 14, 15 of stat)
    done
    echo "$t"
}

# run_wrk KEY LABEL CONNS URL RANDOM(0|1) [PID...]: warm-up, measured run, one table row.
# PIDs: the server under test; its CPU use during the measured run is the last column
# (100% = one core).
run_wrk() {
    local key=$1 label=$2 conns=$3 url=$4 random=$5 out=$TMP/wrk-$1.out wenv=() pids t0 t1 w0 w1
    shift 5; pids=("$@")
    [[ $random = 1 ]] && wenv=(BENCH_RANDOM_IDS="$MAX_ID")
    if ((WARMUP > 0)); then
        env "${wenv[@]}" timeout $((WARMUP + 20)) wrk -t1 -c"$conns" -d"${WARMUP}s" \
            -s "$BENCH_DIR/wrk.lua" "$url" >/dev/null 2>&1
    fi
    [[ -n ${BEFORE_RUN:-} ]] && $BEFORE_RUN
    t0=$(cpu_ticks "${pids[@]}"); w0=$(date +%s%N)
    env "${wenv[@]}" timeout $((DURATION + 30)) wrk -t1 -c"$conns" -d"${DURATION}s" --latency \
        -s "$BENCH_DIR/wrk.lua" "$url" >"$out" 2>&1
    t1=$(cpu_ticks "${pids[@]}"); w1=$(date +%s%N)
    CPU[$key]=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v ns=$((w1 - w0)) 'BEGIN { printf "%.0f%%", t / hz / (ns / 1e9) * 100 }')
    local line; line=$(grep '^WRK_RESULT' "$out")
    if [[ -z $line ]]; then
        printf "$ROW_FMT" "$label" "$conns" "FAILED" "-" "-" "-" "-" "-"
        sed 's/^/    wrk: /' "$out" | head -5
        return 1
    fi
    local kv k v
    for kv in ${line#WRK_RESULT }; do
        k=${kv%%=*} v=${kv#*=}
        case $k in
            rps) RPS[$key]=$v ;; p50_us) P50[$key]=$v ;; p99_us) P99[$key]=$v ;;
            non2xx) NON2XX[$key]=$v ;; sockerr) SOCKERR[$key]=$v ;;
            timeouts) SOCKERR[$key]=$(( ${SOCKERR[$key]:-0} + v )) ;;
        esac
    done
    printf "$ROW_FMT" "$label" "$conns" "$(printf '%.0f' "${RPS[$key]}")" "$(ms "${P50[$key]}")" \
        "$(ms "${P99[$key]}")" "${NON2XX[$key]}" "${SOCKERR[$key]}" "${CPU[$key]}"
}

ms() { awk -v u="$1" 'BEGIN { printf "%.2fms", u / 1000 }'; }
table_header() { printf "$ROW_FMT" "scenario" "conns" "req/s" "p50" "p99" "non-2xx" "sockerr" "server-cpu"; }

# ---------------------------------------------------------------------------------------------
# setup: packages, build, limits
# ---------------------------------------------------------------------------------------------
need=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    command -v cmake >/dev/null || need+=(cmake)
    command -v ninja >/dev/null || need+=(ninja-build)
    command -v g++ >/dev/null || need+=(g++)
    for p in libboost1.81-dev libyaml-cpp-dev nlohmann-json3-dev prometheus-cpp-dev libssl-dev; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
    done
fi
export PATH=$PATH:/usr/sbin
if ((${#need[@]})); then
    [[ $(id -u) -eq 0 ]] || die "missing packages (${need[*]}); run as root or: sudo apt-get install -y ${need[*]}"
    log "installing: ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
        || die "apt-get install ${need[*]}"
fi

build_release batchgate batchgate-mock-upstream batchgate-write-bench
[[ -x $BUILD_DIR/batchgate && -x $BUILD_DIR/batchgate-mock-upstream ]] || die "binaries missing in $BUILD_DIR"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)

log ""
log "batchgate benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')"
log "machine: $(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(uname -sr);" \
    "load generator, gateway and upstream share them"
log "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') (working tree as built)," \
    "$(nginx -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
log "settings: wrk -t1, ${DURATION}s per run after ${WARMUP}s warm-up; nginx worker_processes 1;" \
    "batchgate worker_threads 1; mock --threads 1; ulimit -n $NOFILE"

# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------
cat >"$TMP/passthrough.yaml" <<EOF
listen: 127.0.0.1:$P_GW_PT
admin_listen: 127.0.0.1:$P_GW_PT_ADMIN
worker_threads: 1
upstreams:
  mock:
    url: http://127.0.0.1:$P_MOCK
    max_connections: 256
routes:
  - name: passthrough
    match: {prefix: /}
    upstream: mock
EOF

users_route() {  # users_route MAX_WAIT MAX_ITEMS MAX_WAITING [MAX_BATCH_BYTES]
    cat <<EOF
  - name: users
    match: {method: GET, path: "/users/{id}"}
    upstream: mock
    mode: coalesce
    coalesce:
      key: {path: id}
      max_wait: $1
      max_batch_items: $2
      max_waiting: $3
      max_batch_bytes: ${4:-6KiB}
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
EOF
}

cat >"$TMP/coalesce.yaml" <<EOF
listen: 127.0.0.1:$P_GW_CO
admin_listen: 127.0.0.1:$P_GW_CO_ADMIN
worker_threads: 1
upstreams:
  mock:
    url: http://127.0.0.1:$P_MOCK_SLOW
routes:
$(users_route "${WINDOW_MS}ms" 100 10000)
EOF

cat >"$TMP/memory.yaml" <<EOF
listen: 127.0.0.1:$P_GW_MEM
admin_listen: 127.0.0.1:$P_GW_MEM_ADMIN
worker_threads: 1
upstreams:
  mock:
    url: http://127.0.0.1:$P_MOCK
routes:
$(users_route 30s 10000 20000 1MiB)
EOF

# nginx runs with access_log off; turn batchgate's access log off too where the config allows it
# (a `logging` section); otherwise its access log (stdout) goes to a file in the temp dir.
ACCESS_LOG="on (config has no logging.access_log switch)"
if access_log_switch "$TMP/passthrough.yaml"; then
    for c in passthrough coalesce memory; do printf 'logging: {access_log: false}\n' >>"$TMP/$c.yaml"; done
    ACCESS_LOG="off (logging.access_log: false)"
fi
log "batchgate access log: $ACCESS_LOG"

for c in passthrough coalesce memory; do
    "$BUILD_DIR/batchgate" --check-config "$TMP/$c.yaml" >"$TMP/check-$c.log" 2>&1 \
        || { cat "$TMP/check-$c.log" >&2; die "gateway rejects bench config $c.yaml"; }
done

NOTES=()   # anything odd seen about the gateway, printed at the end

check_alive() {  # check_alive NAME SCENARIO
    if ! alive "$1"; then
        stop "$1"
        NOTES+=("$1 died during $2 (exit status $STOP_RC); log tail: $(tail -3 "$TMP/$1.log" | tr '\n' ' ')")
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------
# 1. passthrough
# ---------------------------------------------------------------------------------------------
log ""
loadavg() { log "   load average: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores shared with everything else on the machine)"; }
log "== 1. passthrough: GET /users/7, mock without latency (--threads 1) =="
loadavg
start_mock mock "$P_MOCK" --users "$MAX_ID"
start_nginx
start_gateway gw-passthrough "$TMP/passthrough.yaml" "$P_GW_PT" "$P_GW_PT_ADMIN"
table_header
for c in 50 200; do
    run_wrk "direct-$c" "mock direct" "$c" "http://127.0.0.1:$P_MOCK/users/7" 0 "${PIDS[mock]}"
    run_wrk "gw-$c" "batchgate passthrough" "$c" "http://127.0.0.1:$P_GW_PT/users/7" 0 "${PIDS[gw-passthrough]}"
    check_alive gw-passthrough "passthrough at $c connections" || break
    run_wrk "nginx-$c" "nginx passthrough" "$c" "http://127.0.0.1:$P_NGINX/users/7" 0 \
        "${PIDS[nginx]}" $(pgrep -P "${PIDS[nginx]}")
done
scrape "$P_GW_PT_ADMIN" "$TMP/pt.metrics"
[[ -s $TMP/pt.metrics ]] && log "gateway statuses (passthrough route, whole run incl. warm-up): $(status_delta /dev/null "$TMP/pt.metrics" passthrough)"
alive gw-passthrough && stop gw-passthrough
stop nginx QUIT

# ---------------------------------------------------------------------------------------------
# 2. fan-in and 3. added latency (mock costs 2 ms per call, at most 8 in parallel)
# ---------------------------------------------------------------------------------------------
log ""
log "== 2. fan-in: random ids 1..$MAX_ID, 200 connections, mock --latency 2ms --max-concurrent 8 =="
log "   route users: coalesce max_wait ${WINDOW_MS}ms, max_batch_items 100, query_list ids, key /id"
loadavg
start_mock mock-slow "$P_MOCK_SLOW" --users "$MAX_ID" --latency 2ms --max-concurrent 8
start_gateway gw-coalesce "$TMP/coalesce.yaml" "$P_GW_CO" "$P_GW_CO_ADMIN"
table_header
run_wrk fan-direct "mock direct (single-item calls)" 200 "http://127.0.0.1:$P_MOCK_SLOW/" 1 "${PIDS[mock-slow]}"
snap_before() { scrape "$P_GW_CO_ADMIN" "$TMP/co-before.metrics"; }
BEFORE_RUN=snap_before run_wrk fan-gw "batchgate coalesce" 200 "http://127.0.0.1:$P_GW_CO/" 1 "${PIDS[gw-coalesce]}"
scrape "$P_GW_CO_ADMIN" "$TMP/co-after.metrics"
check_alive gw-coalesce "fan-in"

R='route="users"'
d() { echo $(( $(msum "$TMP/co-after.metrics" "$1" "$R") - $(msum "$TMP/co-before.metrics" "$1" "$R") )); }
FAN_CLIENT=$(d batchgate_requests_total)
FAN_UPSTREAM=$(d batchgate_upstream_requests_total)
FAN_BATCH_SUM=$(d batchgate_batch_size_sum)
FAN_BATCH_COUNT=$(d batchgate_batch_size_count)
FAN_SAVED=$(d batchgate_upstream_calls_saved_total)
SPEEDUP="" PER_1000="" SAVED_PCT=""
if [[ -n ${RPS[fan-direct]:-} && -n ${RPS[fan-gw]:-} ]]; then
    SPEEDUP=$(awk -v a="${RPS[fan-gw]}" -v b="${RPS[fan-direct]}" 'BEGIN { if (b > 0) printf "%.1f", a / b }')
fi
if ((FAN_CLIENT > 0)); then
    PER_1000=$(awk -v u="$FAN_UPSTREAM" -v c="$FAN_CLIENT" 'BEGIN { printf "%.1f", u / c * 1000 }')
    SAVED_PCT=$(awk -v u="$FAN_UPSTREAM" -v c="$FAN_CLIENT" 'BEGIN { printf "%.2f", (1 - u / c) * 100 }')
fi
log "speed-up (batchgate req/s / direct req/s): ${SPEEDUP:-n/a}x"
log "gateway /metrics deltas over the measured run (route users):"
log "   client requests $FAN_CLIENT (by status: $(status_delta "$TMP/co-before.metrics" "$TMP/co-after.metrics" users)), upstream calls $FAN_UPSTREAM"
log "   upstream calls per 1000 client requests: ${PER_1000:-n/a}; upstream calls saved: ${SAVED_PCT:-n/a}%" \
    "(batchgate_upstream_calls_saved_total +$FAN_SAVED)"
if ((FAN_BATCH_COUNT > 0)); then
    UP_SEC=$(awk -v a="$(MSUM_FMT=%.6f msum "$TMP/co-after.metrics" batchgate_upstream_duration_seconds_sum "$R")" \
                 -v b="$(MSUM_FMT=%.6f msum "$TMP/co-before.metrics" batchgate_upstream_duration_seconds_sum "$R")" \
                 -v n="$FAN_UPSTREAM" 'BEGIN { if (n > 0) printf "%.2fms", (a - b) / n * 1000; else print "?" }')
    log "   mean batch size: $(awk -v s="$FAN_BATCH_SUM" -v c="$FAN_BATCH_COUNT" 'BEGIN { printf "%.1f", s / c }') items over $FAN_BATCH_COUNT batches; mean upstream call: $UP_SEC (mock: 2ms + queueing)"
fi

log ""
log "== 3. added latency at low load: 1 connection, random ids, same mock and route =="
loadavg
table_header
run_wrk lat-direct "mock direct" 1 "http://127.0.0.1:$P_MOCK_SLOW/" 1 "${PIDS[mock-slow]}"
run_wrk lat-gw "batchgate coalesce (window ${WINDOW_MS}ms)" 1 "http://127.0.0.1:$P_GW_CO/" 1 "${PIDS[gw-coalesce]}"
check_alive gw-coalesce "low-load latency"
ADDED_US=""
if [[ -n ${P50[lat-direct]:-} && -n ${P50[lat-gw]:-} ]]; then
    ADDED_US=$(( ${P50[lat-gw]} - ${P50[lat-direct]} ))
    log "added median latency: $(ms "$ADDED_US") (budget: window ${WINDOW_MS}ms + 0.5ms = $(ms $((WINDOW_MS * 1000 + 500))))"
fi
alive gw-coalesce && stop gw-coalesce
stop mock-slow

# ---------------------------------------------------------------------------------------------
# 4. memory per waiting caller
# ---------------------------------------------------------------------------------------------
log ""
log "== 4. memory per waiting caller: $CALLERS connections, one GET /users/N each, route users"
log "   (max_wait 30s, max_batch_items 10000, max_waiting 20000; mock without latency) =="
loadavg
# The window flushes as soon as it holds max_batch_items distinct keys, so with 10000 callers
# one key is asked twice (ids 1..CALLERS-1): every caller waits, the batch holds 9999 keys.
DISTINCT=$(( CALLERS < 10000 ? CALLERS : 9999 ))
start_gateway gw-memory "$TMP/memory.yaml" "$P_GW_MEM" "$P_GW_MEM_ADMIN"
sleep 1
RSS_IDLE=$(rss_kib "${PIDS[gw-memory]}")
log "RSS idle: ${RSS_IDLE} KiB"
python3 "$BENCH_DIR/hold_callers.py" 127.0.0.1 "$P_GW_MEM" "$CALLERS" "$DISTINCT" 90 >"$TMP/callers.log" 2>&1 &
PIDS[callers]=$!
WAITING=0
T0=$SECONDS
for _ in $(seq 1 240); do          # bounded: 240 x 0.25 s = 60 s
    scrape "$P_GW_MEM_ADMIN" "$TMP/mem.metrics"
    WAITING=$(msum "$TMP/mem.metrics" batchgate_waiting_callers 'route="users"')
    ((WAITING >= CALLERS)) && break
    alive gw-memory && alive callers || break
    sleep 0.25
done
RSS_LOADED=$(rss_kib "${PIDS[gw-memory]}" 2>/dev/null)
PER_CALLER=""
if ((WAITING >= CALLERS)) && [[ -n $RSS_LOADED && -n $RSS_IDLE ]]; then
    PER_CALLER=$(( (RSS_LOADED - RSS_IDLE) * 1024 / CALLERS ))
    log "waiting callers: $WAITING after $((SECONDS - T0)) s; RSS loaded: ${RSS_LOADED} KiB"
    log "memory per waiting caller: (RSS_loaded - RSS_idle) / $CALLERS = $PER_CALLER bytes" \
        "(includes the connection's user-space state; socket buffers are kernel memory)"
else
    log "waiting callers reached only $WAITING of $CALLERS within the bound (RSS now ${RSS_LOADED:-?} KiB)"
    NOTES+=("memory scenario: batchgate_waiting_callers reached $WAITING, not $CALLERS; callers: $(tail -2 "$TMP/callers.log" | tr '\n' ' ')")
fi
URL_BYTES=$(awk -v n="$DISTINCT" 'BEGIN { s = length("/users?ids=") + n - 1; for (i = 1; i <= n; i++) s += length(i ""); print s }')
log "SIGTERM to the gateway (drain flushes the waiting batch: one GET /users?ids=1,...,$DISTINCT, a $URL_BYTES-byte target) ..."
T0=$SECONDS
if alive gw-memory; then
    stop gw-memory TERM; RC=$STOP_RC
    log "gateway exited with status $RC after $((SECONDS - T0)) s"
    [[ $RC = 0 ]] || NOTES+=("memory scenario: gateway exit status $RC after SIGTERM")
else
    stop gw-memory
    NOTES+=("memory scenario: gateway was not running at SIGTERM time (exit status $STOP_RC)")
fi
for _ in $(seq 1 300); do alive callers || break; sleep 0.1; done   # bounded: 30 s
stop callers
CALLERS_DONE=$(grep '^DONE' "$TMP/callers.log")
log "clients: ${CALLERS_DONE:-no result (killed)}"
if [[ $CALLERS_DONE != *"status=200:$CALLERS errors=0"* ]]; then
    NOTES+=("memory scenario: not every caller got 200 after the drain: ${CALLERS_DONE:-none}")
fi
stop mock

# ---------------------------------------------------------------------------------------------
# 5. writes: bench/writes.sh, with the binaries built above
# ---------------------------------------------------------------------------------------------
WRITES_RC=""
if [[ ${BENCH_WRITES:-1} != 0 ]]; then
    log ""
    log "== 5. writes: bench/writes.sh (same_key ${WRITES_SAME_KEY:-in_batch}, ${WRITES_TOTAL:-2000} writes per run) =="
    BENCH_SKIP_BUILD=1 BENCH_BUILD_DIR="$BUILD_DIR" BENCH_KEEP_TMP=0 timeout 300 bash "$BENCH_DIR/writes.sh" \
        >"$TMP/writes.out" 2>&1
    WRITES_RC=$?
    sed -n '/^writes: /,/^== summary ==/p' "$TMP/writes.out" | sed '$d'
    if [[ $WRITES_RC != 0 ]]; then
        tail -3 "$TMP/writes.out"
        NOTES+=("writes scenario: bench/writes.sh exited $WRITES_RC (1: writes lost, doubled or wrong; 2: setup failure): $(tail -1 "$TMP/writes.out")")
    fi
fi

# ---------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------
verdict() { # verdict OK(1|0|"") TEXT
    local v=MISSED; [[ $1 = 1 ]] && v=MET; [[ -z $1 ]] && v="n/a   "
    printf "  %-7s %s\n" "$v" "$2"
}
ge() { [[ -n $1 && -n $2 ]] && awk -v a="$1" -v b="$2" 'BEGIN { print (a >= b) ? 1 : 0 }'; }
le() { [[ -n $1 && -n $2 ]] && awk -v a="$1" -v b="$2" 'BEGIN { print (a <= b) ? 1 : 0 }'; }
r0() { [[ -n $1 ]] && printf '%.0f' "$1" || echo "?"; }

log ""
log "== summary (targets are informational; nothing is asserted) =="
loadavg
for c in 50 200; do
    verdict "$(ge "${RPS[gw-$c]:-}" "${RPS[nginx-$c]:-}")" \
        "passthrough req/s at $c conns >= nginx: batchgate $(r0 "${RPS[gw-$c]:-}") vs nginx $(r0 "${RPS[nginx-$c]:-}")"
    verdict "$(le "${P99[gw-$c]:-}" "${P99[nginx-$c]:-}")" \
        "passthrough p99 at $c conns <= nginx: batchgate $(ms "${P99[gw-$c]:-0}") vs nginx $(ms "${P99[nginx-$c]:-0}")"
done
verdict "$(ge "$SPEEDUP" 25)" "fan-in >= 25x direct req/s: ${SPEEDUP:-?}x ($(r0 "${RPS[fan-gw]:-}") vs $(r0 "${RPS[fan-direct]:-}") req/s)"
verdict "$(ge "$SAVED_PCT" 95)" "upstream calls cut >= 95%: ${SAVED_PCT:-?}% (${PER_1000:-?} upstream calls per 1000 requests)"
verdict "$(le "$ADDED_US" $((WINDOW_MS * 1000 + 500)))" \
    "added median latency <= window + 0.5ms ($(ms $((WINDOW_MS * 1000 + 500)))): $( [[ -n $ADDED_US ]] && ms "$ADDED_US" || echo ?)"
verdict "$(le "$PER_CALLER" 4096)" "memory per waiting caller <= 4 KiB (4096 B): ${PER_CALLER:-?} B"
if [[ -n $WRITES_RC ]]; then
    WRITE_TARGETS=$(awk '/^== summary ==/ { s = 1 } s && /^target:/' "$TMP/writes.out")
    [[ -n $WRITE_TARGETS ]] || verdict "" "writes: >= 80% saved, 0 lost, 0 doubled: no figures (exit status $WRITES_RC)"
    while IFS= read -r t; do
        [[ -n $t ]] || continue
        [[ $t = *": MET ("* ]] && v=1 || v=0
        verdict "$v" "writes ${t#target: }"
    done <<<"$WRITE_TARGETS"
fi

# gateway behaviour worth a look: non-2xx answers, socket errors, log lines
for k in gw-50 gw-200 fan-gw lat-gw; do
    n=${NON2XX[$k]:-0} e=${SOCKERR[$k]:-0}
    ((n > 0 || e > 0)) && NOTES+=("$k: $n non-2xx answers, $e socket errors/timeouts seen by wrk")
done
for k in direct-50 direct-200 nginx-50 nginx-200 fan-direct lat-direct; do
    n=${NON2XX[$k]:-0} e=${SOCKERR[$k]:-0}
    ((n > 0 || e > 0)) && NOTES+=("$k (baseline): $n non-2xx answers, $e socket errors/timeouts seen by wrk")
done
for m in mock mock-slow; do
    [[ -s $TMP/$m.log ]] || continue
    n=$(grep -vc "mock upstream listening" "$TMP/$m.log")
    ((n > 0)) && NOTES+=("$m logged $n lines: $(grep -v "mock upstream listening" "$TMP/$m.log" | sort | uniq -c | head -3 | tr -s ' ' | tr '\n' ';')")
done
for g in gw-passthrough gw-coalesce gw-memory; do
    [[ -s $TMP/$g.log ]] || continue
    n=$(wc -l <"$TMP/$g.log")
    NOTES+=("$g wrote $n log lines; last: $(tail -2 "$TMP/$g.log" | cut -c1-200 | tr '\n' ' ')")
done
if ((${#NOTES[@]})); then
    log ""
    log "notes:"
    for n in "${NOTES[@]}"; do log "  - $n"; done
fi
exit 0
