// Write batching where writes hurt (issue 10), end to end through a real gateway in front of the
// mock upstream's reference APIs C (abilities), D (progress events) and E (documents): several
// operations on one key in one call (same_key: in_batch), group commit on a busy partition,
// isolation guided by the refused answer, max_batch_bytes at its exact boundary, and answers in
// the single endpoint's shape. Every test checks what each caller got, what the upstream
// received and the final state.
#include <atomic>
#include <chrono>
#include <regex>
#include <thread>

#include "tests/integration/examples.hpp"

using namespace batchgate::testing;
using batchgate::mock::ability_state;
using batchgate::mock::mock_options;
using batchgate::mock::mock_upstream;
using batchgate::mock::recorded_call;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

json ops_of(const recorded_call& c) { return json::parse(c.body)["operations"]; }

json increment(int score, int xp = 0, const std::string& action = "increment") {
    return {{"action", action}, {"data", {{"score", score}, {"experience_points", xp}}}};
}

const std::string abilities_batch = "/api/characters/[^/]+/abilities/batch";

}  // namespace

// Point 2: two concurrent increments of one ability are one call, answered 23 and 24.
TEST(WriteBatching, TwoIncrementsOfOneAbilityAreOneCallAnsweredInOrder) {
    mock_upstream up;
    ASSERT_EQ(call(up.port(), "PATCH", "/api/characters/7/abilities/1", increment(22)).status, 200);  // score 22
    running_gateway gw(load_yaml(example_config_text("abilities.yaml", up.port(), "200ms")));

    auto results = concurrently(2, [&](int) { return call(gw.port(), "PATCH", "/api/characters/7/abilities/1", increment(1)); });
    std::multiset<int> scores;
    for (const auto& r : results) {
        ASSERT_EQ(r.status, 200) << r.body;
        EXPECT_EQ(r.json()["id"], 1);
        scores.insert(r.json()["score"].get<int>());
    }
    EXPECT_EQ(scores, (std::multiset<int>{23, 24})) << "each caller gets the state its own operation left";
    EXPECT_EQ(up.ability("7", 1), (ability_state{24, 0})) << "both acknowledged increments are applied";

    auto batches = calls_to(up, "POST", abilities_batch);
    ASSERT_EQ(batches.size(), 1u) << "one call for both operations";
    EXPECT_EQ(up.calls().size(), 2u) << "the direct PATCH that set 22, and the batch call";
    EXPECT_EQ(ops_of(batches[0]), json::parse(R"([{"abilityId":1,"action":"increment","data":{"score":1,"experience_points":0}},
                                                  {"abilityId":1,"action":"increment","data":{"score":1,"experience_points":0}}])"));
}

// Point 2 under load: many callers on few abilities, every operation applied exactly once and every
// caller's answer is a state its own operation produced (distinct per ability).
TEST(WriteBatching, HotAbilitiesLoseNoWriteAndEveryCallerGetsItsOwnState) {
    mock_upstream up({.threads = 2});
    running_gateway gw(load_yaml(example_config_text("abilities.yaml", up.port(), "20ms")));
    constexpr int n = 60;
    auto results = concurrently(n, [&](int i) {
        return call(gw.port(), "PATCH", "/api/characters/5/abilities/" + std::to_string(i % 3 + 1), increment(1, i));
    });
    std::map<int, std::set<int>> seen;  // ability -> scores answered
    for (int i = 0; i < n; ++i) {
        ASSERT_EQ(results[i].status, 200) << results[i].body;
        EXPECT_EQ(results[i].json()["id"], i % 3 + 1);
        EXPECT_TRUE(seen[i % 3 + 1].insert(results[i].json()["score"].get<int>()).second)
            << "two callers got the same state of ability " << i % 3 + 1;
    }
    for (int a = 1; a <= 3; ++a) {
        EXPECT_EQ(up.ability("5", a)->score, n / 3) << "ability " << a;
        EXPECT_EQ(*seen[a].rbegin(), n / 3);
        EXPECT_EQ(*seen[a].begin(), 1);
    }
    std::size_t ops = 0;
    for (const auto& c : calls_to(up, "POST", abilities_batch)) ops += ops_of(c).size();
    EXPECT_EQ(ops, static_cast<std::size_t>(n)) << "every operation sent exactly once";
    EXPECT_LT(up.calls().size(), static_cast<std::size_t>(n) / 4);
}

// Point 3: while a character's call is in flight, later PATCHes for it are one next call, even
// when each arrives after its own max_wait (here 0): [1] then [2,3,4], never four calls.
TEST(WriteBatching, BusyPartitionCollectsEverythingIntoOneNextCall) {
    mock_upstream up({.threads = 2});
    running_gateway gw(load_yaml(example_config_text("abilities.yaml", up.port(), "0ms")));
    const std::string waiting = "batchgate_waiting_callers{route=\"abilities\"}";

    up.hold();  // the first call stays in flight until the others wait
    std::vector<response> results(4);
    std::vector<std::thread> callers;
    callers.emplace_back([&] { results[0] = call(gw.port(), "PATCH", "/api/characters/3/abilities/1", increment(1)); });
    ASSERT_TRUE(eventually(10s, [&] { return up.held() == 1; }));
    for (int i = 1; i < 4; ++i) {
        callers.emplace_back([&, i] {
            results[i] = call(gw.port(), "PATCH", "/api/characters/3/abilities/" + std::to_string(i + 1), increment(i + 1));
        });
        ASSERT_TRUE(eventually(10s, [&] { return gw.metric(waiting) >= i + 1; })) << "caller " << i << " never waited";
    }
    EXPECT_EQ(up.calls().size(), 1u) << "a call went beside the one in flight";
    up.release_held();
    for (auto& t : callers) t.join();

    for (int i = 0; i < 4; ++i) {
        ASSERT_EQ(results[i].status, 200) << results[i].body;
        EXPECT_EQ(results[i].json()["score"], i + 1);
    }
    auto batches = calls_to(up, "POST", abilities_batch);
    ASSERT_EQ(batches.size(), 2u);
    EXPECT_EQ(ops_of(batches[0]).size(), 1u);
    ASSERT_EQ(ops_of(batches[1]).size(), 3u);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(ops_of(batches[1])[i]["abilityId"], i + 2) << "arrival order";
    EXPECT_EQ(gw.metric("batchgate_batch_flushes_total{reason=\"released\",route=\"abilities\"}"), 1);
}

// Group commit with same_key: sequence: two writes to one key while the partition is busy. The
// held batch takes the first; releasing it opens the partition's next batch for the second,
// which must still go out by itself (regression: it waited for the caller's deadline, 504).
TEST(WriteBatching, SequencedWriteBehindAReleasedBatchIsStillSent) {
    mock_upstream up({.threads = 2});
    std::string text = example_config_text("abilities.yaml", up.port(), "0ms");
    replace_once(text, "same_key: in_batch", "same_key: sequence");
    running_gateway gw(load_yaml(text));
    const std::string waiting = "batchgate_waiting_callers{route=\"abilities\"}";

    up.hold();
    std::vector<response> results(3);
    std::vector<std::thread> callers;
    callers.emplace_back([&] { results[0] = call(gw.port(), "PATCH", "/api/characters/3/abilities/1", increment(1)); });
    ASSERT_TRUE(eventually(10s, [&] { return up.held() == 1; }));
    for (int i = 1; i < 3; ++i) {
        callers.emplace_back([&, i] { results[i] = call(gw.port(), "PATCH", "/api/characters/3/abilities/2", increment(i)); });
        ASSERT_TRUE(eventually(10s, [&] { return gw.metric(waiting) >= i + 1; }));
    }
    const auto start = std::chrono::steady_clock::now();
    up.release_held();
    for (auto& t : callers) t.join();
    for (const auto& r : results) ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(results[1].json()["score"], 1);
    EXPECT_EQ(results[2].json()["score"], 3) << "the second write to ability 2 after the first";
    EXPECT_EQ(calls_to(up, "POST", abilities_batch).size(), 3u);
    // Not a timing assertion on the gateway's speed: a stuck batch waits for the 6 s caller deadline.
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

// Point 4: the 422 names the failing abilityId: its caller gets the 422 and the other three go
// again in one call; two calls in all, not five.
TEST(WriteBatching, RefusedBatchNamingTheFailingItemCostsOneMoreCall) {
    mock_upstream up;
    running_gateway gw(load_yaml(example_config_text("abilities.yaml", up.port(), "200ms")));
    auto results = concurrently(4, [&](int i) {
        return call(gw.port(), "PATCH", "/api/characters/9/abilities/" + std::to_string(i + 1),
                    increment(i + 1, 0, i == 3 ? "explode" : "increment"));
    });
    for (int i = 0; i < 3; ++i) {
        ASSERT_EQ(results[i].status, 200) << results[i].body;
        EXPECT_EQ(up.ability("9", i + 1), (ability_state{i + 1, 0}));
    }
    ASSERT_EQ(results[3].status, 422) << results[3].body;
    EXPECT_EQ(results[3].json()["message"], "invalid action") << results[3].body;
    EXPECT_FALSE(up.ability("9", 4).has_value());

    auto batches = calls_to(up, "POST", abilities_batch);
    ASSERT_EQ(batches.size(), 2u);
    EXPECT_EQ(ops_of(batches[0]).size(), 4u);
    ASSERT_EQ(ops_of(batches[1]).size(), 3u);
    for (const auto& op : ops_of(batches[1])) EXPECT_NE(op["abilityId"], 4);
    EXPECT_EQ(gw.metric("batchgate_isolations_total{route=\"abilities\"}"), 1);
}

// Point 4, fallback: without failed_items the route bisects, as before.
TEST(WriteBatching, WithoutFailedItemsTheRouteStillBisects) {
    mock_upstream up;
    std::string text = example_config_text("abilities.yaml", up.port(), "200ms");
    replace_once(text, "      failed_items: {items: /results, key: /abilityId, when: {/success: false}}\n", "");
    running_gateway gw(load_yaml(text));
    auto results = concurrently(4, [&](int i) {
        return call(gw.port(), "PATCH", "/api/characters/9/abilities/" + std::to_string(i + 1),
                    increment(1, 0, i == 3 ? "explode" : "increment"));
    });
    for (int i = 0; i < 3; ++i) EXPECT_EQ(results[i].status, 200) << results[i].body;
    EXPECT_EQ(results[3].status, 422) << results[3].body;
    EXPECT_GT(calls_to(up, "POST", abilities_batch).size(), 2u);
}

// Point 4 with several operations on the named key: they cannot be told apart, so they go again
// on their own after the rest; the valid one on that key is still applied exactly once.
TEST(WriteBatching, NamedKeyWithSeveralOperationsIsRetriedApartAndNothingIsLost) {
    mock_upstream up;
    running_gateway gw(load_yaml(example_config_text("abilities.yaml", up.port(), "200ms")));
    auto results = concurrently(4, [&](int i) {
        const int ability = i < 2 ? 1 : i;  // callers 0 and 1 on ability 1, caller 1 invalid
        return call(gw.port(), "PATCH", "/api/characters/4/abilities/" + std::to_string(ability),
                    increment(5, 0, i == 1 ? "explode" : "increment"));
    });
    EXPECT_EQ(results[0].status, 200) << results[0].body;
    EXPECT_EQ(results[1].status, 422) << results[1].body;
    EXPECT_EQ(results[2].status, 200) << results[2].body;
    EXPECT_EQ(results[3].status, 200) << results[3].body;
    EXPECT_EQ(up.ability("4", 1), (ability_state{5, 0})) << "the valid operation on the named key, once";
    EXPECT_EQ(up.ability("4", 2), (ability_state{5, 0}));
    EXPECT_EQ(up.ability("4", 3), (ability_state{5, 0}));
}

// Point 5: max_batch_bytes bounds the body as sent. Sixteen 4,095-byte events with 64KiB never
// make a call the upstream refuses; and at the exact boundary a call of max_batch_bytes goes as
// one, one byte less makes two.
TEST(WriteBatching, MaxBatchBytesBoundsTheWholeBody) {
    mock_upstream up({.threads = 2});
    std::string text = example_config_text("progress.yaml", up.port(), "200ms");
    auto config = load_yaml(text);
    const auto& route = config->routes.front();
    const std::size_t limit = route.coalesce.max_batch_bytes;
    ASSERT_GE(limit, 64000u) << "the example's limit, 64KB";
    running_gateway gw(config);

    auto event = [](int i, std::size_t bytes) {
        json e{{"type", "lesson_progress"}, {"courseId", "foundations"}, {"lessonId", "l"}, {"userId", "u"},
               {"percent", 1}, {"position", 1}, {"clientEventId", "e-" + std::to_string(i)}, {"timestamp", 1}, {"note", ""}};
        e["note"] = std::string(bytes - e.dump().size(), 'x');
        return e;
    };
    auto results = concurrently(16, [&](int i) { return call(gw.port(), "POST", "/api/client/progress", event(i, 4095)); });
    for (const auto& r : results) EXPECT_EQ(r.status, 202) << r.body;
    std::size_t events = 0;
    for (const auto& c : calls_to(up, "POST", "/api/client/progress/batch")) {
        EXPECT_LE(c.body.size(), limit);
        events += json::parse(c.body)["events"].size();
    }
    EXPECT_EQ(events, 16u);

    // The exact boundary: two events whose batch body is N bytes.
    for (const long slack : {0L, -1L}) {
        mock_upstream up2;
        std::string t = example_config_text("progress.yaml", up2.port(), "200ms");
        const json a = event(100, 1000), b = event(101, 1000);
        const std::size_t exact = json{{"events", {a, b}}}.dump().size();
        replace_once(t, "max_batch_bytes: 64KB", "max_batch_bytes: " + std::to_string(exact + slack));
        running_gateway g2(load_yaml(t));
        auto rs = concurrently(2, [&](int i) { return call(g2.port(), "POST", "/api/client/progress", i ? b : a); });
        for (const auto& r : rs) EXPECT_EQ(r.status, 202) << r.body;
        auto batches = calls_to(up2, "POST", "/api/client/progress/batch");
        ASSERT_EQ(batches.size(), slack == 0 ? 1u : 2u) << "limit " << exact + slack;
        for (const auto& c : batches) EXPECT_LE(c.body.size(), exact + slack);
        if (slack == 0) EXPECT_EQ(batches[0].body.size(), exact);
    }
}

// Point 5: an item that alone makes a call over the limit is refused up front with 413.
TEST(WriteBatching, ItemThatAloneBreaksTheLimitIs413) {
    mock_upstream up;
    std::string t = example_config_text("progress.yaml", up.port(), "5ms");
    replace_once(t, "max_batch_bytes: 64KB", "max_batch_bytes: 300");
    running_gateway gw(load_yaml(t));
    json e{{"type", "lesson_progress"}, {"userId", "u"}, {"clientEventId", "e-1"}, {"note", std::string(250, 'x')}};
    auto r = call(gw.port(), "POST", "/api/client/progress", e);
    EXPECT_EQ(r.status, 413) << r.body;
    EXPECT_NE(r.body.find("max_batch_bytes (300)"), std::string::npos) << r.body;
    EXPECT_TRUE(up.calls().empty());
}

// Group commit never starves a partition behind busier ones. One slot (max_concurrent_batches: 1);
// character 1 is busy enough that a size-closed batch always waits when a call answers; a single
// PATCH for character 2 must still go (regression: it was held for want of a slot and never
// released, 504 at the route's 1.5 s timeout).
TEST(WriteBatching, AQuietPartitionIsNotStarvedByABusyOne) {
    mock_upstream up({.threads = 2, .latency = std::chrono::milliseconds(50)});
    std::string text = example_config_text("abilities.yaml", up.port(), "5ms");
    replace_once(text, "      same_key: in_batch", "      max_concurrent_batches: 1\n      max_batch_items: 2\n      same_key: in_batch");
    replace_once(text, "    mode: coalesce\n", "    mode: coalesce\n    timeout: 1500ms\n");
    running_gateway gw(load_yaml(text));

    std::atomic<bool> stop{false};
    std::atomic<int> hot_ok{0};
    std::vector<std::thread> hot;
    for (int t = 0; t < 6; ++t)
        hot.emplace_back([&, t] {
            while (!stop) {
                auto r = call(gw.port(), "PATCH", "/api/characters/1/abilities/" + std::to_string(t + 1), increment(1));
                if (r.status == 200) ++hot_ok;
            }
        });
    // The hot partition is busy before the lone write comes.
    ASSERT_TRUE(eventually(10s, [&] { return hot_ok.load() >= 6; }));
    const auto t0 = std::chrono::steady_clock::now();
    auto lone = call(gw.port(), "PATCH", "/api/characters/2/abilities/1", increment(1));
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    // And it keeps being served after the lone write (no starvation either way).
    const int before = hot_ok.load();
    const bool hot_goes_on = eventually(10s, [&] { return hot_ok.load() >= before + 4; });
    stop = true;
    for (auto& t : hot) t.join();
    EXPECT_EQ(lone.status, 200) << "after " << waited.count() << " ms: " << lone.body;
    EXPECT_TRUE(hot_goes_on) << "the busy partition stalled after the lone write: " << hot_ok.load() - before;
    EXPECT_TRUE(up.ability("2", 1).has_value()) << "character 2's write never reached the upstream";
}
