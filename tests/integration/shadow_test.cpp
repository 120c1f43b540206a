// Shadow mode (coalesce.shadow): every caller is served by its own single call, while the
// batching runs beside it and reports what it would have done. The same arrivals are sent
// through the same route live and in shadow, and the shadow's batches are compared with the
// live ones the upstream really received.
#include <set>

#include "tests/integration/harness.hpp"

using namespace batchgate::testing;
using batchgate::mock::mock_options;
using batchgate::mock::mock_upstream;

namespace {

const char* yaml = R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
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
      shadow: {{SHADOW}}
      key: {path: id}
      max_batch_items: 10
      max_wait: {{WAIT}}
      flush: {{FLUSH}}
      request: {method: GET, path: /users, encoding: query_list, query_param: ids}
      response: {items: "", key: /id}
)";

struct run {
    std::string shadow = "false";
    std::string flush = "window";
    std::string wait = "300ms";
};

std::shared_ptr<const batchgate::config::gateway_config> config_for(unsigned short port, const run& r) {
    return load_yaml(fill(yaml, {{"PORT", std::to_string(port)},
                                 {"SHADOW", r.shadow},
                                 {"FLUSH", r.flush},
                                 {"WAIT", r.wait}}));
}

// What a run's batching did, read from /metrics (live or shadow families).
struct batching {
    double batches = 0;      // batch calls (made, or would have been)
    double items = 0;        // items in them
    double calls_saved = 0;  // callers minus batch calls
};

batching read_batching(running_gateway& gw, const std::string& prefix, double callers) {
    batching b;
    // Every caller is in a batch once its flush is counted: wait for that, not for time.
    b.items = gw.metric_reaching(prefix + "batch_size_sum{route=\"users\"}", callers);
    b.batches = gw.metric(prefix + "batch_size_count{route=\"users\"}");
    b.calls_saved = gw.metric(prefix + "upstream_calls_saved_total{route=\"users\"}");
    return b;
}

// n callers at once, each for its own user; every answer must be that user.
void call_users(running_gateway& gw, int n, bool expect_batch_headers) {
    auto results = concurrently(n, [&](int i) { return get(gw.port(), "/users/" + std::to_string(i + 1)); });
    for (int i = 0; i < n; ++i) {
        ASSERT_EQ(results[i].status, 200) << results[i].body;
        EXPECT_EQ(results[i].json()["id"], std::to_string(i + 1));
        EXPECT_EQ(!results[i].header("x-batchgate-batch-id").empty(), expect_batch_headers) << i;
    }
}

void compare_with_live(const run& live_run, int callers, std::chrono::microseconds latency) {
    batching live;
    {
        mock_upstream up(mock_options{.latency = latency});
        running_gateway gw(config_for(up.port(), live_run));
        call_users(gw, callers, true);
        live = read_batching(gw, "batchgate_", callers);
        EXPECT_EQ(up.count("GET", "/users"), live.batches) << "the live run's batch calls";
        EXPECT_EQ(gw.metric("batchgate_shadow_batch_size_count{route=\"users\"}"), -1) << "no shadow series on a live route";
    }
    run shadow_run = live_run;
    shadow_run.shadow = "true";
    mock_upstream up(mock_options{.latency = latency});
    running_gateway gw(config_for(up.port(), shadow_run));
    call_users(gw, callers, false);
    const batching shadow = read_batching(gw, "batchgate_shadow_", callers);

    // The upstream saw single calls only, one per caller.
    EXPECT_EQ(up.count("GET", "/users"), 0u) << "a shadow route never sends a batch call";
    std::set<std::string> singles;
    for (const auto& c : up.calls()) singles.insert(c.target);
    EXPECT_EQ(singles.size(), static_cast<std::size_t>(callers));
    EXPECT_EQ(up.calls().size(), static_cast<std::size_t>(callers));

    EXPECT_EQ(shadow.items, callers);
    EXPECT_NEAR(shadow.batches, live.batches, 1) << "live " << live.batches << " batches, shadow " << shadow.batches;
    EXPECT_NEAR(shadow.calls_saved, live.calls_saved, 1);
    EXPECT_EQ(gw.metric_reaching("batchgate_shadow_callers_total{outcome=\"batched\",route=\"users\"}", callers), callers);
    EXPECT_EQ(gw.metric("batchgate_batch_size_count{route=\"users\"}"), 0) << "nothing counted as really batched";
    EXPECT_EQ(gw.metric("batchgate_requests_total{route=\"users\",status=\"200\"}"), callers);
    EXPECT_EQ(gw.metric_reaching("batchgate_shadow_waiting_callers{route=\"users\"}", 0), 0);
    EXPECT_EQ(gw.metric_reaching("batchgate_shadow_open_partitions{route=\"users\"}", 0), 0);
}

}  // namespace

// flush: window, 25 callers at once, 10 items a batch: 10 + 10 by size, 5 by the timer.
TEST(Shadow, WindowFlushCountsTheBatchesALiveRunSends) {
    compare_with_live(run{.flush = "window", .wait = "300ms"}, 25, std::chrono::milliseconds(5));
}

// flush: adaptive: the first caller goes at once, the rest gather while its call is in flight;
// the shadow times its calls by the single calls it sees (the first one included).
TEST(Shadow, AdaptiveFlushCountsTheBatchesALiveRunSends) {
    compare_with_live(run{.flush = "adaptive", .wait = "1s"}, 12, std::chrono::milliseconds(150));
}

// Callers batching would refuse (no key; an item bigger than max_batch_bytes) are still served
// by their single call; the shadow counts each refusal.
TEST(Shadow, CallersBatchingWouldRefuseAreServedAndCounted) {
    mock_upstream up;
    const char* keyed = R"(
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstreams:
  api: {url: "http://127.0.0.1:{{PORT}}"}
routes:
  - name: keyed
    match: {method: POST, path: /echo/keyed}
    upstream: api
    mode: coalesce
    coalesce:
      shadow: true
      key: {body: /id}
      max_wait: 5ms
      max_batch_bytes: 200
      request: {method: POST, path: /echo/keyed/batch, encoding: json_body, body: {items: "{items}"}, item: "{body}"}
      response: {items: /items, key: /id}
)";
    running_gateway gw(load_yaml(fill(keyed, {{"PORT", std::to_string(up.port())}})));
    auto no_key = send_request(gw.port(), "POST", "/echo/keyed", R"({"no_id":true})", {{"Content-Type", "application/json"}});
    ASSERT_EQ(no_key.status, 200) << no_key.body;
    EXPECT_EQ(no_key.json()["body"], R"({"no_id":true})") << "the single endpoint's own answer";
    const std::string big = R"({"id":"x","pad":")" + std::string(300, 'p') + R"("})";
    auto too_large = send_request(gw.port(), "POST", "/echo/keyed", big, {{"Content-Type", "application/json"}});
    ASSERT_EQ(too_large.status, 200) << too_large.body;
    EXPECT_EQ(too_large.json()["body"], big);
    auto fine = send_request(gw.port(), "POST", "/echo/keyed", R"({"id":"7"})", {{"Content-Type", "application/json"}});
    ASSERT_EQ(fine.status, 200) << fine.body;
    EXPECT_EQ(fine.json()["target"], "/echo/keyed");
    EXPECT_EQ(gw.metric("batchgate_shadow_callers_total{outcome=\"no_key\",route=\"keyed\"}"), 1);
    EXPECT_EQ(gw.metric("batchgate_shadow_callers_total{outcome=\"too_large\",route=\"keyed\"}"), 1);
    EXPECT_EQ(gw.metric_reaching("batchgate_shadow_callers_total{outcome=\"batched\",route=\"keyed\"}", 1), 1);
    // A body nested past limits.max_json_depth: a coalesce route refuses it before anything
    // parses it; a shadow route serves it and counts the refusal.
    const std::string deep = std::string(200, '[') + std::string(200, ']');
    auto nested = send_request(gw.port(), "POST", "/echo/keyed", deep, {{"Content-Type", "application/json"}});
    ASSERT_EQ(nested.status, 200) << nested.body;
    EXPECT_EQ(nested.json()["body"], deep);
    EXPECT_EQ(gw.metric("batchgate_shadow_callers_total{outcome=\"bad_item\",route=\"keyed\"}"), 1);
    EXPECT_EQ(up.count("POST", "/echo/keyed/batch"), 0u);
    EXPECT_EQ(up.count("POST", "/echo/keyed"), 4u);
}

// Turning shadow off is a reload: the same route then batches for real.
TEST(Shadow, AReloadTurnsTheRouteLive) {
    mock_upstream up;
    // A window wide enough that five callers started together arrive within it on a busy machine.
    running_gateway gw(config_for(up.port(), run{.shadow = "true", .wait = "200ms"}));
    call_users(gw, 5, false);
    EXPECT_EQ(up.count("GET", "/users"), 0u);
    gw.server().reload(config_for(up.port(), run{.shadow = "false", .wait = "200ms"}));
    // The reload applies on the control thread: once a caller is batched, it has.
    bool live = false;
    for (int i = 0; i < 100 && !live; ++i) live = !get(gw.port(), "/users/99").header("x-batchgate-batch-id").empty();
    ASSERT_TRUE(live) << "the reload did not apply";
    up.clear();
    call_users(gw, 5, true);
    EXPECT_EQ(up.count("GET", "/users"), 1u) << "five callers at once, one batch call";
    // The shadow's counts stay (with the callers that polled for the reload while it was on).
    EXPECT_GE(gw.metric("batchgate_shadow_batch_size_sum{route=\"users\"}"), 5);
}

// The admin listener's status view: the page is HTML with nothing from outside, and
// status.json says what the route is and what its shadow counted, as /metrics does.
TEST(Shadow, StatusJsonShowsTheShadowRoute) {
    mock_upstream up;
    running_gateway gw(config_for(up.port(), run{.shadow = "true", .wait = "20ms"}));
    call_users(gw, 6, false);
    // Counted as batched when their would-be call ends, a single call's time after the flush.
    ASSERT_EQ(gw.metric_reaching("batchgate_shadow_callers_total{outcome=\"batched\",route=\"users\"}", 6), 6);
    auto page = get(gw.admin_port(), "/status");
    ASSERT_EQ(page.status, 200);
    EXPECT_EQ(page.header("content-type"), "text/html; charset=utf-8");
    EXPECT_NE(page.body.find("status.json"), std::string::npos);
    EXPECT_EQ(page.body.find("http://"), std::string::npos) << "no outside assets";
    EXPECT_EQ(page.body.find("https://"), std::string::npos) << "no outside assets";
    EXPECT_EQ(get(gw.admin_port(), "/").body, page.body);
    auto s = get(gw.admin_port(), "/status.json").json();
    ASSERT_EQ(s["routes"].size(), 1u);
    const auto& r = s["routes"][0];
    EXPECT_EQ(r["name"], "users");
    EXPECT_EQ(r["mode"], "shadow");
    EXPECT_EQ(r["requests"]["total"], 6);
    EXPECT_EQ(r["requests"]["by_status"]["200"], 6);
    EXPECT_EQ(r["batching"]["batch_size"]["sum"], 6);
    EXPECT_EQ(r["batching"]["batch_size"]["count"], gw.metric("batchgate_shadow_batch_size_count{route=\"users\"}"));
    EXPECT_EQ(r["batching"]["callers"]["batched"], 6);
    ASSERT_EQ(s["upstreams"].size(), 1u);
    EXPECT_EQ(s["upstreams"][0]["requests"]["total"], 6) << "six single calls";
    EXPECT_EQ(s["upstreams"][0]["connections"]["in_use"], 0);
    EXPECT_GE(s["upstreams"][0]["connections"]["idle"], 1);
}

// A reload that removes an upstream leaves its connection gauges at 0 (the series cannot go,
// so they must not keep their last figures), and the new upstream's appear.
TEST(Shadow, AnUpstreamAReloadRemovedReadsNoConnections) {
    mock_upstream up;
    running_gateway gw(config_for(up.port(), run{.shadow = "true", .wait = "20ms"}));
    call_users(gw, 3, false);
    const std::string old_idle = "batchgate_upstream_connections{state=\"idle\",upstream=\"api\"}";
    ASSERT_GE(gw.metric(old_idle), 1) << "the single calls left idle connections";
    std::string renamed = fill(yaml, {{"PORT", std::to_string(up.port())}, {"SHADOW", "true"}, {"FLUSH", "window"}, {"WAIT", "20ms"}});
    for (auto at = renamed.find(" api"); at != std::string::npos; at = renamed.find(" api", at + 1))
        renamed.replace(at, 4, " api2");
    gw.server().reload(load_yaml(renamed));
    // The reload applies on the control thread: once the new upstream has gauges, it has.
    const std::string new_idle = "batchgate_upstream_connections{state=\"idle\",upstream=\"api2\"}";
    for (int i = 0; i < 200 && gw.metric(new_idle) < 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ASSERT_EQ(gw.metric(new_idle), 0);
    for (const char* state : {"in_use", "idle", "queued"})
        EXPECT_EQ(gw.metric(std::string("batchgate_upstream_connections{state=\"") + state + "\",upstream=\"api\"}"), 0)
            << state;
}
