# Shared by the bench scripts (sourced, not run): logging, the processes a
# benchmark starts and their cleanup, bounded waits, the Release build, /metrics scraping.
#
# The sourcing script sets BENCH_DIR, ROOT and BUILD_DIR first; bench_init makes TMP and the
# EXIT trap. Every process a script starts goes into PIDS (name -> pid): cleanup signals and
# reaps exactly those, never anything found by name.

log() { printf '%s\n' "$*"; }
die() { printf 'bench: FAILED: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# processes and cleanup
# ---------------------------------------------------------------------------------------------
declare -A PIDS=()          # name -> pid of every process this script started
CLEANUP_PATHS=()            # made outside TMP (e.g. under /dev/shm): removed on exit, even with BENCH_KEEP_TMP

bench_init() {  # bench_init PREFIX: the temp dir and the EXIT/INT/TERM traps
    TMP=$(mktemp -d "/tmp/$1.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

cleanup() {
    local name pid
    for name in "${!PIDS[@]}"; do
        pid=${PIDS[$name]}
        kill -TERM "$pid" 2>/dev/null
    done
    for name in "${!PIDS[@]}"; do
        pid=${PIDS[$name]}
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [[ ${BENCH_KEEP_TMP:-0} = 1 ]]; then log "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
    ((${#CLEANUP_PATHS[@]})) && rm -rf "${CLEANUP_PATHS[@]}"
    return 0
}

STOP_RC=""
stop() {  # stop NAME [signal]: signal it, wait (bounded 15 s), forget it. Exit status in STOP_RC.
    local name=$1 sig=${2:-TERM} pid=${PIDS[$1]:-}
    STOP_RC=""
    [[ -n $pid ]] || return 0
    kill "-$sig" "$pid" 2>/dev/null
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null; STOP_RC=$?
    unset "PIDS[$name]"
}

alive() { [[ -n ${PIDS[$1]:-} ]] && kill -0 "${PIDS[$1]}" 2>/dev/null; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_http() {  # wait_http URL NAME: bounded wait (15 s) until URL answers
    for _ in $(seq 1 150); do
        curl -s -o /dev/null --max-time 1 "$1" && return 0
        alive "$2" || return 1
        sleep 0.1
    done
    return 1
}

start_mock() {  # start_mock NAME PORT extra-args...
    local name=$1 port=$2; shift 2
    port_free "$port" || die "port $port is already in use"
    "$BUILD_DIR/batchgate-mock-upstream" --address 127.0.0.1 --port "$port" --threads 1 \
        "$@" >"$TMP/$name.log" 2>&1 &
    PIDS[$name]=$!
    for _ in $(seq 1 100); do
        grep -qs "mock upstream listening" "$TMP/$name.log" && return 0
        alive "$name" || break
        sleep 0.1
    done
    cat "$TMP/$name.log" >&2
    die "$name did not start"
}

start_gateway() {  # start_gateway NAME CONFIG TRAFFIC_PORT ADMIN_PORT
    local name=$1 cfg=$2 port=$3 admin=$4
    port_free "$port" || die "port $port is already in use"
    port_free "$admin" || die "port $admin is already in use"
    "$BUILD_DIR/batchgate" --config "$cfg" >"$TMP/$name.log" 2>&1 &
    PIDS[$name]=$!
    if ! wait_http "http://127.0.0.1:$admin/metrics" "$name"; then
        cat "$TMP/$name.log" >&2
        die "$name did not start (config $cfg)"
    fi
}

# start_nginx [NAME TEMPLATE PORT UPSTREAM_PORT PROBE_PATH]: nginx with TEMPLATE filled in, in
# TMP/NAME (-p TMP/NAME, never the system config); no arguments = nginx.conf.in, the plain proxy,
# on P_NGINX in front of P_MOCK (the sourcing script's ports). @WORKERS@ is env NGINX_WORKERS
# (default 1). Scenario 7's templates also get @DATA@ (its data dir), @SINK_PORT@ (env
# SINK_PORT) and @USER@ (the user running this script).
start_nginx() {
    local name=${1:-nginx} tpl=${2:-$BENCH_DIR/nginx.conf.in} port=${3:-$P_NGINX} up=${4:-$P_MOCK}
    local probe=${5:-/users/7} dir=$TMP/${1:-nginx}
    port_free "$port" || die "port $port is already in use"
    mkdir -p "$dir"
    sed -e "s#@DIR@#$dir#g" -e "s#@LISTEN_PORT@#$port#g" -e "s#@UPSTREAM_PORT@#$up#g" \
        -e "s#@DATA@#${LARGE_DIR:-}#g" -e "s#@SINK_PORT@#${SINK_PORT:-0}#g" -e "s#@USER@#$(id -un)#g" \
        -e "s#@WORKERS@#${NGINX_WORKERS:-1}#g" \
        "$tpl" >"$dir/nginx.conf"
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$TMP/$name.log" 2>&1 &
    PIDS[$name]=$!
    if ! wait_http "http://127.0.0.1:$port$probe" "$name"; then
        cat "$TMP/$name.log" "$dir/error.log" >&2 2>/dev/null
        die "$name did not start"
    fi
}

# The scenarios' coalescing route (run.sh, profile.sh, syscalls.sh).
# users_route MAX_WAIT MAX_ITEMS MAX_WAITING MAX_BATCH_BYTES [LINE...]: the coalesce route
# `users`; each LINE ("flush: adaptive", "max_concurrent_batches: 8") goes into its coalesce map.
users_route() {
    local wait=$1 items=$2 waiting=$3 bytes=$4 line; shift 4
    cat <<YAML
  - name: users
    match: {method: GET, path: "/users/{id}"}
    upstream: mock
    mode: coalesce
    coalesce:
      key: {path: id}
      max_wait: $wait
      max_batch_items: $items
      max_waiting: $waiting
      max_batch_bytes: $bytes
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
YAML
    for line in "$@"; do printf '      %s\n' "$line"; done
}

# ---------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------
# build_release TARGET...: Release, Ninja, tests off, in BUILD_DIR; unless BENCH_SKIP_BUILD=1.
# BENCH_BUILD_JOBS (default: ninja's own) caps the parallel compile jobs.
build_release() {
    [[ ${BENCH_SKIP_BUILD:-0} = 1 ]] && return 0
    log "building Release binaries in $BUILD_DIR ..."
    (cd "$ROOT" && cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBATCHGATE_TESTS=OFF \
        && ninja -C "$BUILD_DIR" ${BENCH_BUILD_JOBS:+-j"$BENCH_BUILD_JOBS"} "$@") >"$TMP/build.log" 2>&1 \
        || { grep -E 'error:|FAILED:' "$TMP/build.log" | head -20 >&2; die "build failed (errors above)"; }
}

# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
scrape() { curl -s --max-time 5 "http://127.0.0.1:$1/metrics" >"$2" || : >"$2"; }

# msum FILE METRIC [LABEL-SUBSTRING]: sum of every sample of METRIC whose labels contain the
# substring (e.g. route="users"). Histograms: pass the full sample name (..._sum, ..._count).
msum() {
    awk -v m="$2" -v f="${3:-}" '
        index($0, "#") == 1 { next }
        { name = $1; sub(/\{.*/, "", name) }
        name == m && (f == "" || index($0, f) > 0) { s += $NF }
        END { printf fmt "\n", s + 0 }' fmt="${MSUM_FMT:-%.0f}" "$1"
}

# The gateway configs turn the access log off where the gateway accepts a `logging` section
# (checked with --check-config on a probe). access_log_switch CONFIG: 0 = it does, 1 = it does not.
access_log_switch() {
    { cat "$1"; printf 'logging: {access_log: false}\n'; } >"$TMP/probe.yaml"
    "$BUILD_DIR/batchgate" --check-config "$TMP/probe.yaml" >/dev/null 2>&1
}
