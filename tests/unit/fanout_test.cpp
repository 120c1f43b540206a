// Fan-out core: templates, the per-API fan-out (B's batch GET served by single GETs), the
// $batch envelope and its dependsOn graph. No I/O, no clock.
#include <limits>

#include <gtest/gtest.h>

#include "config/fan_out_rules.hpp"
#include "config/loader.hpp"
#include "fanout/core/batch_envelope.hpp"
#include "fanout/core/dependency_plan.hpp"
#include "fanout/core/fan_out.hpp"
#include "fanout/core/plan_runner.hpp"
#include "fanout/core/request_check.hpp"
#include "text/template.hpp"

using namespace batchgate::fanout;
using batchgate::config::fan_out_item_rules;
using batchgate::config::fan_out_request_rules;
using nlohmann::json;

namespace {

resolver from(const json& values) {
    return [values](std::string_view name) -> std::optional<json> {
        auto it = values.find(std::string(name));
        if (it == values.end()) return std::nullopt;
        return *it;
    };
}

// Reference API B served by single GETs, as the README's fan-out section configures it.
batchgate::config::fan_out_settings b_settings() {
    batchgate::config::fan_out_settings s;
    s.items = "/ids";
    s.require = {{"/resource_type", "activities"}};
    s.request.path = "/api/v1/activities/{item}";
    s.request.query = {{"fields", "{body./fields}"}};
    s.response.success = json{{"id", "{item}"}, {"status", "success"}, {"data", "{response}"}};
    s.response.error =
        json{{"id", "{item}"}, {"status", "error"}, {"error", "{response./error}"}, {"status_code", "{status:int}"}};
    s.response.envelope = json{{"results", "{results}"},
                               {"total_requested", "{count.total:int}"},
                               {"total_succeeded", "{count.succeeded:int}"},
                               {"total_failed", "{count.failed:int}"},
                               {"processed_at", "{now}"}};
    return s;
}

header_lookup no_headers() {
    return [](std::string_view) -> std::optional<std::string> { return std::nullopt; };
}

}  // namespace

TEST(FanoutTemplate, LonePlaceholderKeepsItsTypeAndAbsentOnesVanish) {
    json tmpl{{"data", "{response}"}, {"n", "{count:int}"}, {"gone", "{missing}"}, {"text", "id={id}!"}};
    auto r = render_json(tmpl, from({{"response", {{"a", 1}}}, {"count", "7"}, {"id", "x1"}}));
    ASSERT_TRUE(r.error.empty()) << r.error;
    EXPECT_EQ(*r.value, (json{{"data", {{"a", 1}}}, {"n", 7}, {"text", "id=x1!"}}));
}

TEST(FanoutTemplate, BadConversionIsAnError) {
    auto r = render_json(json("{v:int}"), from({{"v", "abc"}}));
    EXPECT_FALSE(r.error.empty());
}

// A fuzzer found 3e124 cast to long long (undefined). Floats convert only when whole and in range.
TEST(FanoutTemplate, IntConversionOfFloatsStaysInRange) {
    for (double d : {3e124, -3e124, 9223372036854775808.0, -9223372036854775808.0 * 2, 1.5}) {
        auto r = render_json(json("{v:int}"), from({{"v", d}}));
        EXPECT_NE(r.error.find("not a whole number"), std::string::npos) << d << ": " << r.error;
    }
    auto low = render_json(json("{v:int}"), from({{"v", -9223372036854775808.0}}));
    ASSERT_TRUE(low.error.empty()) << low.error;
    EXPECT_EQ(low.value->get<long long>(), std::numeric_limits<long long>::min());
    auto whole = render_json(json("{v:int}"), from({{"v", 6.0}}));
    ASSERT_TRUE(whole.error.empty()) << whole.error;
    EXPECT_TRUE(whole.value->is_number_integer());
    EXPECT_EQ(*whole.value, json(6));
}

TEST(FanoutTemplate, TextIsUrlEncodedWhenAsked) {
    auto t = render_text("/a/{item}", from({{"item", "x/y z"}}), true);
    EXPECT_EQ(*t.text, "/a/x%2Fy%20z");
    EXPECT_FALSE(render_text("{gone}", from(json::object()), true).text.has_value());
}

TEST(FanoutTemplate, LoadTimeChecksNameThePlaceholder) {
    EXPECT_FALSE(check_text("/a/{item}", fan_out_request_rules()));
    EXPECT_FALSE(check_text("{body./fields}", fan_out_request_rules()));
    EXPECT_FALSE(check_json(json{{"x", "{response./error}"}}, fan_out_item_rules()));
    auto err = check_text("/a/{response}", fan_out_request_rules());
    ASSERT_TRUE(err);
    EXPECT_NE(err->find("{response}"), std::string::npos);
    EXPECT_TRUE(check_text("/a/{item", fan_out_request_rules()));
    EXPECT_TRUE(check_text("{item:float}", fan_out_request_rules()));
    EXPECT_TRUE(check_text("{body.fields}", fan_out_request_rules()));
}

TEST(FanOut, ValidCallYieldsItems) {
    auto call = parse_fan_out(b_settings(), R"({"resource_type":"activities","ids":["a1","a2"],"fields":"id,name"})");
    ASSERT_TRUE(call.error.empty()) << call.error;
    EXPECT_EQ(call.items, (std::vector<json>{"a1", "a2"}));
}

TEST(FanOut, InvalidCallsAreRejectedWithAReason) {
    auto s = b_settings();
    s.max_items = 2;
    EXPECT_FALSE(parse_fan_out(s, "{not json").error.empty());
    EXPECT_FALSE(parse_fan_out(s, R"({"resource_type":"activities"})").error.empty());
    EXPECT_FALSE(parse_fan_out(s, R"({"resource_type":"activities","ids":"a1"})").error.empty());
    EXPECT_FALSE(parse_fan_out(s, R"({"resource_type":"activities","ids":[]})").error.empty());
    EXPECT_FALSE(parse_fan_out(s, R"({"resource_type":"activities","ids":["a","b","c"]})").error.empty());
    auto wrong = parse_fan_out(s, R"({"resource_type":"users","ids":["a1"]})");
    EXPECT_NE(wrong.error.find("/resource_type"), std::string::npos) << wrong.error;
}

TEST(FanOut, ItemRequestEncodesTheItemAndPassesOptionalQuery) {
    auto s = b_settings();
    s.request.headers = {{"x-tenant", "{header.x-tenant}"}};
    auto call = parse_fan_out(s, R"({"resource_type":"activities","ids":["a 1"],"fields":"id,name"})");
    header_lookup h = [](std::string_view n) -> std::optional<std::string> {
        if (n == "authorization") return "Bearer t";
        if (n == "x-tenant") return "acme";
        return std::nullopt;
    };
    auto r = build_item_request(s, call, h, 0);
    ASSERT_TRUE(r.error.empty()) << r.error;
    EXPECT_EQ(r.method, "GET");
    EXPECT_EQ(r.target, "/api/v1/activities/a%201?fields=id%2Cname");
    EXPECT_EQ(r.headers, (std::vector<std::pair<std::string, std::string>>{{"authorization", "Bearer t"},
                                                                           {"x-tenant", "acme"}}));
    EXPECT_TRUE(r.body.empty());

    auto without = parse_fan_out(s, R"({"resource_type":"activities","ids":["a1"]})");
    EXPECT_EQ(build_item_request(s, without, no_headers(), 0).target, "/api/v1/activities/a1");
}

// An item of "..", "." or "" (or null) must not turn GET /api/v1/activities/{item} into
// another resource or the collection: that item alone is an error entry.
TEST(FanOut, ItemThatWouldChangeTheResourceIsAnItemError) {
    auto s = b_settings();
    auto call = parse_fan_out(s, R"({"resource_type":"activities","ids":["..",".","","%2e%2e","a1",null]})");
    ASSERT_TRUE(call.error.empty()) << call.error;
    for (std::size_t i : {0u, 1u, 3u})
        EXPECT_EQ(build_item_request(s, call, no_headers(), i).error,
                  "request.path would hold a \".\" or \"..\" segment for this item") << i;
    EXPECT_EQ(build_item_request(s, call, no_headers(), 2).error, "request.path would hold an empty segment for this item");
    EXPECT_FALSE(build_item_request(s, call, no_headers(), 5).error.empty());
    auto ok = build_item_request(s, call, no_headers(), 4);
    EXPECT_TRUE(ok.error.empty()) << ok.error;
    EXPECT_EQ(ok.target, "/api/v1/activities/a1");
}

TEST(FanOut, ItemRequestBodyTemplate) {
    auto s = b_settings();
    s.request.method = "POST";
    s.request.path = "/things";
    s.request.body = json{{"id", "{item./id}"}, {"n", "{index}"}};
    s.items = "/objs";
    s.require.clear();
    auto call = parse_fan_out(s, R"({"objs":[{"id":5},{"id":6}]})");
    auto r = build_item_request(s, call, no_headers(), 1);
    EXPECT_EQ(json::parse(r.body), (json{{"id", 6}, {"n", 1}}));
    EXPECT_EQ(r.headers.back(), (std::pair<std::string, std::string>{"content-type", "application/json"}));
}

TEST(FanOut, AssemblesExactlyTheShapeOfB) {
    auto s = b_settings();
    auto call = parse_fan_out(s, R"({"resource_type":"activities","ids":["a1","a2"]})");
    std::vector<json> entries;
    entries.push_back(render_item(s, call, no_headers(), 0, {200, json{{"id", "a1"}, {"name", "x"}}}));
    entries.push_back(render_item(s, call, no_headers(), 1, {404, json{{"error", "not found"}}}));
    const auto at = std::chrono::system_clock::time_point(std::chrono::seconds(1771236000));  // 2026-02-16T10:00:00Z
    auto body = json::parse(render_envelope(s, call, no_headers(), std::move(entries), 1, at));
    EXPECT_EQ(body, json::parse(R"({"results":[{"id":"a1","status":"success","data":{"id":"a1","name":"x"}},
              {"id":"a2","status":"error","error":"not found","status_code":404}],
              "total_requested":2,"total_succeeded":1,"total_failed":1,"processed_at":"2026-02-16T10:00:00Z"})"));
}

TEST(BatchEnvelope, ParsesRequestsInOrderWithDependencies) {
    auto e = parse_envelope(R"({"requests":[
        {"id":"1","method":"get","url":"/users/7"},
        {"id":"2","method":"PATCH","url":"/x","body":{"a":1},"headers":{"Content-Type":"application/json"},"dependsOn":["1"]}]})",
                            20);
    ASSERT_EQ(e.error, envelope_error::none) << e.message;
    ASSERT_EQ(e.requests.size(), 2u);
    EXPECT_EQ(e.requests[0].method, "GET");
    EXPECT_EQ(e.requests[1].depends_on, std::vector<std::size_t>{0});
    EXPECT_EQ(*e.requests[1].body, (json{{"a", 1}}));
    EXPECT_TRUE(names_header(e.requests[1], "content-type"));
}

TEST(BatchEnvelope, WholeCallErrors) {
    EXPECT_EQ(parse_envelope("{", 20).error, envelope_error::bad_request);
    EXPECT_EQ(parse_envelope(R"({"requests":{}})", 20).error, envelope_error::bad_request);
    EXPECT_EQ(parse_envelope(R"({"requests":[]})", 20).error, envelope_error::bad_request);
    EXPECT_EQ(parse_envelope(R"({"requests":[{"id":"1","url":"/a"}]})", 20).error, envelope_error::bad_request);
    auto dup = parse_envelope(R"({"requests":[{"id":"1","method":"GET","url":"/a"},{"id":"1","method":"GET","url":"/b"}]})", 20);
    EXPECT_EQ(dup.error, envelope_error::bad_request);
    EXPECT_NE(dup.message.find("duplicate"), std::string::npos);
    auto unknown = parse_envelope(R"({"requests":[{"id":"1","method":"GET","url":"/a","dependsOn":["9"]}]})", 20);
    EXPECT_EQ(unknown.error, envelope_error::bad_request);
    EXPECT_NE(unknown.message.find("\"9\""), std::string::npos);
    auto cycle = parse_envelope(R"({"requests":[{"id":"a","method":"GET","url":"/a","dependsOn":["c"]},
        {"id":"b","method":"GET","url":"/b","dependsOn":["a"]},{"id":"c","method":"GET","url":"/c","dependsOn":["b"]}]})", 20);
    EXPECT_EQ(cycle.error, envelope_error::bad_request);
    EXPECT_NE(cycle.message.find("cycle"), std::string::npos);
    auto self = parse_envelope(R"({"requests":[{"id":"a","method":"GET","url":"/a","dependsOn":"a"}]})", 20);
    EXPECT_EQ(self.error, envelope_error::bad_request);
    json many{{"requests", json::array()}};
    for (int i = 0; i < 3; ++i) many["requests"].push_back({{"id", std::to_string(i)}, {"method", "GET"}, {"url", "/a"}});
    EXPECT_EQ(parse_envelope(many.dump(), 2).error, envelope_error::too_many);
}

TEST(BatchEnvelope, SubUrlChecks) {
    EXPECT_FALSE(check_sub_url("/users/7?x=1"));
    EXPECT_FALSE(check_sub_url("/files/a..b"));
    EXPECT_TRUE(check_sub_url("http://evil.example/users/7"));
    EXPECT_TRUE(check_sub_url("//evil.example/users"));
    EXPECT_TRUE(check_sub_url("users/7"));
    EXPECT_TRUE(check_sub_url("/users/../admin"));
    EXPECT_TRUE(check_sub_url("/users/%2e%2e/admin"));
    EXPECT_TRUE(check_sub_url("/users/%2E%2e"));
    EXPECT_TRUE(check_sub_url("/users/..%2fadmin"));
    EXPECT_TRUE(check_sub_url("/users/%252e%252e/admin"));
    EXPECT_TRUE(check_sub_url("/a\\..\\b"));
    EXPECT_TRUE(check_sub_url("/a b"));
}

TEST(RequestCheck, ListenerRulesAndRestMethodsOnly) {
    const std::vector<std::pair<std::string, std::string>> fine = {{"X-A", "a b\tc"}, {"Accept", "*/*"}};
    EXPECT_FALSE(check_request("GET", "/users/7?x=%C3%A9", fine));
    for (const char* m : {"HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}) EXPECT_FALSE(check_method(m)) << m;
    for (const char* m : {"TRACE", "CONNECT", "PROPFIND", "G ET", "", "G\x80T"}) EXPECT_TRUE(check_method(m)) << m;
    EXPECT_TRUE(check_target("/caf\xc3\xa9"));
    EXPECT_TRUE(check_target(std::string("/a\0b", 4)));
    EXPECT_TRUE(check_target("/a\x7f"));
    EXPECT_TRUE(check_field("X-A", std::string("a\0b", 3)));
    EXPECT_TRUE(check_field("X-A", "a\x01" "b"));
    EXPECT_TRUE(check_field("X-A", "a\x7f"));
    EXPECT_TRUE(check_field("X-A", "caf\xc3\xa9"));
    EXPECT_TRUE(check_field("X A", "v"));
    EXPECT_TRUE(check_field("", "v"));
    auto why = check_request("GET", "/a", {{"X-A", "caf\xc3\xa9"}});
    ASSERT_TRUE(why);
    EXPECT_EQ(*why, "header X-A holds byte 0xc3 at offset 3");  // escaped, never the raw byte
    EXPECT_FALSE(check_message("/a", fine));
    EXPECT_TRUE(check_message("/a", {{"X-A", "\r"}}));
}

TEST(BatchEnvelope, EntriesEmbedJsonAndKeepText) {
    auto j = response_entry("1", 200, {{"Content-Type", "application/json"}}, "application/json", R"({"id":"7"})", 64);
    EXPECT_EQ(j["body"], (json{{"id", "7"}}));
    EXPECT_EQ(j["headers"]["Content-Type"], "application/json");
    auto t = response_entry("2", 200, {}, "text/plain", "123", 64);
    EXPECT_EQ(t["body"], "123");
    EXPECT_FALSE(response_entry("3", 204, {}, "", "", 64).contains("body"));
    // Names are case-insensitive: one member per name, spelled as its first line, values listed.
    auto merged = response_entry("4", 429, {{"Retry-After", "5"}, {"retry-after", "7"}, {"Vary", "a"}, {"VARY", "b"}}, "", "", 64);
    EXPECT_EQ(merged["headers"], (json{{"Retry-After", "5, 7"}, {"Vary", "a, b"}}));
    EXPECT_EQ(encode_body(json{{"a", 1}}), (std::pair<std::string, bool>{R"({"a":1})", true}));
    EXPECT_EQ(encode_body(json("raw")), (std::pair<std::string, bool>{"raw", false}));
}

TEST(DependencyPlan, StartsInOrderWithinSlotsAndSkipsDependentsOfFailures) {
    // 0 <- 1 <- 2 ; 3 independent ; 4 depends on 0 and 3
    dependency_plan p({{}, {0}, {1}, {}, {0, 3}});
    auto s = p.next(1);
    EXPECT_EQ(s.start, std::vector<std::size_t>{0});
    s = p.next(5);
    EXPECT_EQ(s.start, std::vector<std::size_t>{3});
    p.finish(3, 200);
    EXPECT_TRUE(p.next(5).start.empty());  // 1 and 4 wait for 0
    p.finish(0, 404);
    s = p.next(5);
    EXPECT_TRUE(s.start.empty());
    EXPECT_EQ(s.skip, (std::vector<std::size_t>{1, 2, 4}));  // the chain cascades
    EXPECT_TRUE(p.done());
}

TEST(DependencyPlan, SuccessUnblocksDependents) {
    dependency_plan p({{}, {0}});
    EXPECT_EQ(p.next(10).start, std::vector<std::size_t>{0});
    EXPECT_EQ(p.running(), 1u);
    p.finish(0, 201);
    EXPECT_EQ(p.next(10).start, std::vector<std::size_t>{1});
    p.finish(1, 200);
    EXPECT_TRUE(p.done());
}

// --- config: routes[].fan_out and routes[].batch_envelope ------------------------------------

namespace {

const std::string upstream_yaml = "upstreams:\n  api: {url: http://127.0.0.1:9000}\nroutes:\n";

std::string all_errors(const std::string& yaml) {
    try {
        batchgate::config::load_string(yaml, "f.yaml");
    } catch (const batchgate::config::config_error& e) {
        return e.what();
    }
    return "";
}

}  // namespace

TEST(FanoutConfig, ReferenceBRouteLoadsWithDefaults) {
    const auto cfg = batchgate::config::load_string(upstream_yaml + R"(
  - name: activities-fanout
    match: {method: POST, path: /api/v1/batch/get}
    upstream: api
    mode: fan_out
    fan_out:
      items: /ids
      max_items: 100
      require: {"/resource_type": activities}
      request:
        path: "/api/v1/activities/{item}"
        query: {fields: "{body./fields}"}
      concurrency: 3
      response:
        success: {id: "{item}", status: success, data: "{response}"}
        error: {id: "{item}", status: error, error: "{response./error}", status_code: "{status:int}"}
        envelope: {results: "{results}", total_requested: "{count.total:int}", processed_at: "{now}"}
  - name: batch
    match: {method: POST, path: "/$batch"}
    mode: batch_envelope
)",
                                                   "f.yaml");
    const auto& r = cfg.routes[0];
    EXPECT_EQ(r.mode, batchgate::config::route_mode::fan_out);
    EXPECT_EQ(r.fan_out.items, "/ids");
    EXPECT_EQ(r.fan_out.min_items, 1u);
    EXPECT_EQ(r.fan_out.concurrency, 3u);
    EXPECT_EQ(r.fan_out.item_timeout, std::chrono::seconds(2));
    EXPECT_EQ(r.timeout, std::chrono::seconds(11));  // derived: fan_out.timeout + 1s
    EXPECT_EQ(r.fan_out.require, (std::vector<std::pair<std::string, json>>{{"/resource_type", "activities"}}));
    EXPECT_EQ(r.fan_out.request.method, "GET");
    EXPECT_EQ(r.fan_out.request.query, (std::vector<std::pair<std::string, std::string>>{{"fields", "{body./fields}"}}));
    EXPECT_EQ(r.fan_out.request.forward_headers, (std::vector<std::string>{"authorization", "cookie"}));
    EXPECT_EQ(r.fan_out.response.success, (json{{"id", "{item}"}, {"status", "success"}, {"data", "{response}"}}));
    const auto& b = cfg.routes[1];
    EXPECT_EQ(b.mode, batchgate::config::route_mode::batch_envelope);
    EXPECT_TRUE(b.upstream.empty());
    EXPECT_EQ(b.batch_envelope.max_requests, 20u);
    EXPECT_EQ(b.batch_envelope.concurrency, 10u);
}

TEST(FanoutConfig, ErrorsNameFileLineAndKeyPath) {
    const std::string errs = all_errors(upstream_yaml + R"(
  - name: f
    match: {method: POST, path: /b}
    upstream: api
    mode: fan_out
    fan_out:
      items: ids
      max_item: 3
      request: {path: "/a/{response}", query: {x: "{item"}}
      concurrency: 0
      response: {success: "{results}", envelope: {n: "{count.total:integer}"}}
  - name: e
    match: {method: POST, path: /c}
    mode: batch_envelope
    batch_envelope: {max_requests: 101, concurrency: 0}
  - name: p
    match: {prefix: /}
    upstream: api
    fan_out: {items: /ids}
)");
    EXPECT_NE(errs.find("f.yaml:10:14: routes[0].fan_out.items: bad JSON pointer"), std::string::npos) << errs;
    EXPECT_NE(errs.find("f.yaml:11:7: routes[0].fan_out.max_item: unknown key \"max_item\" (did you mean \"max_items\"?)"),
              std::string::npos) << errs;
    EXPECT_NE(errs.find("routes[0].fan_out.request.path: unknown placeholder {response}"), std::string::npos) << errs;
    EXPECT_NE(errs.find("routes[0].fan_out.request.query.x: unmatched \"{\""), std::string::npos) << errs;
    EXPECT_NE(errs.find("routes[0].fan_out.concurrency: must be between 1 and 1000"), std::string::npos) << errs;
    EXPECT_NE(errs.find("routes[0].fan_out.response.success: unknown placeholder {results}"), std::string::npos) << errs;
    EXPECT_NE(errs.find("routes[0].fan_out.response.envelope: unknown type suffix \":integer\""), std::string::npos) << errs;
    EXPECT_NE(errs.find("routes[1].batch_envelope.max_requests: must be between 1 and 100, got 101"), std::string::npos) << errs;
    EXPECT_NE(errs.find("routes[1].batch_envelope.concurrency: must be between 1 and 100, got 0"), std::string::npos) << errs;
    EXPECT_NE(errs.find("routes[2].fan_out: fan_out settings given but mode is passthrough"), std::string::npos) << errs;
    EXPECT_EQ(all_errors(upstream_yaml + "  - {name: f, match: {path: /b}, upstream: api, mode: fan_out}\n")
                  .find("routes[0].fan_out: required key is missing for mode: fan_out") == std::string::npos,
              false);
}

// --- plan_runner: bounded concurrency, inline completions, exactly one done ------------------

TEST(PlanRunner, NeverMoreThanConcurrencyInFlightAndDoneOnce) {
    std::vector<std::size_t> started, skipped;
    std::vector<std::size_t> pending;
    int done = 0;
    std::size_t in_flight = 0, peak = 0;
    plan_runner* self = nullptr;
    plan_runner r(dependency_plan({{}, {}, {}, {}, {0}, {}}), 2,
                  {[&](std::size_t i) {
                       started.push_back(i);
                       peak = std::max(peak, ++in_flight);
                       pending.push_back(i);
                   },
                   [&](std::size_t i) { skipped.push_back(i); }, [&] { ++done; }});
    self = &r;
    r.run();
    EXPECT_EQ(started, (std::vector<std::size_t>{0, 1}));
    while (!pending.empty()) {
        auto i = pending.front();
        pending.erase(pending.begin());
        --in_flight;
        self->finish(i, i == 0 ? 500 : 200);  // 0 fails: 4 is skipped
    }
    EXPECT_EQ(started, (std::vector<std::size_t>{0, 1, 2, 3, 5}));
    EXPECT_EQ(skipped, std::vector<std::size_t>{4});
    EXPECT_LE(peak, 2u);
    EXPECT_EQ(done, 1);
}

TEST(PlanRunner, StartHookMayFinishInline) {
    int done = 0;
    std::vector<std::size_t> started;
    plan_runner* self = nullptr;
    plan_runner r(dependency_plan(std::vector<std::vector<std::size_t>>(500)), 1,
                  {[&](std::size_t i) {
                       started.push_back(i);
                       self->finish(i, 200);  // e.g. a sub-request rejected before sending
                   },
                   [](std::size_t) {}, [&] { ++done; }});
    self = &r;
    r.run();
    EXPECT_EQ(started.size(), 500u);
    EXPECT_EQ(done, 1);
}

// Deep JSON from outside never becomes a document the gateway copies or dumps recursively.
TEST(BatchEnvelope, DeepJsonIsRefusedNotRecursedInto) {
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    auto e = parse_envelope(R"({"requests":[{"id":"1","method":"POST","url":"/a","body":)" + deep + "}]}", 20);
    EXPECT_EQ(e.error, envelope_error::bad_request);
    EXPECT_NE(e.message.find("max_json_depth"), std::string::npos) << e.message;
    auto entry = response_entry("1", 200, {}, "application/json", deep, 64);
    EXPECT_EQ(entry["status"], 502);
    EXPECT_NE(entry.dump().find("limits.max_json_depth (64)"), std::string::npos) << entry.dump();
    EXPECT_EQ(response_entry("2", 200, {}, "application/json", "[[1]]", 2)["body"], json::parse("[[1]]"));
    EXPECT_EQ(response_entry("3", 200, {}, "application/json", "[[[1]]]", 2)["status"], 502);
}

TEST(FanOut, DeepBodyIsA400) {
    auto s = b_settings();
    auto call = parse_fan_out(s, R"({"resource_type":"activities","ids":["a1"],"x":)" + std::string(60000, '[') +
                                     std::string(60000, ']') + "}");
    EXPECT_NE(call.error.find("max_json_depth"), std::string::npos) << call.error;
}
