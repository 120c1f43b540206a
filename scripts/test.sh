#!/usr/bin/env bash
# Installs what is missing, builds batchgate with its tests, and runs every test with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh prometheus python3-yaml
BUILD_DIR=${BUILD_DIR:-build/test}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} ${CMAKE_ARGS:-} >/dev/null
ninja -C "$BUILD_DIR"
cd "$BUILD_DIR"
ctest --output-on-failure --timeout 300 -j2
