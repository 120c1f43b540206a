#!/usr/bin/env bash
# batchgate write benchmark (issue 10): reference API C (abilities) single PATCHes from many
# closed-loop callers, through batchgate (bench/writes.yaml.in: coalesce, `same_key` from
# WRITES_SAME_KEY, `on_batch_error: isolate`) to a mock upstream that costs WRITES_LATENCY per
# call, and the same writes straight to the mock's single endpoint as the reference. Checks, from
# the mock's own record (GET /__soak/state), that every write answered 2xx was applied exactly
# once, every write answered 4xx never, and that every ability ends at the sum of the applied
# deltas. Then the same again against a mock that answers a share of its calls late.
#
# Prints, per run: client writes, upstream calls (batch and single endpoint, counted by the mock),
# calls per 1000 writes, % saved, p50/p99 client latency, answered statuses, the exactly-once
# figures, FAILURE lines for every lost or doubled write (the first WRITES_MAX_FAILURE_LINES),
# and per scenario the line "target: >= 80% saved, 0 lost, 0 doubled" with MET / NOT MET.
# Exit status: 0 all writes accounted for, 1 any FAILURE (lost, doubled, refused-yet-applied,
# wrong answer, final state off), 2 setup failure (build, start, config rejected).
#
# Environment (all optional):
#   WRITES_SAME_KEY=in_batch  the route's same_key (sequence | merge_patch | last_write_wins | ...)
#   WRITES_TOTAL=2000         writes per run
#   WRITES_CONNECTIONS=200    concurrent client connections, each one write after another
#   WRITES_LATENCY=20ms       the mock's cost per call (--latency)
#   WRITES_FAULT_RATE=0.05    share of calls answered late in the second scenario
#   WRITES_STALL_FOR=500ms    how late (mock --fault-kinds late --stall-for)
#   WRITES_SEED=1             the client's write plan (same seed = same writes)
#   WRITES_MAX_CONCURRENT_BATCHES=N  pins the route's max_concurrent_batches (default: unset, the route
#                             shares the upstream's concurrency limit, adaptive since issue 11)
#   WRITES_MAX_FAILURE_LINES=20
#   WRITES_PORT_BASE=18100    ports BASE+1 .. BASE+4 on 127.0.0.1
#   BENCH_SKIP_BUILD=1, BENCH_BUILD_DIR=build/bench, BENCH_BUILD_JOBS=N, BENCH_KEEP_TMP=1 as in run.sh
set -uo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
BUILD_DIR=${BENCH_BUILD_DIR:-$ROOT/build/bench}
[[ $BUILD_DIR = /* ]] || BUILD_DIR=$ROOT/$BUILD_DIR

. "$BENCH_DIR/lib.sh"
die() { printf 'writes: FAILED: %s\n' "$*" >&2; exit 2; }   # setup failures exit 2, lost writes 1

SAME_KEY=${WRITES_SAME_KEY:-in_batch}
TOTAL=${WRITES_TOTAL:-2000}
CONNS=${WRITES_CONNECTIONS:-200}
LATENCY=${WRITES_LATENCY:-20ms}
FAULT_RATE=${WRITES_FAULT_RATE:-0.05}
STALL_FOR=${WRITES_STALL_FOR:-500ms}
SEED=${WRITES_SEED:-1}
MAX_FAILURE_LINES=${WRITES_MAX_FAILURE_LINES:-20}
PORT_BASE=${WRITES_PORT_BASE:-18100}
MAX_CONCURRENT_BATCHES=${WRITES_MAX_CONCURRENT_BATCHES:-}

for v in TOTAL CONNS SEED MAX_FAILURE_LINES PORT_BASE ${MAX_CONCURRENT_BATCHES:+MAX_CONCURRENT_BATCHES}; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "WRITES_$v must be a whole number, got '${!v}'"
done
[[ $SAME_KEY =~ ^[a-z_]+$ ]] || die "WRITES_SAME_KEY must be a policy name, got '$SAME_KEY'"
to_ms() {  # 500ms | 2s | 300 (ms) -> milliseconds
    case $1 in
        *ms) echo "${1%ms}" ;; *s) echo $(( ${1%s} * 1000 )) ;; *) echo "$1" ;;
    esac
}
STALL_MS=$(to_ms "$STALL_FOR")
[[ $STALL_MS =~ ^[0-9]+$ && $(to_ms "$LATENCY") =~ ^[0-9]+$ ]] || die "bad WRITES_LATENCY or WRITES_STALL_FOR"

P_MOCK=$((PORT_BASE + 1)) P_MOCK_LATE=$((PORT_BASE + 2)) P_GW=$((PORT_BASE + 3)) P_GW_ADMIN=$((PORT_BASE + 4))

command -v curl >/dev/null || die "curl is missing (apt-get install -y curl)"
bench_init batchgate-writes
build_release batchgate batchgate-mock-upstream batchgate-write-bench
for b in batchgate batchgate-mock-upstream batchgate-write-bench; do
    [[ -x $BUILD_DIR/$b ]] || die "$b missing in $BUILD_DIR (build it, or unset BENCH_SKIP_BUILD)"
done

# gateway_config UPSTREAM_PORT: writes $TMP/gateway.yaml, checked by the gateway itself.
gateway_config() {
    sed -e "s#@PORT@#$P_GW#" -e "s#@ADMIN_PORT@#$P_GW_ADMIN#" -e "s#@UPSTREAM_PORT@#$1#" \
        -e "s#@SAME_KEY@#$SAME_KEY#" "$BENCH_DIR/writes.yaml.in" >"$TMP/gateway.yaml"
    if [[ -n $MAX_CONCURRENT_BATCHES ]]; then
        sed -i "s#^\( *\)on_batch_error: isolate#&\n\1max_concurrent_batches: $MAX_CONCURRENT_BATCHES#" "$TMP/gateway.yaml"
    fi
    access_log_switch "$TMP/gateway.yaml" && printf 'logging: {access_log: false}\n' >>"$TMP/gateway.yaml"
    if ! "$BUILD_DIR/batchgate" --check-config "$TMP/gateway.yaml" >"$TMP/check.log" 2>&1; then
        sed 's/^/   /' "$TMP/check.log" >&2
        die "the gateway rejects bench/writes.yaml.in with same_key: $SAME_KEY" \
            "(a policy this build does not know? try WRITES_SAME_KEY=sequence)"
    fi
}

declare -A RESULT=()   # "<run>.<field>" -> value, from the client's WRITE_RESULT line
FAILED_RUNS=()

# run_client RUN LABEL TARGET_PORT UPSTREAM_PORT SETTLE_MS: one closed-loop run, its block printed.
run_client() {
    local run=$1 label=$2 port=$3 upstream=$4 settle=$5 out=$TMP/$1.out rc kv
    timeout 150 "$BUILD_DIR/batchgate-write-bench" --port "$port" --upstream-port "$upstream" \
        --writes "$TOTAL" --connections "$CONNS" --seed "$SEED" --op-prefix "$run" --label "$run" \
        --deadline-ms 10000 --settle-ms "$settle" --max-seconds 90 \
        --max-failure-lines "$MAX_FAILURE_LINES" >"$out" 2>&1
    rc=$?
    log "   $label:"
    grep -v '^WRITE_RESULT' "$out" | sed 's/^/   /'
    for kv in $(grep '^WRITE_RESULT' "$out" | sed 's/^WRITE_RESULT //'); do
        RESULT[$run.${kv%%=*}]=${kv#*=}
    done
    if [[ $rc != 0 || ${RESULT[$run.ok]:-0} != 1 ]]; then FAILED_RUNS+=("$run (client exit status $rc)"); fi
}

ROW_FMT="   %-40s %7s %9s %9s %7s %9s %9s %6s %6s %8s %5s %8s\n"
row() {  # row RUN LABEL
    local r=$1
    printf "$ROW_FMT" "$2" "${RESULT[$r.writes]:-?}" "${RESULT[$r.upstream_calls]:-?}" "${RESULT[$r.per_1000]:-?}" \
        "${RESULT[$r.saved_pct]:-?}%" "${RESULT[$r.p50_ms]:-?}ms" "${RESULT[$r.p99_ms]:-?}ms" \
        "${RESULT[$r.acked]:-?}" "${RESULT[$r.refused]:-?}" "${RESULT[$r.unknown]:-?}" "${RESULT[$r.lost]:-?}" \
        "${RESULT[$r.doubled]:-?}"
}

# scenario KEY TITLE MOCK_PORT mock-args...: the mock, the gateway in front of it, the gateway
# run, the direct run, the table and the target line.
scenario() {
    local key=$1 title=$2 mock_port=$3 settle; shift 3
    settle=$(( 1000 + $(to_ms "$LATENCY") ))
    [[ " $* " = *" --stall-for "* ]] && settle=$(( settle + STALL_MS ))
    log ""
    log "== $title =="
    log "   load average: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores shared by client, gateway and mock)"
    start_mock "mock-$key" "$mock_port" --latency "$LATENCY" --state-endpoint "$@"
    gateway_config "$mock_port"
    start_gateway "gw-$key" "$TMP/gateway.yaml" "$P_GW" "$P_GW_ADMIN"
    scrape "$P_GW_ADMIN" "$TMP/$key-before.metrics"
    run_client "$key-gw" "through batchgate (same_key: $SAME_KEY)" "$P_GW" "$mock_port" "$settle"
    scrape "$P_GW_ADMIN" "$TMP/$key-after.metrics"
    mdelta() { echo $(( $(msum "$TMP/$key-after.metrics" "$1" 'route="abilities"') \
                        - $(msum "$TMP/$key-before.metrics" "$1" 'route="abilities"') )); }
    local batches; batches=$(mdelta batchgate_batch_size_count)
    log "   gateway /metrics (route abilities): upstream calls $(mdelta batchgate_upstream_requests_total)," \
        "batches $batches, mean batch size" \
        "$(awk -v s="$(mdelta batchgate_batch_size_sum)" -v c="$batches" 'BEGIN { if (c > 0) printf "%.2f", s / c; else print "n/a" }')," \
        "merged writes $(mdelta batchgate_merged_writes_total)"
    alive "gw-$key" || FAILED_RUNS+=("gw-$key: the gateway died (log: $(tail -2 "$TMP/gw-$key.log" | tr '\n' ' '))")
    stop "gw-$key"
    run_client "$key-direct" "reference: the same writes straight to the mock's single endpoint" \
        "$mock_port" "$mock_port" "$settle"
    stop "mock-$key"

    log ""
    printf "$ROW_FMT" "run" writes upstream per-1000 saved p50 p99 2xx 4xx unknown lost doubled
    row "$key-gw" "batchgate (same_key: $SAME_KEY)"
    row "$key-direct" "direct to the single endpoint"
    local saved=${RESULT[$key-gw.saved_pct]:-} lost=${RESULT[$key-gw.lost]:-} doubled=${RESULT[$key-gw.doubled]:-}
    local verdict="NOT MET"
    if [[ -n $saved && -n $lost && -n $doubled ]] && awk -v s="$saved" 'BEGIN { exit !(s >= 80) }' \
        && ((lost == 0 && doubled == 0)); then
        verdict=MET
    fi
    TARGETS+=("target: >= 80% saved, 0 lost, 0 doubled: $verdict ($key: ${saved:-?}% saved, ${lost:-?} lost, ${doubled:-?} doubled)")
    log "   ${TARGETS[-1]}"
}

TARGETS=()
log "batchgate write benchmark — $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
log "machine: $(nproc) cores, $(uname -sr); client, gateway (worker_threads 1) and mock (--threads 1) share them"
log "writes: $TOTAL per run over $CONNS connections (closed loop); characters 1..20 (the partition), abilities"
log "   1..50 with 30% on 3 hot abilities per character, 2% invalid (action \"explode\": the upstream's 422);"
log "   route abilities: coalesce max_wait 5ms, same_key $SAME_KEY, on_batch_error isolate," \
    "max_concurrent_batches ${MAX_CONCURRENT_BATCHES:-default}; mock --latency $LATENCY"

gateway_config "$P_MOCK"   # a same_key this build does not know fails here, before anything starts
scenario clean "1. writes, mock --latency $LATENCY" "$P_MOCK"
scenario late "2. writes, mock --latency $LATENCY, ${FAULT_RATE} of calls answered late (--fault-kinds late --stall-for $STALL_FOR)" \
    "$P_MOCK_LATE" --fault-rate "$FAULT_RATE" --fault-kinds late --stall-for "$STALL_FOR" --fault-seed "$SEED"

log ""
log "== summary =="
for t in "${TARGETS[@]}"; do log "$t"; done
if ((${#FAILED_RUNS[@]})); then
    log "FAILURE: writes not accounted for in: ${FAILED_RUNS[*]} (FAILURE lines above)"
    exit 1
fi
log "all writes accounted for: every 2xx applied once, every 4xx never"
exit 0
