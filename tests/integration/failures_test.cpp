// Whole-batch failures and bad input: every caller gets exactly one clear answer.
#include <latch>
#include <thread>

#include "tests/integration/harness.hpp"

using namespace batchgate::testing;
using batchgate::mock::fault;
using batchgate::mock::mock_upstream;

namespace {

const char* yaml = R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 2
limits:
  max_body: 1KiB
  max_header: 2KiB
upstreams:
  api:
    url: http://127.0.0.1:{{PORT}}
    request_timeout: 300ms
    connect_timeout: 300ms
routes:
  - name: users
    match: {method: GET, path: "/users/{id}"}
    upstream: api
    mode: coalesce
    coalesce:
      key: {path: id}
      max_wait: 20ms
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
  - name: events
    match: {method: POST, path: /events}
    upstream: api
    mode: coalesce
    coalesce:
      key: {body: /clientEventId}
      max_wait: 1ms
      request: {method: POST, path: /api/v1/batch/get, encoding: json_body, body: {resource_type: activities, ids: "{items}"}}
      response: {items: /results, key: /id}
)";

std::vector<response> burst(unsigned short port, int n) {
    std::vector<response> out(n);
    std::latch go(n);
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i)
        threads.emplace_back([&, i] {
            go.arrive_and_wait();
            out[i] = get(port, "/users/" + std::to_string(i + 1));
        });
    for (auto& t : threads) t.join();
    return out;
}

void expect_all(const std::vector<response>& rs, int status, const std::string& code) {
    for (const auto& r : rs) {
        EXPECT_EQ(r.status, status) << r.body;
        auto j = r.json();
        EXPECT_EQ(j["error"], code) << r.body;
        EXPECT_EQ(j["route"], "users") << r.body;
        EXPECT_FALSE(j["message"].get<std::string>().empty());
    }
}

}  // namespace

TEST(Failures, Upstream500GivesEveryCaller502) {
    mock_upstream up;
    running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(up.port())}})));
    up.set_fault(fault::status_500);
    expect_all(burst(gw.port(), 8), 502, "upstream_bad_response");
}

TEST(Failures, GarbageJsonGivesEveryCaller502) {
    mock_upstream up;
    running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(up.port())}})));
    up.set_fault(fault::garbage);
    expect_all(burst(gw.port(), 8), 502, "upstream_bad_response");
}

TEST(Failures, StalledUpstreamGives504AtTheTimeout) {
    mock_upstream up;
    running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(up.port())}})));
    up.set_fault(fault::stall);
    expect_all(burst(gw.port(), 8), 504, "upstream_timeout");
    EXPECT_GT(gw.metric("batchgate_upstream_requests_total{route=\"users\",status=\"timeout\",upstream=\"api\"}"), 0);
}

TEST(Failures, ClosedConnectionGives502) {
    mock_upstream up;
    running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(up.port())}})));
    up.set_fault(fault::close_connection);
    expect_all(burst(gw.port(), 4), 502, "upstream_unreachable");
}

// An answer cut off mid-body (head, half the body, FIN) is a dropped connection, counted and
// answered as a stream's is (classify_exchange_error): io_error and 502 upstream_unreachable,
// not "invalid HTTP".
TEST(Failures, AnswerCutMidBodyIsADroppedConnection) {
    batchgate::mock::mock_options opts;
    opts.fault_rate = 1.0;
    opts.fault_kinds = 1u << static_cast<unsigned>(batchgate::mock::random_fault::truncated);
    mock_upstream up(opts);
    running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(up.port())}})));
    expect_all(burst(gw.port(), 4), 502, "upstream_unreachable");
    EXPECT_GT(gw.metric("batchgate_upstream_requests_total{route=\"users\",status=\"io_error\",upstream=\"api\"}"), 0);
    EXPECT_LE(gw.metric("batchgate_upstream_requests_total{route=\"users\",status=\"bad_response\",upstream=\"api\"}"), 0);
}

// An upstream that answers a request twice (the second answer 5 ms later, on the idle
// keep-alive connection) hands whoever reuses that connection next an answer to a request it
// never sent: HTTP/1.1 has nothing that ties an answer to its request. With keep_alive: false
// every request has its own connection (and says Connection: close), so none is crossed,
// passthrough (streamed and buffered) and batch calls alike.
TEST(Failures, AnUpstreamThatAnswersTwiceCrossesNothingWithKeepAliveOff) {
    batchgate::mock::mock_options opts;
    opts.fault_rate = 0.25;  // not every answer: the next one would cancel the late extra
    opts.fault_kinds = 1u << static_cast<unsigned>(batchgate::mock::random_fault::extra_late);
    mock_upstream up(opts);
    running_gateway gw(load_yaml(
        fill(keyed_users_yaml, {{"PORT", std::to_string(up.port())}, {"METHOD", "GET"}, {"KEEP_ALIVE", "false"}})));
    // Eight callers, each one request after another, so that the upstream's connections would
    // be reused within the 5 ms (with keep_alive on, callers here got each other's answers).
    auto results = concurrently(8, [&](int t) {
        response crossed;  // status 200 when every answer was the caller's own
        crossed.status = 200;
        for (int k = 0; k < 30; ++k) {
            const std::string n = std::to_string(t * 100 + k + 1);
            std::string want = n, got;
            if (k % 3 == 0) {  // streamed passthrough
                auto r = get(gw.port(), "/echo/" + n, {{"Authorization", "caller-" + n}});
                want = "/echo/" + n + " caller-" + n;
                if (r.json().is_object())
                    got = r.json().value("target", "") + " " + r.json()["headers"].value("authorization", "");
            } else {  // buffered (no X-Id: sent on alone), then in a batch call
                auto r = k % 3 == 1 ? get(gw.port(), "/users/" + n) : get(gw.port(), "/users/" + n, {{"X-Id", n}});
                if (r.json().is_object()) got = r.json().value("id", "");
            }
            if (got != want) crossed.status = 0, crossed.body += "asked for " + want + ", got " + got + "\n";
        }
        return crossed;
    });
    for (const auto& r : results) EXPECT_EQ(r.status, 200) << r.body;
    for (const auto& c : up.calls()) EXPECT_EQ(c.headers.at("connection"), "close") << c.target;
    EXPECT_EQ(gw.metric("batchgate_upstream_requests_total{route=\"everything\",status=\"200\",upstream=\"api\"}"), 80);
}

TEST(Failures, RefusedConnectionGives502) {
    unsigned short dead_port;
    {
        mock_upstream up;  // take a free port, then free it
        dead_port = up.port();
    }
    running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(dead_port)}})));
    expect_all(burst(gw.port(), 4), 502, "upstream_unreachable");
}

TEST(Failures, RecoversAfterTheFaultClears) {
    mock_upstream up;
    running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(up.port())}})));
    up.set_fault(fault::close_connection);
    expect_all(burst(gw.port(), 2), 502, "upstream_unreachable");
    up.set_fault(fault::none);
    for (auto& r : burst(gw.port(), 4)) EXPECT_EQ(r.status, 200) << r.body;
}

TEST(Failures, MissingOrInvalidBodyKeyIs400AndDoesNotHurtOthers) {
    mock_upstream up;
    running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(up.port())}})));
    std::vector<response> out(3);
    std::thread a([&] { out[0] = send_request(gw.port(), "POST", "/events", R"({"clientEventId":"a1"})"); });
    std::thread b([&] { out[1] = send_request(gw.port(), "POST", "/events", R"({"nope":1})"); });
    std::thread c([&] { out[2] = send_request(gw.port(), "POST", "/events", "{not json"); });
    a.join(), b.join(), c.join();
    EXPECT_EQ(out[0].status, 200) << out[0].body;
    EXPECT_EQ(out[1].status, 400);
    EXPECT_EQ(out[1].json()["error"], "bad_request");
    EXPECT_NE(out[1].json()["message"].get<std::string>().find("clientEventId"), std::string::npos) << out[1].body;
    EXPECT_EQ(out[2].status, 400);
    EXPECT_EQ(out[2].json()["route"], "events");
}

TEST(Failures, OversizedBodyIs413) {
    mock_upstream up;
    running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(up.port())}})));
    auto r = send_request(gw.port(), "POST", "/events", std::string(4096, 'x'));
    EXPECT_EQ(r.status, 413);
    EXPECT_EQ(r.json()["error"], "payload_too_large");
    EXPECT_EQ(up.calls().size(), 0u);
}

TEST(Failures, OversizedHeadersAre431) {
    mock_upstream up;
    running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(up.port())}})));
    auto r = get(gw.port(), "/users/1", {{"X-Big", std::string(4096, 'h')}});
    EXPECT_EQ(r.status, 431);
}

TEST(Failures, MalformedHttpGets400AndTheConnectionCloses) {
    mock_upstream up;
    running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(up.port())}})));
    std::string got = send_raw(gw.port(), "GARBAGE\x01 / HTTP/9\r\n\r\n");
    EXPECT_NE(got.find("400 Bad Request"), std::string::npos) << got;
    EXPECT_NE(got.find("\"bad_request\""), std::string::npos) << got;
    // The gateway still serves others.
    EXPECT_EQ(get(gw.port(), "/users/1").status, 200);
}

TEST(Failures, UnmatchedPathIs404Json) {
    mock_upstream up;
    running_gateway gw(load_yaml(fill(yaml, {{"PORT", std::to_string(up.port())}})));
    auto r = get(gw.port(), "/nothing/here");
    EXPECT_EQ(r.status, 404);
    EXPECT_EQ(r.json()["error"], "not_found");
    EXPECT_EQ(up.calls().size(), 0u);
}
