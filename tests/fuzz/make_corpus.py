#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target (tests/fuzz/corpus/<target>/) from examples/,
tests/testdata/, a few configs of its own (passthrough, listen_tls) and the reference API shapes
(docs: reference APIs A-F and the $batch envelope).
Fields are separated by 0x1F, as tests/fuzz/fuzz_common.hpp reads them. Run from anywhere;
rewrites the corpus directories (seeds found later by the fuzzer are not kept here)."""
import glob
import json
import os
import shutil

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")
SEP = b"\x1f"


def write(target, name, data):
    os.makedirs(os.path.join(OUT, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data)


def fields(*parts):
    return SEP.join(p.encode() if isinstance(p, str) else p for p in parts)


def j(v):
    return json.dumps(v, separators=(",", ":"))


# The route order of tests/fuzz/fuzz_common.hpp examples(): sorted examples, then write_routes.
config_files = sorted(glob.glob(os.path.join(ROOT, "examples", "*.yaml"))) + [
    os.path.join(ROOT, "tests", "testdata", "write_routes.yaml")]
coalesce = []
for f in config_files:
    with open(f) as fh:
        doc = yaml.safe_load(fh)
    for r in doc.get("routes", []):
        if r.get("mode") == "coalesce":
            coalesce.append(r["name"])

for target in os.listdir(OUT) if os.path.isdir(OUT) else []:
    shutil.rmtree(os.path.join(OUT, target))

# --- config: every example and test config, good and bad -------------------------------------
for f in config_files[:-1] + sorted(glob.glob(os.path.join(ROOT, "tests", "testdata", "*.yaml"))):
    with open(f, "rb") as fh:
        write("config", os.path.basename(os.path.dirname(f)) + "-" + os.path.basename(f), fh.read())

# issue 12: routes[].passthrough and listen_tls. The listen_tls files need not exist: what the
# loader says about missing, wrong and unmatched files is fuzzed too (ISRG Root X1 is a real PEM
# certificate on Debian, without its key).
PLAIN_ROUTES = """upstreams:
  api: {url: "http://127.0.0.1:9000"}
routes:
  - name: files
    match: {prefix: /files/}
    upstream: api
    passthrough: {max_body: 10MiB, max_response: 0, idle_timeout: 90s, upgrade: false}
  - name: rest
    match: {prefix: /}
    upstream: api
    passthrough: {}
"""
extra_configs = {
    "passthrough.yaml": PLAIN_ROUTES,
    "passthrough-wrong-mode.yaml": PLAIN_ROUTES.replace("    passthrough: {}\n",
                                                        "    mode: batch_envelope\n    passthrough: {upgrade: true}\n"),
    "listen_tls.yaml": "listen: 0.0.0.0:8443\nlisten_tls:\n  cert_chain: /etc/batchgate/chain.pem\n"
                       "  key: /etc/batchgate/key.pem\n  protocols: [TLSv1.2, TLSv1.3]\n" + PLAIN_ROUTES,
    "listen_tls-flow.yaml": "listen_tls: {cert_chain: /etc/ssl/certs/ISRG_Root_X1.pem, key: /etc/ssl/certs/ISRG_Root_X1.pem, "
                            "protocols: TLSv1.3}\n" + PLAIN_ROUTES,
    "listen_tls-bad.yaml": "listen_tls: {cert_chain: \"\", protocols: [TLSv1.1, TLSv1.3, TLSv1.3], ciphers: HIGH}\n" + PLAIN_ROUTES,
}
# issue 14: coalesce.shadow, set and mistyped.
SHADOW_ROUTE = """upstreams:
  api: {url: "http://127.0.0.1:9000"}
routes:
  - name: users
    match: {method: GET, path: "/users/{id}"}
    upstream: api
    mode: coalesce
    coalesce:
      shadow: true
      key: {path: id}
      flush: adaptive
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
"""
extra_configs["shadow.yaml"] = SHADOW_ROUTE
extra_configs["shadow-bad.yaml"] = SHADOW_ROUTE.replace("shadow: true", "shadow: [maybe]")
for name, text in extra_configs.items():
    write("config", "seed-" + name, text)

# --- routes: method byte + request target ---------------------------------------------------
targets = ["/users/7", "/users/7?fields=a,b", "/legacy/users/%37", "/api/v1/activities/a1?fields=id,name",
           "/api/characters/3/abilities/4", "/api/client/progress",
           "/api/v1/workspaces/550e8400-e29b-41d4-a716-446655440000/documents/doc_9",
           "/api/v1/org/acme/goals/g-42", "/$batch", "/users/..%2f..%2fadmin", "/a/%2e%2e/b", "/a/%252e%252e/b",
           "/x?a=1&b=+2&a=%41&&c", "/users/{id}", "/api/v1/org/{org}/goals/{goal_id}", "/", "", "?q", "/users/7/",
           "/users//7", "/%zz%4", "/a\\..\\b"]
for i, t in enumerate(targets):
    write("routes", f"target-{i:02d}", bytes([i % 8]) + t.encode())

# --- json_pointer: pointer, document ----------------------------------------------------------
B_ANSWER = {"results": [{"id": "a1", "status": "success", "data": {"id": "a1", "name": "x"}},
                        {"id": "a2", "status": "error", "error": "not found", "status_code": 404}],
            "total_requested": 2, "total_succeeded": 1, "total_failed": 1, "processed_at": "2026-02-16T10:00:00Z"}
pointers = [("/results", B_ANSWER), ("/results/1/status_code", B_ANSWER), ("/results/01", B_ANSWER),
            ("/results/-", B_ANSWER), ("", [1, 2]), ("/0/id", [{"id": "1"}]), ("/a~1b/~0c", {"a/b": {"~c": 1}}),
            ("/~2", {}), ("/a~", {"a~": 1}), ("results", B_ANSWER), ("/", {"": 5}), ("//", {"": {"": 6}}),
            ("/18446744073709551616", [0]), ("/9999999999999999999", [0]), ("/0", "text"), ("/ids/0", {"ids": ["a1"]})]
for i, (p, d) in enumerate(pointers):
    write("json_pointer", f"pointer-{i:02d}", fields(p, j(d)))

# --- json_text: depth byte (0-7: limits.max_json_depth 1-8, else the cap), JSON text ----------
json_texts = [j(B_ANSWER), '[{"id":"7","name":"user-7"},{"id":8}]', '{"a":1,"a":2}', '{"a":1,"\\u0061":2}',
              '\ufeff [1, -0, 1.5e3, 18446744073709551616]', '"\\ud83d\\ude00 \\u00e9 \u00e9"', '"\\udc00"',
              '[1e999]', '[' + '9' * 320 + ']', '[[[[[[[[[1]]]]]]]]]', '{"a":[{"b":{"c":null}}]} x', '[1,]',
              '{"x":"a\\"b","x":true}', '"\xc3\x28"', '[01]', '\t\n{ }\r ', '[true,false,null]', '"\x00"']
for i, t in enumerate(json_texts):
    write("json_text", f"text-{i:02d}", bytes([8 if i % 3 else i % 8]) + t.encode("utf-8", "surrogateescape"))

# --- codec and split: per reference API ------------------------------------------------------
AUTH = "Authorization: Bearer token-1\nCookie: session=abc\nX-Request-Id: r-1"
EVENT = {"type": "lesson_progress", "courseId": "foundations", "lessonId": "lesson-video", "userId": "demo-user",
         "percent": 42, "position": 185, "clientEventId": "e-1", "timestamp": 1730956800000}
callers = {
    "users": [("GET", "/users/7", AUTH, "", ""), ("GET", "/users/a%2Cb", "", "", ""), ("GET", "/users/..", "", "", "")],
    "users-repeated-param": [("GET", "/legacy/users/7", AUTH, "", "")],
    "activities": [("GET", "/api/v1/activities/a1?fields=id,name", AUTH, "", ""),
                   ("GET", "/api/v1/activities/a2", "", "", "")],
    "abilities": [("PATCH", "/api/characters/3/abilities/4", AUTH,
                   j({"action": "increment", "data": {"score": 5, "experience_points": 75}}), ""),
                  ("PATCH", "/api/characters/3/abilities/x", "", j({"action": "decrement"}), ""),
                  ("PATCH", "/api/characters/3/abilities/4", "", "not json", "")],
    "progress": [("POST", "/api/client/progress", AUTH, j(EVENT), ""),
                 ("POST", "/api/client/progress", "", j({**EVENT, "clientEventId": 17}), ""),
                 ("POST", "/api/client/progress", "", j({"type": "x"}), "")],
    "documents": [("POST", "/api/v1/workspaces/ws1/documents", AUTH, j({"title": "New", "content": "# Hello"}), ""),
                  ("PUT", "/api/v1/workspaces/ws1/documents/doc_9", "", j({"version": 3, "title": "x"}), ""),
                  ("DELETE", "/api/v1/workspaces/ws1/documents/doc_4", "", "", "ws=ws1&doc_id=doc_4")],
    "goals": [("POST", "/api/v1/org/acme/goals", AUTH,
               j({"period_id": "p-1", "type": "performance", "data": {"weight": 10}}), ""),
              ("PUT", "/api/v1/org/acme/goals/g-42", "", j({"period_id": "p-1", "type": "competency"}), ""),
              ("PUT", "/api/v1/org/acme/goals/g-42", "", j({"type": "competency"}), "org=acme&goal_id=g-42")],
}
answers = {
    "users": ("1\n7\n9", j([{"id": "1", "name": "a"}, {"id": "7", "name": "b"}, {"id": 9}, {"id": "7", "name": "c"}])),
    "users-repeated-param": ("1\n7", j([{"id": "7", "name": "b"}])),
    "activities": ("a1\na2\na3", j(B_ANSWER)),
    "abilities": ("4\n7", j({"status": "success", "results": [
        {"abilityId": 4, "action": "increment", "success": True,
         "data": {"id": 4, "ability_name": "Area Lore", "score": 5, "effective_score": 6, "experience_points": 75}},
        {"abilityId": 7, "action": "decrement", "success": False, "error": "invalid"}]})),
    "progress": ("e-1\ne-0\ne-9\ne-5", j({"accepted": ["e-1"], "duplicates": ["e-0"],
                                         "failed": [{"id": "e-9", "reason": "validation_error"}]})),
    "documents": ("op_1\nop_2\nop_3", j({"total": 3, "successful": 2, "failed": 1, "results": [
        {"client_id": "op_1", "status": "success", "document_id": "doc_abc", "version": 1},
        {"client_id": "op_2", "status": "conflict", "error": "version mismatch"},
        {"client_id": "op_3", "status": "success"}], "processing_time_ms": 120})),
    "goals": ("temp-1\ng-42\ng-13", j({"saved": [{"tempId": "temp-1", "serverId": "g-77", "data": {"w": 1}},
                                                 {"id": "g-42", "data": {"w": 2}}],
                                       "failed": [{"id": "g-13", "error": "weight out of range"}]})),
}
for i, name in enumerate(coalesce):
    for n, (method, target, headers, body, params) in enumerate(callers.get(name, [])):
        write("codec", f"{name}-{i:02d}-{n}", bytes([i]) + fields(method, target, headers, body, params))
    keys, body = answers.get(name, ("1", "[]"))
    write("split", f"{name}-{i:02d}", bytes([i]) + fields(keys, body))
    for n, bad in enumerate(["{}", "[]", "not json", j({"results": {}}), j([1, "2", None, [3]])]):
        write("split", f"{name}-{i:02d}-bad{n}", bytes([i]) + fields(keys, bad))

# --- batch_envelope: max_requests byte, statuses byte, body -----------------------------------
envelopes = [
    {"requests": [{"id": "1", "method": "GET", "url": "/users/7"},
                  {"id": "2", "method": "PATCH", "url": "/api/characters/3/abilities/4",
                   "body": {"action": "increment", "data": {"score": 5}},
                   "headers": {"Content-Type": "application/json"}, "dependsOn": ["1"]}]},
    {"requests": [{"id": 1, "method": "get", "url": "/users/7?x=1", "headers": {"Authorization": "Bearer b", "X-N": 5}},
                  {"id": "b", "method": "POST", "url": "/api/client/progress", "body": "raw text", "dependsOn": 1}]},
    {"requests": [{"id": "a", "method": "GET", "url": "/a", "dependsOn": ["b"]},
                  {"id": "b", "method": "GET", "url": "/b", "dependsOn": ["a"]}]},
    {"requests": [{"id": "a", "method": "GET", "url": "/a"}, {"id": "a", "method": "GET", "url": "/b"}]},
    {"requests": [{"id": "x", "method": "GET", "url": "http://evil/"}, {"id": "y", "method": "GET", "url": "//h/x"},
                  {"id": "z", "method": "GET", "url": "/a/%2e%2e/b#f"}]},
    {"requests": []}, {"requests": {}}, [],
    {"requests": [{"id": str(i), "method": "GET", "url": f"/users/{i}", "dependsOn": [str(i - 1)] if i else []}
                  for i in range(6)]},
]
for i, e in enumerate(envelopes):
    write("batch_envelope", f"envelope-{i:02d}", bytes([19, 0x5a]) + j(e).encode())
write("batch_envelope", "envelope-limit", bytes([0, 0]) + j(envelopes[0]).encode())

# --- fan_out: route mode (even byte) and template mode (odd byte) ------------------------------
B_CALL = {"resource_type": "activities", "ids": ["a1", "a2", "a/../x"], "fields": "id,name"}
write("fan_out", "activities-0", bytes([0]) + fields(AUTH, j(B_CALL), "200 " + j({"id": "a1", "name": "x"}),
                                                      "404 " + j({"error": "not found"}), "502 upstream down"))
write("fan_out", "activities-1", bytes([0]) + fields("", j({"resource_type": "users", "ids": ["a1"]})))
write("fan_out", "activities-2", bytes([0]) + fields("", j({"resource_type": "activities", "ids": [1, None, {"a": 1}, ""]}),
                                                      "200 {}", "200 []"))
POSTS = {"version": 2, "opts": {"mode": [1, True, None]}, "echo": "hi",
         "items": [{"id": 5, "slug": "a", "tag": "t 1", "kind": "k", "data": {"x": 1}, "flag": "true", "n": "1.5",
                    "raw": "[1]"},
                   {"id": "6", "slug": "..", "flag": "maybe"}, {"id": 7.0, "n": "x", "raw": "{"}]}
write("fan_out", "posts-0", bytes([2]) + fields("X-User: u-1\nAuthorization: Bearer z", j(POSTS),
                                                 "200 " + j({"data": [1]}), "409 " + j({"error": "conflict"}), "200 x"))
templates = [("x{a}y{p./b/0:int}z", {"a": "1 2", "b": [3]}),
             (j({"k": "{a:json}", "l": ["{missing}", "{b:string}", "{c:bool}", "{d:number}"]}),
              {"a": "[1]", "b": 5, "c": "true", "d": "2.5"}),
             ("{a:int}", {"a": "12x"}), ("{item./a}{body./b}{header.x}{", {}), ("}{a:float}", {"a": 1}),
             ("/api/{item}/{index}", {"item": "a/b", "index": 3}), ("{response./error:string}", {"response": {}})]
for i, (t, v) in enumerate(templates):
    write("fan_out", f"template-{i:02d}", bytes([1]) + fields(t, j(v)))

# --- request_head: limits/read-size byte, connection bytes ------------------------------------
H = "Host: gw\r\n"
requests = [
    "GET /users/7 HTTP/1.1\r\n" + H + "\r\n",
    "GET /users/7 HTTP/1.1\r\n" + H + "\r\nGET /users/8 HTTP/1.1\r\n" + H + "Connection: close\r\n\r\n",
    "POST /api/client/progress HTTP/1.1\r\n" + H + "Content-Type: application/json\r\nContent-Length: 23\r\n\r\n"
    '{"clientEventId":"e-1"}',
    "POST /$batch HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
    "POST /a HTTP/1.1\r\n" + H + "Transfer-Encoding: gzip\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + "\r\n",
    "POST /a HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked, identity\r\nContent-Length: 3\r\n\r\nabc",
    "POST /a HTTP/1.1\r\n" + H + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "POST /a HTTP/1.1\r\n" + H + "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "POST /a HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "GET / HTTP/1.0\r\n\r\n",
    "GET / HTTP/1.1\r\n\r\n",
    "GET / HTTP/1.1\r\n" + H + H + "\r\n",
    "PUT /x HTTP/1.1\r\n" + H + "Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    "GET http://gw/users/7 HTTP/1.1\r\n" + H + "X-Request-Id: abc\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
    "GET / HTTP/1.1\r\n" + H + "X-Folded: a\r\n b\r\n\r\n",
    "GET / HTTP/1.1\n" + "Host: gw\n\n",
    "POST / HTTP/1.1\r\n" + H + "Content-Length: 1, 1\r\n\r\nx",
    "POST / HTTP/1.1\r\n" + H + "Content-Length: 100\r\n\r\n" + "x" * 100,
    "GET HTTPS://d:81?x=1 HTTP/1.1\r\n" + H + "\r\nGET http://[::1]/a HTTP/1.1\r\n" + H + "\r\n",
    "GET http://u@gw/ HTTP/1.1\r\n" + H + "\r\n",
    "OPTIONS ftp://gw/ HTTP/1.1\r\n" + H + "\r\n",
    "OPTIONS http://gw:81 HTTP/1.1\r\n" + H + "\r\nGET http://:80/a HTTP/1.1\r\n" + H + "\r\n",
    "GET /users/1#x HTTP/1.1\r\n" + H + "\r\n",
    "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\nGET / HTTP/1.1\r\nHost: gw b\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: gw:8o\r\n\r\nGET / HTTP/1.1\r\nHost: a%zz\r\n\r\n",
    "GET http://a\\b/x HTTP/1.1\r\n" + H + "\r\nGET / HTTP/1.1\r\nHost: [fe80::1%25eth0]\r\n\r\n",
    # What goes upstream: forwarding fields the client sent, a Connection naming a field, Via.
    "GET /a HTTP/1.1\r\n" + H + "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: ,\r\nX-Forwarded-For: 10.0.0.2\r\n"
    "Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nVia: 1.0 edge\r\nX-Forwarded-Host: other\r\n"
    "X-Forwarded-Proto: https\r\nX-Request-Id: own\r\nKeep-Alive: 5\r\nTE: trailers\r\n\r\n",
    "GET /a HTTP/1.0\r\nX-Forwarded-Host: other\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: keep-alive\r\n\r\n",
]
for i, r in enumerate(requests):
    write("request_head", f"request-{i:02d}", bytes([i % 8]) + r.encode())

# --- upstream_answer: HEAD/read-size byte, the upstream's bytes ----------------------------------
answers = [
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 26\r\n\r\n"
    '{"id":"7","name":"user-7"}',
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
    "X-Keep: 2\r\n\r\n5;ext\r\nhello\r\n0\r\nTrailer-Field: t\r\n\r\n",
    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}",
    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nclose-delimited body",
    "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
    "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 100\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "HTTP/1.1 299 \r\nServer: up\r\nX-Request-Id: up-1\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: x\r\n"
    "Content-Length: 1\r\n\r\nx",
    "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nConnection: content-length\r\n\r\nok",
    "HTTP/1.1 200 OK\r\nConnection: x-a\r\nX-B: 1\r\nConnection: x-b, server\r\nX-A: 2\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.1 520 \r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
]
for i, a in enumerate(answers):
    write("upstream_answer", f"answer-{i:02d}", bytes([i % 8]) + a.encode())

# --- http_date: current-year byte (1950 + b), Retry-After value ------------------------------
dates = [
    "Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994",
    "Thu Dec 10 23:59:60 2026", "Tue, 29 Feb 2028 00:00:00 GMT", "Wed, 31 Apr 2037 10:00:00 GMT",
    "Friday, 01-Jan-77 00:00:00 GMT", "120", "Sun, 06 Nov 1994 08:49:37 UTC",
]
for i, d in enumerate(dates):
    write("http_date", f"date-{i:02d}", bytes([76]) + d.encode())
print("corpus written to", OUT)
