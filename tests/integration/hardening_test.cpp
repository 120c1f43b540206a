// Failure modes a production proxy meets and a happy-path test never does: upstreams that drop
// idle keep-alive connections, callers whose deadline passes while their batch queues, $batch
// calls whose sub-requests outlive the envelope, sub-requests Beast refuses to build, and HEAD
// answers on a kept-alive connection. Real sockets, real mock upstream.
#include <atomic>
#include <chrono>
#include <set>
#include <thread>
#include <vector>

#include "tests/integration/examples.hpp"

using namespace batchgate::testing;
using batchgate::mock::mock_options;
using batchgate::mock::mock_upstream;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

const char* yaml = R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 2
upstreams:
  api:
    url: http://127.0.0.1:{{PORT}}
    request_timeout: 5s
routes:
  - name: users
    match: {method: [GET, HEAD], path: "/users/{id}"}
    upstream: api
    mode: coalesce
    coalesce:
      key: {path: id}
      max_wait: {{WAIT}}
      max_concurrent_batches: {{CONCURRENCY}}
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
  - name: activities
    match: {method: GET, path: "/api/v1/activities/{id}"}
    upstream: api
    mode: coalesce
    coalesce:
      key: {path: id}
      max_wait: 2ms
      request:
        method: POST
        path: /api/v1/batch/get
        encoding: json_body
        body: {resource_type: activities, ids: "{items}"}
      response: {items: /results, key: /id, status: /status, status_map: {success: 200, error: 502},
                 status_code: /status_code, body: /data, error: /error}
  - name: batch
    match: {method: POST, path: "/$batch"}
    mode: batch_envelope
    batch_envelope: {timeout: {{ENVELOPE_TIMEOUT}}}
  - name: everything
    match: {prefix: /}
    upstream: api
)";

// The config's text, for a test that edits more than the placeholders.
std::string config_text(unsigned short port, std::map<std::string, std::string> values = {}) {
    values.emplace("PORT", std::to_string(port));
    values.emplace("WAIT", "2ms");
    values.emplace("CONCURRENCY", "4");
    values.emplace("ENVELOPE_TIMEOUT", "5s");
    return fill(yaml, values);
}

std::shared_ptr<const batchgate::config::gateway_config> config_for(unsigned short port,
                                                                    std::map<std::string, std::string> values = {}) {
    return load_yaml(config_text(port, std::move(values)));
}

// Polls a gauge until it reads `want` (bounded), for state the test cannot observe directly.
bool wait_for_metric(running_gateway& gw, const std::string& series, double want) {
    for (int i = 0; i < 300; ++i) {
        if (gw.metric(series) == want) return true;
        std::this_thread::sleep_for(10ms);
    }
    return false;
}

}  // namespace

// Node closes keep-alive connections after 5 s idle, nginx after 75 s. A POST batch call is not
// safe to repeat, so sent on such a connection it would fail for every caller of the batch:
// the pool must notice the closed connection before it lends it out.
TEST(Pool, UpstreamThatClosesIdleConnectionsNeverFailsAPostBatch) {
    mock_options o;
    o.idle_close = 50ms;
    mock_upstream up(o);
    running_gateway gw(config_for(up.port()));
    auto first = get(gw.port(), "/api/v1/activities/a1");
    ASSERT_EQ(first.status, 200) << first.body;
    for (int round = 0; round < 3; ++round) {
        // Real time on purpose: the upstream's idle timer runs on the wall clock.
        std::this_thread::sleep_for(200ms);
        auto r = get(gw.port(), "/api/v1/activities/a2");
        ASSERT_EQ(r.status, 200) << "round " << round << ": " << r.body;
        EXPECT_EQ(r.json()["id"], "a2");
    }
    EXPECT_EQ(up.count("POST", "/api/v1/batch/get"), 4u);
}

// Every idle connection of a pool closed by the upstream: a call that takes a dead one keeps its
// slot for the next idle one or a new connection (the peek runs outside the pool's lock), so
// every call is answered, the pool still carries max_connections calls at once, and no slot is
// left counted in use.
TEST(Pool, DeadIdleConnectionsAtTheCapLoseNoSlot) {
    mock_options o;
    o.idle_close = 50ms;
    mock_upstream up(o);
    std::string text = config_text(up.port());
    replace_once(text, "    request_timeout: 5s", "    request_timeout: 5s\n    max_connections: 3");
    running_gateway gw(load_yaml(text));
    const std::string idle = R"(batchgate_upstream_connections{state="idle",upstream="api"})";
    const std::string in_use = R"(batchgate_upstream_connections{state="in_use",upstream="api"})";
    auto three_at_once = [&](int round) {  // passthrough calls, held by the upstream until all three are in
        up.hold();
        std::vector<response> answers(3);
        std::vector<std::thread> callers;
        for (int i = 0; i < 3; ++i)
            callers.emplace_back([&, i] { answers[i] = get(gw.port(), "/echo/" + std::to_string(round * 3 + i)); });
        EXPECT_TRUE(eventually(5s, [&] { return up.held() == 3; })) << "round " << round << ": " << up.held() << " in";
        up.release_held();
        for (auto& c : callers) c.join();
        for (const auto& a : answers) EXPECT_EQ(a.status, 200) << "round " << round << ": " << a.body;
    };
    three_at_once(0);
    ASSERT_TRUE(wait_for_metric(gw, idle, 3));
    // Real time on purpose: the upstream's idle timer runs on the wall clock.
    std::this_thread::sleep_for(200ms);
    three_at_once(1);  // each takes dead connections until none is left, then connects
    three_at_once(2);
    EXPECT_TRUE(wait_for_metric(gw, in_use, 0));
}

// max_connections bounds the requests in flight, not the connections of one worker thread: with
// idle connections left on several threads, calls past the cap queue for a slot (and get the
// next connection that frees) instead of taking an idle connection of their own thread (found
// by review: they took it, and four requests ran at once against a cap of two).
TEST(Pool, MaxConnectionsBoundsTheRequestsInFlightOverEveryThread) {
    mock_upstream up;
    std::string text = config_text(up.port());
    replace_once(text, "    request_timeout: 5s", "    request_timeout: 5s\n    max_connections: 2");
    replace_once(text, "worker_threads: 2", "worker_threads: 4");
    running_gateway gw(load_yaml(text));
    // One after another, each on a new client connection: idle upstream connections on the
    // threads those land on.
    for (int i = 0; i < 12; ++i) ASSERT_EQ(get(gw.port(), "/echo/seed" + std::to_string(i)).status, 200);
    up.hold();
    std::vector<response> answers(4);
    std::vector<std::thread> callers;
    for (int i = 0; i < 4; ++i) callers.emplace_back([&, i] { answers[i] = get(gw.port(), "/echo/" + std::to_string(i)); });
    const std::string queued = R"(batchgate_upstream_connections{state="queued",upstream="api"})";
    EXPECT_TRUE(eventually(5s, [&] { return up.held() >= 2 && gw.metric(queued) == 2; }))
        << up.held() << " at the upstream, " << gw.metric(queued) << " queued";
    EXPECT_EQ(up.held(), 2u);
    up.release_held();
    for (auto& c : callers) c.join();
    for (const auto& a : answers) EXPECT_EQ(a.status, 200) << a.body;
    EXPECT_TRUE(wait_for_metric(gw, R"(batchgate_upstream_connections{state="in_use",upstream="api"})", 0));
}

// A caller whose deadline passed while its batch waited behind max_concurrent_batches has
// already been answered 504: its batch must not be sent afterwards (a write would be applied
// with nobody told), and it must stop counting toward max_waiting. The $batch envelope, whose
// sub-request is that caller, answers at its own deadline with what it has.
TEST(Batcher, BatchWhoseCallersGaveUpInTheQueueIsNeverSent) {
    mock_upstream up;
    running_gateway gw(config_for(up.port(), {{"CONCURRENCY", "1"}, {"ENVELOPE_TIMEOUT", "100ms"}}));

    up.hold();
    std::atomic<bool> alice_done{false};
    std::thread alice([&] {
        // Takes the route's only slot until the mock lets it go.
        auto r = get(gw.port(), "/users/1", {{"Authorization", "Bearer alice"}});
        EXPECT_EQ(r.status, 200) << r.body;
        alice_done = true;
    });
    ASSERT_TRUE(eventually(5s, [&] { return up.held() == 1; }));

    // Answered at its own 100 ms deadline while alice's batch is still in flight.
    auto env = send_request(gw.port(), "POST", "/$batch", R"({"requests":[{"id":"b","method":"GET","url":"/users/2"}]})",
                            {{"Authorization", "Bearer bob"}, {"Content-Type", "application/json"}});
    ASSERT_EQ(env.status, 200) << env.body;
    auto entry = env.json()["responses"][0];
    EXPECT_EQ(entry["id"], "b");
    EXPECT_EQ(entry["status"], 504) << entry.dump();
    EXPECT_FALSE(alice_done.load()) << "the envelope was answered only after alice's batch";

    up.release_held();
    alice.join();
    // Bob's queued batch is dropped when the slot frees, and the route forgets him.
    EXPECT_TRUE(wait_for_metric(gw, R"(batchgate_waiting_callers{route="users"})", 0));
    // Carol's batch comes after bob's in the route's one slot: had bob's been kept, it would go first.
    auto later = get(gw.port(), "/users/3", {{"Authorization", "Bearer carol"}});
    EXPECT_EQ(later.status, 200) << later.body;
    auto users_calls = calls_to(up, "GET", "/users");
    ASSERT_EQ(users_calls.size(), 2u) << "bob's batch went upstream after bob was answered";
    EXPECT_EQ(query_values(users_calls[1].target, "ids", true), std::vector<std::string>{"3"});
}

// Beast refuses to frame a TRACE with a body. Such a sub-request, started from the completion
// of another caller's batch, used to throw through the batcher's answer loop and leave the
// route's in-flight count stuck: after four of them, the route never sent again.
TEST(BatchEnvelope, SubRequestBeastCannotBuildGets400AndTheRouteKeepsServing) {
    mock_upstream up;
    running_gateway gw(config_for(up.port()));
    const std::string body = R"({"requests":[{"id":"a","method":"GET","url":"/users/1"},
        {"id":"b","method":"TRACE","url":"/users/2","body":{"x":1},"dependsOn":"a"}]})";
    for (int i = 0; i < 6; ++i) {
        auto r = send_request(gw.port(), "POST", "/$batch", body, {{"Content-Type", "application/json"}});
        ASSERT_EQ(r.status, 200) << r.body;
        auto responses = r.json()["responses"];
        EXPECT_EQ(responses[0]["status"], 200) << r.body;
        EXPECT_EQ(responses[1]["status"], 400) << r.body;
    }
    auto results = concurrently(10, [&](int i) { return get(gw.port(), "/users/" + std::to_string(10 + i)); });
    for (int i = 0; i < 10; ++i) {
        ASSERT_EQ(results[i].status, 200) << results[i].body;
        EXPECT_EQ(results[i].json()["id"], std::to_string(10 + i));
    }
}

// A HEAD answer keeps its Content-Length and carries no body; a body would be read by the
// client as the start of the next answer on the connection.
TEST(Head, AnswersCarryNoBodyAndTheConnectionStaysInStep) {
    mock_upstream up;
    running_gateway gw(config_for(up.port()));
    const std::string raw = send_raw(gw.port(),
                                     "HEAD /users/7 HTTP/1.1\r\nHost: t\r\n\r\n"
                                     "HEAD /nothing-here-either HTTP/1.1\r\nHost: t\r\n\r\n"
                                     "GET /users/8 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    // Three heads, and only the GET's body.
    std::size_t heads = 0;
    for (auto pos = raw.find("HTTP/1.1 "); pos != std::string::npos; pos = raw.find("HTTP/1.1 ", pos + 1)) ++heads;
    EXPECT_EQ(heads, 3u) << raw;
    EXPECT_EQ(raw.find(R"("id":"7")"), std::string::npos) << raw;
    EXPECT_NE(raw.find(R"({"id":"8","name":"user-8"})"), std::string::npos) << raw;
    EXPECT_EQ(raw.rfind("\r\n\r\n") + 4 + std::string(R"({"id":"8","name":"user-8"})").size(), raw.size()) << raw;
}

// GET /users/5%2C6 would read upstream as ids 5 and 6 and shift every positional answer.
TEST(QueryList, KeyHoldingTheSeparatorIsRefusedForThatCallerOnly) {
    mock_upstream up;
    running_gateway gw(config_for(up.port(), {{"WAIT", "30ms"}}));
    auto results = concurrently(3, [&](int i) {
        return get(gw.port(), i == 0 ? "/users/5%2C6" : "/users/" + std::to_string(i));
    });
    EXPECT_EQ(results[0].status, 400) << results[0].body;
    EXPECT_NE(results[0].body.find("separator"), std::string::npos) << results[0].body;
    EXPECT_EQ(results[1].json()["id"], "1");
    EXPECT_EQ(results[2].json()["id"], "2");
    for (const auto& c : up.calls())
        EXPECT_EQ(c.target.find("5%2C6"), std::string::npos) << c.target;
}

// Clients and HTTP/2 hops split cookies over several lines. Two users who share the first line
// (theme=dark) but not the second (their session) must never share a batch call, and the batch
// call must carry every line the caller sent.
TEST(Partition, RepeatedCookieAndAuthorizationLinesAllCount) {
    mock_upstream up;
    running_gateway gw(config_for(up.port(), {{"WAIT", "30ms"}}));
    auto raw_get = [&](const std::string& path, const std::string& header_lines) {
        return send_raw(gw.port(), "GET " + path + " HTTP/1.1\r\nHost: t\r\n" + header_lines + "Connection: close\r\n\r\n");
    };
    auto answers = concurrently(4, [&](int i) {
        response r;
        std::string raw;
        switch (i) {
            case 0: raw = raw_get("/users/1", "Cookie: theme=dark\r\nCookie: session=ALICE\r\n"); break;
            case 1: raw = raw_get("/users/2", "Cookie: theme=dark\r\nCookie: session=BOB\r\n"); break;
            case 2: raw = raw_get("/users/3", "Authorization: Basic x\r\nAuthorization: Bearer ALICE\r\n"); break;
            default: raw = raw_get("/users/4", "Authorization: Basic x\r\nAuthorization: Bearer BOB\r\n"); break;
        }
        r.status = raw.rfind("HTTP/1.1 200", 0) == 0 ? 200 : 0;
        auto id = raw.find("X-Batchgate-Batch-Id: ");
        if (id != std::string::npos) r.headers["batch"] = raw.substr(id + 22, raw.find("\r\n", id) - id - 22);
        r.body = raw;
        return r;
    });
    std::set<std::string> batches;
    for (const auto& a : answers) {
        ASSERT_EQ(a.status, 200) << a.body;
        batches.insert(a.header("batch"));
    }
    EXPECT_EQ(batches.size(), 4u) << "callers with different credentials shared a batch call";
    std::set<std::string> cookies, auths;
    for (const auto& c : up.calls()) {
        if (c.path != "/users") continue;
        if (c.headers.count("cookie")) cookies.insert(c.headers.at("cookie"));
        if (c.headers.count("authorization")) auths.insert(c.headers.at("authorization"));
    }
    EXPECT_EQ(cookies, (std::set<std::string>{"theme=dark; session=ALICE", "theme=dark; session=BOB"}));
    EXPECT_EQ(auths, (std::set<std::string>{"Basic x, Bearer ALICE", "Basic x, Bearer BOB"}));
}

// curl sends "Expect: 100-continue" before a body over 1 KiB and waits (1 s) for the go-ahead.
TEST(Expect, HundredContinueIsSentBeforeTheBodyIsRead) {
    mock_upstream up;
    running_gateway gw(config_for(up.port()));
    net::io_context ioc;
    auto s = connect_client(ioc, gw.port(), 2);
    const std::string body(3000, 'x');
    net::write(s, net::buffer("POST /echo/up HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3000\r\n\r\n"
                              + std::string()));
    char buf[256];
    beast::error_code ec;
    const auto n = s.read_some(net::buffer(buf), ec);
    ASSERT_FALSE(ec) << ec.message();
    EXPECT_EQ(std::string(buf, n), "HTTP/1.1 100 Continue\r\n\r\n");
    net::write(s, net::buffer(body));
    beast::flat_buffer b;
    http::response<http::string_body> res;
    http::read(s, b, res, ec);
    ASSERT_FALSE(ec) << ec.message();
    EXPECT_EQ(res.result_int(), 200);
    EXPECT_EQ(nlohmann::json::parse(res.body())["body"], body);
}

TEST(Http, RequestWithoutHostIs400AndAdminRefusesPostWith405) {
    mock_upstream up;
    running_gateway gw(config_for(up.port()));
    auto raw = send_raw(gw.port(), "GET /users/1 HTTP/1.1\r\n\r\n");
    EXPECT_EQ(raw.rfind("HTTP/1.1 400", 0), 0u) << raw;
    EXPECT_NE(raw.find("without a Host"), std::string::npos) << raw;
    EXPECT_EQ(send_raw(gw.port(), "GET /users/1 HTTP/1.0\r\n\r\n").rfind("HTTP/1.0 200", 0), 0u);  // 1.0 needs none
    auto twice = send_raw(gw.port(), "GET /users/1 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    EXPECT_EQ(twice.rfind("HTTP/1.1 400", 0), 0u) << twice;
    EXPECT_NE(twice.find("more than one Host"), std::string::npos) << twice;
    auto post = send_request(gw.admin_port(), "POST", "/healthz");
    EXPECT_EQ(post.status, 405);
    EXPECT_EQ(post.header("allow"), "GET, HEAD");
}

// Passthrough is cut at the upstream's request_timeout, not at the route's (longer) deadline.
TEST(Passthrough, UpstreamRequestTimeoutIsEnforced) {
    mock_options o;
    o.latency = 2s;
    mock_upstream up(o);
    running_gateway gw(load_yaml(fill(R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstreams:
  slow: {url: "http://127.0.0.1:{{PORT}}", request_timeout: 200ms}
routes:
  - {name: all, match: {prefix: /}, upstream: slow}
)",
                                      {{"PORT", std::to_string(up.port())}})));
    const auto started = std::chrono::steady_clock::now();
    auto r = get(gw.port(), "/echo/x");
    const auto took = std::chrono::steady_clock::now() - started;
    EXPECT_EQ(r.status, 504) << r.body;
    EXPECT_LT(took, 1s);
}

// A $batch call's sub-requests carry the outer call's credentials whole: both Cookie lines.
TEST(Partition, BatchSubRequestsInheritEveryCookieLine) {
    mock_upstream up;
    running_gateway gw(config_for(up.port()));
    const std::string body = R"({"requests":[{"id":"1","method":"GET","url":"/echo/z"}]})";
    auto raw = send_raw(gw.port(), "POST /$batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                                   "Cookie: a=1\r\nCookie: b=2\r\nAuthorization: A\r\nAuthorization: B\r\n"
                                   "Connection: close\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    auto json_start = raw.find("\r\n\r\n");
    ASSERT_NE(json_start, std::string::npos) << raw;
    auto answer = nlohmann::json::parse(raw.substr(json_start + 4), nullptr, false);
    ASSERT_TRUE(answer.is_object()) << raw;
    auto echoed = answer["responses"][0]["body"]["headers"];
    EXPECT_EQ(echoed["cookie"], "a=1; b=2") << raw;
    EXPECT_EQ(echoed["authorization"], "A, B") << raw;
}
