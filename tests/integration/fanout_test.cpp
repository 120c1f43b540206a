// Fan-out end to end: client batch calls through a real gateway to the mock upstream, which
// has the single endpoints only as far as these routes are concerned. Checks what the client
// got and what the upstream saw (calls, order, overlap, headers).
#include <regex>
#include <set>

#include "tests/integration/harness.hpp"

using namespace batchgate::testing;
using batchgate::mock::mock_upstream;
using nlohmann::json;

namespace {

const char* fanout_yaml = R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
worker_threads: 4
upstreams:
  api:
    url: http://127.0.0.1:{{PORT}}
    request_timeout: 2s
routes:
  - name: users
    match: {method: GET, path: "/users/{id}"}
    upstream: api
    mode: coalesce
    coalesce:
      key: {path: id}
      max_wait: 50ms
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
  - name: activities-fanout
    match: {method: POST, path: /api/v1/batch/get}
    upstream: api
    mode: fan_out
    fan_out:
      items: /ids
      max_items: 100
      require: {"/resource_type": activities}
      request:
        method: GET
        path: "/api/v1/activities/{item}"
        query: {fields: "{body./fields}"}
      concurrency: 3
      item_timeout: {{ITEM_TIMEOUT}}
      response:
        success: {id: "{item}", status: success, data: "{response}"}
        error: {id: "{item}", status: error, error: "{response./error}", status_code: "{status:int}"}
        envelope: {results: "{results}", total_requested: "{count.total:int}", total_succeeded: "{count.succeeded:int}",
                   total_failed: "{count.failed:int}", processed_at: "{now}"}
  - name: batch
    match: {method: POST, path: "/$batch"}
    mode: batch_envelope
  - name: everything
    match: {prefix: /}
    upstream: api
)";

std::shared_ptr<const batchgate::config::gateway_config> fanout_config(unsigned short port,
                                                                      const std::string& item_timeout = "2s") {
    return load_yaml(fill(fanout_yaml, {{"PORT", std::to_string(port)}, {"ITEM_TIMEOUT", item_timeout}}));
}

response post(unsigned short port, const std::string& target, const std::string& body,
              const std::map<std::string, std::string>& headers = {}) {
    auto h = headers;
    h.emplace("Content-Type", "application/json");
    return send_request(port, "POST", target, body, h);
}

json requests(std::initializer_list<json> entries) { return json{{"requests", json(entries)}}; }

const json* entry(const json& body, const std::string& id) {
    for (const auto& r : body["responses"])
        if (r["id"] == id) return &r;
    return nullptr;
}

std::vector<std::string> targets(const mock_upstream& up) {
    std::vector<std::string> out;
    for (const auto& c : up.calls()) out.push_back(c.target);
    return out;
}

}  // namespace

// --- per-API fan-out: reference API B served by its single endpoint ---------------------------

TEST(FanOut, BatchGetIsServedBySingleCallsWithBsExactShape) {
    mock_upstream up({.latency = std::chrono::milliseconds(40)});
    running_gateway gw(fanout_config(up.port()));
    auto res = post(gw.port(), "/api/v1/batch/get",
                    R"({"resource_type":"activities","ids":["a1","a2","a99999","a3","a4","a5","a6"],"fields":"id,name"})",
                    {{"Authorization", "Bearer client"}});
    ASSERT_EQ(res.status, 200) << res.body;
    EXPECT_EQ(res.header("content-type"), "application/json");
    auto body = res.json();
    ASSERT_TRUE(body["results"].is_array()) << res.body;
    ASSERT_EQ(body["results"].size(), 7u);
    EXPECT_EQ(body["results"][0], json::parse(R"({"id":"a1","status":"success","data":{"id":"a1","name":"activity a1"}})"));
    EXPECT_EQ(body["results"][1]["data"], json::parse(R"({"id":"a2","name":"activity a2"})"));
    EXPECT_EQ(body["results"][2], json::parse(R"({"id":"a99999","status":"error","error":"not found","status_code":404})"));
    for (int i = 3; i < 7; ++i) EXPECT_EQ(body["results"][i]["id"], "a" + std::to_string(i)) << "results in request order";
    EXPECT_EQ(body["total_requested"], 7);
    EXPECT_EQ(body["total_succeeded"], 6);
    EXPECT_EQ(body["total_failed"], 1);
    EXPECT_TRUE(std::regex_match(body["processed_at"].get<std::string>(),
                                 std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")))
        << body["processed_at"];
    EXPECT_EQ(body.size(), 5u) << "exactly B's keys: " << res.body;

    // The upstream saw single calls only, fields passed through, at most 3 at once (and they overlapped).
    EXPECT_EQ(up.count("POST", "/api/v1/batch/get"), 0u);
    const auto calls = up.calls();
    ASSERT_EQ(calls.size(), 7u);
    std::set<std::string> seen;
    for (const auto& c : calls) {
        EXPECT_EQ(c.method, "GET");
        EXPECT_EQ(c.target.substr(c.target.find('?')), "?fields=id%2Cname") << c.target;
        EXPECT_EQ(c.headers.at("authorization"), "Bearer client");
        seen.insert(c.path);
    }
    EXPECT_EQ(seen.size(), 7u);
    EXPECT_LE(up.max_observed_concurrency(), 3u);
    EXPECT_GE(up.max_observed_concurrency(), 2u);
}

// Each item goes upstream on the client's behalf, as its passthrough requests do: the
// X-Forwarded-For list it came with, then its address.
TEST(FanOut, ItemsCarryTheClientsForwardedForListThenItsAddress) {
    mock_upstream up;
    running_gateway gw(fanout_config(up.port()));
    auto res = post(gw.port(), "/api/v1/batch/get", R"({"resource_type":"activities","ids":["a1","a2"]})",
                    {{"X-Forwarded-For", "10.1.1.1, 10.2.2.2"}});
    ASSERT_EQ(res.status, 200) << res.body;
    const auto calls = up.calls();
    ASSERT_EQ(calls.size(), 2u);
    for (const auto& c : calls) EXPECT_EQ(c.headers.at("x-forwarded-for"), "10.1.1.1, 10.2.2.2, 127.0.0.1");
    // Without one, the address alone.
    ASSERT_EQ(post(gw.port(), "/api/v1/batch/get", R"({"resource_type":"activities","ids":["a3"]})").status, 200);
    EXPECT_EQ(up.calls().back().headers.at("x-forwarded-for"), "127.0.0.1");
}

TEST(FanOut, WithoutFieldsTheQueryIsLeftOut) {
    mock_upstream up;
    running_gateway gw(fanout_config(up.port()));
    auto res = post(gw.port(), "/api/v1/batch/get", R"({"resource_type":"activities","ids":["a1"]})");
    ASSERT_EQ(res.status, 200) << res.body;
    EXPECT_TRUE(res.json()["results"][0]["data"].contains("distance_km"));
    EXPECT_EQ(targets(up), std::vector<std::string>{"/api/v1/activities/a1"});
}

TEST(FanOut, InvalidEnvelopesAre400AndNothingIsSent) {
    mock_upstream up;
    running_gateway gw(fanout_config(up.port()));
    json too_many{{"resource_type", "activities"}, {"ids", json::array()}};
    for (int i = 0; i < 101; ++i) too_many["ids"].push_back("a" + std::to_string(i));
    for (const std::string body : {std::string("{not json"), std::string(R"({"resource_type":"activities"})"),
                                   std::string(R"({"resource_type":"activities","ids":"a1"})"),
                                   std::string(R"({"resource_type":"activities","ids":[]})"),
                                   std::string(R"({"resource_type":"users","ids":["a1"]})"), too_many.dump()}) {
        auto res = post(gw.port(), "/api/v1/batch/get", body);
        EXPECT_EQ(res.status, 400) << body;
        EXPECT_EQ(res.json()["error"], "bad_request") << res.body;
        EXPECT_EQ(res.json()["route"], "activities-fanout");
    }
    EXPECT_TRUE(up.calls().empty());
}

TEST(FanOut, SlowItemIs504AndUnreachableUpstreamIs502PerItem) {
    {
        mock_upstream up({.latency = std::chrono::milliseconds(300)});
        running_gateway gw(fanout_config(up.port(), "100ms"));
        auto res = post(gw.port(), "/api/v1/batch/get", R"({"resource_type":"activities","ids":["a1","a2"]})");
        ASSERT_EQ(res.status, 200) << res.body;
        auto body = res.json();
        EXPECT_EQ(body["results"][0]["status_code"], 504) << res.body;
        EXPECT_EQ(body["results"][1]["status"], "error");
        EXPECT_EQ(body["total_failed"], 2);
        EXPECT_EQ(gw.metric(R"(batchgate_fanout_item_outcomes_total{outcome="timeout",route="activities-fanout"})"), 2);
    }
    unsigned short dead_port = 0;
    {
        mock_upstream gone;
        dead_port = gone.port();
    }
    running_gateway gw(fanout_config(dead_port));
    auto res = post(gw.port(), "/api/v1/batch/get", R"({"resource_type":"activities","ids":["a1"]})");
    ASSERT_EQ(res.status, 200) << res.body;
    EXPECT_EQ(res.json()["results"][0]["status_code"], 502) << res.body;
}

// --- $batch: sub-requests through the route table ---------------------------------------------

TEST(BatchEnvelope, TenUserGetsCoalesceIntoOneUpstreamBatchCall) {
    mock_upstream up;
    running_gateway gw(fanout_config(up.port()));
    json call{{"requests", json::array()}};
    for (int i = 1; i <= 10; ++i)
        call["requests"].push_back({{"id", "r" + std::to_string(i)}, {"method", "GET"}, {"url", "/users/" + std::to_string(i)}});
    auto res = post(gw.port(), "/$batch", call.dump());
    ASSERT_EQ(res.status, 200) << res.body;
    auto body = res.json();
    ASSERT_EQ(body["responses"].size(), 10u);
    for (int i = 1; i <= 10; ++i) {
        const auto& r = body["responses"][i - 1];
        EXPECT_EQ(r["id"], "r" + std::to_string(i)) << "responses in request order";
        EXPECT_EQ(r["status"], 200) << r;
        EXPECT_EQ(r["body"]["id"], std::to_string(i)) << "sub-request got someone else's user: " << r;
        EXPECT_EQ(r["headers"]["Content-Type"], "application/json");
    }
    const auto calls = up.calls();
    ASSERT_EQ(calls.size(), 1u) << "expected one batch call, got " << testing::PrintToString(targets(up));
    EXPECT_EQ(calls[0].path, "/users");
    EXPECT_EQ(query_values(calls[0].target, "ids", true).size(), 10u);
}

TEST(BatchEnvelope, DependsOnOrderIsWhatTheUpstreamSees) {
    mock_upstream up({.latency = std::chrono::milliseconds(20)});
    running_gateway gw(fanout_config(up.port()));
    auto res = post(gw.port(), "/$batch",
                    requests({{{"id", "c"}, {"method", "GET"}, {"url", "/api/v1/activities/a3"}, {"dependsOn", {"b"}}},
                              {{"id", "b"}, {"method", "GET"}, {"url", "/api/v1/activities/a2"}, {"dependsOn", {"a"}}},
                              {{"id", "a"}, {"method", "GET"}, {"url", "/api/v1/activities/a1"}}})
                        .dump());
    ASSERT_EQ(res.status, 200) << res.body;
    auto body = res.json();
    EXPECT_EQ(body["responses"][0]["id"], "c");
    for (const auto& r : body["responses"]) EXPECT_EQ(r["status"], 200) << r;
    EXPECT_EQ(body["responses"][0]["body"]["id"], "a3");
    EXPECT_EQ(targets(up), (std::vector<std::string>{"/api/v1/activities/a1", "/api/v1/activities/a2",
                                                     "/api/v1/activities/a3"}));
}

// A dependent sub-request on a coalesce route starts from inside the answer of the one it
// depends on, which the route's batcher is delivering (its submit is posted, not taken in while
// the batcher answers; this test does not tell the two apart: the dependency alone puts each
// sub-request in a later batch): each goes upstream in turn, alone, and every entry is answered.
TEST(BatchEnvelope, DependsOnAlongACoalesceRouteSendsEachInALaterBatch) {
    mock_upstream up;
    running_gateway gw(fanout_config(up.port()));
    auto res = post(gw.port(), "/$batch",
                    requests({{{"id", "c"}, {"method", "GET"}, {"url", "/users/3"}, {"dependsOn", {"b"}}},
                              {{"id", "b"}, {"method", "GET"}, {"url", "/users/2"}, {"dependsOn", {"a"}}},
                              {{"id", "a"}, {"method", "GET"}, {"url", "/users/1"}}})
                        .dump());
    ASSERT_EQ(res.status, 200) << res.body;
    auto body = res.json();
    for (const char* id : {"a", "b", "c"}) {
        ASSERT_NE(entry(body, id), nullptr) << id;
        EXPECT_EQ((*entry(body, id))["status"], 200) << *entry(body, id);
    }
    EXPECT_EQ((*entry(body, "c"))["body"]["id"], "3");
    const auto calls = up.calls();
    ASSERT_EQ(calls.size(), 3u) << testing::PrintToString(targets(up));
    for (std::size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(calls[i].path, "/users");
        EXPECT_EQ(query_values(calls[i].target, "ids", true), (std::vector<std::string>{std::to_string(i + 1)}));
    }
}

TEST(BatchEnvelope, FailedDependencyGives424AndNothingIsSentForDependents) {
    mock_upstream up;
    running_gateway gw(fanout_config(up.port()));
    auto res = post(gw.port(), "/$batch",
                    requests({{{"id", "x"}, {"method", "GET"}, {"url", "/api/v1/activities/a99999"}},
                              {{"id", "y"}, {"method", "GET"}, {"url", "/api/v1/activities/a7"}, {"dependsOn", {"x"}}},
                              {{"id", "z"}, {"method", "GET"}, {"url", "/api/v1/activities/a8"}, {"dependsOn", {"y"}}},
                              {{"id", "w"}, {"method", "GET"}, {"url", "/api/v1/activities/a9"}}})
                        .dump());
    ASSERT_EQ(res.status, 200) << res.body;
    auto body = res.json();
    EXPECT_EQ((*entry(body, "x"))["status"], 404);
    EXPECT_EQ((*entry(body, "x"))["body"]["error"], "not found");
    EXPECT_EQ((*entry(body, "y"))["status"], 424);
    EXPECT_EQ((*entry(body, "z"))["status"], 424);
    EXPECT_EQ((*entry(body, "w"))["status"], 200);
    EXPECT_EQ(up.count("GET", "/api/v1/activities/a7"), 0u);
    EXPECT_EQ(up.count("GET", "/api/v1/activities/a8"), 0u);
    EXPECT_EQ(up.calls().size(), 2u);
}

TEST(BatchEnvelope, WholeCallErrorsSendNothing) {
    mock_upstream up;
    running_gateway gw(fanout_config(up.port()));
    json oversize{{"requests", json::array()}};
    for (int i = 0; i < 21; ++i)
        oversize["requests"].push_back({{"id", std::to_string(i)}, {"method", "GET"}, {"url", "/users/1"}});
    auto big = post(gw.port(), "/$batch", oversize.dump());
    EXPECT_EQ(big.status, 413) << big.body;
    EXPECT_NE(big.json()["message"].get<std::string>().find("21"), std::string::npos) << big.body;

    auto cycle = post(gw.port(), "/$batch",
                      requests({{{"id", "a"}, {"method", "GET"}, {"url", "/users/1"}, {"dependsOn", {"b"}}},
                                {{"id", "b"}, {"method", "GET"}, {"url", "/users/2"}, {"dependsOn", {"a"}}}})
                          .dump());
    EXPECT_EQ(cycle.status, 400);
    EXPECT_NE(cycle.json()["message"].get<std::string>().find("cycle"), std::string::npos) << cycle.body;

    auto unknown = post(gw.port(), "/$batch",
                        requests({{{"id", "a"}, {"method", "GET"}, {"url", "/users/1"}, {"dependsOn", {"nope"}}}}).dump());
    EXPECT_EQ(unknown.status, 400);
    EXPECT_NE(unknown.json()["message"].get<std::string>().find("nope"), std::string::npos) << unknown.body;

    auto dup = post(gw.port(), "/$batch",
                    requests({{{"id", "a"}, {"method", "GET"}, {"url", "/users/1"}},
                              {{"id", "a"}, {"method", "GET"}, {"url", "/users/2"}}})
                        .dump());
    EXPECT_EQ(dup.status, 400);

    auto malformed = post(gw.port(), "/$batch", R"({"requests":[{"id":"1",)");
    EXPECT_EQ(malformed.status, 400);
    EXPECT_EQ(malformed.json()["route"], "batch");
    EXPECT_TRUE(up.calls().empty());
}

TEST(BatchEnvelope, BadUrlsAndNestedBatchAre400InTheirEntryOnly) {
    mock_upstream up;
    running_gateway gw(fanout_config(up.port()));
    auto res = post(gw.port(), "/$batch",
                    requests({{{"id", "abs"}, {"method", "GET"}, {"url", "http://evil.example/users/1"}},
                              {{"id", "host"}, {"method", "GET"}, {"url", "//evil.example/users/1"}},
                              {{"id", "dots"}, {"method", "GET"}, {"url", "/users/../admin"}},
                              {{"id", "enc"}, {"method", "GET"}, {"url", "/api/v1/activities/%2e%2e/secret"}},
                              {{"id", "nested"}, {"method", "POST"}, {"url", "/$batch"}, {"body", {{"requests", json::array()}}}},
                              {{"id", "ok"}, {"method", "GET"}, {"url", "/api/v1/activities/a1"}}})
                        .dump());
    ASSERT_EQ(res.status, 200) << res.body;
    auto body = res.json();
    for (const char* id : {"abs", "host", "dots", "enc", "nested"}) {
        EXPECT_EQ((*entry(body, id))["status"], 400) << id << ": " << *entry(body, id);
        EXPECT_TRUE((*entry(body, id))["body"].contains("message")) << id;
    }
    EXPECT_EQ((*entry(body, "ok"))["status"], 200);
    EXPECT_EQ(targets(up), std::vector<std::string>{"/api/v1/activities/a1"});
}

// A HEAD entry has no body, whoever answered it: the upstream (a length, no body) or the
// gateway itself (its 404 error has a JSON body, which a client's connection never sends for a HEAD).
TEST(BatchEnvelope, HeadEntriesCarryNoBody) {
    mock_upstream up;
    running_gateway gw(fanout_config(up.port()));
    auto res = post(gw.port(), "/$batch",
                    requests({{{"id", "up"}, {"method", "HEAD"}, {"url", "/api/v1/activities/a1"}},
                              {{"id", "gw"}, {"method", "HEAD"}, {"url", "/nowhere/at/all"}},
                              {{"id", "get"}, {"method", "GET"}, {"url", "/nowhere/at/all"}}})
                        .dump());
    ASSERT_EQ(res.status, 200) << res.body;
    auto body = res.json();
    EXPECT_FALSE(entry(body, "up")->contains("body")) << *entry(body, "up");
    EXPECT_FALSE(entry(body, "gw")->contains("body")) << *entry(body, "gw");
    EXPECT_EQ((*entry(body, "gw"))["status"], (*entry(body, "get"))["status"]) << body;
    EXPECT_TRUE(entry(body, "get")->contains("body")) << *entry(body, "get");
}

// A sub-request never passed the listener's parser: what the listener refuses (control bytes,
// bytes over 0x7f) and methods a REST call has no use for (TRACE, CONNECT, unknown ones) are a
// 400 in their own entry, never sent; the other entries still run.
TEST(BatchEnvelope, SubRequestsTheListenerWouldRefuseAre400InTheirEntryOnly) {
    mock_upstream up;
    running_gateway gw(fanout_config(up.port()));
    const std::string nul("a\0b", 3);
    auto res = post(gw.port(), "/$batch",
                    requests({{{"id", "nul"}, {"method", "GET"}, {"url", "/api/v1/activities/a1"}, {"headers", {{"X-A", nul}}}},
                              {{"id", "ctl"}, {"method", "GET"}, {"url", "/api/v1/activities/a2"}, {"headers", {{"X-A", "a\x01" "b"}}}},
                              {{"id", "high"}, {"method", "GET"}, {"url", "/api/v1/activities/a3"}, {"headers", {{"X-A", "caf\xc3\xa9"}}}},
                              {{"id", "high_url"}, {"method", "GET"}, {"url", "/api/v1/activities/caf\xc3\xa9"}},
                              {{"id", "trace"}, {"method", "TRACE"}, {"url", "/api/v1/activities/a5"}},
                              {{"id", "connect"}, {"method", "CONNECT"}, {"url", "/api/v1/activities/a6"}},
                              {{"id", "unknown"}, {"method", "PROPFIND"}, {"url", "/api/v1/activities/a7"}},
                              {{"id", "ok"}, {"method", "GET"}, {"url", "/api/v1/activities/a8"}, {"headers", {{"X-A", "fine\tvalue"}}}}})
                        .dump());
    ASSERT_EQ(res.status, 200) << res.body;
    auto body = res.json();
    for (const char* id : {"nul", "ctl", "high", "high_url", "trace", "connect", "unknown"}) {
        ASSERT_NE(entry(body, id), nullptr) << id;
        EXPECT_EQ((*entry(body, id))["status"], 400) << id << ": " << *entry(body, id);
    }
    EXPECT_EQ((*entry(body, "ok"))["status"], 200) << body;
    EXPECT_EQ(targets(up), std::vector<std::string>{"/api/v1/activities/a8"});
}

TEST(BatchEnvelope, OuterAuthorizationAndForwardedForReachTheUpstreamUnlessOverridden) {
    mock_upstream up;
    running_gateway gw(fanout_config(up.port()));
    auto res = post(gw.port(), "/$batch",
                    requests({{{"id", "1"}, {"method", "GET"}, {"url", "/api/v1/activities/a1"}},
                              {{"id", "2"},
                               {"method", "GET"},
                               {"url", "/api/v1/activities/a2"},
                               {"headers", {{"Authorization", "Bearer own"}, {"x-forwarded-for", "10.9.9.9"}}}},
                              {{"id", "3"}, {"method", "POST"}, {"url", "/echo"}, {"body", {{"x", 1}}}}})
                        .dump(),
                    {{"Authorization", "Bearer outer"}, {"Cookie", "session=s1"}, {"X-Forwarded-For", "10.1.1.1"}});
    ASSERT_EQ(res.status, 200) << res.body;
    std::map<std::string, batchgate::mock::recorded_call> by_path;
    for (const auto& c : up.calls()) by_path[c.path] = c;
    ASSERT_EQ(by_path.size(), 3u);
    EXPECT_EQ(by_path["/api/v1/activities/a1"].headers["authorization"], "Bearer outer");
    EXPECT_EQ(by_path["/api/v1/activities/a1"].headers["cookie"], "session=s1");
    EXPECT_EQ(by_path["/api/v1/activities/a2"].headers["authorization"], "Bearer own");
    // The client's X-Forwarded-For list, unless an entry sends its own; then the client's address.
    EXPECT_EQ(by_path["/api/v1/activities/a1"].headers["x-forwarded-for"], "10.1.1.1, 127.0.0.1");
    EXPECT_EQ(by_path["/api/v1/activities/a2"].headers["x-forwarded-for"], "10.9.9.9, 127.0.0.1");
    EXPECT_EQ(by_path["/echo"].headers["x-forwarded-for"], "10.1.1.1, 127.0.0.1");
    EXPECT_EQ(by_path["/echo"].headers["content-type"], "application/json");
    EXPECT_EQ(json::parse(by_path["/echo"].body), (json{{"x", 1}}));
}

TEST(FanoutMetrics, CallsItemsAndOutcomesAreExported) {
    mock_upstream up;
    running_gateway gw(fanout_config(up.port()));
    ASSERT_EQ(post(gw.port(), "/api/v1/batch/get", R"({"resource_type":"activities","ids":["a1","a99999"]})").status, 200);
    ASSERT_EQ(post(gw.port(), "/$batch",
                   requests({{{"id", "x"}, {"method", "GET"}, {"url", "/api/v1/activities/a99999"}},
                             {{"id", "y"}, {"method", "GET"}, {"url", "/api/v1/activities/a1"}, {"dependsOn", {"x"}}}})
                       .dump())
                  .status,
              200);
    EXPECT_EQ(gw.metric(R"(batchgate_fanout_calls_total{route="activities-fanout"})"), 1);
    EXPECT_EQ(gw.metric(R"(batchgate_fanout_items_count{route="activities-fanout"})"), 1);
    EXPECT_EQ(gw.metric(R"(batchgate_fanout_items_sum{route="activities-fanout"})"), 2);
    EXPECT_EQ(gw.metric(R"(batchgate_fanout_item_outcomes_total{outcome="success",route="activities-fanout"})"), 1);
    EXPECT_EQ(gw.metric(R"(batchgate_fanout_item_outcomes_total{outcome="error",route="activities-fanout"})"), 1);
    EXPECT_EQ(gw.metric(R"(batchgate_fanout_calls_total{route="batch"})"), 1);
    EXPECT_EQ(gw.metric(R"(batchgate_fanout_item_outcomes_total{outcome="skipped",route="batch"})"), 1);
}
