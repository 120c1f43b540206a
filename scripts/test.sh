#!/usr/bin/env bash
# Installs what is missing, builds batchgate with its tests, runs every test with ctest, the
# integration tests again with 1, 2 and 4 worker threads (TEST_WORKER_THREADS, "" = skip), then
# runs each fuzz target for a short bounded time (scripts/fuzz.sh, FUZZ_SECONDS each, 0 = skip).
set -euo pipefail
cd "$(dirname "$0")/.."
# clang, its libFuzzer/sanitizer runtimes (libclang-rt-14-dev) and llvm-symbolizer (llvm-14): fuzz targets.
# chromium: the status page's browser test.
bash scripts/install-deps.sh prometheus python3-yaml clang libclang-rt-14-dev llvm-14 chromium
BUILD_DIR=${BUILD_DIR:-build/test}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} ${CMAKE_ARGS:-} >/dev/null
ninja -C "$BUILD_DIR"
status=0
(cd "$BUILD_DIR" && ctest --output-on-failure --timeout 300 -j2) || status=$?
# The in-process gateways again with 1, 2 and 4 worker threads (shards), whatever their configs say.
for threads in ${TEST_WORKER_THREADS-1 2 4}; do
  echo "== integration tests with $threads worker thread(s)"
  (cd "$BUILD_DIR" && BATCHGATE_TEST_WORKER_THREADS=$threads ctest -L integration --output-on-failure --timeout 300 -j2) || status=1
done
# Two targets at a time: 9 targets x 20 s on 2 cores is about 90 s plus the clang build.
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
if ((FUZZ_SECONDS > 0)); then
  FUZZ_JOBS=${FUZZ_JOBS:-2} bash scripts/fuzz.sh "$FUZZ_SECONDS" || status=1
fi
exit $status
