// The status page served at GET /status (and /) on the admin listener: one HTML document with
// its CSS and JS inline, no outside assets. It reads status.json every two seconds and turns two
// snapshots into rates. Every figure it shows carries data-k (what it is) and data-v (the raw
// value it was computed from), which the browser test (tests/e2e/status_page_e2e.sh) compares
// with /metrics.
#include "gateway/status.hpp"

namespace batchgate::gateway {

std::string_view status_page() {
    static constexpr std::string_view page = R"page(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>batchgate status</title>
<style>
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --mute:#687083; --line:#e2e5eb;
        --ok:#2f9e44; --info:#1c7ed6; --warn:#f08c00; --bad:#e03131; --shadow:#7048e8; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg); color:var(--ink); }
header { display:flex; flex-wrap:wrap; gap:.5rem 1.5rem; align-items:baseline; padding:.8rem 1rem; background:var(--ink); color:#fff; }
header h1 { font-size:1.1rem; margin:0; }
header span { color:#c9cedb; }
#state.ok { color:#8ce99a; } #state.bad { color:#ffa8a8; }
main { padding:1rem; max-width:1400px; margin:auto; }
h2 { font-size:1rem; margin:1.2rem 0 .5rem; color:var(--mute); text-transform:uppercase; letter-spacing:.05em; }
.grid { display:grid; grid-template-columns:repeat(auto-fill,minmax(330px,1fr)); gap:.8rem; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:.8rem .9rem; }
.card h3 { margin:0 0 .5rem; font-size:1rem; display:flex; gap:.5rem; align-items:center; flex-wrap:wrap; }
.badge { font-size:.72rem; padding:.1rem .45rem; border-radius:99px; background:#e7eaf0; color:var(--ink); font-weight:600; }
.badge.coalesce { background:#d3f9d8; } .badge.shadow { background:#e5dbff; color:var(--shadow); }
.badge.fan_out, .badge.batch_envelope { background:#d0ebff; }
.up { color:var(--mute); font-size:.8rem; font-weight:400; }
dl { display:grid; grid-template-columns:auto 1fr; gap:.15rem .8rem; margin:.3rem 0; }
dt { color:var(--mute); } dd { margin:0; font-variant-numeric:tabular-nums; text-align:right; }
.mix { display:flex; height:10px; border-radius:5px; overflow:hidden; background:var(--line); margin:.3rem 0 .2rem; }
.mix i { display:block; height:100%; }
.s2 { background:var(--ok); } .s3 { background:var(--info); } .s4 { background:var(--warn); } .s5 { background:var(--bad); }
.legend { display:flex; flex-wrap:wrap; gap:.2rem .8rem; font-size:.78rem; color:var(--mute); }
.legend b { display:inline-block; width:.6rem; height:.6rem; border-radius:2px; margin-right:.25rem; }
.hist { display:flex; align-items:flex-end; gap:2px; height:48px; margin:.4rem 0 0; }
.hist div { flex:1; background:var(--info); min-height:1px; border-radius:2px 2px 0 0; }
.hist.shadow div { background:var(--shadow); }
.hl { display:flex; gap:2px; font-size:.65rem; color:var(--mute); }
.hl span { flex:1; text-align:center; overflow:hidden; }
.sub { margin-top:.5rem; padding-top:.4rem; border-top:1px solid var(--line); }
.sub h4 { margin:0 0 .2rem; font-size:.8rem; color:var(--mute); font-weight:600; }
footer { color:var(--mute); font-size:.8rem; padding:0 1rem 1rem; text-align:center; }
@media (max-width:480px) { main { padding:.5rem; } .grid { grid-template-columns:1fr; } }
</style>
</head>
<body>
<header><h1>batchgate</h1><span id="meta">loading…</span><span id="state"></span></header>
<main>
<h2>Routes</h2><div class="grid" id="routes"></div>
<h2>Upstreams</h2><div class="grid" id="upstreams"></div>
</main>
<footer>Refreshed every 2 s from <a href="status.json">status.json</a>; counters as in <a href="metrics">/metrics</a>, rates over the last refresh.</footer>
<script>
"use strict";
let prev = null;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (digits !== undefined) return v.toFixed(digits);
  return Math.abs(v) >= 1e6 ? (v / 1e6).toFixed(2) + "M" : Math.round(v).toLocaleString("en-US");
}
// One figure: its label, its shown text, and data-k / data-v for scripts and the browser test.
function row(dl, key, label, value, text) {
  dl.append(el("dt", "", label));
  const dd = el("dd", "", text === undefined ? fmt(value) : text);
  dd.dataset.k = key;
  if (value !== null && value !== undefined) dd.dataset.v = String(value);
  dl.append(dd);
}
function rate(cur, old, dt) { return old === undefined || dt <= 0 ? null : Math.max(0, (cur - old) / dt); }
// Prometheus' histogram_quantile over cumulative [le, count] buckets (le null = +Inf).
function quantile(q, buckets) {
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (!total) return null;
  const rank = q * total;
  let lo = 0, below = 0;
  for (const [le, n] of buckets) {
    if (n >= rank) {
      if (le === null) return lo;
      return lo + (le - lo) * ((rank - below) / Math.max(1, n - below));
    }
    lo = le === null ? lo : le; below = n;
  }
  return lo;
}
function minus(cur, old) {
  if (!old || old.count === undefined || cur.count <= old.count) return cur;
  return { count: cur.count - old.count, sum: cur.sum - old.sum,
           buckets: cur.buckets.map(([le, n], i) => [le, n - (old.buckets[i] ? old.buckets[i][1] : 0)]) };
}
function statusMix(card, key, byStatus) {
  const classes = { "1": 0, "2": 0, "3": 0, "4": 0, "5": 0, other: 0 };
  let total = 0;
  for (const [s, n] of Object.entries(byStatus)) {
    const c = /^[1-5]/.test(s) ? s[0] : "other";
    classes[c] += n; total += n;
  }
  const bar = el("div", "mix");
  const legend = el("div", "legend");
  for (const [c, n] of Object.entries(classes)) {
    if (!n) continue;
    const cls = c === "other" ? "s5" : c === "1" ? "s3" : "s" + c;
    const seg = el("i", cls); seg.style.width = (100 * n / total) + "%"; bar.append(seg);
    const item = el("span"); const sw = el("b", cls); item.append(sw);
    const label = c === "other" ? "no answer" : c + "xx";
    const pct = el("span", "", label + " " + (100 * n / total).toFixed(1) + "%");
    pct.dataset.k = key + ".status." + c; pct.dataset.v = String(n);
    item.append(pct); legend.append(item);
  }
  if (total) card.append(bar, legend);
}
function sizeHistogram(card, hist, shadow) {
  const bars = el("div", "hist" + (shadow ? " shadow" : "")), labels = el("div", "hl");
  let below = 0, max = 1;
  const counts = hist.buckets.map(([le, n]) => { const c = n - below; below = n; return [le, c]; });
  for (const [, c] of counts) max = Math.max(max, c);
  let lo = 0;
  for (const [le, c] of counts) {
    const b = el("div"); b.style.height = (100 * c / max) + "%";
    b.title = (le === null ? ">" + lo : "≤" + le) + ": " + c + " batches";
    bars.append(b);
    labels.append(el("span", "", le === null ? ">" + lo : String(le)));
    if (le !== null) lo = le;
  }
  card.append(bars, labels);
}
function routeCard(r, old, dt) {
  const card = el("div", "card");
  const key = "route." + r.name;
  const h = el("h3", "", r.name);
  h.append(el("span", "badge " + r.mode, r.mode));
  if (r.upstream) h.append(el("span", "up", "→ " + r.upstream));
  card.append(h);
  const dl = el("dl");
  const rps = rate(r.requests.total, old && old.requests.total, dt);
  row(dl, key + ".rate", "requests/s", rps, rps === null ? "–" : fmt(rps, 1));
  row(dl, key + ".requests", "requests", r.requests.total);
  const window = minus(r.duration_seconds, old && old.duration_seconds);
  const p50 = quantile(0.5, window.buckets), p99 = quantile(0.99, window.buckets);
  row(dl, key + ".p50_ms", "p50 / p99 ms", p50 === null ? null : p50 * 1000,
      p50 === null ? "–" : fmt(p50 * 1000, 2) + " / " + fmt(p99 * 1000, 2));
  card.append(dl);
  statusMix(card, key, r.requests.by_status);
  const b = r.batching;
  if (b) {
    const shadow = r.mode === "shadow";
    const sub = el("div", "sub");
    sub.append(el("h4", "", (shadow ? "would batch (shadow)" : "batching") + " · flush " + b.flush));
    const bd = el("dl");
    const batches = b.batch_size.count, items = b.batch_size.sum;
    row(bd, key + ".batches", shadow ? "batch calls it would make" : "batch calls", batches);
    row(bd, key + ".items", "items in them", items);
    row(bd, key + ".mean_batch", "mean batch size", batches ? items / batches : null,
        batches ? fmt(items / batches, 1) : "–");
    const callers = b.calls_saved + batches;
    row(bd, key + ".calls_saved", shadow ? "upstream calls it would save" : "upstream calls saved", b.calls_saved,
        fmt(b.calls_saved) + (callers ? " (" + (100 * b.calls_saved / callers).toFixed(1) + "%)" : ""));
    const w = minus(b.wait_seconds, old && old.batching && old.batching.wait_seconds);
    row(bd, key + ".mean_wait_ms", "mean wait ms", w.count ? 1000 * w.sum / w.count : null,
        w.count ? fmt(1000 * w.sum / w.count, 2) : "–");
    row(bd, key + ".waiting", "callers waiting", b.waiting);
    if (b.concurrency)
      row(bd, key + ".concurrency_limit", "concurrency limit (" + b.concurrency.scope + ")", b.concurrency.limit,
          fmt(b.concurrency.limit) + " · " + fmt(b.concurrency.in_flight) + " in flight");
    if (b.callers)
      for (const [o, n] of Object.entries(b.callers)) if (n || o === "batched") row(bd, key + ".callers." + o, "callers " + o, n);
    const reasons = Object.entries(b.flushes).filter(([, n]) => n > 0).map(([k, n]) => k + " " + fmt(n)).join(" · ");
    row(bd, key + ".flushes", "flushed by", null, reasons || "–");
    sub.append(bd);
    sizeHistogram(sub, b.batch_size, shadow);
    card.append(sub);
  }
  if (r.fan_out) {
    const sub = el("div", "sub");
    sub.append(el("h4", "", "fan-out"));
    const fd = el("dl");
    row(fd, key + ".fanout_calls", "client batch calls", r.fan_out.calls);
    row(fd, key + ".fanout_items", "items", r.fan_out.items.sum);
    for (const [o, n] of Object.entries(r.fan_out.outcomes)) row(fd, key + ".fanout." + o, "items " + o, n);
    sub.append(fd); card.append(sub);
  }
  return card;
}
function upstreamCard(u, old, dt) {
  const card = el("div", "card");
  const key = "upstream." + u.name;
  const h = el("h3", "", u.name); h.append(el("span", "up", u.url)); card.append(h);
  const dl = el("dl");
  row(dl, key + ".in_use", "connections in use", u.connections.in_use,
      fmt(u.connections.in_use) + " of " + fmt(u.max_connections));
  row(dl, key + ".idle", "idle connections", u.connections.idle);
  row(dl, key + ".queued", "calls queued for one", u.connections.queued);
  const rps = rate(u.requests.total, old && old.requests.total, dt);
  row(dl, key + ".rate", "calls/s", rps, rps === null ? "–" : fmt(rps, 1));
  row(dl, key + ".requests", "calls", u.requests.total);
  const dCalls = old ? u.requests.total - old.requests.total : u.requests.total;
  const dErr = old ? u.requests.errors - old.requests.errors : u.requests.errors;
  row(dl, key + ".error_rate", "errors (5xx, no answer)", dCalls ? 100 * dErr / dCalls : 0,
      (dCalls ? (100 * dErr / dCalls).toFixed(1) : "0.0") + "% now · " + fmt(u.requests.errors) + " in all");
  row(dl, key + ".errors", "errors in all", u.requests.errors);
  card.append(dl);
  statusMix(card, key, u.requests.by_status);
  return card;
}
function render(s) {
  const dt = prev ? s.time - prev.time : 0;
  const byName = (list, name) => prev && list.find((x) => x.name === name);
  document.getElementById("meta").textContent = "v" + s.version + " · up " + fmt(s.uptime_seconds / 60, 1) +
    " min · " + s.worker_threads + " threads · " + fmt(s.open_connections) + " client connections" +
    (s.draining ? " · DRAINING" : s.ready ? "" : " · not ready");
  const routes = document.getElementById("routes");
  const same = (r) => { const o = byName(prev && prev.routes, r.name); return o && o.mode === r.mode ? o : undefined; };
  routes.replaceChildren(...s.routes.map((r) => routeCard(r, same(r), dt)));
  const ups = document.getElementById("upstreams");
  ups.replaceChildren(...s.upstreams.map((u) => upstreamCard(u, byName(prev && prev.upstreams, u.name), dt)));
}
async function tick() {
  const state = document.getElementById("state");
  try {
    const res = await fetch("status.json", { cache: "no-store" });
    if (!res.ok) throw new Error("HTTP " + res.status);
    const s = await res.json();
    render(s);
    prev = s;
    state.className = "ok";
    state.textContent = "updated " + new Date(s.time * 1000).toLocaleTimeString();
    document.body.dataset.loaded = "1";
  } catch (e) {
    state.className = "bad";
    state.textContent = "cannot reach the gateway: " + e.message;
  }
}
tick();
setInterval(tick, 2000);
</script>
</body>
</html>
)page";
    return page;
}

}  // namespace batchgate::gateway
