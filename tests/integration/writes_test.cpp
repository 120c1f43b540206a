// Write coalescing end to end: concurrent single write calls through a real gateway to the mock
// upstreams of reference APIs C (abilities), D (progress events), E (documents) and F (goals),
// configured by the shipped examples (examples/{abilities,progress,documents,goals}.yaml) and
// nothing else. Checks what every caller got and what the upstream saw.
//
// The MockWrites.* tests call the mock directly: they pin down the upstream behaviour the
// gateway tests rely on (docs/design/write-coalescing.md, /work/shared/reference-apis.md).
#include <atomic>
#include <latch>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "tests/integration/examples.hpp"
#include "text/http_date.hpp"

using namespace batchgate::testing;
using batchgate::mock::mock_options;
using batchgate::mock::mock_upstream;
using batchgate::mock::recorded_call;
using nlohmann::json;

namespace {

json body_of(const recorded_call& c) { return json::parse(c.body, nullptr, false); }

// bg-<process-random-hex>-<counter> (the contract does not fix the counter's base).
bool generated_key(const json& v) {
    static const std::regex re("bg-[0-9a-f]+-[0-9a-f]+");
    return v.is_string() && std::regex_match(v.get<std::string>(), re);
}

json event(const std::string& id, int percent = 42) {
    json e{{"type", "lesson_progress"}, {"courseId", "foundations"}, {"lessonId", "lesson-video"},
           {"userId", "demo-user"},     {"percent", percent},         {"position", 185},
           {"timestamp", 1730956800000}};
    if (!id.empty()) e["clientEventId"] = id;
    return e;
}

json with(json j, const std::string& key, json value) {
    j[key] = std::move(value);
    return j;
}

const std::string abilities_batch_path = "/api/characters/[^/]+/abilities/batch";

}  // namespace

// =========================================================================================
// The mock upstream itself (runs without any gateway feature).

TEST(MockWrites, AbilitiesSingleAndAllOrNothingBatch) {
    mock_upstream up;
    const auto p = up.port();
    auto r = call(p, "PATCH", "/api/characters/3/abilities/4", {{"action", "increment"}, {"data", {{"score", 5}, {"experience_points", 75}}}});
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.json(), (json{{"id", 4}, {"ability_name", "Ability 4"}, {"score", 5}, {"effective_score", 6}, {"experience_points", 75}}));
    r = call(p, "PATCH", "/api/characters/3/abilities/4", {{"action", "decrement"}, {"data", {{"score", 2}, {"experience_points", 20}}}});
    EXPECT_EQ(r.json()["score"], 3);
    EXPECT_EQ(r.json()["experience_points"], 55);
    EXPECT_EQ(call(p, "PATCH", "/api/characters/3/abilities/4", {{"action", "explode"}, {"data", json::object()}}).body,
              R"({"error":"invalid operation"})");
    EXPECT_EQ(call(p, "PATCH", "/api/characters/3/abilities/4", {{"action", "increment"}}).status, 422);

    json ok{{"operations", {{{"abilityId", 4}, {"action", "increment"}, {"data", {{"score", 5}, {"experience_points", 75}}}},
                            {{"abilityId", 7}, {"action", "decrement"}, {"data", {{"score", 2}, {"experience_points", 20}}}}}}};
    r = call(p, "POST", "/api/characters/3/abilities/batch", ok);
    ASSERT_EQ(r.status, 200) << r.body;
    auto j = r.json();
    EXPECT_EQ(j["status"], "success");
    ASSERT_EQ(j["results"].size(), 2u);
    EXPECT_EQ(j["results"][0], (json{{"abilityId", 4}, {"action", "increment"}, {"success", true},
                                     {"data", {{"id", 4}, {"ability_name", "Ability 4"}, {"score", 8}, {"effective_score", 9}, {"experience_points", 130}}}}));
    EXPECT_EQ(j["results"][1]["data"]["score"], -2);

    json bad{{"operations", {{{"abilityId", 4}, {"action", "increment"}, {"data", {{"score", 1}}}},
                             {{"abilityId", 8}, {"action", "nope"}, {"data", {{"score", 1}}}},
                             {{"abilityId", 9}, {"action", "nope"}, {"data", {{"score", 1}}}}}}};
    r = call(p, "POST", "/api/characters/3/abilities/batch", bad);
    EXPECT_EQ(r.status, 422);
    EXPECT_EQ(r.json(), (json{{"status", "error"},
                              {"results", {{{"abilityId", 8}, {"action", "nope"}, {"success", false}, {"error", "invalid action"}}}}}));
    EXPECT_EQ(up.ability("3", 4), (batchgate::mock::ability_state{8, 130})) << "a failed batch saved something";
    EXPECT_FALSE(up.ability("3", 8).has_value());
    EXPECT_FALSE(up.ability("4", 4).has_value()) << "characters share state";
    EXPECT_EQ(up.count("POST", "/api/characters/3/abilities/batch"), 2u);

    up.clear();
    EXPECT_FALSE(up.ability("3", 4).has_value());
    EXPECT_TRUE(up.calls().empty());
}

TEST(MockWrites, AbilitiesSingleRateLimit) {
    // A window far longer than the test: the third call is over the limit however slow the machine.
    mock_upstream up({.single_rate_limit = 2, .single_rate_window = std::chrono::minutes(10)});
    json op{{"action", "increment"}, {"data", {{"score", 1}}}};
    EXPECT_EQ(call(up.port(), "PATCH", "/api/characters/1/abilities/1", op).status, 200);
    EXPECT_EQ(call(up.port(), "PATCH", "/api/characters/1/abilities/2", op).status, 200);
    auto r = call(up.port(), "PATCH", "/api/characters/1/abilities/3", op);
    EXPECT_EQ(r.status, 429);
    EXPECT_FALSE(r.header("retry-after").empty());
    EXPECT_EQ(up.rate_limited_count(), 1u);
    // Batch calls are not limited.
    EXPECT_EQ(call(up.port(), "POST", "/api/characters/1/abilities/batch", {{"operations", {{{"abilityId", 3}, {"action", "increment"}, {"data", json::object()}}}}}).status, 200);
    EXPECT_EQ(call(up.port(), "PATCH", "/api/characters/1/abilities/3", op).status, 429);

    // Calls further apart than the window are not limited (a sleep is at least its length).
    mock_upstream short_window({.single_rate_limit = 1, .single_rate_window = std::chrono::milliseconds(10)});
    EXPECT_EQ(call(short_window.port(), "PATCH", "/api/characters/1/abilities/1", op).status, 200);
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    EXPECT_EQ(call(short_window.port(), "PATCH", "/api/characters/1/abilities/2", op).status, 200);
}

// hold(): a call stays in flight, its slot taken, until the test releases it.
TEST(Mock, HoldKeepsCallsInFlightUntilReleased) {
    mock_upstream up({.threads = 2, .max_concurrent = 1});
    up.hold();
    std::atomic<int> answered{0};
    std::thread first([&] {
        EXPECT_EQ(get(up.port(), "/users/1").status, 200);
        ++answered;
    });
    ASSERT_TRUE(eventually(std::chrono::seconds(10), [&] { return up.held() == 1; }));
    std::thread second([&] {
        EXPECT_EQ(get(up.port(), "/users/2").status, 200);
        ++answered;
    });
    ASSERT_TRUE(eventually(std::chrono::seconds(10), [&] { return up.calls().size() == 2; }));
    EXPECT_EQ(up.held(), 1u) << "the second call waits for the held one's slot";
    EXPECT_EQ(answered.load(), 0);
    up.release_held();
    first.join();
    second.join();
    EXPECT_EQ(answered.load(), 2);
    EXPECT_EQ(up.held(), 0u);
    EXPECT_EQ(up.max_observed_concurrency(), 1u);
}

TEST(MockWrites, ProgressSingleBatchLimitsAndRateLimitHook) {
    mock_upstream up;
    const auto p = up.port();
    auto r = call(p, "POST", "/api/client/progress", event("e-1"));
    EXPECT_EQ(r.status, 202);
    EXPECT_EQ(r.json(), (json{{"status", "accepted"}}));
    r = call(p, "POST", "/api/client/progress", event("e-1"));
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.json(), (json{{"status", "duplicate"}}));
    EXPECT_EQ(call(p, "POST", "/api/client/progress", event("e-2", 101)).status, 422);
    EXPECT_EQ(call(p, "POST", "/api/client/progress", event("")).body, R"({"error":"validation_error"})");
    EXPECT_FALSE(up.progress_event_seen("e-2"));

    r = call(p, "POST", "/api/client/progress/batch", {{"events", {event("e-0"), event("e-1"), event("e-9", -1), event("e-0")}}});
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.json(), (json{{"accepted", {"e-0"}}, {"duplicates", {"e-1", "e-0"}},
                              {"failed", {{{"id", "e-9"}, {"reason", "validation_error"}}}}}));

    json many{{"events", json::array()}};
    for (int i = 0; i < 26; ++i) many["events"].push_back(event("m-" + std::to_string(i)));
    EXPECT_EQ(call(p, "POST", "/api/client/progress/batch", many).status, 413);
    json big{{"events", json::array()}};
    for (int i = 0; i < 10; ++i) big["events"].push_back(with(event("b-" + std::to_string(i)), "pad", std::string(7000, 'x')));
    EXPECT_EQ(call(p, "POST", "/api/client/progress/batch", big).status, 413);
    // "at most 64 KB" is 65,536 bytes: a body of exactly that size is taken.
    json fits{{"events", {with(event("f-0"), "pad", "")}}};
    fits["events"][0]["pad"] = std::string(65536 - fits.dump().size(), 'x');
    ASSERT_EQ(fits.dump().size(), 65536u);
    EXPECT_EQ(call(p, "POST", "/api/client/progress/batch", fits).status, 200);
    EXPECT_FALSE(up.progress_event_seen("m-0"));
    EXPECT_FALSE(up.progress_event_seen("b-0"));

    up.set_progress_rate_limit(2, "3");
    for (int i = 0; i < 2; ++i) {
        r = call(p, "POST", "/api/client/progress/batch", {{"events", {event("r-1")}}});
        EXPECT_EQ(r.status, 429);
        EXPECT_EQ(r.header("retry-after"), "3");
        EXPECT_EQ(r.json(), (json{{"error", "rate limited"}}));
    }
    r = call(p, "POST", "/api/client/progress/batch", {{"events", {event("r-1")}}});
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.json()["accepted"], json::array({"r-1"}));
    EXPECT_EQ(up.rate_limited_count(), 2u);
    up.set_progress_rate_limit(1);
    EXPECT_EQ(call(p, "POST", "/api/client/progress/batch", {{"events", {event("r-2")}}}).header("retry-after"), "0");
}

TEST(MockWrites, DocumentsSingleAndBatchInCreateUpdateDeleteOrder) {
    mock_upstream up;
    const auto p = up.port();
    auto r = call(p, "POST", "/api/v1/workspaces/ws1/documents", {{"title", "New"}, {"content", "# Hello"}});
    ASSERT_EQ(r.status, 201) << r.body;
    EXPECT_EQ(r.json(), (json{{"id", "doc_1"}, {"title", "New"}, {"content", "# Hello"}, {"version", 1}}));
    r = call(p, "PUT", "/api/v1/workspaces/ws1/documents/doc_1", {{"version", 1}, {"title", "x"}});
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.json()["version"], 2);
    EXPECT_EQ(call(p, "PUT", "/api/v1/workspaces/ws1/documents/doc_1", {{"version", 1}}).body, R"({"error":"version mismatch"})");
    r = call(p, "PUT", "/api/v1/workspaces/ws2/documents/doc_1", {{"version", 2}});
    EXPECT_EQ(r.status, 404);
    EXPECT_EQ(r.body, R"({"error":"document not found"})");
    r = call(p, "PUT", "/api/v1/workspaces/ws1/documents/doc_1", {{"title", "no version"}});
    EXPECT_EQ(r.status, 400);
    EXPECT_EQ(r.body, R"({"error":"version required"})");
    r = send_request(p, "DELETE", "/api/v1/workspaces/ws1/documents/doc_1");
    EXPECT_EQ(r.status, 204);
    EXPECT_TRUE(r.body.empty());
    EXPECT_EQ(send_request(p, "DELETE", "/api/v1/workspaces/ws1/documents/doc_1").status, 404);

    up.seed_document("ws1", "doc_9", 3);
    up.seed_document("ws1", "doc_4", 1);
    // The delete of doc_9 is listed first but runs after its update.
    json batch{{"workspace_id", "ws1"}, {"atomic", false},
               {"operations", {{{"operation", "delete"}, {"client_id", "op_0"}, {"document_id", "doc_9"}},
                               {{"operation", "create"}, {"client_id", "op_1"}, {"data", {{"title", "New"}, {"content", "# Hello"}}}},
                               {{"operation", "update"}, {"client_id", "op_2"}, {"document_id", "doc_9"}, {"data", {{"version", 3}, {"title", "x"}}}},
                               {{"operation", "update"}, {"client_id", "op_3"}, {"document_id", "doc_4"}, {"data", {{"version", 7}}}},
                               {{"operation", "delete"}, {"client_id", "op_4"}, {"document_id", "doc_nope"}}}}};
    r = call(p, "POST", "/api/v1/documents/batch", batch);
    ASSERT_EQ(r.status, 200) << r.body;
    auto j = r.json();
    EXPECT_EQ(j["total"], 5);
    EXPECT_EQ(j["successful"], 3);
    EXPECT_EQ(j["failed"], 2);
    EXPECT_TRUE(j["processing_time_ms"].is_number());
    ASSERT_EQ(j["results"].size(), 5u);
    EXPECT_EQ(j["results"][0], (json{{"client_id", "op_0"}, {"status", "success"}}));
    EXPECT_EQ(j["results"][1]["client_id"], "op_1");
    EXPECT_EQ(j["results"][1]["status"], "success");
    EXPECT_EQ(j["results"][1]["version"], 1);
    EXPECT_EQ(j["results"][2], (json{{"client_id", "op_2"}, {"status", "success"}, {"document_id", "doc_9"}, {"version", 4}}));
    EXPECT_EQ(j["results"][3], (json{{"client_id", "op_3"}, {"status", "conflict"}, {"error", "version mismatch"}}));
    EXPECT_EQ(j["results"][4], (json{{"client_id", "op_4"}, {"status", "error"}, {"error", "document not found"}}));
    EXPECT_FALSE(up.document("ws1", "doc_9").has_value());
    EXPECT_EQ(up.document("ws1", "doc_4")->version, 1u);
    auto created = up.document("ws1", j["results"][1]["document_id"].get<std::string>());
    ASSERT_TRUE(created.has_value());
    EXPECT_EQ(created->content, "# Hello");

    batch["operations"] = json::array();
    for (int i = 0; i < 101; ++i)
        batch["operations"].push_back({{"operation", "create"}, {"client_id", "c" + std::to_string(i)}, {"data", {{"title", "t"}}}});
    EXPECT_EQ(call(p, "POST", "/api/v1/documents/batch", batch).status, 400);
}

TEST(MockWrites, GoalsSingleAndBatchSave) {
    mock_upstream up;
    const auto p = up.port();
    auto r = call(p, "POST", "/api/v1/org/acme/goals", {{"period_id", "p-1"}, {"type", "performance"}, {"title", "Ship"}, {"weight", 30}});
    ASSERT_EQ(r.status, 201) << r.body;
    EXPECT_EQ(r.json(), (json{{"id", "g-1"}, {"period_id", "p-1"}, {"type", "performance"}, {"title", "Ship"}, {"weight", 30}}));
    r = call(p, "PUT", "/api/v1/org/acme/goals/g-1", {{"period_id", "p-1"}, {"type", "competency"}, {"weight", 40}});
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.json(), (json{{"id", "g-1"}, {"period_id", "p-1"}, {"type", "competency"}, {"title", "Ship"}, {"weight", 40}}));
    EXPECT_EQ(call(p, "PUT", "/api/v1/org/acme/goals/g-1", {{"period_id", "p-1"}, {"type", "competency"}, {"weight", 101}}).body,
              R"({"error":"weight out of range"})");
    EXPECT_EQ(call(p, "POST", "/api/v1/org/acme/goals", {{"period_id", "p-1"}, {"type", "other"}}).body, R"({"error":"invalid type"})");

    up.seed_goal("acme", "g-42", "p-1", "competency", 10);
    json batch{{"period_id", "p-1"},
               {"goals", {{{"id", "temp-1"}, {"type", "performance"}, {"is_new", true}, {"data", {{"title", "N"}, {"weight", 5}}}},
                          {{"id", "g-42"}, {"type", "competency"}, {"is_new", false}, {"data", {{"weight", 20}}}},
                          {{"id", "g-13"}, {"type", "competency"}, {"is_new", false}, {"data", {{"weight", 200}}}},
                          {{"id", "temp-2"}, {"type", "bogus"}, {"is_new", true}, {"data", {{"weight", 1}}}}}}};
    r = call(p, "POST", "/api/v1/org/acme/goals/batch-save", batch);
    ASSERT_EQ(r.status, 200) << r.body;
    auto j = r.json();
    ASSERT_EQ(j["saved"].size(), 2u);
    EXPECT_EQ(j["saved"][0]["tempId"], "temp-1");
    const auto server_id = j["saved"][0]["serverId"].get<std::string>();
    EXPECT_EQ(j["saved"][0]["data"], (json{{"id", server_id}, {"period_id", "p-1"}, {"type", "performance"}, {"title", "N"}, {"weight", 5}}));
    EXPECT_EQ(j["saved"][1], (json{{"id", "g-42"}, {"data", {{"id", "g-42"}, {"period_id", "p-1"}, {"type", "competency"}, {"title", "seeded g-42"}, {"weight", 20}}}}));
    EXPECT_EQ(j["failed"], (json{{{"id", "g-13"}, {"error", "weight out of range"}}, {{"id", "temp-2"}, {"error", "invalid type"}}}));
    EXPECT_TRUE(up.goal("acme", server_id).has_value());
    EXPECT_FALSE(up.goal("other", server_id).has_value());
}

TEST(MockWrites, FaultsApplyToTheWriteBatchEndpointsAndReadsStillWork) {
    mock_upstream up;
    up.set_fault(batchgate::mock::fault::status_500);
    EXPECT_EQ(call(up.port(), "POST", "/api/client/progress/batch", {{"events", {event("e-1")}}}).status, 500);
    EXPECT_EQ(call(up.port(), "POST", "/api/client/progress", event("e-1")).status, 202);
    up.set_fault(batchgate::mock::fault::none);
    auto r = get(up.port(), "/users/7");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.json()["id"], "7");
}

// =========================================================================================
// C: abilities through the gateway (examples/abilities.yaml).

TEST(WritesAbilities, TwentyConcurrentPatchesOneInvalidOnlyThatCallerFails) {
    mock_upstream up({.threads = 2});
    running_gateway gw(example_config("abilities.yaml", up.port()));
    constexpr int n = 20, invalid = 13;
    auto results = concurrently(n, [&](int i) {
        const int v = i + 1;
        json op{{"action", i == invalid ? "explode" : (i % 2 ? "decrement" : "increment")},
                {"data", {{"score", v}, {"experience_points", 10 * v}}}};
        return call(gw.port(), "PATCH", "/api/characters/3/abilities/" + std::to_string(v), op);
    });
    for (int i = 0; i < n; ++i) {
        const int v = i + 1, sign = i % 2 ? -1 : 1;
        if (i == invalid) {
            EXPECT_EQ(results[i].status, 422) << results[i].body;
            EXPECT_NE(results[i].body.find("invalid action"), std::string::npos) << results[i].body;
            continue;
        }
        ASSERT_EQ(results[i].status, 200) << "caller " << i << ": " << results[i].body;
        EXPECT_EQ(results[i].json(), (json{{"id", v}, {"ability_name", "Ability " + std::to_string(v)}, {"score", sign * v},
                                          {"effective_score", sign * v + 1}, {"experience_points", sign * 10 * v}}))
            << "caller " << i << " got someone else's ability";
        // Saved exactly once, although its batch may have been re-sent in halves.
        EXPECT_EQ(up.ability("3", v), (batchgate::mock::ability_state{sign * v, sign * 10 * v})) << "ability " << v;
    }
    EXPECT_FALSE(up.ability("3", invalid + 1).has_value()) << "the invalid operation was saved";

    EXPECT_TRUE(calls_to(up, "PATCH", ".*").empty()) << "single PATCHes reached the upstream";
    auto batches = calls_to(up, "POST", abilities_batch_path);
    ASSERT_FALSE(batches.empty());
    EXPECT_EQ(batches.size(), up.calls().size()) << "the upstream saw something else than batch calls";
    bool invalid_shared_a_batch = false;
    for (const auto& c : batches) {
        EXPECT_EQ(c.path, "/api/characters/3/abilities/batch");
        auto ops = body_of(c)["operations"];
        ASSERT_TRUE(ops.is_array()) << c.body;
        for (const auto& op : ops) {
            EXPECT_TRUE(op["abilityId"].is_number_integer()) << c.body;  // {path.ability_id:int}
            EXPECT_TRUE(op["data"].is_object()) << c.body;
            if (op["abilityId"] == invalid + 1 && ops.size() > 1) invalid_shared_a_batch = true;
        }
    }
    if (invalid_shared_a_batch) EXPECT_GT(gw.metric("batchgate_isolations_total{route=\"abilities\"}"), 0);
}

// The drain deadline answers the callers still waiting. A write whose batch call went out may
// have been applied: a 504 that says so, never a 503 with Retry-After (which invited applying it
// twice; found by a hostile-upstream helper). A write still held back (its character's call in
// flight) never went out: 503 with Retry-After, and it is never sent.
TEST(WritesAbilities, TheDrainDeadlineTellsASentWriteFromAHeldOne) {
    mock_upstream up({.threads = 2});
    up.hold();
    std::string text = example_config_text("abilities.yaml", up.port(), "5ms");
    text += "limits: {drain_timeout: 300ms}\n";
    response sent, held;
    std::thread a, b;
    {
        running_gateway gw(load_yaml(text));
        const json op{{"action", "increment"}, {"data", {{"score", 1}, {"experience_points", 1}}}};
        a = std::thread([&] { sent = call(gw.port(), "PATCH", "/api/characters/3/abilities/4", op); });
        ASSERT_TRUE(eventually(std::chrono::seconds(10), [&] { return up.held() == 1; }));
        b = std::thread([&] { held = call(gw.port(), "PATCH", "/api/characters/3/abilities/7", op); });
        const std::string waiting = R"(batchgate_waiting_callers{route="abilities"})";
        ASSERT_TRUE(eventually(std::chrono::seconds(10), [&] { return gw.metric(waiting) == 2; }));
        gw.stop();
        a.join();
        b.join();
    }
    up.release_held();
    EXPECT_EQ(sent.status, 504) << sent.body;
    EXPECT_NE(sent.body.find("may have taken effect"), std::string::npos) << sent.body;
    EXPECT_EQ(sent.headers.count("retry-after"), 0u) << sent.body;
    EXPECT_EQ(held.status, 503) << held.body;
    EXPECT_EQ(held.json()["error"], "shutting_down") << held.body;
    EXPECT_EQ(held.header("retry-after"), "1");
    ASSERT_TRUE(eventually(std::chrono::seconds(10), [&] { return up.held() == 0; }));
    EXPECT_EQ(calls_to(up, "POST", abilities_batch_path).size(), 1u) << "the held write went out";
}

// merge_patch is opt-in and only right for overwrites; this pins down what it does when a route
// chooses it (the shipped example uses in_batch: increments are deltas).
TEST(WritesAbilities, MergePatchMergesWhenARouteOptsIn) {
    mock_upstream up;
    std::string text = example_config_text("abilities.yaml", up.port(), "150ms");
    replace_once(text, "same_key: in_batch", "same_key: merge_patch", "abilities.yaml");
    running_gateway gw(load_yaml(text));
    constexpr int same = 6, others = 4;
    auto results = concurrently(same + others, [&](int i) {
        if (i >= same) {
            json op{{"action", "increment"}, {"data", {{"score", 1}, {"experience_points", 1}}}};
            return call(gw.port(), "PATCH", "/api/characters/3/abilities/" + std::to_string(i - same + 1), op);
        }
        json op{{"action", "increment"}, {"data", {{"score", i + 1}, {"experience_points", 10 * (i + 1)}}}};
        return call(gw.port(), "PATCH", "/api/characters/3/abilities/9", op);
    });
    for (int i = 0; i < same + others; ++i) ASSERT_EQ(results[i].status, 200) << "caller " << i << ": " << results[i].body;

    // Only the final state was sent: one operation for ability 9, applied once.
    auto saved = up.ability("3", 9);
    ASSERT_TRUE(saved.has_value());
    EXPECT_GE(saved->score, 1);
    EXPECT_LE(saved->score, same);
    EXPECT_EQ(saved->experience_points, 10 * saved->score) << "the merged operation mixes two callers' data";
    for (int i = 0; i < same; ++i) {
        auto j = results[i].json();
        EXPECT_EQ(j["id"], 9);
        EXPECT_EQ(j["score"], saved->score) << "merged caller " << i << " did not get the final answer";
    }
    for (int i = same; i < same + others; ++i) EXPECT_EQ(results[i].json()["id"], i - same + 1);

    int occurrences = 0;
    for (const auto& c : calls_to(up, "POST", abilities_batch_path)) {
        int in_this_call = 0;
        const json body = body_of(c);
        for (const auto& op : body["operations"]) in_this_call += op["abilityId"] == 9;
        EXPECT_LE(in_this_call, 1) << c.body;
        occurrences += in_this_call;
    }
    EXPECT_EQ(occurrences, 1) << "ability 9 was sent more than once";
    EXPECT_EQ(gw.metric("batchgate_merged_writes_total{route=\"abilities\"}"), same - 1);
}

TEST(WritesAbilities, EachCharacterGetsItsOwnBatch) {
    mock_upstream up;
    running_gateway gw(example_config("abilities.yaml", up.port()));
    auto results = concurrently(10, [&](int i) {
        json op{{"action", "increment"}, {"data", {{"score", i + 1}}}};
        return call(gw.port(), "PATCH", "/api/characters/" + std::to_string(i % 2 + 1) + "/abilities/" + std::to_string(i), op);
    });
    for (int i = 0; i < 10; ++i) {
        ASSERT_EQ(results[i].status, 200) << results[i].body;
        EXPECT_EQ(results[i].json()["score"], i + 1);
        EXPECT_EQ(up.ability(std::to_string(i % 2 + 1), i)->score, i + 1);
        EXPECT_FALSE(up.ability(std::to_string(2 - i % 2), i).has_value());
    }
    for (const auto& c : calls_to(up, "POST", abilities_batch_path)) {
        const std::string character = c.path.substr(std::string("/api/characters/").size(), 1);
        const json body = body_of(c);
        for (const auto& op : body["operations"])
            EXPECT_EQ(op["abilityId"].get<int>() % 2 + 1, std::stoi(character)) << c.path << " " << c.body;
    }
}

// =========================================================================================
// D: progress events through the gateway (examples/progress.yaml).

TEST(WritesProgress, AcceptedDuplicateInvalidAndMissingKey) {
    mock_upstream up({.threads = 2});
    ASSERT_EQ(call(up.port(), "POST", "/api/client/progress", event("e-seen")).status, 202);  // seen before
    running_gateway gw(example_config("progress.yaml", up.port(), "50ms"));

    constexpr int distinct = 30;
    const int seen = distinct, invalid = distinct + 1, keyless = distinct + 2;
    auto results = concurrently(distinct + 3, [&](int i) {
        if (i == seen) return call(gw.port(), "POST", "/api/client/progress", event("e-seen"));
        if (i == invalid) return call(gw.port(), "POST", "/api/client/progress", event("e-bad", 150));
        if (i == keyless) return call(gw.port(), "POST", "/api/client/progress", event(""));
        return call(gw.port(), "POST", "/api/client/progress", event("e-" + std::to_string(i)));
    });
    for (int i = 0; i < distinct; ++i) {
        EXPECT_EQ(results[i].status, 202) << "caller " << i << ": " << results[i].body;
        EXPECT_EQ(results[i].json(), (json{{"status", "accepted"}}));
        EXPECT_TRUE(up.progress_event_seen("e-" + std::to_string(i)));
    }
    EXPECT_EQ(results[seen].status, 200) << results[seen].body;
    EXPECT_EQ(results[seen].json(), (json{{"status", "duplicate"}}));
    EXPECT_EQ(results[invalid].status, 422) << results[invalid].body;
    EXPECT_EQ(results[invalid].json()["reason"], "validation_error") << results[invalid].body;
    EXPECT_EQ(results[keyless].status, 400) << results[keyless].body;
    EXPECT_NE(results[keyless].body.find("clientEventId"), std::string::npos) << "the 400 does not name the missing key";

    EXPECT_EQ(up.count("POST", "/api/client/progress"), 1u) << "a single call reached the upstream";
    auto batches = calls_to(up, "POST", "/api/client/progress/batch");
    EXPECT_GE(batches.size(), 2u);  // 32 events, at most 25 per call
    std::multiset<std::string> sent;
    for (const auto& c : batches) {
        EXPECT_LE(c.body.size(), 64000u);
        auto events = body_of(c)["events"];
        ASSERT_TRUE(events.is_array()) << c.body;
        EXPECT_LE(events.size(), 25u);
        for (const auto& e : events) {
            ASSERT_TRUE(e.contains("clientEventId")) << "the keyless event was sent: " << e.dump();
            sent.insert(e["clientEventId"].get<std::string>());
            if (e["clientEventId"] == "e-3") EXPECT_EQ(e, event("e-3")) << "the event was not sent unchanged";
        }
    }
    EXPECT_EQ(sent.size(), static_cast<std::size_t>(distinct + 2));
    EXPECT_EQ(std::set<std::string>(sent.begin(), sent.end()).size(), sent.size()) << "an event was sent twice";
}

TEST(WritesProgress, TheSameEventTwiceInOneWindowIsAcceptedThenDuplicate) {
    mock_upstream up;
    running_gateway gw(example_config("progress.yaml", up.port(), "50ms"));
    auto results = concurrently(6, [&](int i) {
        return call(gw.port(), "POST", "/api/client/progress", event(i < 2 ? "twice" : "once-" + std::to_string(i)));
    });
    std::multiset<int> twice{results[0].status, results[1].status};
    EXPECT_EQ(twice, (std::multiset<int>{200, 202})) << results[0].body << " " << results[1].body;
    for (int i = 2; i < 6; ++i) EXPECT_EQ(results[i].status, 202);
    for (const auto& c : calls_to(up, "POST", "/api/client/progress/batch")) {
        int n = 0;
        const json body = body_of(c);
        for (const auto& e : body["events"]) n += e["clientEventId"] == "twice";
        EXPECT_LE(n, 1) << "one batch carried the same event twice";
    }
}

TEST(WritesProgress, BatchesStayUnder64KB) {
    mock_upstream up;
    running_gateway gw(example_config("progress.yaml", up.port(), "50ms"));
    constexpr int n = 30;
    auto results = concurrently(n, [&](int i) {
        return call(gw.port(), "POST", "/api/client/progress",
                    with(event("big-" + std::to_string(i)), "note", std::string(5000, static_cast<char>('a' + i % 26))));
    });
    for (int i = 0; i < n; ++i) EXPECT_EQ(results[i].status, 202) << "caller " << i << ": " << results[i].body;
    auto batches = calls_to(up, "POST", "/api/client/progress/batch");
    EXPECT_GE(batches.size(), 3u);  // about 12 events of 5 KB fit in 64 KB
    std::size_t events = 0;
    for (const auto& c : batches) {
        EXPECT_LE(c.body.size(), 64000u);
        events += body_of(c)["events"].size();
    }
    EXPECT_EQ(events, static_cast<std::size_t>(n));
}

TEST(WritesProgress, RateLimitedBatchIsRetriedAndEveryCallerSucceeds) {
    mock_upstream up;
    running_gateway gw(example_config("progress.yaml", up.port(), "30ms"));
    up.set_progress_rate_limit(2);  // 429 with Retry-After: 0, twice
    auto results = concurrently(10, [&](int i) {
        return call(gw.port(), "POST", "/api/client/progress", event("r-" + std::to_string(i)));
    });
    for (int i = 0; i < 10; ++i) {
        EXPECT_EQ(results[i].status, 202) << "caller " << i << ": " << results[i].body;
        EXPECT_TRUE(up.progress_event_seen("r-" + std::to_string(i)));
    }
    EXPECT_EQ(up.rate_limited_count(), 2u) << "the upstream did not answer the two 429s";
    EXPECT_GE(up.count("POST", "/api/client/progress/batch"), 3u);
    EXPECT_GE(gw.metric("batchgate_upstream_retries_total{route=\"progress\"}"), 2);
}

TEST(WritesProgress, RetryAfterPastTheDeadlineGivesTheCallersThe429) {
    mock_upstream up;
    running_gateway gw(example_config("progress.yaml", up.port(), "10ms"));
    up.set_progress_rate_limit(100, "3600");  // Retry-After: 1 hour, far past any caller's deadline
    const auto started = std::chrono::steady_clock::now();
    auto r = call(gw.port(), "POST", "/api/client/progress", event("late-1"));
    EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(5)) << "the gateway waited for a retry it could not make";
    EXPECT_EQ(r.status, 429) << r.body;
    EXPECT_EQ(r.header("retry-after"), "3600");
    EXPECT_EQ(up.count("POST", "/api/client/progress/batch"), 1u);
}

// Retry-After as an HTTP-date (RFC 9110 section 10.2.3), an hour ahead: as far past the deadline
// as 3600 seconds, so no retry; and one in the past is a retry at once.
TEST(WritesProgress, RetryAfterAsAnHttpDateIsADelayFromNow) {
    mock_upstream up;
    running_gateway gw(example_config("progress.yaml", up.port(), "10ms"));
    const auto now = std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now());
    const std::string in_an_hour = batchgate::routes::format_http_date(now + std::chrono::hours(1));
    up.set_progress_rate_limit(100, in_an_hour);
    auto r = call(gw.port(), "POST", "/api/client/progress", event("dated-1"));
    EXPECT_EQ(r.status, 429) << r.body;
    EXPECT_EQ(r.header("retry-after"), in_an_hour);
    EXPECT_EQ(up.count("POST", "/api/client/progress/batch"), 1u) << "the date was not read as an hour's delay";

    up.set_progress_rate_limit(1, "Sun, 06 Nov 1994 08:49:37 GMT");
    r = call(gw.port(), "POST", "/api/client/progress", event("dated-2"));
    EXPECT_EQ(r.status, 202) << r.body;
    EXPECT_EQ(up.count("POST", "/api/client/progress/batch"), 3u);
}

// =========================================================================================
// E: documents through the gateway (examples/documents.yaml).

// status_rules: the two kinds of "error" answer as the single endpoints do.
TEST(WritesDocuments, NotFoundIs404AndMissingVersionIs400AsTheSingleEndpointsAnswer) {
    mock_upstream up;
    up.seed_document("ws-1", "doc_a", 3);
    // The single endpoints, directly: what a caller must also get through the gateway.
    EXPECT_EQ(call(up.port(), "PUT", "/api/v1/workspaces/ws-1/documents/nope", {{"version", 1}}).status, 404);
    EXPECT_EQ(call(up.port(), "PUT", "/api/v1/workspaces/ws-1/documents/doc_a", {{"title", "t"}}).status, 400);
    running_gateway gw(example_config("documents.yaml", up.port()));
    auto results = concurrently(4, [&](int i) {
        switch (i) {
            case 0: return call(gw.port(), "PUT", "/api/v1/workspaces/ws-1/documents/nope", {{"version", 1}});
            case 1: return call(gw.port(), "PUT", "/api/v1/workspaces/ws-1/documents/doc_a", {{"title", "t"}});
            case 2: return send_request(gw.port(), "DELETE", "/api/v1/workspaces/ws-1/documents/gone");
            default: return call(gw.port(), "POST", "/api/v1/workspaces/ws-1/documents", {{"title", 7}});
        }
    });
    EXPECT_EQ(results[0].status, 404) << results[0].body;
    EXPECT_EQ(results[0].json()["message"], "document not found");
    EXPECT_EQ(results[1].status, 400) << results[1].body;
    EXPECT_EQ(results[1].json()["message"], "version required");
    EXPECT_EQ(results[2].status, 404) << results[2].body;
    EXPECT_EQ(results[3].status, 422) << results[3].body;  // no rule: status_map's error
    EXPECT_EQ(calls_to(up, "POST", "/api/v1/documents/batch").size(), 1u);
    EXPECT_EQ(up.document("ws-1", "doc_a")->version, 3u);
}

TEST(WritesDocuments, MixedOperationsOneBatchPerWorkspace) {
    mock_upstream up({.threads = 2});
    up.seed_document("ws-1", "doc_a", 3);
    up.seed_document("ws-1", "doc_b", 5);
    up.seed_document("ws-1", "doc_c", 1);
    up.seed_document("ws-2", "doc_z", 2);
    running_gateway gw(example_config("documents.yaml", up.port()));
    const std::string ws1 = "/api/v1/workspaces/ws-1/documents", ws2 = "/api/v1/workspaces/ws-2/documents";
    auto results = concurrently(7, [&](int i) {
        switch (i) {
            case 0: return call(gw.port(), "POST", ws1, {{"title", "New"}, {"content", "# Hello"}});
            case 1: return call(gw.port(), "PUT", ws1 + "/doc_a", {{"version", 3}, {"title", "A2"}});
            case 2: return call(gw.port(), "PUT", ws1 + "/doc_b", {{"version", 4}, {"title", "stale"}});
            case 3: return send_request(gw.port(), "DELETE", ws1 + "/doc_c");
            case 4: return call(gw.port(), "POST", ws1, {{"title", "Second"}});
            case 5: return call(gw.port(), "POST", ws2, {{"title", "Other workspace"}});
            default: return call(gw.port(), "PUT", ws2 + "/doc_z", {{"version", 2}, {"content", "z"}});
        }
    });
    // Answers in the single endpoints' shape (examples/documents.yaml template): the document.
    std::set<std::string> created;
    for (int i : {0, 4, 5}) {
        ASSERT_EQ(results[i].status, 201) << "create " << i << ": " << results[i].body;
        auto j = results[i].json();
        EXPECT_FALSE(j.contains("client_id")) << "the gateway's correlation id leaked: " << results[i].body;
        EXPECT_EQ(j["version"], 1);
        ASSERT_TRUE(j["id"].is_string()) << results[i].body;
        created.insert(j["id"].get<std::string>());
        auto stored = up.document(i == 5 ? "ws-2" : "ws-1", j["id"].get<std::string>());
        ASSERT_TRUE(stored.has_value());
        EXPECT_EQ(j["title"], stored->title);
    }
    EXPECT_EQ(created.size(), 3u) << "two creates got the same document";
    EXPECT_EQ(results[0].json(), (json{{"id", results[0].json()["id"]}, {"title", "New"}, {"content", "# Hello"}, {"version", 1}}))
        << "as POST /documents answers directly";
    EXPECT_EQ(up.document("ws-1", results[4].json()["id"].get<std::string>())->title, "Second");

    ASSERT_EQ(results[1].status, 200) << results[1].body;
    EXPECT_EQ(results[1].json(), (json{{"id", "doc_a"}, {"title", "A2"}, {"version", 4}}));
    EXPECT_EQ(results[2].status, 409) << results[2].body;
    EXPECT_NE(results[2].body.find("version mismatch"), std::string::npos) << results[2].body;
    EXPECT_EQ(results[3].status, 204) << results[3].body;
    EXPECT_TRUE(results[3].body.empty()) << "a 204 with a body: " << results[3].body;
    EXPECT_EQ(results[6].status, 200) << results[6].body;
    EXPECT_EQ(results[6].json()["version"], 3);

    EXPECT_EQ(up.document("ws-1", "doc_a")->version, 4u);
    EXPECT_EQ(up.document("ws-1", "doc_a")->title, "A2");
    EXPECT_EQ(up.document("ws-1", "doc_b")->version, 5u) << "the stale update was applied";
    EXPECT_FALSE(up.document("ws-1", "doc_c").has_value());
    EXPECT_EQ(up.document("ws-2", "doc_z")->content, "z");

    // One batch call per workspace, nothing else.
    auto batches = calls_to(up, "POST", "/api/v1/documents/batch");
    EXPECT_EQ(batches.size(), up.calls().size()) << "single calls reached the upstream";
    ASSERT_EQ(batches.size(), 2u);
    std::map<std::string, json> by_ws;
    for (const auto& c : batches) {
        auto b = body_of(c);
        EXPECT_EQ(b["atomic"], false);
        by_ws[b["workspace_id"].get<std::string>()] = b["operations"];
    }
    ASSERT_EQ(by_ws.size(), 2u);
    ASSERT_EQ(by_ws["ws-1"].size(), 5u);
    ASSERT_EQ(by_ws["ws-2"].size(), 2u);
    for (const auto& [ws, ops] : by_ws) {
        std::set<std::string> client_ids;
        for (const auto& op : ops) {
            client_ids.insert(op["client_id"].get<std::string>());
            if (op["operation"] == "create") {
                EXPECT_TRUE(generated_key(op["client_id"])) << "not a generated client_id: " << op.dump();
                EXPECT_FALSE(op.contains("document_id")) << op.dump();
                EXPECT_TRUE(op["data"].contains("title")) << op.dump();
            } else {
                EXPECT_TRUE(op["operation"] == "update" || op["operation"] == "delete") << op.dump();
                EXPECT_EQ(op["client_id"], op["document_id"]) << op.dump();
                if (op["operation"] == "update") EXPECT_TRUE(op["data"].contains("version")) << op.dump();
            }
        }
        EXPECT_EQ(client_ids.size(), ops.size()) << "client_ids are not unique in " << ws;
    }
}

// =========================================================================================
// F: goals through the gateway (examples/goals.yaml).

TEST(WritesGoals, CreatesUpdatesFailuresAndPeriodsNeverShareABatch) {
    mock_upstream up({.threads = 2});
    up.seed_goal("acme", "g-42", "p-1", "competency", 10);
    up.seed_goal("acme", "g-43", "p-2", "performance", 10);
    running_gateway gw(example_config("goals.yaml", up.port()));
    const std::string goals = "/api/v1/org/acme/goals";
    auto results = concurrently(7, [&](int i) {
        switch (i) {
            case 0: return call(gw.port(), "POST", goals, {{"period_id", "p-1"}, {"type", "performance"}, {"title", "Ship"}, {"weight", 30}});
            case 1: return call(gw.port(), "POST", goals, {{"period_id", "p-1"}, {"type", "performance"}, {"title", "Too much"}, {"weight", 150}});
            case 2: return call(gw.port(), "PUT", goals + "/g-42", {{"period_id", "p-1"}, {"type", "competency"}, {"weight", 50}});
            case 3: return call(gw.port(), "POST", goals, {{"period_id", "p-2"}, {"type", "competency"}, {"title", "Learn"}, {"weight", 20}});
            case 4: return call(gw.port(), "PUT", goals + "/g-43", {{"period_id", "p-2"}, {"type", "performance"}, {"weight", 60}});
            case 5: return call(gw.port(), "POST", goals, {{"period_id", "p-1"}, {"type", "bogus"}, {"weight", 5}});
            default: return call(gw.port(), "POST", goals, {{"period_id", "p-2"}, {"type", "performance"}, {"title", "Also"}, {"weight", 0}});
        }
    });
    std::set<std::string> server_ids;
    for (int i : {0, 3, 6}) {
        ASSERT_EQ(results[i].status, 201) << "create " << i << ": " << results[i].body;
        auto j = results[i].json();
        ASSERT_TRUE(j["id"].is_string()) << results[i].body;
        const auto id = j["id"].get<std::string>();
        EXPECT_FALSE(generated_key(j["id"])) << "the caller got the temporary id, not the server's: " << id;
        EXPECT_TRUE(up.goal("acme", id).has_value()) << id;
        EXPECT_EQ(j["period_id"], i == 0 ? "p-1" : "p-2");
        server_ids.insert(id);
    }
    EXPECT_EQ(server_ids.size(), 3u);
    EXPECT_EQ(results[0].json()["title"], "Ship");
    EXPECT_EQ(results[0].json()["weight"], 30);

    EXPECT_EQ(results[1].status, 422) << results[1].body;
    EXPECT_NE(results[1].body.find("weight out of range"), std::string::npos) << results[1].body;
    EXPECT_EQ(results[5].status, 422) << results[5].body;
    EXPECT_NE(results[5].body.find("invalid type"), std::string::npos) << results[5].body;
    ASSERT_EQ(results[2].status, 200) << results[2].body;
    EXPECT_EQ(results[2].json()["id"], "g-42");
    EXPECT_EQ(results[2].json()["weight"], 50);
    ASSERT_EQ(results[4].status, 200) << results[4].body;
    EXPECT_EQ(results[4].json()["type"], "performance");
    EXPECT_EQ(json::parse(*up.goal("acme", "g-42"))["weight"], 50);

    auto batches = calls_to(up, "POST", "/api/v1/org/[^/]+/goals/batch-save");
    EXPECT_EQ(batches.size(), up.calls().size()) << "single calls reached the upstream";
    EXPECT_GE(batches.size(), 2u);
    std::size_t items = 0;
    for (const auto& c : batches) {
        EXPECT_EQ(c.path, "/api/v1/org/acme/goals/batch-save");
        auto b = body_of(c);
        ASSERT_TRUE(b["period_id"].is_string()) << c.body;
        for (const auto& g : b["goals"]) {
            ++items;
            EXPECT_EQ(g["data"]["period_id"], b["period_id"]) << "two periods shared a batch: " << c.body;
            EXPECT_TRUE(g["is_new"].is_boolean()) << g.dump();
            if (g["is_new"] == true)
                EXPECT_TRUE(generated_key(g["id"])) << g.dump();
            else
                EXPECT_TRUE(g["id"] == "g-42" || g["id"] == "g-43") << g.dump();
            EXPECT_EQ(g["type"], g["data"]["type"]) << g.dump();
        }
    }
    EXPECT_EQ(items, 7u);
}

TEST(WritesGoals, OrganisationsNeverShareABatch) {
    mock_upstream up;
    running_gateway gw(example_config("goals.yaml", up.port()));
    auto results = concurrently(4, [&](int i) {
        return call(gw.port(), "POST", "/api/v1/org/org-" + std::to_string(i % 2) + "/goals",
                    {{"period_id", "p-1"}, {"type", "performance"}, {"weight", 10 + i}});
    });
    for (int i = 0; i < 4; ++i) {
        ASSERT_EQ(results[i].status, 201) << results[i].body;
        EXPECT_EQ(results[i].json()["weight"], 10 + i);
        EXPECT_TRUE(up.goal("org-" + std::to_string(i % 2), results[i].json()["id"].get<std::string>()).has_value());
    }
    EXPECT_EQ(up.count("POST", "/api/v1/org/org-0/goals/batch-save"), 1u);
    EXPECT_EQ(up.count("POST", "/api/v1/org/org-1/goals/batch-save"), 1u);
}
