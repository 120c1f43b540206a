#!/usr/bin/env bash
# ctest prometheus_e2e: the demo upstream, batchgate and Debian's Prometheus on 127.0.0.1,
# coalesced traffic, then Prometheus must have scraped exactly what the gateway reports.
#   usage: prometheus_e2e.sh BATCHGATE_BINARY MOCK_UPSTREAM_BINARY SOURCE_DIR
# Also: `promtool check metrics` must print nothing for the gateway's /metrics, every
# batchgate_* metric used by deploy/prometheus/rules.yaml and the Grafana dashboard must
# exist, and the alert rules must evaluate without errors against the live data.
set -euo pipefail
gw_bin=${1:?usage: $0 BATCHGATE MOCK_UPSTREAM SOURCE_DIR}
mock_bin=${2:?usage: $0 BATCHGATE MOCK_UPSTREAM SOURCE_DIR}
src=$(cd "${3:?usage: $0 BATCHGATE MOCK_UPSTREAM SOURCE_DIR}" && pwd)
for tool in prometheus promtool curl; do
  command -v "$tool" >/dev/null || { echo "FAIL $tool not found (apt-get install prometheus curl)"; exit 1; }
done

. "$(dirname "$0")/e2e_lib.sh"
logs=(mock.log gateway.log prometheus.log)
read -r prom_port < <(free_ports 1)

start_mock --threads 1 --latency 2ms || fail "mock upstream did not start"
wait_http "http://127.0.0.1:$up_port/users/1" 10 || fail "mock upstream did not answer on 127.0.0.1:$up_port"
ok "mock upstream on 127.0.0.1:$up_port"

cat >"$tmp/gateway.yaml" <<YAML
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 2
limits: {drain_timeout: 2s}
upstreams:
  demo: {url: "http://127.0.0.1:$up_port"}
routes:
  - name: users
    match: {method: GET, path: "/users/{id}"}
    upstream: demo
    mode: coalesce
    coalesce:
      key: {path: id}
      max_wait: 20ms
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
  - name: echo-shadow
    match: {method: GET, path: "/echo/{id}"}
    upstream: demo
    mode: coalesce
    coalesce:
      shadow: true
      key: {path: id}
      max_wait: 20ms
      request: {method: GET, path: /echo, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
  - name: passthrough
    match: {prefix: /}
    upstream: demo
YAML
start_gateway "$tmp/gateway.yaml" || fail "batchgate did not start"
wait_http "http://127.0.0.1:$admin_port/readyz" 10 || fail "batchgate not ready on 127.0.0.1:$admin_port"
ok "batchgate on 127.0.0.1:$gw_port, admin 127.0.0.1:$admin_port"

cat >"$tmp/prometheus.yml" <<YAML
global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}
rule_files: ["$src/deploy/prometheus/rules.yaml"]
scrape_configs:
  - job_name: batchgate
    static_configs: [{targets: ["127.0.0.1:$admin_port"]}]
YAML
(cd "$tmp" && exec prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
   --web.listen-address="127.0.0.1:$prom_port" --log.level=warn) >"$tmp/prometheus.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$prom_port/-/ready" 30 || fail "prometheus not ready on 127.0.0.1:$prom_port"
ok "prometheus on 127.0.0.1:$prom_port scraping the admin port every 1s"

# 3 rounds of 50 concurrent single-item calls.
: >"$tmp/codes"
for round in 1 2 3; do
  curls=()
  for i in $(seq 1 50); do
    curl -s -o /dev/null -w '%{http_code}\n' --max-time 10 "http://127.0.0.1:$gw_port/users/$i" >>"$tmp/codes" &
    curls+=($!)
  done
  wait "${curls[@]}" || true  # only the curls (each bounded by --max-time), not the servers
done
total=$(wc -l <"$tmp/codes"); good=$(grep -c '^200$' "$tmp/codes" || true)
((total == 150 && good == 150)) || fail "expected 150 answers with 200, got $good of $total: $(sort "$tmp/codes" | uniq -c | tr '\n' ' ')"
ok "150 concurrent calls to /users/N answered 200"

# A shadow route: 20 concurrent calls, each served by its own call; its shadow_* series must lint too.
curls=()
for i in $(seq 1 20); do
  curl -s -o /dev/null -w '%{http_code}\n' --max-time 10 "http://127.0.0.1:$gw_port/echo/$i" >>"$tmp/shadow_codes" &
  curls+=($!)
done
wait "${curls[@]}" || true
good=$(grep -c '^200$' "$tmp/shadow_codes" || true)
((good == 20)) || fail "shadow route: expected 20 answers with 200, got $good"
# The shadow's last batch closes 20 ms after its first caller: wait until all 20 are in one.
for _ in $(seq 100); do
  curl -fs --max-time 2 "http://127.0.0.1:$admin_port/metrics" >"$tmp/poll.txt" || true
  grep -q '^batchgate_shadow_batch_size_sum{route="echo-shadow"} 20$' "$tmp/poll.txt" && break
  sleep 0.1
done

metric() {  # FILE NAME{LABELS}: the sample's value, or empty
  awk -v m="$2" '$1 == m {print $2}' "$1"
}
curl -fs --max-time 5 "http://127.0.0.1:$admin_port/metrics" >"$tmp/metrics.txt" || fail "GET /metrics"
batches=$(metric "$tmp/metrics.txt" 'batchgate_batch_size_count{route="users"}')
items=$(metric "$tmp/metrics.txt" 'batchgate_batch_size_sum{route="users"}')
saved=$(metric "$tmp/metrics.txt" 'batchgate_upstream_calls_saved_total{route="users"}')
[[ -n $batches && -n $items && -n $saved ]] || fail "batch_size / calls_saved for route users missing from /metrics"
"$py" -c "import sys; b, s = float('$batches'), float('$saved'); sys.exit(0 if 0 < b < 150 and s > 0 else 1)" ||
  fail "no coalescing: $batches batches for 150 calls, $saved calls saved"
ok "coalesced: 150 calls -> $batches batch calls ($items items), $saved upstream calls saved"
shadow_items=$(metric "$tmp/metrics.txt" 'batchgate_shadow_batch_size_sum{route="echo-shadow"}')
[[ $shadow_items == 20 ]] || fail "shadow route: batchgate_shadow_batch_size_sum is '$shadow_items', not 20"
ok "shadow route: 20 calls served singly, all 20 counted in would-be batches"

# promtool must not have anything to say (errors or lint warnings).
lint_rc=0
lint=$(promtool check metrics <"$tmp/metrics.txt" 2>&1) || lint_rc=$?
[[ $lint_rc -eq 0 && -z $lint ]] || fail "promtool check metrics on the gateway's /metrics (rc=$lint_rc):
$lint"
ok "promtool check metrics: no findings"

# Every batchgate_* name used by the alert rules and the dashboard is exported.
"$py" - "$tmp/metrics.txt" "$src/deploy/prometheus/rules.yaml" "$src/deploy/grafana/batchgate-dashboard.json" <<'PY' ||
import re, sys
exported = set()
for line in open(sys.argv[1]):
    if line.startswith("# TYPE "):
        _, _, name, kind = line.split()
        exported |= {name} | ({name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else set())
    elif line and not line.startswith("#"):
        exported.add(re.split(r"[{ ]", line, 1)[0])
used = set()
for f in sys.argv[2:]:
    used |= set(re.findall(r"\bbatchgate_[a-z_]+", open(f).read()))
missing = sorted(used - exported)
print(f"     {len(used)} metric names used by rules.yaml and the dashboard")
sys.exit(f"unknown metrics: {missing}" if missing else 0)
PY
  fail "rules.yaml or the dashboard use metrics batchgate does not export"
ok "every batchgate_* metric in rules.yaml and the dashboard is exported"

query() {  # PROMQL -> the single instant-vector value, or empty
  curl -fs --max-time 2 "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1" |
    "$py" -c 'import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(r[0]["value"][1] if len(r) == 1 else "")' 2>/dev/null || true
}
rules_ok() {  # every rule evaluated at least once, with health ok
  curl -fs --max-time 2 "http://127.0.0.1:$prom_port/api/v1/rules" |
    "$py" -c 'import json, sys
rules = [r for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"]]
bad = [(r["name"], r.get("health"), r.get("lastError", "")) for r in rules if r.get("health") != "ok"]
print(len(rules) if rules and not bad else bad)' 2>/dev/null || true
}
end=$((SECONDS + 60))
while :; do
  up=$(query 'up{job="batchgate"}')
  scraped=$(query 'batchgate_batch_size_count{job="batchgate",route="users"}')
  direct=$(curl -fs --max-time 2 "http://127.0.0.1:$admin_port/metrics" | awk '$1 == "batchgate_batch_size_count{route=\"users\"}" {print $2}')
  rules=$(rules_ok)
  if [[ $up == 1 && -n $scraped && $scraped == "$direct" && $rules =~ ^[0-9]+$ ]] &&
     "$py" -c "import sys; sys.exit(0 if float('$direct') > 0 else 1)"; then
    break
  fi
  ((SECONDS < end)) || fail "after 60s: up='$up', Prometheus batch_size_count='$scraped', gateway '$direct', rules: $rules"
  sleep 1
done
ok "Prometheus: up{job=\"batchgate\"} == 1"
ok "Prometheus batchgate_batch_size_count{route=\"users\"} = $scraped = gateway /metrics"
ok "$rules alert rules from deploy/prometheus/rules.yaml evaluate with health ok"
# A rule evaluated before the first scrape (absent(up)) may be pending for a moment; once the
# target is up, the next evaluation must clear it. Bounded wait.
end=$((SECONDS + 20))
while :; do
  firing=$(curl -fs --max-time 2 "http://127.0.0.1:$prom_port/api/v1/alerts" |
    "$py" -c 'import json, sys; print(" ".join(a["labels"]["alertname"] for a in json.load(sys.stdin)["data"]["alerts"]))')
  [[ -z $firing ]] && break
  ((SECONDS < end)) || fail "alerts pending or firing on a healthy gateway: $firing"
  sleep 1
done
ok "no alert pending or firing"
echo "prometheus_e2e passed"
