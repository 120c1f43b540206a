#!/usr/bin/env bash
# batchgate loopback benchmark: builds Release binaries, runs every scenario once and prints
# figures. It asserts nothing about speed: the final summary compares against the targets
# (MET / MISSED) for information, and the script exits 0 unless something fails to start.
#
# Environment (all optional):
#   BENCH_DURATION=8s      length of every measured wrk run (seconds; "8" or "8s")
#   BENCH_WARMUP=1s        unmeasured wrk run before each measured one (0 = none)
#   BENCH_ROUNDS=3         scenarios 1 and 2: rounds of the compared rows, each server once per
#                          round in a rotating order; the summary takes the median of the rounds
#   BENCH_CALLERS=10000    waiting callers for the memory scenario
#   BENCH_SKIP_BUILD=1     use the binaries already in $BENCH_BUILD_DIR
#   BENCH_BUILD_DIR=build/bench
#   BENCH_KEEP_TMP=1       keep the temp dir (configs, logs) for inspection
#   BENCH_SCENARIOS="1 2 3 4 5 6 7 8"  the scenarios to run (any subset, any separator)
#   BENCH_WRITES=0         skip scenario 6 (bench/writes.sh; its WRITES_* variables apply)
#   BENCH_HAPROXY=0        scenarios 1 and 8: no haproxy row
#   BENCH_SLOW_DURATION=4s measured wrk run of each row of scenario 5 (slow upstream)
#   BENCH_SLOW_WAITS="1 2 5 10 20 50"  scenario 5: the fixed max_wait values (ms) of the sweep
#   BENCH_SLOW_SLOTS=8     scenario 5: max_concurrent_batches of the fixed-window rows
#   BENCH_SLOW_CONNS=200   scenario 5: wrk connections
#   BENCH_LARGE_MIB=100    scenario 7 (large bodies): MiB per transfer
#   BENCH_LARGE_SEQ=5      scenario 7: transfers one after another, per path and direction
#   BENCH_LARGE_CONC=4     scenario 7: transfers at once, per path and direction
#   BENCH_LARGE_MAX_TIME=30s  scenario 7: curl --max-time of each transfer
#   BENCH_LARGE_BOUND=90s  scenario 7: no new transfer after this long
#   BENCH_LARGE_HAPROXY=0  scenario 7: no haproxy row
#   BENCH_LARGE_BUFFERED=1 scenario 7: one more gateway whose caps are raised for 100 MiB bodies
#
# Ports (127.0.0.1 only): 18081 mock (no latency), 18082 mock (2 ms, 8 concurrent),
# 18083 nginx (scenario 1; scenario 7's streaming nginx), 18084 mock (50 ms, 8 concurrent),
# 18085 scenario 7's origin (nginx static), 18086 its haproxy, 18087 its upload sink,
# 18088 scenario 1's haproxy,
# 18090/18091 gateway passthrough (traffic/admin), 18092/18093 gateway coalesce (one gateway
# at a time, restarted per configuration), 18094/18095 gateway memory scenario, 18096/18097
# gateway large bodies, 18098/18099 gateway two worker threads (scenario 8, one gateway at a
# time; it reuses 18081 and 18082 mocks, 18083 for nginx with 2 workers and 18088 for haproxy
# with 2 threads), 18101-18104 the write scenario (bench/writes.sh).
set -uo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
BUILD_DIR=${BENCH_BUILD_DIR:-$ROOT/build/bench}
[[ $BUILD_DIR = /* ]] || BUILD_DIR=$ROOT/$BUILD_DIR

secs() { local v=${1%s}; [[ $v =~ ^[0-9]+$ ]] || { echo "bad duration: $1" >&2; exit 2; }; echo "$v"; }
DURATION=$(secs "${BENCH_DURATION:-8s}")
WARMUP=$(secs "${BENCH_WARMUP:-1s}")
CALLERS=${BENCH_CALLERS:-10000}
ROUNDS=${BENCH_ROUNDS:-3}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "bad BENCH_ROUNDS: $ROUNDS" >&2; exit 2; }
SCENARIOS=" $(echo "${BENCH_SCENARIOS:-1 2 3 4 5 6 7 8}" | tr -c '0-9' ' ') "
want() { [[ $SCENARIOS = *" $1 "* ]]; }
SLOW_DURATION=$(secs "${BENCH_SLOW_DURATION:-4s}")
SLOW_WAITS=${BENCH_SLOW_WAITS:-1 2 5 10 20 50}
SLOW_SLOTS=${BENCH_SLOW_SLOTS:-8}
SLOW_CONNS=${BENCH_SLOW_CONNS:-200}
[[ $SLOW_CONNS =~ ^[1-9][0-9]*$ ]] || { echo "bad BENCH_SLOW_CONNS: $SLOW_CONNS" >&2; exit 2; }
for w in $SLOW_WAITS; do [[ $w =~ ^[0-9]+$ ]] || { echo "bad BENCH_SLOW_WAITS entry: $w" >&2; exit 2; }; done
[[ $SLOW_SLOTS =~ ^[1-9][0-9]*$ ]] || { echo "bad BENCH_SLOW_SLOTS: $SLOW_SLOTS" >&2; exit 2; }
LARGE_MIB=${BENCH_LARGE_MIB:-100}       # scenario 7: size of each transfer (MiB)
LARGE_SEQ=${BENCH_LARGE_SEQ:-5}         # scenario 7: transfers one after another per path and direction
LARGE_CONC=${BENCH_LARGE_CONC:-4}       # scenario 7: transfers at once
LARGE_MAX_TIME=$(secs "${BENCH_LARGE_MAX_TIME:-30s}")   # scenario 7: curl --max-time per transfer
LARGE_BOUND=$(secs "${BENCH_LARGE_BOUND:-90s}")         # scenario 7: no new transfer after this long
for v in LARGE_MIB LARGE_SEQ LARGE_CONC; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "bad BENCH_$v: ${!v}" >&2; exit 2; }
done

P_MOCK=18081 P_MOCK_SLOW=18082 P_NGINX=18083 P_MOCK_50=18084 P_HAPROXY_PT=18088
P_GW_PT=18090 P_GW_PT_ADMIN=18091
P_GW_CO=18092 P_GW_CO_ADMIN=18093
P_GW_MEM=18094 P_GW_MEM_ADMIN=18095
P_ORIGIN=18085 P_HAPROXY=18086 P_SINK=18087 P_GW_BIG=18096 P_GW_BIG_ADMIN=18097   # scenario 7
P_GW_MT=18098 P_GW_MT_ADMIN=18099   # scenario 8

MAX_ID=100000          # mock --users and the random id range
WINDOW_MS=5            # coalesce max_wait in the fan-in / latency scenarios
SLOW_MS=50 SLOW_PARALLEL=8   # scenario 5: the mock's cost per call and calls it serves at once

. "$BENCH_DIR/lib.sh"   # log, die, processes and cleanup, build_release, scrape, msum
bench_init batchgate-bench

# haproxy_wanted VAR: 0 when VAR (default 1) is not 0 and haproxy is installed; else says why not
haproxy_wanted() {
    if [[ ${!1:-1} = 0 ]]; then log "   $1=0: no haproxy row"; return 1; fi
    command -v haproxy >/dev/null && return 0
    log "   haproxy not installed: no haproxy row (apt-get install haproxy)"
    return 1
}

# start_haproxy NAME TEMPLATE PORT UPSTREAM_PORT PROBE_PATH: haproxy -db (foreground) with
# TEMPLATE filled in (@LISTEN_PORT@, @UPSTREAM_PORT@, @SINK_PORT@ = env SINK_PORT, @THREADS@ =
# env HAPROXY_THREADS, default 1) as
# TMP/NAME.cfg. Returns 1, the process stopped and its log tail in HAPROXY_FAIL, when PROBE_PATH
# does not answer.
start_haproxy() {
    local name=$1 tpl=$2 port=$3 up=$4 probe=$5
    port_free "$port" || die "port $port is already in use"
    sed -e "s#@LISTEN_PORT@#$port#g" -e "s#@UPSTREAM_PORT@#$up#g" -e "s#@SINK_PORT@#${SINK_PORT:-0}#g" \
        -e "s#@THREADS@#${HAPROXY_THREADS:-1}#g" "$tpl" >"$TMP/$name.cfg"
    haproxy -db -f "$TMP/$name.cfg" >"$TMP/$name.log" 2>&1 &
    PIDS[$name]=$!
    wait_http "http://127.0.0.1:$port$probe" "$name" && return 0
    HAPROXY_FAIL=$(tail -2 "$TMP/$name.log" | tr '\n' ' ')
    stop "$name"
    return 1
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
declare -A RPS=() P50=() P99=() NON2XX=() SOCKERR=() REQS=()
declare -A CPU=() CPUUS=() WALL_NS=()   # WALL_NS: wall time of the measured run
declare -A PT_ROUND_RATIOS=() PT_CPU_RATIO=()   # scenario 1: per conns, each round's and the median
ROW_FMT="%-40s %6s %11s %9s %9s %10s %8s %8s %11s\n"
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

# task_ticks PID: one line per thread of PID, "TID NAME TICKS" (utime + stime so far, from
# /proc/PID/task/TID/stat; NAME from .../comm, blanks made _)
task_ticks() {
    local pid=$1 d f name fields
    for d in /proc/"$pid"/task/*; do
        f=$(cat "$d/stat" 2>/dev/null) && name=$(cat "$d/comm" 2>/dev/null) || continue
        read -ra fields <<<"${f##*) }"        # fields after "pid (comm) ": utime, stime = [11], [12]
        echo "${d##*/} ${name// /_} $(( fields[11] + fields[12] ))"
    done
}

# run_wrk KEY LABEL CONNS URL RANDOM(0|1) [PID...]: warm-up, measured run, one table row.
# PIDs: the server under test; its CPU use during the measured run is the last column
# (100% = one core), and cpu-us/req is that CPU time / the requests wrk completed in the run.
# WRK_THREADS (default 1): wrk -t. TASKS_PID: also snapshot that process's threads (task_ticks)
# right before and after the measured run, in TMP/KEY.tasks0 and TMP/KEY.tasks1.
run_wrk() {
    local key=$1 label=$2 conns=$3 url=$4 random=$5 out=$TMP/wrk-$1.out wenv=() pids t0 t1 w0 w1
    shift 5; pids=("$@")
    [[ $random = 1 ]] && wenv=(BENCH_RANDOM_IDS="$MAX_ID")
    if ((WARMUP > 0)); then
        env "${wenv[@]}" timeout $((WARMUP + 20)) wrk -t"${WRK_THREADS:-1}" -c"$conns" -d"${WARMUP}s" \
            -s "$BENCH_DIR/wrk.lua" "$url" >/dev/null 2>&1
    fi
    [[ -n ${BEFORE_RUN:-} ]] && $BEFORE_RUN
    [[ -n ${TASKS_PID:-} ]] && task_ticks "$TASKS_PID" >"$TMP/$key.tasks0"
    t0=$(cpu_ticks "${pids[@]}"); w0=$(date +%s%N)
    env "${wenv[@]}" timeout $((DURATION + 30)) wrk -t"${WRK_THREADS:-1}" -c"$conns" -d"${DURATION}s" --latency \
        -s "$BENCH_DIR/wrk.lua" "$url" >"$out" 2>&1
    t1=$(cpu_ticks "${pids[@]}"); w1=$(date +%s%N)
    [[ -n ${TASKS_PID:-} ]] && task_ticks "$TASKS_PID" >"$TMP/$key.tasks1"
    WALL_NS[$key]=$((w1 - w0))
    CPU[$key]=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v ns=$((w1 - w0)) 'BEGIN { printf "%.0f%%", t / hz / (ns / 1e9) * 100 }')
    local line; line=$(grep '^WRK_RESULT' "$out")
    if [[ -z $line ]]; then
        printf "$ROW_FMT" "$label" "$conns" "FAILED" "-" "-" "-" "-" "-" "-"
        sed 's/^/    wrk: /' "$out" | head -5
        return 1
    fi
    local kv k v
    for kv in ${line#WRK_RESULT }; do
        k=${kv%%=*} v=${kv#*=}
        case $k in
            rps) RPS[$key]=$v ;; p50_us) P50[$key]=$v ;; p99_us) P99[$key]=$v ;;
            requests) REQS[$key]=$v ;; non2xx) NON2XX[$key]=$v ;; sockerr) SOCKERR[$key]=$v ;;
            timeouts) SOCKERR[$key]=$(( ${SOCKERR[$key]:-0} + v )) ;;
        esac
    done
    ((${REQS[$key]:-0} > 0)) && CPUUS[$key]=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="${REQS[$key]}" \
        'BEGIN { printf "%.2f", t / hz / n * 1e6 }')
    printf "$ROW_FMT" "$label" "$conns" "$(printf '%.0f' "${RPS[$key]}")" "$(ms "${P50[$key]}")" \
        "$(ms "${P99[$key]}")" "${CPUUS[$key]:--}" "${NON2XX[$key]}" "${SOCKERR[$key]}" "${CPU[$key]}"
}

ms() { awk -v u="$1" 'BEGIN { printf "%.2fms", u / 1000 }'; }
table_header() { printf "$ROW_FMT" "scenario" "conns" "req/s" "p50" "p99" "cpu-us/req" "non-2xx" "sockerr" "server-cpu"; }

# ---------------------------------------------------------------------------------------------
# setup: packages, build, limits
# ---------------------------------------------------------------------------------------------
# The tools the scenarios run, when missing, go to scripts/install-deps.sh (the project's install
# script, also run by scripts/test.sh and scripts/demo.sh), which installs them with the build
# dependencies it lists (idempotent: nothing happens when all are there).
need=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
export PATH=$PATH:/usr/sbin
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]] || ((${#need[@]})); then
    bash "$ROOT/scripts/install-deps.sh" "${need[@]}" \
        || die "installing the dependencies failed; run as root: bash scripts/install-deps.sh ${need[*]}"
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
    "$(nginx -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')$(
        command -v haproxy >/dev/null && haproxy -v | awk 'NR == 1 {print ", HAProxy " $3}')"
log "settings: wrk -t1, ${DURATION}s per run after ${WARMUP}s warm-up; nginx worker_processes 1; haproxy nbthread 1;" \
    "batchgate worker_threads 1; mock --threads 1; ulimit -n $NOFILE"
want 8 && log "          scenario 8: wrk -t2, batchgate worker_threads 1 and 2, nginx worker_processes 2, haproxy nbthread 2"


loadavg() { log "   load average: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores shared with everything else on the machine)"; }
verdict() { # verdict OK(1|0|"") TEXT
    local v=MISSED; [[ $1 = 1 ]] && v=MET; [[ -z $1 ]] && v="n/a   "
    printf "  %-7s %s\n" "$v" "$2"
}
ge() { [[ -n $1 && -n $2 ]] && awk -v a="$1" -v b="$2" 'BEGIN { print (a >= b) ? 1 : 0 }'; }
le() { [[ -n $1 && -n $2 ]] && awk -v a="$1" -v b="$2" 'BEGIN { print (a <= b) ? 1 : 0 }'; }
r0() { [[ -n $1 ]] && printf '%.0f' "$1" || echo "?"; }
ratio() { [[ -n $1 && -n $2 ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }' || echo "-"; }
# median V...: the median of the non-empty, numeric values ("" when none)
median() {
    printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g |
        awk '{ v[++n] = $1 } END { if (n) printf "%.2f", (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }'
}
# rotated R ITEM...: the items rotated left by R-1 (round R's order)
rotated() {
    local r=$1; shift
    local n=$# i
    for ((i = 0; i < n; i++)); do
        local k=$(( (i + r - 1) % n + 1 ))
        printf '%s ' "${!k}"
    done
}
# Rounds (BENCH_ROUNDS): run_wrk keys KEY@1 .. KEY@ROUNDS; combine_rounds KEY sets KEY's
# req/s, p50, p99 and cpu-us/req to the medians of its rounds, and prints that row.
combine_rounds() {
    local key=$1 label=$2 conns=$3 r c=() p=() q=() m=() n=0 s=0
    for ((r = 1; r <= ROUNDS; r++)); do
        [[ -n ${RPS[$key@$r]:-} ]] || continue
        c+=("${CPUUS[$key@$r]:-}") p+=("${RPS[$key@$r]}") q+=("${P99[$key@$r]}") m+=("${P50[$key@$r]}")
        n=$(( n + ${NON2XX[$key@$r]:-0} )) s=$(( s + ${SOCKERR[$key@$r]:-0} ))
    done
    ((${#p[@]})) || return 0
    CPUUS[$key]=$(median "${c[@]}") RPS[$key]=$(median "${p[@]}") P99[$key]=$(median "${q[@]}") P50[$key]=$(median "${m[@]}")
    NON2XX[$key]=$n SOCKERR[$key]=$s
    printf "$ROW_FMT" "$label" "$conns" "$(printf '%.0f' "${RPS[$key]}")" "$(ms "${P50[$key]}")" \
        "$(ms "${P99[$key]}")" "${CPUUS[$key]:--}" "$n" "$s" "median"
}

log "scenarios: $(echo $SCENARIOS)$([[ ${BENCH_WRITES:-1} = 0 ]] && echo ' (BENCH_WRITES=0: not 6)'); scenario 5 rows: ${SLOW_DURATION}s each"

# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------
cat >"$TMP/passthrough.yaml" <<YAML
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
YAML

# nginx runs with access_log off; turn batchgate's access log off too where the config allows it
# (a `logging` section); otherwise its access log (stdout) goes to a file in the temp dir.
ACCESS_LOG="on (config has no logging.access_log switch)" LOGGING_OFF=0
if access_log_switch "$TMP/passthrough.yaml"; then
    printf 'logging: {access_log: false}\n' >>"$TMP/passthrough.yaml"
    ACCESS_LOG="off (logging.access_log: false)" LOGGING_OFF=1
fi
log "batchgate access log: $ACCESS_LOG"

check_config() {  # check_config NAME: $TMP/NAME.yaml must pass --check-config
    "$BUILD_DIR/batchgate" --check-config "$TMP/$1.yaml" >"$TMP/check-$1.log" 2>&1 \
        || { cat "$TMP/check-$1.log" >&2; die "gateway rejects bench config $1.yaml"; }
}

# gateway_yaml NAME PORT ADMIN_PORT UPSTREAM_PORT users_route-ARGS...: $TMP/NAME.yaml, checked;
# worker_threads: env GW_THREADS (default 1)
gateway_yaml() {
    local name=$1 port=$2 admin=$3 up=$4; shift 4
    {
        printf 'listen: 127.0.0.1:%s\nadmin_listen: 127.0.0.1:%s\nworker_threads: %s\n' "$port" "$admin" "${GW_THREADS:-1}"
        printf 'upstreams:\n  mock:\n    url: http://127.0.0.1:%s\nroutes:\n' "$up"
        users_route "$@"
        ((LOGGING_OFF)) && printf 'logging: {access_log: false}\n'
    } >"$TMP/$name.yaml"
    check_config "$name"
}

check_config passthrough
# Scenarios 2 and 3: the route as before issue 11 (flush: window, max_wait 5ms) and with
# flush: adaptive (same max_wait, the cap). Neither pins max_concurrent_batches, so both share
# the upstream's concurrency limit (adaptive by default).
gateway_yaml window "$P_GW_CO" "$P_GW_CO_ADMIN" "$P_MOCK_SLOW" "${WINDOW_MS}ms" 100 10000 6KiB
gateway_yaml adaptive "$P_GW_CO" "$P_GW_CO_ADMIN" "$P_MOCK_SLOW" "${WINDOW_MS}ms" 100 10000 6KiB "flush: adaptive"
# Scenario 4: the 6 KiB default of query encodings would flush the 10,000-caller batch early.
gateway_yaml memory "$P_GW_MEM" "$P_GW_MEM_ADMIN" "$P_MOCK" 30s 10000 20000 1MiB
# Scenario 5: adaptive with the upstream's default (adaptive) concurrency limit; the fixed
# windows pin max_concurrent_batches (BENCH_SLOW_SLOTS, default 8 = what the upstream serves at
# once).
gateway_yaml slow-adaptive "$P_GW_CO" "$P_GW_CO_ADMIN" "$P_MOCK_50" "${WINDOW_MS}ms" 100 10000 6KiB "flush: adaptive"
for w in $SLOW_WAITS; do
    gateway_yaml "slow-window-$w" "$P_GW_CO" "$P_GW_CO_ADMIN" "$P_MOCK_50" "${w}ms" 100 10000 6KiB \
        "max_concurrent_batches: $SLOW_SLOTS"
done

# Scenario 7: two passthrough routes, /up/ to the upload sink and the rest to the origin (nginx
# static). Passthrough streams bodies (issue 12) and applies neither limits.max_body nor the
# upstream's max_response; each route's own caps, passthrough: {max_body, max_response}, default
# to 0 = none, and the uploads route spells max_body: 0 out. BENCH_LARGE_BUFFERED=1 adds a second
# gateway without the section whose global caps are raised, as for a gateway that buffers bodies
# ("caps raised": the origin's max_response, limits.max_body, limits.max_buffered); a streaming
# gateway ignores those caps on passthrough routes, so it should match the first.
LARGE_GWS=passthrough
large_yaml() {  # large_yaml NAME [UPLOAD-ROUTE-LINE [TOP-LEVEL-LINE...]]
    local name=$1 route=${2:-} l; shift; (($#)) && shift
    {
        printf 'listen: 127.0.0.1:%s\nadmin_listen: 127.0.0.1:%s\nworker_threads: 1\n' "$P_GW_BIG" "$P_GW_BIG_ADMIN"
        printf 'upstreams:\n  origin:\n    url: http://127.0.0.1:%s\n' "$P_ORIGIN"
        [[ $name = raised ]] && printf '    max_response: %sMiB\n' $((2 * LARGE_MIB))
        printf '  sink:\n    url: http://127.0.0.1:%s\n' "$P_SINK"
        printf 'routes:\n  - name: uploads\n    match: {prefix: /up/}\n    upstream: sink\n'
        [[ -n $route ]] && printf '    %s\n' "$route"
        printf '  - name: downloads\n    match: {prefix: /}\n    upstream: origin\n'
        for l in "$@"; do printf '%s\n' "$l"; done
        ((LOGGING_OFF)) && printf 'logging: {access_log: false}\n'
    } >"$TMP/large-$name.yaml"
}
# Scenario 8: scenario 1's passthrough gateway and scenario 2's adaptive route, each with
# worker_threads 1 and 2, on their own ports.
for n in 1 2; do
    sed -e "s/^listen: .*/listen: 127.0.0.1:$P_GW_MT/" -e "s/^admin_listen: .*/admin_listen: 127.0.0.1:$P_GW_MT_ADMIN/" \
        -e "s/^worker_threads: .*/worker_threads: $n/" "$TMP/passthrough.yaml" >"$TMP/mt-pt-$n.yaml"
    check_config "mt-pt-$n"
    GW_THREADS=$n gateway_yaml "mt-co-$n" "$P_GW_MT" "$P_GW_MT_ADMIN" "$P_MOCK_SLOW" "${WINDOW_MS}ms" 100 10000 6KiB "flush: adaptive"
done

if want 7; then
    large_yaml passthrough "passthrough: {max_body: 0}"
    check_config large-passthrough
    if [[ ${BENCH_LARGE_BUFFERED:-0} = 1 ]]; then
        large_yaml raised "" "limits: {max_body: $((2 * LARGE_MIB))MiB, max_buffered: $(((LARGE_CONC + 1) * 2 * LARGE_MIB))MiB}"
        check_config large-raised
        LARGE_GWS+=" raised"
    fi
fi

NOTES=()   # anything odd seen about the gateway, printed at the end

check_alive() {  # check_alive NAME SCENARIO
    if ! alive "$1"; then
        stop "$1"
        NOTES+=("$1 died during $2 (exit status $STOP_RC); log tail: $(tail -3 "$TMP/$1.log" | tr '\n' ' ')")
        return 1
    fi
}
GATEWAYS=()   # every gateway started (their logs are looked at in the notes)
start_gw() {  # start_gw NAME CONFIG-NAME PORT ADMIN_PORT
    start_gateway "$1" "$TMP/$2.yaml" "$3" "$4"
    GATEWAYS+=("$1")
}

# ---------------------------------------------------------------------------------------------
# coalescing runs: one wrk row plus what the gateway's /metrics say about it
# ---------------------------------------------------------------------------------------------
# delta BEFORE AFTER METRIC: change of the route `users` samples of METRIC between two scrapes
delta() {
    local r='route="users"'
    echo $(( $(msum "$2" "$3" "$r") - $(msum "$1" "$3" "$r") ))
}

# flush reasons of route users between two scrapes: "idle:2 returned:122 size:75 timer:70"
reasons_delta() {
    awk '
        index($0, "batchgate_batch_flushes_total{") == 1 && index($0, "route=\"users\"") > 0 {
            match($0, /reason="[^"]*"/); r = substr($0, RSTART + 8, RLENGTH - 9)
            if (FILENAME == ARGV[1]) b[r] += $NF; else a[r] += $NF; seen[r] = 1
        }
        END {
            n = split("idle returned size timer released bytes shutdown", order, " ")
            for (i = 1; i <= n; i++) { known[order[i]] = 1; if (a[order[i]] - b[order[i]] > 0) printf "%s:%.0f ", order[i], a[order[i]] - b[order[i]] }
            for (r in seen) if (!(r in known) && a[r] - b[r] > 0) printf "%s:%.0f ", r, a[r] - b[r]
        }' "$1" "$2"
}

# The gauges of issue 11, sampled every 0.5 s during a measured run (a background curl loop):
# batchgate_concurrency_limit, batchgate_batches_in_flight, batchgate_callers_waiting_for_slot.
sampler_start() {  # sampler_start ADMIN_PORT OUT
    (
        while :; do
            curl -s --max-time 1 "http://127.0.0.1:$1/metrics" \
                | grep -E '^batchgate_(concurrency_limit|batches_in_flight|callers_waiting_for_slot)[{ ]'
            sleep 0.5
        done
    ) >"$2" 2>/dev/null &
    PIDS[sampler]=$!
}
# gauge_summary FILE: "limit{*} 4/7.6/8 in_flight{*} ..." (min/mean/max over the samples)
gauge_summary() {
    awk '
        { s = $1; sub(/^batchgate_/, "", s); sub(/,?upstream="mock",?/, ",", s); sub(/\{,/, "{", s); sub(/,\}/, "}", s)
          sub(/^concurrency_limit/, "limit", s); sub(/^callers_waiting_for_slot/, "waiting_for_slot", s)
          gsub(/route=/, "", s); gsub(/"/, "", s)
          v = $NF + 0
          if (!(s in n)) { order[++k] = s; lo[s] = v; hi[s] = v }
          n[s]++; sum[s] += v; if (v < lo[s]) lo[s] = v; if (v > hi[s]) hi[s] = v }
        END { for (i = 1; i <= k; i++) { s = order[i]; printf "%s %g/%.1f/%g  ", s, lo[s], sum[s] / n[s], hi[s] } }' "$1"
}

declare -A SERVED=() UPCALLS=() CUT=() MEANBATCH=() REASONS=() GAUGES=()
CO_ADMIN="" CO_KEY=""
co_before() { scrape "$CO_ADMIN" "$TMP/$CO_KEY.before"; sampler_start "$CO_ADMIN" "$TMP/$CO_KEY.gauges"; }

# co_run KEY LABEL CONNS GATEWAY PORT ADMIN_PORT: run_wrk (random ids) through a coalescing
# gateway, then one indented line of /metrics deltas over the measured run (route users):
# callers served (by status; 499s are not counted as served), upstream batch calls,
# cut = 1 - upstream calls / callers served,
# mean batch size, flushes by reason, and the sampled gauges (min/mean/max).
co_run() {
    local key=$1 label=$2 conns=$3 gw=$4 port=$5 admin=$6 b a
    CO_ADMIN=$admin CO_KEY=$key
    rm -f "$TMP/$key.before"
    BEFORE_RUN=co_before run_wrk "$key" "$label" "$conns" "http://127.0.0.1:$port/" 1 "${PIDS[$gw]}"
    stop sampler
    b=$TMP/$key.before a=$TMP/$key.after
    scrape "$admin" "$a"
    check_alive "$gw" "$label at $conns connections"
    [[ -s $b && -s $a ]] || return 0
    # 499s are callers of the warm-up (or this run) that wrk hung up on when it stopped
    # (the gateways of these runs have the one route users)
    local left=$(( $(msum "$a" batchgate_requests_total 'status="499"') - $(msum "$b" batchgate_requests_total 'status="499"') ))
    SERVED[$key]=$(( $(delta "$b" "$a" batchgate_requests_total) - left ))
    UPCALLS[$key]=$(delta "$b" "$a" batchgate_upstream_requests_total)
    local bsum bcount
    bsum=$(delta "$b" "$a" batchgate_batch_size_sum) bcount=$(delta "$b" "$a" batchgate_batch_size_count)
    ((SERVED[$key] > 0)) && CUT[$key]=$(awk -v u="${UPCALLS[$key]}" -v c="${SERVED[$key]}" 'BEGIN { printf "%.2f", (1 - u / c) * 100 }')
    MEANBATCH[$key]=$(awk -v s="$bsum" -v c="$bcount" 'BEGIN { if (c > 0) printf "%.1f", s / c; else print "-" }')
    REASONS[$key]=$(reasons_delta "$b" "$a")
    GAUGES[$key]=$(gauge_summary "$TMP/$key.gauges")
    log "      served ${SERVED[$key]} ($(status_delta "$b" "$a" users)), upstream calls ${UPCALLS[$key]}, cut ${CUT[$key]:-?}%, mean batch ${MEANBATCH[$key]}"
    log "      flushes: ${REASONS[$key]:-none}"
    log "      gauges min/mean/max: ${GAUGES[$key]:-no samples}"
}

# ---------------------------------------------------------------------------------------------
# 1. passthrough
# ---------------------------------------------------------------------------------------------
# pt_better CONNS[@ROUND]: the key (nginx-CONNS or haproxy-CONNS, with @ROUND for one round's)
# of the reference proxy with the lower cpu-us/req at CONNS connections; empty when neither has
# a figure
pt_better() {
    local n=${CPUUS[nginx-$1]:-} h=${CPUUS[haproxy-$1]:-}
    if [[ -n $n && ( -z $h || $(le "$n" "$h") = 1 ) ]]; then echo "nginx-$1"
    elif [[ -n $h ]]; then echo "haproxy-$1"; fi
}
RATIO_FMT="   %-40s %6s %10s %8s %8s\n"
# ratio_row LABEL CONNS REF-KEY [cpu]: batchgate passthrough (gw-CONNS) / the row REF-KEY;
# "cpu": the cpu-us/req ratio only
ratio_row() {
    local g=gw-$2 r=$3
    [[ -n $r && -n ${RPS[$r]:-} ]] || return 0
    if [[ ${4:-} = cpu ]]; then
        printf "$RATIO_FMT" "$1" "$2" "$(ratio "${CPUUS[$g]:-}" "${CPUUS[$r]:-}")" "" "" | sed 's/ *$//'
    else
        printf "$RATIO_FMT" "$1" "$2" "$(ratio "${CPUUS[$g]:-}" "${CPUUS[$r]:-}")" \
            "$(ratio "${RPS[$g]:-}" "${RPS[$r]}")" "$(ratio "${P99[$g]:-}" "${P99[$r]:-}")"
    fi
}
pt_ratios() {
    log "batchgate / reference proxy (cpu-us/req and p99: below 1 = batchgate better; req/s: above 1):"
    printf "$RATIO_FMT" reference conns cpu-us/req req/s p99
    local c best
    for c in 50 200; do
        ratio_row nginx "$c" "nginx-$c"
        ratio_row haproxy "$c" "haproxy-$c"
        best=$(pt_better "$c")
        ratio_row "better of nginx and haproxy (${best%-*})" "$c" "$best" cpu
    done
}

scenario_1() {
    log ""
    log "== 1. passthrough: GET /users/7, mock without latency (--threads 1) =="
    loadavg
    start_mock mock "$P_MOCK" --users "$MAX_ID"
    start_nginx
    local haproxy=0
    if haproxy_wanted BENCH_HAPROXY; then
        if start_haproxy haproxy-pt "$BENCH_DIR/haproxy-passthrough.cfg.in" "$P_HAPROXY_PT" "$P_MOCK" /users/7; then
            haproxy=1
        else
            log "   haproxy did not start: no haproxy row"
            NOTES+=("passthrough: haproxy did not start: $HAPROXY_FAIL")
        fi
    fi
    start_gateway gw-passthrough "$TMP/passthrough.yaml" "$P_GW_PT" "$P_GW_PT_ADMIN"
    local servers="gw nginx" r s
    ((haproxy)) && servers+=" haproxy"
    declare -A label=([gw]="batchgate passthrough" [nginx]="nginx passthrough" [haproxy]="haproxy passthrough")
    declare -A url=([gw]="http://127.0.0.1:$P_GW_PT/users/7" [nginx]="http://127.0.0.1:$P_NGINX/users/7"
                    [haproxy]="http://127.0.0.1:$P_HAPROXY_PT/users/7")
    declare -A pids=([gw]="${PIDS[gw-passthrough]}" [nginx]="${PIDS[nginx]} $(pgrep -P "${PIDS[nginx]}" | tr '\n' ' ')"
                     [haproxy]="${PIDS[haproxy-pt]:-}")
    table_header
    for c in 50 200; do
        run_wrk "direct-$c" "mock direct" "$c" "http://127.0.0.1:$P_MOCK/users/7" 0 "${PIDS[mock]}"
    done
    # The compared rows round by round, in an order that rotates: a machine that gets busier
    # or quieter during the run shifts every server alike, and the median of the rounds (and
    # of each round's ratio) is what the summary judges.
    for ((r = 1; r <= ROUNDS; r++)); do
        for c in 50 200; do
            for s in $(rotated "$r" $servers); do
                # shellcheck disable=SC2086
                run_wrk "$s-$c@$r" "${label[$s]}$( ((ROUNDS > 1)) && echo " (round $r)")" "$c" "${url[$s]}" 0 ${pids[$s]}
            done
            check_alive gw-passthrough "passthrough at $c connections" || break 2
        done
    done
    ((ROUNDS > 1)) && log "   medians of $ROUNDS rounds:"
    for c in 50 200; do
        for s in $servers; do combine_rounds "$s-$c" "${label[$s]}" "$c"; done
        # each round's batchgate / better reference CPU ratio, and their median
        local per=() best
        for ((r = 1; r <= ROUNDS; r++)); do
            best=$(pt_better "$c@$r")
            per+=("$(ratio "${CPUUS[gw-$c@$r]:-}" "${best:+${CPUUS[$best]}}")")
        done
        PT_ROUND_RATIOS[$c]="${per[*]}"
        PT_CPU_RATIO[$c]=$(median "${per[@]}")
    done
    pt_ratios
    for c in 50 200; do
        log "batchgate / better of nginx and haproxy, cpu-us/req, each round at $c conns: ${PT_ROUND_RATIOS[$c]:-?}; median ${PT_CPU_RATIO[$c]:-?}"
    done
    scrape "$P_GW_PT_ADMIN" "$TMP/pt.metrics"
    [[ -s $TMP/pt.metrics ]] && log "gateway statuses (passthrough route, whole run incl. warm-up): $(status_delta /dev/null "$TMP/pt.metrics" passthrough)"
    alive gw-passthrough && stop gw-passthrough
    stop haproxy-pt
    stop nginx QUIT
}
want 1 && scenario_1

# ---------------------------------------------------------------------------------------------
# 2. fan-in and 3. added latency (mock costs 2 ms per call, at most 8 in parallel), each with
#    flush: window (the route as before issue 11) and flush: adaptive, one gateway at a time
# ---------------------------------------------------------------------------------------------
mode_label() { if [[ $1 = window ]]; then echo "window ${WINDOW_MS}ms"; else echo "adaptive"; fi; }

scenario_2() {
    log ""
    log "== 2. fan-in: random ids 1..$MAX_ID, 200 connections, mock --latency 2ms --max-concurrent 8 =="
    log "   route users: coalesce max_wait ${WINDOW_MS}ms, max_batch_items 100, query_list ids, key /id;"
    log "   flush: window vs flush: adaptive (max_wait = its cap); upstream concurrency: default (adaptive)"
    loadavg
    table_header
    run_wrk fan-direct "mock direct (single-item calls)" 200 "http://127.0.0.1:$P_MOCK_SLOW/" 1 "${PIDS[mock-slow]}"
    # The floor of a coalesced caller's cost: nginx reading each request and answering it from
    # memory (the mock's body for one user), no upstream leg at all. It and the two coalescing
    # gateways take turns, round by round (BENCH_ROUNDS), like scenario 1's rows.
    start_nginx nginx-mem "$BENCH_DIR/nginx-memory.conf.in" "$P_NGINX" 0 /users/7
    local mode r s suffix
    for ((r = 1; r <= ROUNDS; r++)); do
        suffix=$( ((ROUNDS > 1)) && echo " (round $r)")
        for s in $(rotated "$r" mem window adaptive); do
            if [[ $s = mem ]]; then
                run_wrk "fan-nginx-mem@$r" "nginx answering from memory$suffix" 200 "http://127.0.0.1:$P_NGINX/" 1 \
                    "${PIDS[nginx-mem]}" $(pgrep -P "${PIDS[nginx-mem]}")
                continue
            fi
            mode=$s
            start_gw "gw-fan-$mode" "$mode" "$P_GW_CO" "$P_GW_CO_ADMIN"
            co_run "fan-$mode@$r" "batchgate coalesce ($(mode_label $mode))$suffix" 200 \
                "gw-fan-$mode" "$P_GW_CO" "$P_GW_CO_ADMIN"
            alive "gw-fan-$mode" && stop "gw-fan-$mode"
        done
    done
    stop nginx-mem QUIT
    ((ROUNDS > 1)) && log "   medians of $ROUNDS rounds:"
    combine_rounds fan-nginx-mem "nginx answering from memory" 200
    for mode in window adaptive; do
        combine_rounds "fan-$mode" "batchgate coalesce ($(mode_label $mode))" 200
        local cuts=() means=()
        for ((r = 1; r <= ROUNDS; r++)); do cuts+=("${CUT[fan-$mode@$r]:-}") means+=("${MEANBATCH[fan-$mode@$r]:-}"); done
        CUT[fan-$mode]=$(median "${cuts[@]}") MEANBATCH[fan-$mode]=$(median "${means[@]}")
    done
    for mode in window adaptive; do
        [[ -n ${RPS[fan-direct]:-} && -n ${RPS[fan-$mode]:-} ]] || continue
        SPEEDUP[$mode]=$(awk -v a="${RPS[fan-$mode]}" -v b="${RPS[fan-direct]}" 'BEGIN { if (b > 0) printf "%.1f", a / b }')
    done
    log "speed-up (batchgate req/s / direct req/s): window ${SPEEDUP[window]:-n/a}x, adaptive ${SPEEDUP[adaptive]:-n/a}x"
    log "upstream calls cut (1 - upstream batch calls / callers served): window ${CUT[fan-window]:-?}%, adaptive ${CUT[fan-adaptive]:-?}%"
    local line="coalesced caller CPU µs / nginx passthrough CPU µs per request"
    if ! want 1; then
        CO_CPU_NOTE="n/a (scenario 1 not run)"
    elif [[ -z ${CPUUS[nginx-200]:-} ]]; then
        CO_CPU_NOTE="n/a (no nginx figure from scenario 1)"
    else
        for mode in window adaptive; do
            [[ -n ${CPUUS[fan-$mode]:-} ]] && CO_CPU_RATIO[$mode]=$(ratio "${CPUUS[fan-$mode]}" "${CPUUS[nginx-200]}")
        done
        line+=" (nginx: ${CPUUS[nginx-200]} µs, scenario 1 at 200 conns)"
        CO_CPU_NOTE="window ${CO_CPU_RATIO[window]:--} (${CPUUS[fan-window]:--} µs), adaptive ${CO_CPU_RATIO[adaptive]:--} (${CPUUS[fan-adaptive]:--} µs); target <= 0.50"
    fi
    log "$line: $CO_CPU_NOTE"
    if [[ -n ${CPUUS[fan-nginx-mem]:-} ]]; then
        local floor=""
        want 1 && [[ -n ${CPUUS[nginx-200]:-} ]] &&
            floor="; this floor is $(ratio "${CPUUS[fan-nginx-mem]}" "${CPUUS[nginx-200]}") x nginx passthrough"
        log "coalesced caller CPU µs / nginx answering from memory CPU µs per request (nginx: ${CPUUS[fan-nginx-mem]} µs):" \
            "window $(ratio "${CPUUS[fan-window]:-}" "${CPUUS[fan-nginx-mem]}"), adaptive $(ratio "${CPUUS[fan-adaptive]:-}" "${CPUUS[fan-nginx-mem]}")$floor"
    fi
}

scenario_3() {
    log ""
    log "== 3. added latency at low load: 1 connection, random ids, same mock and routes =="
    loadavg
    table_header
    run_wrk lat-direct "mock direct" 1 "http://127.0.0.1:$P_MOCK_SLOW/" 1 "${PIDS[mock-slow]}"
    local mode
    for mode in window adaptive; do
        start_gw "gw-lat-$mode" "$mode" "$P_GW_CO" "$P_GW_CO_ADMIN"
        co_run "lat-$mode" "batchgate coalesce ($(mode_label $mode))" 1 \
            "gw-lat-$mode" "$P_GW_CO" "$P_GW_CO_ADMIN"
        alive "gw-lat-$mode" && stop "gw-lat-$mode"
        if [[ -n ${P50[lat-direct]:-} && -n ${P50[lat-$mode]:-} ]]; then
            ADDED_US[$mode]=$(( ${P50[lat-$mode]} - ${P50[lat-direct]} ))
        fi
    done
    log "added median latency (batchgate p50 - direct p50): adaptive $(ms "${ADDED_US[adaptive]:-0}")" \
        "(target <= 0.30ms); window ${WINDOW_MS}ms $(ms "${ADDED_US[window]:-0}") (a lone caller waits the whole window)"
}

declare -A SPEEDUP=() ADDED_US=() CO_CPU_RATIO=()
CO_CPU_NOTE=""
if want 2 || want 3; then
    start_mock mock-slow "$P_MOCK_SLOW" --users "$MAX_ID" --latency 2ms --max-concurrent 8
    want 2 && scenario_2
    want 3 && scenario_3
    stop mock-slow
fi

# ---------------------------------------------------------------------------------------------
# 4. memory per waiting caller
# ---------------------------------------------------------------------------------------------
PER_CALLER=""
scenario_4() {
    log ""
    log "== 4. memory per waiting caller: $CALLERS connections, one GET /users/N each, route users"
    log "   (max_wait 30s, max_batch_items 10000, max_waiting 20000; mock without latency) =="
    loadavg
    alive mock || start_mock mock "$P_MOCK" --users "$MAX_ID"
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
}
want 4 && scenario_4

# ---------------------------------------------------------------------------------------------
# 5. slow upstream: 50 ms per call, at most 8 calls at once; flush: adaptive vs a sweep of
#    fixed windows
# ---------------------------------------------------------------------------------------------
SLOW_BEST_KEY="" SLOW_RATIO=""
scenario_5() {
    local saved_duration=$DURATION w key best_rps=0
    DURATION=$SLOW_DURATION
    log ""
    log "== 5. slow upstream: random ids, $SLOW_CONNS connections, mock --latency ${SLOW_MS}ms --max-concurrent $SLOW_PARALLEL =="
    log "   route users: max_batch_items 100; flush: adaptive (max_wait ${WINDOW_MS}ms cap, upstream concurrency"
    log "   default: adaptive) vs flush: window with max_wait in {$(echo $SLOW_WAITS | tr ' ' ',')} ms and a fixed"
    log "   max_concurrent_batches $SLOW_SLOTS; ${SLOW_DURATION}s per row. Bounds: $SLOW_CONNS connections / ${SLOW_MS} ms" \
        "= $((SLOW_CONNS * 1000 / SLOW_MS)) callers/s; the mock: $SLOW_PARALLEL calls x 100 items / ${SLOW_MS} ms" \
        "= $((SLOW_PARALLEL * 100 * 1000 / SLOW_MS)) callers/s ($((SLOW_PARALLEL * 1000 / SLOW_MS)) single calls/s direct)"
    loadavg
    start_mock mock-50 "$P_MOCK_50" --users "$MAX_ID" --latency "${SLOW_MS}ms" --max-concurrent "$SLOW_PARALLEL"
    table_header
    start_gw gw-slow-adaptive slow-adaptive "$P_GW_CO" "$P_GW_CO_ADMIN"
    co_run slow-adaptive "batchgate adaptive" "$SLOW_CONNS" gw-slow-adaptive "$P_GW_CO" "$P_GW_CO_ADMIN"
    alive gw-slow-adaptive && stop gw-slow-adaptive
    for w in $SLOW_WAITS; do
        key=slow-window-$w
        start_gw "gw-$key" "$key" "$P_GW_CO" "$P_GW_CO_ADMIN"
        co_run "$key" "batchgate window ${w}ms, $SLOW_SLOTS slots" "$SLOW_CONNS" "gw-$key" "$P_GW_CO" "$P_GW_CO_ADMIN"
        alive "gw-$key" && stop "gw-$key"
        if [[ -n ${RPS[$key]:-} ]] && awk -v a="${RPS[$key]}" -v b="$best_rps" 'BEGIN { exit !(a > b) }'; then
            best_rps=${RPS[$key]} SLOW_BEST_KEY=$key
        fi
    done
    # Last: wrk leaves ~200 calls queued in the mock when it stops (1.25 s of its work), which
    # would slow whatever row came next.
    run_wrk slow-direct "mock direct (single-item calls)" "$SLOW_CONNS" "http://127.0.0.1:$P_MOCK_50/" 1 "${PIDS[mock-50]}"
    stop mock-50
    DURATION=$saved_duration

    log "summary of scenario 5 (callers/s = wrk req/s; cut = 1 - upstream batch calls / callers served;"
    log "   cpu-us/req = the gateway's CPU time per caller):"
    printf "   %-32s %10s %8s %10s %10s %10s %7s  %s\n" run callers/s cut p50 p99 cpu-us/req batch flushes
    for key in slow-adaptive $(for w in $SLOW_WAITS; do echo "slow-window-$w"; done); do
        [[ -n ${RPS[$key]:-} ]] || continue
        printf "   %-32s %10.0f %7s%% %10s %10s %10s %7s  %s\n" \
            "$([[ $key = slow-adaptive ]] && echo "adaptive" || echo "window ${key#slow-window-}ms, $SLOW_SLOTS slots")$([[ $key = "$SLOW_BEST_KEY" ]] && echo " (best)")" \
            "${RPS[$key]}" "${CUT[$key]:-?}" "$(ms "${P50[$key]}")" "$(ms "${P99[$key]}")" "${CPUUS[$key]:--}" \
            "${MEANBATCH[$key]:-?}" "${REASONS[$key]:-}"
    done
    if [[ -n $SLOW_BEST_KEY && -n ${RPS[slow-adaptive]:-} ]]; then
        SLOW_RATIO=$(awk -v a="${RPS[slow-adaptive]}" -v b="$best_rps" 'BEGIN { printf "%.3f", a / b }')
        log "throughput ratio adaptive / best fixed window (${SLOW_BEST_KEY#slow-window-}ms): $SLOW_RATIO" \
            "($(r0 "${RPS[slow-adaptive]}") / $(r0 "$best_rps") callers/s; target >= 0.90)"
    fi
}
want 5 && scenario_5

# ---------------------------------------------------------------------------------------------
# 6. writes: bench/writes.sh, with the binaries built above
# ---------------------------------------------------------------------------------------------
WRITES_RC=""
if want 6 && [[ ${BENCH_WRITES:-1} != 0 ]]; then
    log ""
    log "== 6. writes: bench/writes.sh (same_key ${WRITES_SAME_KEY:-in_batch}, ${WRITES_TOTAL:-2000} writes per run) =="
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
# 7. large bodies: downloads and uploads of LARGE_MIB MiB through passthrough proxies, one at a
#    time and several at once: throughput, the proxy's peak RSS and its CPU per GiB
# ---------------------------------------------------------------------------------------------
declare -A LG_OK=() LG_SEQ=() LG_CONC=() LG_RSS0=() LG_PEAK_SEQ=() LG_PEAK_CONC=() LG_CPU=() LG_INTACT=() LG_FAIL=()
declare -A LG_LABEL=() LG_URL=() LG_ANSWER=()
LG_PATHS=() LG_HWM_NOTE=""

large_is_gw() { [[ " $LARGE_GWS " = *" $1 "* ]]; }
large_time_left() { ((SECONDS < LARGE_DEADLINE)); }
# large_pids PATH DIR: the processes measured: the proxy's (nginx: its workers); for the direct
# path the server itself (the origin's worker for downloads, the sink for uploads).
large_pids() {
    case $1 in
        direct) if [[ $2 = down ]]; then pgrep -P "${PIDS[origin]}"; else echo "${PIDS[sink]}"; fi ;;
        nginx) pgrep -P "${PIDS[nginx-stream]}" ;;
        haproxy) echo "${PIDS[haproxy]}" ;;
        *) echo "${PIDS[gw-large-$1]:-}" ;;
    esac
}
large_url() {  # large_url PATH DIR NAME: the URL of a transfer (uploads: PUT /up/PATH-NAME.bin)
    local base=${LG_URL[$1]}
    [[ $1 = direct && $2 = up ]] && base=http://127.0.0.1:$P_SINK
    if [[ $2 = down ]]; then echo "$base/big.bin"; else echo "$base/up/$1-$3.bin"; fi
}
# VmHWM (peak RSS) back to the current RSS (/proc/PID/clear_refs, Linux >= 4.0); where refused
# the peaks are lifetime peaks, which the tables then say.
hwm_reset() {
    local p
    for p in "$@"; do echo 5 2>/dev/null >"/proc/$p/clear_refs" || LG_HWM_NOTE=" (clear_refs refused: peaks are since start)"; done
}
vm_mib() {  # vm_mib FIELD PID...: sum of /proc/PID/status FIELD (kB) over the PIDs, in MiB
    local f=$1 p t=0 v; shift
    for p in "$@"; do v=$(awk -v f="$f:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null); t=$((t + ${v:-0})); done
    awk -v k="$t" 'BEGIN { printf "%.1f", k / 1024 }'
}

# large_xfer DIR URL OUT [SAVE]: one bounded curl transfer; appends "http_code bytes seconds
# curl_exit" to OUT. Downloads go to /dev/null (or SAVE); uploads PUT the file (curl streams
# it from disk; --data-binary @file would read it into memory first) without
# "Expect: 100-continue", so no path waits for a 100 that may not come.
large_xfer() {
    local dir=$1 url=$2 out=$3 save=${4:-/dev/null} w rc
    local args=(-s -o "$save" --max-time "$LARGE_MAX_TIME" --speed-limit 1048576 --speed-time 15)
    if [[ $dir = down ]]; then
        w=$(timeout $((LARGE_MAX_TIME + 5)) curl "${args[@]}" -w '%{http_code} %{size_download} %{time_total}' "$url")
    else
        w=$(timeout $((LARGE_MAX_TIME + 5)) curl "${args[@]}" -H 'Expect:' -T "$LARGE_FILE" \
            -w '%{http_code} %{size_upload} %{time_total}' "$url")
    fi
    rc=$?
    echo "${w:-000 0 0} $rc" >>"$out"
}
large_ok() { awk -v n="$LARGE_BYTES" '$1 ~ /^2/ && $2 == n && $4 == 0' "$@"; }   # the good lines

# large_phase PATH DIR: one checked transfer (unmeasured: the bytes that arrive must equal the
# file), then LARGE_SEQ one after another (stops at the first failure), then LARGE_CONC at once;
# the processes' CPU is read around the sequential + concurrent transfers, their peak RSS for each.
large_phase() {
    local path=$1 dir=$2 key=$1-$2 f=$TMP/large-$1-$2 pids i j t0 t1 w0 w1 cp=() got
    pids=($(large_pids "$path" "$dir"))
    ((${#pids[@]})) || { LG_FAIL[$key]="no process to measure"; return 0; }
    large_time_left || { LG_FAIL[$key]="skipped: scenario time bound (${LARGE_BOUND}s) reached"; return 0; }
    : >"$f.check"; : >"$f.seq"; rm -f "$f".conc.*
    if [[ $dir = down ]]; then
        got=$LARGE_DIR/check.bin
        large_xfer down "$(large_url "$path" down)" "$f.check" "$got"
    else
        got=$LARGE_DIR/up/$path-check.bin   # the sink saves a *-check.bin body there
        large_xfer up "$(large_url "$path" up check)" "$f.check" "$f.answer"
    fi
    if [[ -z $(large_ok "$f.check") ]]; then
        LG_INTACT[$key]="-"
        # a short error answer is worth showing (a failed download's body is in $got)
        local answer=$got; [[ $dir = up ]] && answer=$f.answer
        [[ -s $answer && $(stat -c %s "$answer") -le 512 ]] && LG_ANSWER[$key]=$(tr -s '\r\n\t ' ' ' <"$answer" | cut -c1-160)
    elif cmp -s "$LARGE_FILE" "$got"; then LG_INTACT[$key]=yes
    else LG_INTACT[$key]=NO; fi
    rm -f "$got"
    hwm_reset "${pids[@]}"
    LG_RSS0[$key]=$(vm_mib VmRSS "${pids[@]}")
    t0=$(cpu_ticks "${pids[@]}")
    for ((i = 1; i <= LARGE_SEQ; i++)); do
        large_time_left || break
        large_xfer "$dir" "$(large_url "$path" "$dir" "$i")" "$f.seq"
        [[ -n $(tail -1 "$f.seq" | large_ok) ]] || break
    done
    LG_PEAK_SEQ[$key]=$(vm_mib VmHWM "${pids[@]}")
    hwm_reset "${pids[@]}"
    if large_time_left; then
        w0=$(date +%s%N)
        for ((j = 1; j <= LARGE_CONC; j++)); do
            large_xfer "$dir" "$(large_url "$path" "$dir" "c$j")" "$f.conc.$j" &
            PIDS[large-c$j]=$! cp+=($!)
        done
        wait "${cp[@]}"
        w1=$(date +%s%N)
        for ((j = 1; j <= LARGE_CONC; j++)); do unset "PIDS[large-c$j]"; done
        LG_PEAK_CONC[$key]=$(vm_mib VmHWM "${pids[@]}")
    fi
    t1=$(cpu_ticks "${pids[@]}")
    local nseq gseq nconc gconc
    nseq=$(wc -l <"$f.seq"); gseq=$(large_ok "$f.seq" | wc -l)
    nconc=$(cat "$f".conc.* 2>/dev/null | wc -l); gconc=$(cat "$f".conc.* 2>/dev/null | large_ok | wc -l)
    LG_OK[$key]="$gseq/$nseq $gconc/$nconc"
    # sequential: good bytes / their summed times; concurrent: good bytes / wall time of the batch
    LG_SEQ[$key]=$(large_ok "$f.seq" | awk '{ b += $2; t += $3 } END { if (b > 0 && t > 0) printf "%.0f", b / t / 1048576 }')
    ((nconc > 0)) && LG_CONC[$key]=$(cat "$f".conc.* | large_ok | awk -v ns=$((w1 - w0)) \
        '{ b += $2 } END { if (b > 0) printf "%.0f", b / (ns / 1e9) / 1048576 }')
    LG_CPU[$key]=$(cat "$f.seq" "$f".conc.* 2>/dev/null | large_ok | awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" \
        '{ b += $2 } END { if (b > 0) printf "%.2f", t / hz / (b / 1073741824) }')
    # what went wrong, the checked transfer included:
    # "6 of 6 transfers: 6x HTTP 502 (119 B received, curl exit 0)" (bytes: min-max over the group)
    LG_FAIL[$key]=$(cat "$f.check" "$f.seq" "$f".conc.* 2>/dev/null | awk -v n="$LARGE_BYTES" -v d="$dir" '
        !($1 ~ /^2/ && $2 == n && $4 == 0) {
            k = ($1 == "000" ? "no answer" : "HTTP " $1) SUBSEP $4
            if (!(k in c) || $2 < lo[k]) lo[k] = $2
            if (!(k in c) || $2 > hi[k]) hi[k] = $2
            c[k]++; t++ }
        END {
            if (!t) exit
            printf "%d of %d transfers: ", t, NR
            for (k in c) {
                split(k, p, SUBSEP)
                printf "%s%dx %s (%s B %s, curl exit %s)", (s++ ? "; " : ""), c[k], p[1],
                    lo[k] == hi[k] ? lo[k] : lo[k] "-" hi[k], d == "down" ? "received" : "sent", p[2] }
        }')
    [[ -n ${LG_FAIL[$key]} && -n ${LG_ANSWER[$key]:-} ]] && LG_FAIL[$key]+="; first answer: ${LG_ANSWER[$key]}"
    return 0
}

large_table() {  # large_table DIR: one row per path; nginx proxy_pass is the reference
    local dir=$1 p key ratio ref=nginx-$1 fmt="%-30s %-9s %6s %9s %9s %11s %7s %8s %9s %9s\n"
    printf "$fmt" "path" "ok" "intact" "seq MiB/s" "conc MiB/s" "÷nginx" "RSS0" "peak seq" "peak conc" "cpu s/GiB"
    for p in "${LG_PATHS[@]}"; do
        key=$p-$dir ratio="-"
        if [[ -n ${LG_SEQ[$key]:-} && -n ${LG_SEQ[$ref]:-} ]]; then
            ratio=$(awk -v a="${LG_SEQ[$key]}" -v b="${LG_SEQ[$ref]}" -v c="${LG_CONC[$key]:-}" -v d="${LG_CONC[$ref]:-}" \
                'BEGIN { printf "%.2f/%s", a / b, (c != "" && d > 0) ? sprintf("%.2f", c / d) : "-" }')
        fi
        printf "$fmt" "${LG_LABEL[$p]}" "${LG_OK[$key]:--}" "${LG_INTACT[$key]:--}" "${LG_SEQ[$key]:--}" \
            "${LG_CONC[$key]:--}" "$ratio" "${LG_RSS0[$key]:--}" "${LG_PEAK_SEQ[$key]:--}" \
            "${LG_PEAK_CONC[$key]:--}" "${LG_CPU[$key]:--}"
        if [[ -n ${LG_FAIL[$key]:-} ]]; then
            log "      FAILED: ${LG_FAIL[$key]}"
            NOTES+=("large bodies, ${LG_LABEL[$p]}, $([[ $dir = down ]] && echo download || echo upload): ${LG_FAIL[$key]}")
        fi
        if [[ ${LG_INTACT[$key]:-} = NO ]]; then
            NOTES+=("large bodies, ${LG_LABEL[$p]}, $([[ $dir = down ]] && echo download || echo upload): the checked transfer was answered 2xx with every byte counted, but the bytes differ from the file")
        fi
    done
}

scenario_7() {
    log ""
    log "== 7. large bodies: ${LARGE_MIB} MiB per transfer; per path and direction one checked transfer," \
        "then $LARGE_SEQ one after another, then $LARGE_CONC at once =="
    LARGE_DEADLINE=$((SECONDS + LARGE_BOUND))
    LARGE_BYTES=$((LARGE_MIB * 1048576))
    # The file (and the checked transfers' copies) in tmpfs when /dev/shm has room; else in TMP.
    local shm_free; shm_free=$(df -Pm /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}')
    if [[ -n $shm_free ]] && ((shm_free > 3 * LARGE_MIB + 64)) \
        && LARGE_DIR=$(mktemp -d /dev/shm/batchgate-bench.XXXXXX 2>/dev/null); then
        CLEANUP_PATHS+=("$LARGE_DIR")
    else
        LARGE_DIR=$TMP/large
    fi
    mkdir -p "$LARGE_DIR/www" "$LARGE_DIR/up" && chmod 755 "$LARGE_DIR" "$LARGE_DIR/www"
    LARGE_FILE=$LARGE_DIR/www/big.bin
    if ! head -c "$LARGE_BYTES" /dev/urandom >"$LARGE_FILE"; then
        NOTES+=("large bodies: could not write the ${LARGE_MIB} MiB file in $LARGE_DIR; scenario skipped")
        return 0
    fi
    echo ok >"$LARGE_DIR/www/ping.txt"
    log "   downloads: GET /big.bin (random bytes) from nginx static (sendfile); uploads: PUT /up/NAME.bin to"
    log "   upload_sink.py (reads every byte, then 204); data in $(df -P "$LARGE_DIR" | awk 'NR == 2 {print $1}');" \
        "curl per transfer: --max-time ${LARGE_MAX_TIME}s, aborts below 1 MiB/s for 15 s; no new transfer after ${LARGE_BOUND}s"
    loadavg

    start_nginx origin "$BENCH_DIR/nginx-origin.conf.in" "$P_ORIGIN" 0 /ping.txt
    port_free "$P_SINK" || die "port $P_SINK is already in use"
    python3 "$BENCH_DIR/upload_sink.py" 127.0.0.1 "$P_SINK" "$LARGE_DIR/up" >"$TMP/sink.log" 2>&1 &
    PIDS[sink]=$!
    wait_http "http://127.0.0.1:$P_SINK/up/ping" sink || { cat "$TMP/sink.log" >&2; die "upload sink did not start"; }
    LG_PATHS=(direct) LG_LABEL[direct]="upstream direct" LG_URL[direct]=http://127.0.0.1:$P_ORIGIN
    SINK_PORT=$P_SINK start_nginx nginx-stream "$BENCH_DIR/nginx-stream.conf.in" "$P_NGINX" "$P_ORIGIN" /ping.txt
    LG_PATHS+=(nginx) LG_LABEL[nginx]="nginx proxy_pass" LG_URL[nginx]=http://127.0.0.1:$P_NGINX
    if haproxy_wanted BENCH_LARGE_HAPROXY; then
        if SINK_PORT=$P_SINK start_haproxy haproxy "$BENCH_DIR/haproxy.cfg.in" "$P_HAPROXY" "$P_ORIGIN" /ping.txt; then
            LG_PATHS+=(haproxy) LG_LABEL[haproxy]="haproxy" LG_URL[haproxy]=http://127.0.0.1:$P_HAPROXY
        else
            NOTES+=("large bodies: haproxy did not start: $HAPROXY_FAIL")
        fi
    fi
    local g p dir
    for g in $LARGE_GWS; do
        LG_PATHS+=("$g") LG_URL[$g]=http://127.0.0.1:$P_GW_BIG
        LG_LABEL[$g]="batchgate passthrough"; [[ $g = raised ]] && LG_LABEL[$g]="batchgate, caps raised"
    done
    # in table order, references first; one gateway at a time (they share their ports)
    for p in "${LG_PATHS[@]}"; do
        large_is_gw "$p" && start_gw "gw-large-$p" "large-$p" "$P_GW_BIG" "$P_GW_BIG_ADMIN"
        for dir in down up; do
            large_is_gw "$p" && { check_alive "gw-large-$p" "large bodies" || break; }
            large_phase "$p" "$dir"
        done
        alive "gw-large-$p" && stop "gw-large-$p"
    done
    alive haproxy && stop haproxy
    stop nginx-stream QUIT
    stop sink
    stop origin QUIT
    rm -f "$LARGE_FILE"

    log "download: GET /big.bin${LG_HWM_NOTE}"
    large_table down
    log "upload: PUT /up/NAME.bin${LG_HWM_NOTE}"
    large_table up
    log "   ok: good/tried, one after another and at once (good = 2xx, every byte, curl exit 0); intact: the checked"
    log "   transfer's bytes equal the file (- = it failed); seq MiB/s: good bytes / their summed times; conc: good bytes"
    log "   / wall time of the $LARGE_CONC at once; ÷nginx: seq/conc against nginx proxy_pass; RSS0 and peaks (MiB): the"
    log "   measured process (nginx: its workers; direct: the origin's worker, the sink) before the transfers and its"
    log "   VmHWM over each set (reset between); cpu: its user+system seconds per GiB delivered good"
}
want 7 && scenario_7

# ---------------------------------------------------------------------------------------------
# 8. two worker threads: passthrough and coalescing through batchgate with worker_threads 1 and
#    2 (a fresh gateway per row), nginx with 2 workers and haproxy with 2 threads as the
#    passthrough references; wrk -t2 so that the client is not the bound
# ---------------------------------------------------------------------------------------------
declare -A MT_SHARE_MIN=() MT_WORKERS=() MT_SPLIT=()
MT_HOW=""   # how the worker threads were identified

# accepted_delta BEFORE AFTER: batchgate_connections_accepted_total by thread between two
# scrapes, "0:104 1:96" (thread label order)
accepted_delta() {
    awk 'index($0, "batchgate_connections_accepted_total{") == 1 {
            match($0, /thread="[^"]*"/); t = substr($0, RSTART + 8, RLENGTH - 9)
            if (FILENAME == ARGV[1]) b[t] = $NF; else a[t] = $NF }
        END { for (t in a) printf "%s:%.0f\n", t, a[t] - b[t] }' "$1" "$2" | sort -n | paste -sd' '
}

# core_pct TICKS NS: TICKS of CPU over NS nanoseconds of wall time, in % of one core
core_pct() { awk -v d="$1" -v hz="$CLK_TCK" -v ns="$2" 'BEGIN { if (ns > 0) printf "%.0f%%", d / hz / (ns / 1e9) * 100; else print "?" }'; }

# thread_split KEY BEFORE AFTER: the indented lines under a batchgate row of scenario 8: CPU of
# each worker thread over the measured run (TMP/KEY.tasks0 and .tasks1, from run_wrk with
# TASKS_PID) as % of one core and as share of the gateway's CPU (the sum over its threads, read
# at the same moments; the server-cpu column is the process's), and the connections each thread accepted in the run (/metrics scrapes BEFORE and
# AFTER). Worker threads are the threads named bg-worker-N (gateway/server.cpp names them; a
# hostname upstream's resolver thread, started by a worker, inherits its name and is counted with
# it); a gateway that does not name them: the threads that used >= 5% of the process's CPU.
thread_split() {
    local key=$1 before=$2 after=$3 f0=$TMP/$1.tasks0 f1=$TMP/$1.tasks1
    local ns=${WALL_NS[$key]:-0} total deltas workers other line="" min="" n=0 name d
    if [[ ! -s $f0 || ! -s $f1 ]]; then
        log "      worker threads: no figures (/proc/PID/task not readable)"
        return 0
    fi
    deltas=$(awk 'FNR == NR { b[$1] = $3; next } { print $1, $2, $3 - ($1 in b ? b[$1] : 0) }' "$f0" "$f1")
    total=$(awk '{ s += $3 } END { print s + 0 }' <<<"$deltas")
    if awk '$2 ~ /^bg-worker-/ { found = 1 } END { exit !found }' <<<"$deltas"; then
        MT_HOW="by name (bg-worker-N, /proc/PID/task/TID/comm)"
        workers=$(awk '$2 ~ /^bg-worker-/ { s[$2] += $3 } END { for (k in s) print k, s[k] }' <<<"$deltas" | sort -V)
        other=$(awk '$2 !~ /^bg-worker-/ { s += $3 } END { print s + 0 }' <<<"$deltas")
    else
        MT_HOW="by CPU use (threads with >= 5% of the process's CPU; this gateway does not name them)"
        workers=$(awk -v t="$total" '$3 > 0 && $3 >= 0.05 * t { print "tid-" $1, $3 }' <<<"$deltas")
        other=$(awk -v t="$total" '!($3 > 0 && $3 >= 0.05 * t) { s += $3 } END { print s + 0 }' <<<"$deltas")
    fi
    while read -r name d; do
        [[ -n $name ]] || continue
        local share; share=$(awk -v d="$d" -v t="$total" 'BEGIN { if (t > 0) printf "%.0f", d / t * 100; else print 0 }')
        line+="${line:+, }$name $(core_pct "$d" "$ns") cpu = ${share}% of the gateway's"
        MT_SPLIT[$key]+="${MT_SPLIT[$key]:+, }$name ${share}%"
        [[ -z $min ]] || ((share < min)) && min=$share
        n=$((n + 1))
    done <<<"$workers"
    MT_SHARE_MIN[$key]=$min MT_WORKERS[$key]=$n
    log "      worker threads: ${line:-none found}; other threads $(core_pct "$other" "$ns")"
    [[ -s $before && -s $after ]] && log "      connections accepted in the run, by thread: $(accepted_delta "$before" "$after")"
}

MT_KEY="" MT_ADMIN=""
mt_before() { scrape "$MT_ADMIN" "$TMP/$MT_KEY.before"; }

# mt_gateway_row KIND THREADS: start a gateway (mt-KIND-THREADS.yaml), one row, its thread lines
mt_gateway_row() {
    local kind=$1 n=$2 key=mt-$1-$2 gw=gw-mt-$1-$2 s=""
    ((n > 1)) && s=s
    start_gw "$gw" "$key" "$P_GW_MT" "$P_GW_MT_ADMIN"
    if [[ $kind = pt ]]; then
        MT_KEY=$key MT_ADMIN=$P_GW_MT_ADMIN BEFORE_RUN=mt_before TASKS_PID=${PIDS[$gw]} \
            run_wrk "$key" "batchgate passthrough, $n thread$s" 200 "http://127.0.0.1:$P_GW_MT/users/7" 0 "${PIDS[$gw]}"
        scrape "$P_GW_MT_ADMIN" "$TMP/$key.after"
        check_alive "$gw" "two worker threads, passthrough, $n thread$s"
    else  # co_run: scenario 2's /metrics lines (served, cut, mean batch, flushes, gauges)
        TASKS_PID=${PIDS[$gw]} co_run "$key" "batchgate coalesce (adaptive), $n thread$s" 200 "$gw" "$P_GW_MT" "$P_GW_MT_ADMIN"
    fi
    thread_split "$key" "$TMP/$key.before" "$TMP/$key.after"
    alive "$gw" && stop "$gw"
}

scenario_8() {
    local n haproxy=0
    log ""
    log "== 8. two worker threads: 200 connections, wrk -t2 (two client threads, so the client is not the bound) =="
    log "   passthrough GET /users/7 (mock without latency, --threads 1): batchgate worker_threads 1 and 2,"
    log "   nginx worker_processes 2, haproxy nbthread 2; coalescing, random ids (mock --latency 2ms"
    log "   --max-concurrent 8; scenario 2's adaptive route): batchgate worker_threads 1 and 2"
    loadavg
    local WRK_THREADS=2
    alive mock || start_mock mock "$P_MOCK" --users "$MAX_ID"
    NGINX_WORKERS=2 start_nginx nginx-mt
    if haproxy_wanted BENCH_HAPROXY; then
        if HAPROXY_THREADS=2 start_haproxy haproxy-mt "$BENCH_DIR/haproxy-passthrough.cfg.in" "$P_HAPROXY_PT" "$P_MOCK" /users/7; then
            haproxy=1
        else
            log "   haproxy did not start: no haproxy row"
            NOTES+=("two worker threads: haproxy did not start: $HAPROXY_FAIL")
        fi
    fi
    table_header
    for n in 1 2; do mt_gateway_row pt "$n"; done
    run_wrk nginx-mt "nginx passthrough, 2 workers" 200 "http://127.0.0.1:$P_NGINX/users/7" 0 \
        "${PIDS[nginx-mt]}" $(pgrep -P "${PIDS[nginx-mt]}")
    ((haproxy)) && run_wrk haproxy-mt "haproxy passthrough, nbthread 2" 200 "http://127.0.0.1:$P_HAPROXY_PT/users/7" 0 \
        "${PIDS[haproxy-mt]}"
    stop haproxy-mt
    stop nginx-mt QUIT
    stop mock
    start_mock mock-slow "$P_MOCK_SLOW" --users "$MAX_ID" --latency 2ms --max-concurrent 8
    for n in 1 2; do mt_gateway_row co "$n"; done
    stop mock-slow
    log "   worker threads identified $MT_HOW; % cpu: of one core over the measured run"
    log "worker_threads 2 / 1: passthrough req/s $(ratio "${RPS[mt-pt-2]:-}" "${RPS[mt-pt-1]:-}")x," \
        "cpu-us/req $(ratio "${CPUUS[mt-pt-2]:-}" "${CPUUS[mt-pt-1]:-}")x; coalescing req/s" \
        "$(ratio "${RPS[mt-co-2]:-}" "${RPS[mt-co-1]:-}")x, cpu-us/req $(ratio "${CPUUS[mt-co-2]:-}" "${CPUUS[mt-co-1]:-}")x"
    log "batchgate (2 threads) / nginx (2 workers), passthrough: req/s $(ratio "${RPS[mt-pt-2]:-}" "${RPS[nginx-mt]:-}")," \
        "cpu-us/req $(ratio "${CPUUS[mt-pt-2]:-}" "${CPUUS[nginx-mt]:-}"), p99 $(ratio "${P99[mt-pt-2]:-}" "${P99[nginx-mt]:-}")"
}
want 8 && scenario_8


# ---------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------
log ""
log "== summary (targets are informational; nothing is asserted) =="
loadavg
if want 1; then
    for c in 50 200; do
        verdict "$(ge "${RPS[gw-$c]:-}" "${RPS[nginx-$c]:-}")" \
            "passthrough req/s at $c conns >= nginx: batchgate $(r0 "${RPS[gw-$c]:-}") vs nginx $(r0 "${RPS[nginx-$c]:-}")"
        verdict "$(le "${P99[gw-$c]:-}" "${P99[nginx-$c]:-}")" \
            "passthrough p99 at $c conns <= nginx: batchgate $(ms "${P99[gw-$c]:-0}") vs nginx $(ms "${P99[nginx-$c]:-0}")"
        verdict "$(le "${PT_CPU_RATIO[$c]:-}" 1)" \
            "passthrough CPU/request at $c conns <= better of nginx and HAProxy: median of each round's ratio ${PT_CPU_RATIO[$c]:-?} (rounds: ${PT_ROUND_RATIOS[$c]:-?}); medians batchgate ${CPUUS[gw-$c]:-?} µs vs nginx ${CPUUS[nginx-$c]:--}, haproxy ${CPUUS[haproxy-$c]:--} µs"
    done
fi
if want 2; then
    verdict "$(ge "${SPEEDUP[adaptive]:-}" 25)" "fan-in >= 25x direct req/s (adaptive): ${SPEEDUP[adaptive]:-?}x ($(r0 "${RPS[fan-adaptive]:-}") vs $(r0 "${RPS[fan-direct]:-}") req/s; window ${WINDOW_MS}ms: ${SPEEDUP[window]:-?}x)"
    verdict "$(ge "${CUT[fan-adaptive]:-}" 98)" "upstream calls cut at 200 conns >= 98% (adaptive): ${CUT[fan-adaptive]:-?}% (mean batch ${MEANBATCH[fan-adaptive]:-?}; window ${WINDOW_MS}ms: ${CUT[fan-window]:-?}%)"
    if [[ -n ${CO_CPU_RATIO[adaptive]:-} ]]; then
        verdict "$(le "${CO_CPU_RATIO[adaptive]}" 0.5)" "coalesced caller <= 0.5 x nginx passthrough CPU/request (adaptive): ${CO_CPU_RATIO[adaptive]} (${CPUUS[fan-adaptive]:--} vs nginx ${CPUUS[nginx-200]} µs at 200 conns; window ${WINDOW_MS}ms: ${CO_CPU_RATIO[window]:--})"
    else
        verdict "" "coalesced caller <= 0.5 x nginx passthrough CPU/request: ${CO_CPU_NOTE#n/a }"
    fi
fi
if want 3; then
    verdict "$(le "${ADDED_US[adaptive]:-}" 300)" \
        "added median latency at 1 conn <= 0.30ms (adaptive): $([[ -n ${ADDED_US[adaptive]:-} ]] && ms "${ADDED_US[adaptive]}" || echo ?) (window ${WINDOW_MS}ms: $([[ -n ${ADDED_US[window]:-} ]] && ms "${ADDED_US[window]}" || echo ?))"
    verdict "$(le "${ADDED_US[window]:-}" $((WINDOW_MS * 1000 + 500)))" \
        "added median latency <= window + 0.5ms ($(ms $((WINDOW_MS * 1000 + 500)))) (window ${WINDOW_MS}ms): $([[ -n ${ADDED_US[window]:-} ]] && ms "${ADDED_US[window]}" || echo ?)"
fi
want 4 && verdict "$(le "$PER_CALLER" 2048)" "memory per waiting caller <= 2 KiB (2048 B): ${PER_CALLER:-?} B"
if want 5; then
    verdict "$(ge "${CUT[slow-adaptive]:-}" 95)" "slow upstream: upstream calls cut >= 95% (adaptive): ${CUT[slow-adaptive]:-?}% (mean batch ${MEANBATCH[slow-adaptive]:-?})"
    verdict "$(ge "$SLOW_RATIO" 0.90)" "slow upstream: throughput >= 0.90 x best fixed max_wait: ${SLOW_RATIO:-?} (adaptive $(r0 "${RPS[slow-adaptive]:-}") vs window ${SLOW_BEST_KEY#slow-window-}ms $(r0 "${RPS[$SLOW_BEST_KEY]:-}") callers/s)"
fi
if want 7; then   # no target: figures only
    for dir in down up; do
        g=passthrough-$dir n=nginx-$dir
        [[ $dir = down ]] && what=download || what=upload
        if [[ -n ${LG_SEQ[$g]:-} ]]; then
            line="batchgate $(r0 "${LG_SEQ[$g]}")/$(r0 "${LG_CONC[$g]:-}") MiB/s vs nginx $(r0 "${LG_SEQ[$n]:-}")/$(r0 "${LG_CONC[$n]:-}") (seq/conc)"
            line+=", peak RSS at once ${LG_PEAK_CONC[$g]:-?} vs ${LG_PEAK_CONC[$n]:-?} MiB, cpu ${LG_CPU[$g]:-?} vs ${LG_CPU[$n]:-?} s/GiB"
        else
            line="batchgate FAILED (${LG_FAIL[$g]%%; first answer*}; see notes); nginx $(r0 "${LG_SEQ[$n]:-}")/$(r0 "${LG_CONC[$n]:-}") MiB/s (seq/conc)"
        fi
        printf "  %-7s %s\n" info "large bodies, ${LARGE_MIB} MiB $what: $line"
    done
fi
if want 8; then
    for k in pt co; do
        key=mt-$k-2 what=passthrough; [[ $k = co ]] && what="coalescing, adaptive"
        ok=""
        [[ -n ${MT_WORKERS[$key]:-} ]] && ok=$([[ ${MT_WORKERS[$key]} -ge 2 && ${MT_SHARE_MIN[$key]:-0} -ge 25 ]] && echo 1 || echo 0)
        verdict "$ok" "worker_threads: 2 uses both threads: each worker thread >= 25% of the gateway's CPU ($what): ${MT_SPLIT[$key]:-no figures} ($(r0 "${RPS[$key]:-}") req/s; worker_threads 1: $(r0 "${RPS[mt-$k-1]:-}"))"
    done
fi
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
for k in "${!RPS[@]}"; do
    n=${NON2XX[$k]:-0} e=${SOCKERR[$k]:-0}
    ((n > 0 || e > 0)) || continue
    case $k in
        *direct*|nginx-*|haproxy-*) NOTES+=("$k (baseline): $n non-2xx answers, $e socket errors/timeouts seen by wrk") ;;
        *) NOTES+=("$k: $n non-2xx answers, $e socket errors/timeouts seen by wrk") ;;
    esac
done
for m in mock mock-slow mock-50; do
    [[ -s $TMP/$m.log ]] || continue
    n=$(grep -vc "mock upstream listening" "$TMP/$m.log")
    ((n > 0)) && NOTES+=("$m logged $n lines: $(grep -v "mock upstream listening" "$TMP/$m.log" | sort | uniq -c | head -3 | tr -s ' ' | tr '\n' ';')")
done
for g in "$TMP"/gw-*.log; do
    [[ -s $g ]] || continue
    # info lines (listening, draining, stopped) are every gateway's; note anything else
    n=$(grep -vc '"level":"info"' "$g")
    ((n > 0)) && NOTES+=("$(basename "$g" .log) wrote $n log lines that are not info; last: $(grep -v '"level":"info"' "$g" | tail -2 | cut -c1-200 | tr '\n' ' ')")
done
if ((${#NOTES[@]})); then
    log ""
    log "notes:"
    for n in "${NOTES[@]}"; do log "  - $n"; done
fi
exit 0
