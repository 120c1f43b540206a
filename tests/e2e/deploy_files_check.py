#!/usr/bin/env python3
"""Static checks of deploy/: YAML/JSON parse, dashboard panels, PrometheusRule == rules.yaml,
gateway configs pass `batchgate --check-config`, Kubernetes manifests hang together, and the
Dockerfile builds the way scripts/ do.

usage: deploy_files_check.py BATCHGATE_BINARY SOURCE_DIR
Prints one line per check; exits 1 if any failed.
"""
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

import yaml

BIN, SRC = sys.argv[1], os.path.abspath(sys.argv[2])
DEPLOY = os.path.join(SRC, "deploy")
failures = []


def check(ok, what, detail=""):
    print(("ok   " if ok else "FAIL ") + what + (f": {detail}" if detail and not ok else ""))
    if not ok:
        failures.append(what)
    return ok


def rel(path):
    return os.path.relpath(path, SRC)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# ---- every YAML parses ------------------------------------------------------------------
docs = {}  # relative path -> list of documents
for root, _, files in os.walk(DEPLOY):
    for name in sorted(files):
        if name.endswith((".yaml", ".yml")):
            path = os.path.join(root, name)
            try:
                docs[rel(path)] = [d for d in yaml.safe_load_all(read(path)) if d is not None]
                check(bool(docs[rel(path)]), f"{rel(path)} parses as YAML ({len(docs[rel(path)])} document(s))",
                      "no documents")
            except yaml.YAMLError as e:
                check(False, f"{rel(path)} parses as YAML", str(e))
check(len(docs) >= 10, f"found {len(docs)} YAML files under deploy/")


def doc(path, kind=None):
    for d in docs.get(path, []):
        if kind is None or (isinstance(d, dict) and d.get("kind") == kind):
            return d
    check(False, f"{path} has a {kind or 'document'}")
    return {}


# ---- gateway configs pass --check-config ------------------------------------------------
def check_gateway_config(label, text):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
        tmp = f.name
    try:
        r = subprocess.run([BIN, "--check-config", tmp], capture_output=True, text=True, timeout=30)
        check(r.returncode == 0, f"{label} passes batchgate --check-config", (r.stdout + r.stderr).strip())
    finally:
        os.unlink(tmp)
    cfg = yaml.safe_load(text)
    check(str(cfg.get("listen", "")).startswith("0.0.0.0:"), f"{label} listen is 0.0.0.0", cfg.get("listen"))
    check(str(cfg.get("admin_listen", "")).startswith("0.0.0.0:"), f"{label} admin_listen is 0.0.0.0",
          cfg.get("admin_listen"))
    return cfg


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def duration_s(text):
    m = re.fullmatch(r"(\d+)(us|ms|s|m|h)", str(text))
    if str(text) == "0":
        return 0.0
    return int(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[m.group(2)]


compose_cfg = check_gateway_config("deploy/config/compose.yaml", read(os.path.join(DEPLOY, "config/compose.yaml")))
check(any(u.get("url") == "http://upstream:9000" for u in compose_cfg.get("upstreams", {}).values()),
      "deploy/config/compose.yaml uses upstream http://upstream:9000")

cm = doc("deploy/k8s/configmap.yaml", "ConfigMap")
k8s_cfg = check_gateway_config("ConfigMap batchgate-config data.config.yaml", cm.get("data", {}).get("config.yaml", ""))

# ---- Kubernetes manifests ----------------------------------------------------------------
dep = doc("deploy/k8s/deployment.yaml", "Deployment")
pod = dep.get("spec", {}).get("template", {}).get("spec", {})
ctr = (pod.get("containers") or [{}])[0]
ports = {p.get("name"): p.get("containerPort") for p in ctr.get("ports", [])}
admin_port, http_port = port_of(k8s_cfg["admin_listen"]), port_of(k8s_cfg["listen"])


def probe_port(probe):
    p = probe.get("httpGet", {}).get("port")
    return ports.get(p, p)


rp, lp = ctr.get("readinessProbe", {}), ctr.get("livenessProbe", {})
check(rp.get("httpGet", {}).get("path") == "/readyz" and probe_port(rp) == admin_port,
      "Deployment readinessProbe is GET /readyz on the admin port", rp)
check(lp.get("httpGet", {}).get("path") == "/healthz" and probe_port(lp) == admin_port,
      "Deployment livenessProbe is GET /healthz on the admin port", lp)
check(http_port in ports.values(), f"Deployment exposes the traffic port {http_port}", ports)
res = ctr.get("resources", {})
check(all(res.get(k, {}).get(r) for k in ("requests", "limits") for r in ("cpu", "memory")),
      "Deployment sets cpu/memory requests and limits", res)
pre = ctr.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
pre_sleep = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else (
    int(ctr.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)))
check(pre_sleep > 0, "Deployment has a preStop sleep", pre)
drain = duration_s(k8s_cfg.get("limits", {}).get("drain_timeout", "10s"))
grace = pod.get("terminationGracePeriodSeconds", 30)
check(grace > pre_sleep + drain, f"terminationGracePeriodSeconds {grace} > preStop {pre_sleep}s + drain_timeout {drain:g}s")
sc = {**pod.get("securityContext", {}), **ctr.get("securityContext", {})}
check(sc.get("runAsNonRoot") is True and sc.get("runAsUser", 1) != 0, "Deployment runs as non-root", sc)
vols = {v["name"]: v for v in pod.get("volumes", [])}
mounts = [m for m in ctr.get("volumeMounts", []) if vols.get(m["name"], {}).get("configMap", {}).get("name")
          == cm.get("metadata", {}).get("name")]
check(any(m.get("mountPath") == "/etc/batchgate" for m in mounts), "ConfigMap mounted at /etc/batchgate", mounts)
labels = dep.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
check(dep.get("spec", {}).get("selector", {}).get("matchLabels", {}).items() <= labels.items(),
      "Deployment selector matches its pod labels")

svc = doc("deploy/k8s/service.yaml", "Service")
check(svc.get("spec", {}).get("selector", {}).items() <= labels.items(), "Service selects the Deployment's pods")
sports = {p.get("name"): p for p in svc.get("spec", {}).get("ports", [])}
check(any(ports.get(p.get("targetPort"), p.get("targetPort")) == http_port for p in sports.values()),
      "Service has the traffic port", sports)
admin_svc = [n for n, p in sports.items() if ports.get(p.get("targetPort"), p.get("targetPort")) == admin_port]
check(bool(admin_svc) and all(admin_svc), "Service has a named admin/metrics port", sports)

hpa = doc("deploy/k8s/hpa.yaml", "HorizontalPodAutoscaler")
check(hpa.get("apiVersion") == "autoscaling/v2", "HPA is autoscaling/v2")
check(any(m.get("resource", {}).get("name") == "cpu" for m in hpa.get("spec", {}).get("metrics", [])), "HPA scales on CPU")
check(hpa.get("spec", {}).get("scaleTargetRef", {}).get("name") == dep.get("metadata", {}).get("name"),
      "HPA targets the Deployment")
pdb = doc("deploy/k8s/pdb.yaml", "PodDisruptionBudget")
check(pdb.get("spec", {}).get("selector", {}).get("matchLabels", {}).items() <= labels.items(),
      "PodDisruptionBudget selects the Deployment's pods")
sm = doc("deploy/k8s/servicemonitor.yaml", "ServiceMonitor")
check(sm.get("apiVersion") == "monitoring.coreos.com/v1", "ServiceMonitor is monitoring.coreos.com/v1")
check(sm.get("spec", {}).get("selector", {}).get("matchLabels", {}).items() <= svc.get("metadata", {}).get("labels", {}).items(),
      "ServiceMonitor selects the Service")
check(all(e.get("port") in admin_svc for e in sm.get("spec", {}).get("endpoints", [{}])),
      "ServiceMonitor scrapes the Service's admin port", sm.get("spec", {}).get("endpoints"))
kus = doc("deploy/k8s/kustomization.yaml")
k8s_files = sorted(f for f in os.listdir(os.path.join(DEPLOY, "k8s")) if f.endswith(".yaml") and f != "kustomization.yaml")
check(sorted(kus.get("resources", [])) == k8s_files, "kustomization.yaml lists every manifest", kus.get("resources"))

# ---- rules ------------------------------------------------------------------------------
rules = doc("deploy/prometheus/rules.yaml")
pr = doc("deploy/k8s/prometheusrule.yaml", "PrometheusRule")
check(pr.get("apiVersion") == "monitoring.coreos.com/v1", "PrometheusRule is monitoring.coreos.com/v1")
check(pr.get("spec") == rules, "PrometheusRule spec equals deploy/prometheus/rules.yaml")
alerts = {r.get("alert"): r for g in rules.get("groups", []) for r in g.get("rules", [])}
for name, needle in [("BatchgateUpstreamErrorRatioHigh", "batchgate_upstream_requests_total"),
                     ("BatchgateCallersRejected", "rate(batchgate_callers_rejected_total"),
                     ("BatchgateBatchesNearSizeOne", "batchgate_batch_size_count"),
                     ("BatchgateDown", 'up{job="batchgate"}')]:
    check(name in alerts and needle in alerts[name].get("expr", ""), f"alert {name} uses {needle}")

# ---- compose + its Prometheus ----------------------------------------------------------
comp = doc("deploy/docker-compose.yaml")
svcs = comp.get("services", {})
check({"gateway", "upstream", "prometheus"} <= set(svcs), "docker-compose has gateway, upstream, prometheus", list(svcs))
check(svcs.get("upstream", {}).get("image") == svcs.get("gateway", {}).get("image"), "upstream uses the gateway image")
check("batchgate-mock-upstream" in json.dumps(svcs.get("upstream", {})), "upstream runs batchgate-mock-upstream")
check(any("/etc/batchgate/config.yaml" in v and "config/compose.yaml" in v for v in svcs.get("gateway", {}).get("volumes", [])),
      "gateway mounts config/compose.yaml at /etc/batchgate/config.yaml")
published = [p for s in svcs.values() for p in s.get("ports", [])]
check(all(str(p).startswith("127.0.0.1:") for p in published), "compose publishes ports on 127.0.0.1 only", published)
prom = doc("deploy/prometheus.yml")
targets = [t for sc_ in prom.get("scrape_configs", []) if sc_.get("job_name") == "batchgate"
           for s in sc_.get("static_configs", []) for t in s.get("targets", [])]
check(targets == [f"gateway:{port_of(compose_cfg['admin_listen'])}"], "prometheus.yml scrapes job batchgate at the gateway admin port", targets)

# ---- Grafana dashboard ------------------------------------------------------------------
try:
    dash = json.loads(read(os.path.join(DEPLOY, "grafana/batchgate-dashboard.json")))
    check(True, "deploy/grafana/batchgate-dashboard.json parses as JSON")
except (OSError, ValueError) as e:
    dash = {}
    check(False, "deploy/grafana/batchgate-dashboard.json parses as JSON", str(e))
check(36 <= dash.get("schemaVersion", 0) <= 41, f"dashboard schemaVersion {dash.get('schemaVersion')} is ~38")
tvars = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
check(tvars.get("datasource", {}).get("type") == "datasource" and tvars["datasource"].get("query") == "prometheus",
      "dashboard has a Prometheus datasource variable")
panels = dash.get("panels", [])
check(len({p.get("id") for p in panels}) == len(panels), "dashboard panel ids are unique")
by_title = {p.get("title", "").lower(): p for p in panels}
wanted = {
    "request rate": ["batchgate_requests_total"],
    "batch size": ["batchgate_batch_size_sum", "batchgate_batch_size_count", "histogram_quantile(0.9",
                   "batchgate_batch_size_bucket"],
    "batch wait": ["histogram_quantile(0.5", "histogram_quantile(0.99", "batchgate_batch_wait_seconds_bucket"],
    "calls saved": ["batchgate_upstream_calls_saved_total"],
    "upstream calls vs client requests": ["batchgate_upstream_requests_total", "batchgate_requests_total"],
    "error ratio": ["batchgate_upstream_requests_total", 'status!~"2.."'],
    "waiting callers": ["batchgate_waiting_callers"],
}
for key, needles in wanted.items():
    p = next((p for t, p in by_title.items() if key in t), None)
    exprs = " ".join(t.get("expr", "") for t in (p or {}).get("targets", []))
    missing = [n for n in needles if n not in exprs]
    check(p is not None and not missing, f"dashboard panel '{key}' queries {', '.join(needles)}",
          f"panel missing" if p is None else f"missing {missing}")
for p in panels:
    ok = p.get("datasource", {}).get("uid") == "${datasource}" and p.get("targets") and all(
        t.get("expr") and t.get("refId") for t in p["targets"]) and {"x", "y", "w", "h"} <= set(p.get("gridPos", {}))
    check(bool(ok), f"dashboard panel '{p.get('title')}' uses $datasource, has gridPos and targets")

# ---- Dockerfile vs scripts --------------------------------------------------------------
def logical_lines(text):
    return [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.strip().startswith("#")]


def commands(line):
    """Split a shell line on && / ; into token lists, dropping redirections."""
    out = []
    for part in re.split(r"&&|;|\|\|", line):
        try:
            toks = shlex.split(part, comments=True)
        except ValueError:  # prose with an apostrophe (a heredoc): not a command we look for
            continue
        toks = [t for t in toks if not re.match(r"^\d?>", t)]
        if toks and toks[0] == "RUN":
            toks = toks[1:]
        if toks:
            out.append(toks)
    return out


def build_steps(lines):
    lines = [l for l in lines if re.search(r"\b(cmake|ninja) -", l)]
    cm_ = [c for l in lines for c in commands(l) if c[0] == "cmake"]
    nj = [c for l in lines for c in commands(l) if c[0] == "ninja"]
    return cm_, nj


def cmake_flags(c):
    flags, it = set(), iter(c[1:])
    for t in it:
        if t in ("-G", "-S", "-B"):
            v = next(it, "")
            if t == "-G":
                flags.add(f"-G {v}")
        elif t.startswith("-D"):
            flags.add(t)
    return flags


def opt(c, name):
    return c[c.index(name) + 1] if name in c else None


dtext = read(os.path.join(DEPLOY, "Dockerfile"))
dlines = logical_lines(dtext)
stages, cur = [], None
for l in dlines:
    if l.upper().startswith("FROM "):
        cur = []
        stages.append((l, cur))
    elif cur is not None:
        cur.append(l)
check(len(stages) >= 2 and all("debian:bookworm" in f for f, _ in stages), "Dockerfile is multi-stage on debian:bookworm",
      [f for f, _ in stages])
build_from, build = stages[0]
_, runtime = stages[-1]

d_cmake, d_ninja = build_steps(build)
demo_cmake, demo_ninja = build_steps(logical_lines(read(os.path.join(SRC, "scripts/demo.sh"))))
check(len(d_cmake) == 1 and len(d_ninja) == 1, "Dockerfile has one cmake and one ninja step")
check(bool(demo_cmake) and bool(demo_ninja), "scripts/demo.sh has cmake and ninja steps")
if d_cmake and d_ninja and demo_cmake and demo_ninja:
    dc, dn, sc_c, sn = d_cmake[0], d_ninja[0], demo_cmake[0], demo_ninja[0]
    check("-DCMAKE_BUILD_TYPE=Release" in dc and "-DBATCHGATE_TESTS=OFF" in dc,
          "Dockerfile cmake uses -DCMAKE_BUILD_TYPE=Release -DBATCHGATE_TESTS=OFF", " ".join(dc))
    check(cmake_flags(dc) == cmake_flags(sc_c), "Dockerfile cmake generator/-D flags equal scripts/demo.sh's",
          f"{sorted(cmake_flags(dc))} vs {sorted(cmake_flags(sc_c))}")
    check(opt(dn, "-C") == opt(dc, "-B"), "Dockerfile ninja -C dir is the cmake -B dir")
    d_targets = [t for t in dn[1:] if t not in ("-C", opt(dn, "-C"))]
    s_targets = [t for t in sn[1:] if t not in ("-C", opt(sn, "-C"))]
    check(d_targets == s_targets, f"Dockerfile ninja targets equal scripts/demo.sh's ({' '.join(s_targets)})",
          f"{d_targets} vs {s_targets}")
    bdir = opt(dc, "-B")
    workdir = next((l.split(None, 1)[1] for l in build if l.upper().startswith("WORKDIR ")), "/")
    copied = " ".join(l for l in runtime if l.upper().startswith("COPY --FROM"))
    check(all(f"{os.path.join(workdir, bdir)}/{b}" in copied for b in ("batchgate", "batchgate-mock-upstream")),
          "runtime stage copies batchgate and batchgate-mock-upstream from the build dir", copied)

deps_text = read(os.path.join(SRC, "scripts/install-deps.sh"))
m = re.search(r"pkgs=\((.*?)\)", deps_text, re.S)
deps = [p for p in shlex.split(m.group(1)) if not p.startswith("$")] if m else []
check(len(deps) >= 5, f"scripts/install-deps.sh lists {len(deps)} packages")


def apt_packages(lines):
    pk = []
    for l in lines:
        for c in commands(l):
            if "apt-get" in c and "install" in c:
                pk += [t for t in c[c.index("install") + 1:] if not t.startswith("-")]
    return pk


b_pk, r_pk = apt_packages(build), apt_packages(runtime)
missing = [p for p in deps if p not in b_pk]
check(not missing, "Dockerfile build stage installs every package of scripts/install-deps.sh", missing)
check(not [p for p in r_pk if p.endswith("-dev")] and {"libyaml-cpp0.7", "libprometheus-cpp-core1.0"} <= set(r_pk),
      "runtime stage installs runtime libraries only", r_pk)

# The binary's shared libraries must come from packages the runtime stage installs.
base = {"libc6", "libgcc-s1", "libstdc++6"}
try:
    ldd = subprocess.run(["ldd", BIN], capture_output=True, text=True, timeout=30).stdout
    libs = re.findall(r"=>\s+(/\S+)", ldd)
    need = set()
    for lib in libs:
        real = os.path.realpath(lib)
        for cand in (lib, real, lib.replace("/lib/", "/usr/lib/", 1), real.replace("/lib/", "/usr/lib/", 1)):
            r = subprocess.run(["dpkg", "-S", cand], capture_output=True, text=True)
            if r.returncode == 0:
                need.add(r.stdout.split(":")[0])
                break
        else:
            check(False, f"dpkg knows which package ships {lib}")
    # A sanitizer build (BATCHGATE_SANITIZE) links its runtime; the image never ships one.
    need = {p for p in need if not re.match(r"lib(a|ub|t)san\d*$", p)}
    miss = sorted(need - base - set(r_pk))
    check(bool(need) and not miss, f"runtime stage has the packages of every library batchgate links ({', '.join(sorted(need))})",
          f"missing {miss}")
except FileNotFoundError as e:
    check(False, "ldd/dpkg available to check runtime libraries", str(e))

# Every source directory the non-test build globs must be copied (and not dockerignored).
cml = read(os.path.join(SRC, "CMakeLists.txt")).split("option(BATCHGATE_TESTS")[0]
glob_dirs = sorted({os.path.dirname(p) for blk in re.findall(r"file\(GLOB(.*?)\)", cml, re.S)
                    for p in blk.split() if "*" in p})
copies = [shlex.split(l)[1:-1] for l in build if l.upper().startswith("COPY ") and "--from" not in l]
copied_src = [s.rstrip("/") for c in copies for s in c]
uncovered = [d for d in glob_dirs if not any(d == s or d.startswith(s + "/") or s == "." for s in copied_src)]
check(bool(glob_dirs) and not uncovered, f"Dockerfile copies every globbed source dir ({', '.join(glob_dirs)})", uncovered)
check("CMakeLists.txt" in copied_src or "." in copied_src, "Dockerfile copies CMakeLists.txt")
# ... and every directory those sources #include "dir/..." from.
inc_dirs = set()
for s in copied_src:
    for root, _, files in os.walk(os.path.join(SRC, s)):
        for name in files:
            if name.endswith((".cpp", ".hpp", ".h")):
                for inc in re.findall(r'#include\s+"([^"]+)"', read(os.path.join(root, name))):
                    if "/" in inc and os.path.exists(os.path.join(SRC, inc)):
                        inc_dirs.add(os.path.dirname(inc))
uncovered = sorted(d for d in inc_dirs if not any(d == s or d.startswith(s + "/") or s == "." for s in copied_src))
check(not uncovered, f"Dockerfile copies every directory the copied sources include from ({len(inc_dirs)} dirs)", uncovered)
ign_path = os.path.join(DEPLOY, "Dockerfile.dockerignore")
if os.path.exists(ign_path):
    allowed = [l[1:].rstrip("/") for l in read(ign_path).splitlines() if l.startswith("!")]
    all_src = copied_src + [shlex.split(l)[1] for l in runtime if l.upper().startswith("COPY ") and "--from" not in l]
    blocked = [s for s in all_src if not any(s == a or s.startswith(a + "/") for a in allowed)]
    check(not blocked, "Dockerfile.dockerignore lets every COPY source through", blocked)

entry = next((l.split(None, 1)[1] for l in runtime if l.upper().startswith("ENTRYPOINT ")), "")
check(json.loads(entry or "null") == ["batchgate", "--config", "/etc/batchgate/config.yaml"],
      'ENTRYPOINT ["batchgate","--config","/etc/batchgate/config.yaml"]', entry)
user = next((l.split(None, 1)[1] for l in reversed(runtime) if l.upper().startswith("USER ")), "root")
check(user.split(":")[0] not in ("root", "0"), f"runtime stage runs as non-root user {user}")
expose = {t for l in runtime if l.upper().startswith("EXPOSE ") for t in l.split()[1:]}
check({"8080", "9090"} <= expose, "EXPOSE 8080 9090", expose)
check(any(l.upper() == "STOPSIGNAL SIGTERM" for l in runtime), "STOPSIGNAL SIGTERM")
cfg_copy = [shlex.split(l) for l in runtime if l.upper().startswith("COPY ") and l.rstrip().endswith("/etc/batchgate/config.yaml")]
check(bool(cfg_copy) and all(os.path.exists(os.path.join(SRC, c[1])) for c in cfg_copy),
      "runtime stage puts a config at /etc/batchgate/config.yaml", cfg_copy)

print()
if failures:
    print(f"{len(failures)} check(s) failed:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("all deploy/ file checks passed")
