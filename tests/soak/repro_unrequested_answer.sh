#!/usr/bin/env bash
# Regression test (issue 9, found by the fault soak): an upstream that sends a second, unrequested
# answer on a keep-alive connection a few ms after its real one used to have that stale answer
# delivered to the NEXT caller of the pooled connection, whatever its credentials (passthrough
# shown; batch calls of coalesce routes too): the pool peeked only at connections idle 100 ms.
# Now every reuse is peeked. ctest runs it (unrequested_answer_never_crosses).
# Usage: tests/soak/repro_unrequested_answer.sh [BUILD_DIR]   Exits 1 if bob gets alice's answer.
set -euo pipefail
b="${1:-build/test}"
w="$(mktemp -d)"; trap 'kill $gp $mp 2>/dev/null; rm -rf "$w"' EXIT
"$b/batchgate-mock-upstream" --port 0 --tag-owner --fault-rate 1 --fault-kinds extra_late >"$w/m" 2>&1 & mp=$!
for _ in $(seq 50); do grep -q listening "$w/m" && break; sleep 0.1; done
mport="$(sed -n 's/.*://p' "$w/m" | head -1)"
printf 'listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nlogging: {access_log: false}\nupstreams:\n  mock: {url: "http://127.0.0.1:%s", max_connections: 1}\nroutes:\n  - {name: rest, match: {prefix: /}, upstream: mock}\n' "$mport" >"$w/g.yaml"
"$b/batchgate" --config "$w/g.yaml" 2>"$w/g" & gp=$!
for _ in $(seq 50); do grep -q "batchgate started" "$w/g" && break; sleep 0.1; done
port="$(grep -o '"listen":"[^"]*"' "$w/g" | sed 's/.*:\([0-9]*\)"/\1/')"
curl -s -m 3 -H 'Authorization: Bearer alice' "http://127.0.0.1:$port/echo/alice" >/dev/null
sleep 0.05
bob="$(curl -s -m 3 -H 'Authorization: Bearer bob' "http://127.0.0.1:$port/echo/bob")"
echo "bob got: $bob"
if grep -q '"target":"/echo/bob"' <<<"$bob"; then echo "OK: bob got his own answer"; exit 0; fi
echo "DEFECT: bob got the answer to another caller's request"; exit 1
