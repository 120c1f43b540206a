#!/usr/bin/env bash
# Installs what is missing, builds batchgate in Release, and starts the bundled demo upstream
# (127.0.0.1:9000) plus the gateway with examples/quickstart.yaml on 127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release -DBATCHGATE_TESTS=OFF >/dev/null
ninja -C build/release batchgate batchgate-mock-upstream
# 20 ms per call, as a real API takes: callers arriving while a call is in flight gather into
# the next one (with an instant upstream every curl of the burst below finds it idle).
./build/release/batchgate-mock-upstream --port 9000 --threads 1 --latency 20ms >/dev/null &
mock=$!
trap 'kill $mock 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:9000/users/1 && break; sleep 0.1; done
cat <<'TXT'

batchgate is starting on http://127.0.0.1:8080 (demo upstream on 127.0.0.1:9000, 20 ms a call).
Paste these in another terminal:

  # 20 concurrent single calls ...
  for i in $(seq 1 20); do curl -s http://127.0.0.1:8080/users/$i & done; wait; echo
  # ... arrived upstream as a few batch calls (flush: adaptive sends the first at once
  # and gathers the rest while it is in flight):
  curl -s http://127.0.0.1:9090/metrics | grep -E '^batchgate_(batch_size_(count|sum)|upstream_calls_saved_total)'

  curl -i http://127.0.0.1:8080/users/7          # 200, note X-Batchgate-Batch-Id
  curl -i http://127.0.0.1:8080/users/99999      # 404 with a JSON error
  curl -s 'http://127.0.0.1:8080/api/v1/activities/a1?fields=id,name'
  curl -s http://127.0.0.1:8080/echo/anything    # passthrough
  curl -s http://127.0.0.1:9090/metrics          # Prometheus metrics
  curl -s http://127.0.0.1:9090/readyz

Ctrl-C stops both.
TXT
./build/release/batchgate --config examples/quickstart.yaml
