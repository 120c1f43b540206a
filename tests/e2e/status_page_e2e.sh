#!/usr/bin/env bash
# ctest status_page_e2e: the admin listener's status page in a real browser (Debian's chromium,
# headless). The demo upstream and batchgate run on 127.0.0.1, a known workload goes through a
# coalesce route, a shadow route and a passthrough route, then chromium loads /status, runs its
# script (which polls /status.json) and dumps the DOM. Every figure the page shows carries
# data-k / data-v; each must equal what /metrics says, and the workload's own counts.
#   usage: status_page_e2e.sh BATCHGATE_BINARY MOCK_UPSTREAM_BINARY [SCREENSHOT.png]
# Exits 77 (ctest: skipped) only when no chromium is installed: scripts/test.sh installs it.
set -euo pipefail
gw_bin=${1:?usage: $0 BATCHGATE MOCK_UPSTREAM [SCREENSHOT]}
mock_bin=${2:?usage: $0 BATCHGATE MOCK_UPSTREAM [SCREENSHOT]}
screenshot=${3:-}
browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $browser ]]; then
  echo "SKIP no chromium on this machine (apt-get install chromium; scripts/test.sh does)"
  exit 77
fi

. "$(dirname "$0")/e2e_lib.sh"
logs=(mock.log gateway.log chromium.log)

start_mock --threads 1 --latency 2ms || fail "mock upstream did not start"
wait_http "http://127.0.0.1:$up_port/users/1" 10 || fail "mock upstream did not answer"

cat >"$tmp/gateway.yaml" <<YAML
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 2
logging: {access_log: false}
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
      flush: adaptive
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
wait_http "http://127.0.0.1:$admin_port/readyz" 10 || fail "batchgate not ready"
ok "batchgate on 127.0.0.1:$gw_port, admin 127.0.0.1:$admin_port"

# The workload: 40 users at once (users 0 and 1001 do not exist: 404), 30 shadow calls at once,
# 3 passthrough calls the upstream answers 503.
calls=()
for i in $(seq 0 39); do
  curl -s -o /dev/null -w '%{http_code}\n' --max-time 10 "http://127.0.0.1:$gw_port/users/$((i == 39 ? 1001 : i))" >>"$tmp/codes" &
  calls+=($!)
done
for i in $(seq 1 30); do
  curl -s -o /dev/null -w '%{http_code}\n' --max-time 10 "http://127.0.0.1:$gw_port/echo/$i" >>"$tmp/codes" &
  calls+=($!)
done
wait "${calls[@]}" || true
for i in 1 2 3; do curl -s -o /dev/null -w '%{http_code}\n' --max-time 10 "http://127.0.0.1:$gw_port/status/503" >>"$tmp/codes"; done
summary=$(sort "$tmp/codes" | uniq -c | awk '{printf "%s×%s ", $1, $2}')
[[ $summary == "68×200 2×404 3×503 " ]] || fail "workload answers: $summary (expected 68×200 2×404 3×503)"
ok "workload answered: $summary"
# The shadow's last batch closes 20 ms after its first caller, and its callers count as batched
# when its would-be call ends: wait until all 30 are, and nobody is held.
settled=0
for _ in $(seq 100); do
  curl -fs --max-time 2 "http://127.0.0.1:$admin_port/metrics" >"$tmp/poll.txt" || true
  if grep -q '^batchgate_shadow_callers_total{outcome="batched",route="echo-shadow"} 30$' "$tmp/poll.txt" &&
     grep -q '^batchgate_shadow_waiting_callers{route="echo-shadow"} 0$' "$tmp/poll.txt"; then
    settled=1; break
  fi
  sleep 0.1
done
((settled)) || fail "the shadow route did not count its 30 callers as batched within 10 s"

curl -fs --max-time 5 "http://127.0.0.1:$admin_port/metrics" >"$tmp/metrics.txt" || fail "GET /metrics"
# A real browser runs the page's script: it fetches status.json and renders it. Virtual time
# lets its timers run without waiting for them.
chrome=("$browser" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run
        --hide-scrollbars --user-data-dir="$tmp/profile" --virtual-time-budget=4000)
timeout 90 "${chrome[@]}" --dump-dom "http://127.0.0.1:$admin_port/status" >"$tmp/dom.html" 2>"$tmp/chromium.log" ||
  fail "chromium --dump-dom failed (exit $?)"
curl -fs --max-time 5 "http://127.0.0.1:$admin_port/metrics" >"$tmp/metrics-after.txt" || fail "GET /metrics"
if [[ -n $screenshot ]]; then
  timeout 90 "${chrome[@]}" --window-size=1280,1050 --screenshot="$screenshot" "http://127.0.0.1:$admin_port/status" \
    >/dev/null 2>>"$tmp/chromium.log" || fail "chromium --screenshot failed"
  ok "screenshot: $screenshot"
fi

"$py" - "$tmp/dom.html" "$tmp/metrics.txt" "$tmp/metrics-after.txt" <<'PY'
import re, sys
from html.parser import HTMLParser

class Figures(HTMLParser):
    def __init__(self):
        super().__init__()
        self.values, self.loaded, self.state = {}, False, ""
        self._in_state = False
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-k" in a and "data-v" in a:
            self.values[a["data-k"]] = float(a["data-v"])
        if tag == "body" and a.get("data-loaded") == "1":
            self.loaded = True
        self._in_state = a.get("id") == "state"
    def handle_data(self, data):
        if self._in_state:
            self.state += data
            self._in_state = False

page = Figures()
page.feed(open(sys.argv[1]).read())
def samples(path):
    out = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out
m = samples(sys.argv[2])
after = samples(sys.argv[3])

failures = []
def check(what, shown, expected):
    if shown is None:
        failures.append(f"{what}: not on the page")
    elif abs(shown - expected) > 1e-9:
        failures.append(f"{what}: page shows {shown}, expected {expected}")

def metric_sum(name, **labels):
    total = 0.0
    for series, v in m.items():
        n, _, rest = series.partition("{")
        if n != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(got.get(k) == v2 for k, v2 in labels.items()):
            total += v
    return total

def by_class(name, prefix, **labels):
    out = {}
    for series, v in m.items():
        n, _, rest = series.partition("{")
        if n != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(got.get(k) == v2 for k, v2 in labels.items()) and v:
            s = got["status"]
            c = s[0] if s[:1] and s[:1] in "12345" else "other"
            out[c] = out.get(c, 0) + v
    return out

if not page.loaded:
    failures.append(f"the page never rendered status.json (state: {page.state!r})")
v = page.values.get
for route in ("users", "echo-shadow", "passthrough"):
    check(f"{route} requests", v(f"route.{route}.requests"), metric_sum("batchgate_requests_total", route=route))
    for c, n in by_class("batchgate_requests_total", "", route=route).items():
        check(f"{route} {c}xx", v(f"route.{route}.status.{c}"), n)
check("users batch calls", v("route.users.batches"), m['batchgate_batch_size_count{route="users"}'])
check("users items", v("route.users.items"), m['batchgate_batch_size_sum{route="users"}'])
check("users calls saved", v("route.users.calls_saved"), m['batchgate_upstream_calls_saved_total{route="users"}'])
check("users waiting", v("route.users.waiting"), m['batchgate_waiting_callers{route="users"}'])
check("users concurrency limit", v("route.users.concurrency_limit"),
      m['batchgate_concurrency_limit{route="*",upstream="demo"}'])
check("shadow batch calls", v("route.echo-shadow.batches"), m['batchgate_shadow_batch_size_count{route="echo-shadow"}'])
check("shadow items", v("route.echo-shadow.items"), m['batchgate_shadow_batch_size_sum{route="echo-shadow"}'])
check("shadow calls saved", v("route.echo-shadow.calls_saved"),
      m['batchgate_shadow_upstream_calls_saved_total{route="echo-shadow"}'])
check("shadow callers batched", v("route.echo-shadow.callers.batched"),
      m['batchgate_shadow_callers_total{outcome="batched",route="echo-shadow"}'])
check("upstream calls", v("upstream.demo.requests"), metric_sum("batchgate_upstream_requests_total", upstream="demo"))
errors = sum(n for c, n in by_class("batchgate_upstream_requests_total", "", upstream="demo").items() if c in ("5", "other"))
check("upstream errors", v("upstream.demo.errors"), errors)
check("upstream connections in use", v("upstream.demo.in_use"),
      metric_sum("batchgate_upstream_connections", upstream="demo", state="in_use"))
check("upstream idle connections", v("upstream.demo.idle"),
      metric_sum("batchgate_upstream_connections", upstream="demo", state="idle"))
# And the workload's own counts, so that a page and /metrics wrong the same way fail too.
check("users requests (workload)", v("route.users.requests"), 40)
check("users 4xx (workload)", v("route.users.status.4"), 2)
check("users items (workload)", v("route.users.items"), 40)
check("shadow requests (workload)", v("route.echo-shadow.requests"), 30)
check("shadow items (workload)", v("route.echo-shadow.items"), 30)
check("passthrough 5xx (workload)", v("route.passthrough.status.5"), 3)
check("upstream errors (workload)", v("upstream.demo.errors"), 3)
# Nothing moved while the browser looked (the idle pool aside, nothing runs).
moved = [k for k in m if not k.startswith("batchgate_upstream_connections") and after.get(k) != m[k]]
if moved:
    failures.append("metrics moved while the page loaded: " + ", ".join(moved[:5]))
if failures:
    print("FAIL the status page disagrees:\n  " + "\n  ".join(failures))
    sys.exit(1)
print(f"ok   the page shows {len(page.values)} figures; every one checked equals /metrics and the workload")
PY
echo "status_page_e2e passed"
