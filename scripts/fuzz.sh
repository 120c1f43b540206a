#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang in their own build dir
# (BATCHGATE_FUZZ=ON, ASan+UBSan) and runs each one, from its committed seed corpus.
#
#   scripts/fuzz.sh [SECONDS | -runs=N] [TARGET...]      default: 60 seconds each, every target
#
# Per target it prints the executions, the time and whether it found anything; a finding (crash,
# sanitizer report, broken invariant, timeout, out of memory) makes the script exit 1. Findings and
# each target's log go to $FUZZ_OUT (default build/fuzz/findings/<target>/): copy a crash file
# into tests/fuzz/regressions/<target>/ so ctest replays it forever. New inputs the fuzzer finds go
# to build/fuzz/corpus/<target> (scratch); the committed seeds are never rewritten.
# Environment: FUZZ_BUILD_DIR, FUZZ_OUT, FUZZ_JOBS (targets run at once, default 1), FUZZ_ARGS
# (more libFuzzer flags, e.g. -max_total_time=600 as a cap on -runs=N), CMAKE_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-60}
shift || true
build=${FUZZ_BUILD_DIR:-build/fuzz}
out=${FUZZ_OUT:-$build/findings}
jobs=${FUZZ_JOBS:-1}

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
CXX=${FUZZ_CXX:-clang++} cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DBATCHGATE_FUZZ=ON -DBATCHGATE_TESTS=OFF "${launcher[@]}" ${CMAKE_ARGS:-} >/dev/null
ninja -C "$build" fuzz

if (($#)); then
  targets=("$@")
else
  targets=()
  for f in tests/fuzz/fuzz_*.cpp; do t=${f##*/fuzz_}; targets+=("${t%.cpp}"); done
fi
case $limit in
  -runs=*) budget=("$limit") ;;
  *) budget=(-max_total_time="$limit") ;;
esac
symbolizer=$(command -v llvm-symbolizer || command -v llvm-symbolizer-14 || true)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}${symbolizer:+:external_symbolizer_path=$symbolizer}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}${symbolizer:+:external_symbolizer_path=$symbolizer}

run_one() {
  local t=$1 max_len=4096 dict
  case $t in
    config) max_len=16384; dict=yaml ;;
    request_head | routes) dict=http ;;
    *) dict=json ;;
  esac
  mkdir -p "$out/$t" "$build/corpus/$t"
  local log=$out/$t.log start=$SECONDS rc=0
  "$build/fuzz_$t" "${budget[@]}" -max_len=$max_len -dict="tests/fuzz/$dict.dict" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$out/$t/" ${FUZZ_ARGS:-} \
    "$build/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  local execs found
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  found=$(find "$out/$t" -maxdepth 1 -type f -newer "$log.start" | sort | tr '\n' ' ')
  if ((rc == 0)) && [[ -z $found ]]; then
    printf '%-16s %12s execs %5ss  ok\n' "$t" "${execs:-?}" $((SECONDS - start)) >"$out/$t.summary"
  else
    { printf '%-16s %12s execs %5ss  FINDING (exit %s): %s\n' "$t" "${execs:-?}" $((SECONDS - start)) "$rc" \
        "${found:-see $log}"
      grep -m1 -E '^(==[0-9]+==ERROR|SUMMARY|fuzz invariant broken|.*runtime error)' "$log" | sed 's/^/    /' || true
    } >"$out/$t.summary"
  fi
}

mkdir -p "$out"
for t in "${targets[@]}"; do
  [[ -x $build/fuzz_$t ]] || { echo "no fuzz target $t" >&2; exit 2; }
  mkdir -p "$out/$t"
  touch "$out/$t.log.start"
  while (($(jobs -rp | wc -l) >= jobs)); do wait -n || true; done
  run_one "$t" &
done
wait
status=0
for t in "${targets[@]}"; do
  cat "$out/$t.summary"
  grep -q ' ok$' "$out/$t.summary" || status=1
done
((status == 0)) || echo "findings and logs are in $out/" >&2
exit $status
