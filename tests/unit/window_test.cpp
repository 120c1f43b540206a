// Batching logic under a clock the test advances by hand: no sleeps, exact deadlines.
#include "coalescer/core/window.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include <nlohmann/json.hpp>

using namespace std::chrono_literals;
using batchgate::coalescer::flush_reason;
using batchgate::coalescer::partition;
using batchgate::coalescer::window;
using batchgate::coalescer::window_limits;

namespace {

using test_window = window<int>;  // a waiter is just the caller's number here
using time_point = test_window::time_point;

partition part(const std::string& key) { return partition{key, {}}; }

struct manual_clock {
    time_point now{};
    void advance(std::chrono::nanoseconds d) { now += d; }
};

std::vector<int> waiters_of(const test_window::batch& b) {
    std::vector<int> out;
    for (const auto& i : b.items) out.insert(out.end(), i.waiters.begin(), i.waiters.end());
    return out;
}

}  // namespace

TEST(Window, FlushesWhenOldestWaiterReachesMaxWait) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5ms});
    EXPECT_TRUE(w.add(part("p"), "1", 1, 1, clock.now).empty());
    clock.advance(3ms);
    EXPECT_TRUE(w.add(part("p"), "2", 1, 2, clock.now).empty());
    ASSERT_TRUE(w.next_deadline());
    EXPECT_EQ(*w.next_deadline(), time_point{} + 5ms);  // from the first caller, not the last

    clock.advance(1999us);
    EXPECT_TRUE(w.expire(clock.now).empty());
    clock.advance(1us);
    auto closed = w.expire(clock.now);
    ASSERT_EQ(closed.size(), 1u);
    EXPECT_EQ(closed[0].reason, flush_reason::timer);
    EXPECT_EQ(waiters_of(closed[0]), (std::vector<int>{1, 2}));
    EXPECT_EQ(w.waiting(), 0u);
    EXPECT_FALSE(w.next_deadline());
}

TEST(Window, FlushesAtMaxItemsAndStartsAFreshWindow) {
    manual_clock clock;
    test_window w({.max_items = 3, .max_bytes = 0, .max_wait = 5ms});
    EXPECT_TRUE(w.add(part("p"), "1", 1, 1, clock.now).empty());
    EXPECT_TRUE(w.add(part("p"), "2", 1, 2, clock.now).empty());
    auto closed = w.add(part("p"), "3", 1, 3, clock.now);
    ASSERT_EQ(closed.size(), 1u);
    EXPECT_EQ(closed[0].reason, flush_reason::size);
    EXPECT_EQ(closed[0].items.size(), 3u);
    // The closed batch's deadline must not fire for the next window.
    clock.advance(4ms);
    EXPECT_TRUE(w.add(part("p"), "4", 1, 4, clock.now).empty());
    clock.advance(1ms);
    EXPECT_TRUE(w.expire(clock.now).empty());
    EXPECT_EQ(*w.next_deadline(), time_point{} + 9ms);
    clock.advance(4ms);
    auto later = w.expire(clock.now);
    ASSERT_EQ(later.size(), 1u);
    EXPECT_EQ(waiters_of(later[0]), (std::vector<int>{4}));
}

TEST(Window, DuplicateKeysShareOneItemAndAllWaitersAreKept) {
    manual_clock clock;
    test_window w({.max_items = 2, .max_bytes = 0, .max_wait = 5ms});
    w.add(part("p"), "7", 1, 1, clock.now);
    w.add(part("p"), "7", 1, 2, clock.now);
    w.add(part("p"), "7", 1, 3, clock.now);
    EXPECT_EQ(w.take_deduplicated(), 2u);
    EXPECT_EQ(w.take_deduplicated(), 0u);
    EXPECT_EQ(w.waiting(), 3u);
    // Duplicates do not count toward max_items: the batch is still open with one key.
    auto closed = w.add(part("p"), "8", 1, 4, clock.now);
    ASSERT_EQ(closed.size(), 1u);
    ASSERT_EQ(closed[0].items.size(), 2u);
    EXPECT_EQ(closed[0].items[0].key, "7");
    EXPECT_EQ(closed[0].items[0].waiters, (std::vector<int>{1, 2, 3}));
    EXPECT_EQ(closed[0].waiter_count(), 4u);
}

// Two readers of one key whose items differ (say ?fields=name and ?fields=email, both in the
// item but not in the partition) must not get one answer: the second waits for the next batch.
TEST(Window, SharedKeyWithADifferentItemWaitsForTheNextBatch) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5ms});
    w.add(part("p"), "7", 1, 1, clock.now, nlohmann::json{{"id", "7"}, {"fields", "name"}});
    w.add(part("p"), "7", 1, 2, clock.now, nlohmann::json{{"id", "7"}, {"fields", "email"}});
    w.add(part("p"), "7", 1, 3, clock.now, nlohmann::json{{"id", "7"}, {"fields", "name"}});
    w.add(part("p"), "8", 1, 4, clock.now, nlohmann::json{{"id", "8"}, {"fields", "email"}});
    EXPECT_EQ(w.take_deduplicated(), 1u);  // only caller 3 had caller 1's item
    EXPECT_EQ(w.waiting(), 4u);
    clock.advance(5ms);
    auto closed = w.expire(clock.now);
    ASSERT_EQ(closed.size(), 1u);
    ASSERT_EQ(closed[0].items.size(), 2u);
    EXPECT_EQ(closed[0].items[0].waiters, (std::vector<int>{1, 3}));
    EXPECT_EQ(closed[0].items[1].waiters, (std::vector<int>{4}));
    // Caller 2 opened the partition's next batch, with its own item.
    clock.advance(5ms);
    auto next = w.expire(clock.now);
    ASSERT_EQ(next.size(), 1u);
    ASSERT_EQ(next[0].items.size(), 1u);
    EXPECT_EQ(next[0].items[0].waiters, (std::vector<int>{2}));
    EXPECT_EQ(next[0].items[0].payload["fields"], "email");
    EXPECT_EQ(w.waiting(), 0u);
}

TEST(Window, PartitionsNeverShareABatch) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5ms});
    for (int i = 0; i < 50; ++i)
        w.add(part(i % 2 ? "alice" : "bob"), std::to_string(i % 5), 1, int{i}, clock.now);
    clock.advance(5ms);
    auto closed = w.expire(clock.now);
    ASSERT_EQ(closed.size(), 2u);
    for (const auto& b : closed) {
        for (int waiter : waiters_of(b)) {
            const bool odd = waiter % 2;
            EXPECT_EQ(b.partition_key, odd ? "alice" : "bob") << "caller " << waiter;
        }
        EXPECT_EQ(b.waiter_count(), 25u);
        EXPECT_EQ(b.items.size(), 5u);
    }
}

TEST(Window, ByteLimitClosesBeforeTheItemThatWouldOverflow) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 10, .max_wait = 5ms});
    EXPECT_TRUE(w.add(part("p"), "a", 4, 1, clock.now).empty());
    EXPECT_TRUE(w.add(part("p"), "b", 4, 2, clock.now).empty());
    auto closed = w.add(part("p"), "c", 4, 3, clock.now);  // 12 > 10
    ASSERT_EQ(closed.size(), 1u);
    EXPECT_EQ(closed[0].reason, flush_reason::bytes);
    EXPECT_EQ(closed[0].bytes, 8u);
    EXPECT_EQ(waiters_of(closed[0]), (std::vector<int>{1, 2}));
    EXPECT_EQ(w.waiting(), 1u);  // "c" waits in a fresh batch
    // An item reaching the limit exactly flushes at once.
    auto exact = w.add(part("p"), "d", 6, 4, clock.now);
    ASSERT_EQ(exact.size(), 1u);
    EXPECT_EQ(exact[0].bytes, 10u);
}

TEST(Window, OversizedSingleItemStillGoesAlone) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 10, .max_wait = 5ms});
    auto closed = w.add(part("p"), "huge", 50, 1, clock.now);
    ASSERT_EQ(closed.size(), 1u);
    EXPECT_EQ(waiters_of(closed[0]), (std::vector<int>{1}));
}

TEST(Window, DrainHandsBackEveryWaiterExactlyOnce) {
    manual_clock clock;
    test_window w({.max_items = 4, .max_bytes = 0, .max_wait = 5ms});
    std::multiset<int> seen;
    int next = 0;
    for (int round = 0; round < 3; ++round) {
        for (int p = 0; p < 7; ++p) {
            for (auto& b : w.add(part("p" + std::to_string(p)), std::to_string(next % 6), 1, int{next},
                                 clock.now))
                for (int x : waiters_of(b)) seen.insert(x);
            ++next;
        }
        clock.advance(2ms);
        for (auto& b : w.expire(clock.now))
            for (int x : waiters_of(b)) seen.insert(x);
    }
    for (auto& b : w.drain()) {
        EXPECT_EQ(b.reason, flush_reason::shutdown);
        for (int x : waiters_of(b)) seen.insert(x);
    }
    EXPECT_EQ(w.waiting(), 0u);
    EXPECT_EQ(w.open_batches(), 0u);
    ASSERT_EQ(seen.size(), static_cast<std::size_t>(next));
    for (int i = 0; i < next; ++i) EXPECT_EQ(seen.count(i), 1u) << "caller " << i;
    EXPECT_TRUE(w.drain().empty());
}

TEST(Window, ZeroWaitFlushesOnTheNextExpire) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 0ms});
    w.add(part("p"), "1", 1, 1, clock.now);
    EXPECT_EQ(*w.next_deadline(), clock.now);
    EXPECT_EQ(w.expire(clock.now).size(), 1u);
}

TEST(Window, ExpireClosesOnlyDuePartitionsInOpeningOrder) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5ms});
    w.add(part("a"), "1", 1, 1, clock.now);
    clock.advance(2ms);
    w.add(part("b"), "1", 1, 2, clock.now);
    clock.advance(2ms);
    w.add(part("c"), "1", 1, 3, clock.now);
    clock.advance(3ms);  // a due at 5, b at 7, c at 9; now = 7
    auto closed = w.expire(clock.now);
    ASSERT_EQ(closed.size(), 2u);
    EXPECT_EQ(closed[0].partition_key, "a");
    EXPECT_EQ(closed[1].partition_key, "b");
    EXPECT_EQ(*w.next_deadline(), time_point{} + 9ms);
}

TEST(Window, SequencedWritesToOneKeyGoToSuccessiveBatchesInArrivalOrder) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5ms, .policy = batchgate::coalescer::same_key::sequence});
    w.add(part("p"), "doc", 1, 1, clock.now, nlohmann::json{{"v", 1}});
    w.add(part("p"), "other", 1, 2, clock.now);
    w.add(part("p"), "doc", 1, 3, clock.now, nlohmann::json{{"v", 2}});
    w.add(part("p"), "doc", 1, 4, clock.now, nlohmann::json{{"v", 3}});
    w.add(part("p"), "late", 1, 5, clock.now);  // queued behind the sequenced writes
    EXPECT_EQ(w.waiting(), 5u);
    clock.advance(5ms);
    std::vector<test_window::batch> all = w.expire(clock.now);
    ASSERT_EQ(all.size(), 1u);
    EXPECT_EQ(waiters_of(all[0]), (std::vector<int>{1, 2}));
    EXPECT_EQ(w.waiting(), 3u);
    clock.advance(5ms);
    auto second = w.expire(clock.now);
    ASSERT_EQ(second.size(), 1u);
    // Once a write is sequenced, later writes of the partition queue behind it (FIFO).
    EXPECT_EQ(waiters_of(second[0]), (std::vector<int>{3}));
    EXPECT_EQ(second[0].items[0].payload["v"], 2);
    auto rest = w.drain(clock.now);
    ASSERT_EQ(rest.size(), 1u);
    EXPECT_EQ(waiters_of(rest[0]), (std::vector<int>{4, 5}));
    EXPECT_EQ(rest[0].items[0].payload["v"], 3);
    EXPECT_EQ(w.waiting(), 0u);
}

TEST(Window, MergePatchKeepsOneItemWithTheFinalStateAndEveryCaller) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5ms,
                   .policy = batchgate::coalescer::same_key::merge_patch});
    w.add(part("p"), "4", 1, 1, clock.now, nlohmann::json{{"score", 5}, {"name", "a"}});
    w.add(part("p"), "4", 1, 2, clock.now, nlohmann::json{{"score", 7}, {"name", nullptr}});
    EXPECT_EQ(w.take_merged(), 1u);
    auto closed = w.drain(clock.now);
    ASSERT_EQ(closed.size(), 1u);
    ASSERT_EQ(closed[0].items.size(), 1u);
    EXPECT_EQ(closed[0].items[0].payload, (nlohmann::json{{"score", 7}}));
    EXPECT_EQ(closed[0].items[0].waiters, (std::vector<int>{1, 2}));
}

TEST(Window, LastWriteWinsReplacesThePayload) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5ms,
                   .policy = batchgate::coalescer::same_key::last_write_wins});
    w.add(part("p"), "4", 1, 1, clock.now, nlohmann::json{{"score", 5}, {"name", "a"}});
    w.add(part("p"), "4", 1, 2, clock.now, nlohmann::json{{"score", 7}});
    auto closed = w.drain(clock.now);
    EXPECT_EQ(closed[0].items[0].payload, (nlohmann::json{{"score", 7}}));
    EXPECT_EQ(closed[0].waiter_count(), 2u);
}

TEST(Window, ByteLimitWithSequencedKeysLosesNobody) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 10, .max_wait = 5ms,
                   .policy = batchgate::coalescer::same_key::sequence});
    std::multiset<int> seen;
    for (int i = 0; i < 40; ++i)
        for (auto& b : w.add(part("p"), std::to_string(i % 4), 3, int{i}, clock.now)) {
            std::set<std::string> keys;
            for (auto& it : b.items) EXPECT_TRUE(keys.insert(it.key).second) << "key twice in one batch";
            EXPECT_LE(b.bytes, 10u);
            for (int x : waiters_of(b)) seen.insert(x);
        }
    for (auto& b : w.drain(clock.now))
        for (int x : waiters_of(b)) seen.insert(x);
    EXPECT_EQ(seen.size(), 40u);
    for (int i = 0; i < 40; ++i) EXPECT_EQ(seen.count(i), 1u);
}

// same_key: in_batch: each operation on a key is its own item, in arrival order, in one batch.
TEST(Window, InBatchKeepsEveryOperationOnAKeyInOneBatchInArrivalOrder) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5ms, .policy = batchgate::coalescer::same_key::in_batch});
    w.add(part("p"), "1", 1, 1, clock.now, nlohmann::json{{"op", "a"}});
    w.add(part("p"), "2", 1, 2, clock.now, nlohmann::json{{"op", "b"}});
    w.add(part("p"), "1", 1, 3, clock.now, nlohmann::json{{"op", "c"}});
    w.add(part("p"), "1", 1, 4, clock.now, nlohmann::json{{"op", "d"}});
    EXPECT_EQ(w.take_merged(), 0u);
    EXPECT_EQ(w.take_deduplicated(), 0u);
    clock.advance(5ms);
    auto closed = w.expire(clock.now);
    ASSERT_EQ(closed.size(), 1u);
    ASSERT_EQ(closed[0].items.size(), 4u);
    std::vector<std::string> keys, ops;
    for (const auto& i : closed[0].items) {
        keys.push_back(i.key);
        ops.push_back(i.payload["op"]);
        EXPECT_EQ(i.waiters.size(), 1u);
    }
    EXPECT_EQ(keys, (std::vector<std::string>{"1", "2", "1", "1"}));
    EXPECT_EQ(ops, (std::vector<std::string>{"a", "b", "c", "d"}));
    EXPECT_EQ(waiters_of(closed[0]), (std::vector<int>{1, 2, 3, 4}));
}

TEST(Window, InBatchOperationsCountTowardMaxItems) {
    manual_clock clock;
    test_window w({.max_items = 2, .max_bytes = 0, .max_wait = 5ms, .policy = batchgate::coalescer::same_key::in_batch});
    EXPECT_TRUE(w.add(part("p"), "1", 1, 1, clock.now).empty());
    auto closed = w.add(part("p"), "1", 1, 2, clock.now);
    ASSERT_EQ(closed.size(), 1u);
    EXPECT_EQ(closed[0].reason, flush_reason::size);
    EXPECT_EQ(waiters_of(closed[0]), (std::vector<int>{1, 2}));
}

// Group commit: a due batch of a blocked partition stays open, everything arriving meanwhile
// joins it, and it goes as one batch the moment the partition is free.
TEST(Window, BlockedPartitionIsHeldOpenAndReleasedAsOneBatch) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5ms, .policy = batchgate::coalescer::same_key::in_batch});
    bool busy = true;
    auto blocked = [&](const std::string& pkey) { return pkey == "p" && busy; };
    w.add(part("p"), "1", 1, 1, clock.now);
    w.add(part("q"), "1", 1, 2, clock.now);
    clock.advance(5ms);
    auto closed = w.expire(clock.now, blocked);
    ASSERT_EQ(closed.size(), 1u);  // q is free and goes; p is held
    EXPECT_EQ(closed[0].partition_key, "q");
    EXPECT_EQ(w.held(), 1u);
    EXPECT_FALSE(w.next_deadline()) << "a held batch needs no timer";
    for (int i = 3; i <= 6; ++i) {
        clock.advance(40ms);
        EXPECT_TRUE(w.add(part("p"), std::to_string(i % 2), 1, int{i}, clock.now).empty());
        EXPECT_TRUE(w.expire(clock.now, blocked).empty());
    }
    EXPECT_TRUE(w.release(clock.now, blocked).empty()) << "still busy";
    busy = false;
    auto released = w.release(clock.now, blocked);
    ASSERT_EQ(released.size(), 1u);
    EXPECT_EQ(released[0].reason, flush_reason::released);
    EXPECT_EQ(waiters_of(released[0]), (std::vector<int>{1, 3, 4, 5, 6}));
    EXPECT_EQ(w.waiting(), 0u);
    EXPECT_TRUE(w.release(clock.now, blocked).empty());
    EXPECT_EQ(w.held(), 0u);
}

TEST(Window, HeldBatchStillClosesAtMaxItemsAndTheRestIsHeldAgain) {
    manual_clock clock;
    test_window w({.max_items = 2, .max_bytes = 0, .max_wait = 5ms, .policy = batchgate::coalescer::same_key::in_batch});
    auto blocked = [](const std::string&) { return true; };
    w.add(part("p"), "1", 1, 1, clock.now);
    clock.advance(5ms);
    EXPECT_TRUE(w.expire(clock.now, blocked).empty());
    auto full = w.add(part("p"), "2", 1, 2, clock.now);
    ASSERT_EQ(full.size(), 1u);
    EXPECT_EQ(full[0].reason, flush_reason::size);
    w.add(part("p"), "3", 1, 3, clock.now);
    // The stale hold of the closed batch releases nothing; the new batch is held after its wait.
    EXPECT_TRUE(w.release(clock.now, [](const std::string&) { return false; }).empty());
    clock.advance(5ms);
    EXPECT_TRUE(w.expire(clock.now, blocked).empty());
    auto drained = w.drain(clock.now);
    ASSERT_EQ(drained.size(), 1u);
    EXPECT_EQ(waiters_of(drained[0]), (std::vector<int>{3}));
    EXPECT_EQ(w.waiting(), 0u);
}

// max_bytes bounds the whole call: the partition's overhead counts before any item.
TEST(Window, ByteLimitCountsThePartitionOverhead) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 100, .max_wait = 5ms});
    batchgate::coalescer::partition p{"p", {}, 60};
    EXPECT_TRUE(w.add(p, "a", 20, 1, clock.now).empty());
    auto exact = w.add(p, "b", 20, 2, clock.now);  // 60 + 40 = 100: full, goes at once
    ASSERT_EQ(exact.size(), 1u);
    EXPECT_EQ(exact[0].bytes, 100u);
    EXPECT_TRUE(w.add(p, "c", 20, 3, clock.now).empty());
    auto over = w.add(p, "d", 21, 4, clock.now);  // 60 + 20 + 21 = 101
    ASSERT_EQ(over.size(), 1u);
    EXPECT_EQ(over[0].bytes, 80u);
    EXPECT_EQ(waiters_of(over[0]), (std::vector<int>{3}));
}

// Merging changes the item's size: the batch's bytes follow, and a merge that would break the
// byte limit waits for the next batch (as does every later write of that key, so the latest stays
// the latest).
TEST(Window, MergedItemsKeepTheByteCountAndLimit) {
    manual_clock clock;
    using batchgate::coalescer::same_key;
    test_window lww({.max_items = 100, .max_bytes = 30, .max_wait = 5ms, .policy = same_key::last_write_wins});
    lww.add(part("p"), "x", 10, 1, clock.now, nlohmann::json("x"));
    lww.add(part("p"), "k", 10, 2, clock.now, nlohmann::json("a"));
    lww.add(part("p"), "k", 15, 3, clock.now, nlohmann::json("b"));  // 10 + 15 <= 30: replaces
    lww.add(part("p"), "k", 25, 4, clock.now, nlohmann::json("c"));  // 10 + 25 > 30: next batch
    lww.add(part("p"), "k", 5, 5, clock.now, nlohmann::json("d"));   // would fit, but "c" is deferred
    clock.advance(5ms);
    auto first = lww.expire(clock.now);
    ASSERT_EQ(first.size(), 1u);
    EXPECT_EQ(first[0].bytes, 25u);
    EXPECT_EQ(first[0].items.at(1).payload, "b");
    EXPECT_EQ(waiters_of(first[0]), (std::vector<int>{1, 2, 3}));
    clock.advance(5ms);
    auto second = lww.expire(clock.now);
    ASSERT_EQ(second.size(), 1u);
    EXPECT_EQ(second[0].items.at(0).payload, "d") << "the latest write wins in the next batch";
    EXPECT_EQ(second[0].bytes, 5u);
    EXPECT_EQ(waiters_of(second[0]), (std::vector<int>{4, 5}));

    test_window mp({.max_items = 100, .max_bytes = 40, .max_wait = 5ms, .policy = same_key::merge_patch});
    const nlohmann::json a{{"a", 1}}, b{{"b", std::string(10, 'x')}}, c{{"c", std::string(30, 'y')}};
    mp.add(part("p"), "k", a.dump().size() + 1, 1, clock.now, nlohmann::json(a));
    mp.add(part("p"), "k", b.dump().size() + 1, 2, clock.now, nlohmann::json(b));  // merged {"a":1,"b":"xxxxxxxxxx"}: 25 bytes
    mp.add(part("p"), "k", c.dump().size() + 1, 3, clock.now, nlohmann::json(c));  // merged would be 62 > 40
    clock.advance(5ms);
    auto merged = mp.expire(clock.now);
    ASSERT_EQ(merged.size(), 1u);
    const nlohmann::json expect{{"a", 1}, {"b", std::string(10, 'x')}};
    EXPECT_EQ(merged[0].items.at(0).payload, expect);
    EXPECT_EQ(merged[0].bytes, expect.dump().size() + 1);
    EXPECT_EQ(waiters_of(merged[0]), (std::vector<int>{1, 2}));
    EXPECT_EQ(mp.waiting(), 1u);
}

// The owner sends the longest-due batch first: a held batch remembers when it became due.
TEST(Window, HeldBatchesKeepWhenTheyBecameDue) {
    manual_clock clock;
    test_window w({.max_items = 3, .max_bytes = 0, .max_wait = 5ms});
    auto blocked = [](const std::string&) { return true; };
    auto q_busy = [](const std::string& pkey) { return pkey == "q"; };  // q's partition is still busy
    w.add(part("p"), "1", 1, 1, clock.now);
    w.add(part("q"), "1", 1, 2, clock.now);
    clock.advance(5ms);
    EXPECT_TRUE(w.expire(clock.now, blocked).empty());
    clock.advance(100ms);
    w.add(part("p"), "2", 1, 3, clock.now);  // p's held batch keeps growing
    EXPECT_EQ(w.first_releasable(q_busy), time_point{} + 5ms);
    clock.advance(1ms);
    auto full = w.add(part("p"), "3", 1, 4, clock.now);  // p's held batch is full: closed by size
    ASSERT_EQ(full.size(), 1u);
    EXPECT_EQ(full[0].due, clock.now) << "closed by size: due now";
    EXPECT_FALSE(w.first_releasable(q_busy)) << "p's held batch is gone, q is busy";
    auto released = w.release(clock.now, [](const std::string&) { return false; });
    ASSERT_EQ(released.size(), 1u);
    EXPECT_EQ(released[0].partition_key, "q");
    EXPECT_EQ(released[0].due, time_point{} + 5ms);
    EXPECT_EQ(released[0].reason, flush_reason::released);
}

// flush: adaptive, with a clock the test moves. A caller whose partition could send at once
// (the owner says a slot is free, and none of the partition's calls is in flight) is sent at
// once: with min_wait 0 its batch comes back from add itself, reason idle.
TEST(WindowAdaptive, IdlePartitionSendsAtOnce) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5ms, .adaptive = true});
    auto closed = w.add(part("p"), "1", 1, 1, clock.now, nullptr, /*can_send=*/true);
    ASSERT_EQ(closed.size(), 1u);
    EXPECT_EQ(closed[0].reason, flush_reason::idle);
    EXPECT_EQ(waiters_of(closed[0]), (std::vector<int>{1}));
    EXPECT_EQ(closed[0].due, clock.now);
    EXPECT_FALSE(w.next_deadline());
    EXPECT_EQ(w.waiting(), 0u);
}

// No free slot (can_send false) for an idle partition: its batch is due at once, held open
// while the owner says no slot is free (callers arriving meanwhile join it), and goes as one
// batch when a slot frees, long before max_wait (regression: it waited max_wait, a free slot
// notwithstanding, and a caller whose deadline came first got 504).
TEST(WindowAdaptive, NoFreeSlotHoldsTheBatchUntilOneFrees) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5s, .adaptive = true});
    bool slot_free = false;
    auto blocked = [&](const std::string&) { return !slot_free; };
    EXPECT_TRUE(w.add(part("p"), "1", 1, 1, clock.now, nullptr, /*can_send=*/false).empty());
    EXPECT_EQ(w.next_deadline(), clock.now) << "due at once, not at max_wait";
    EXPECT_TRUE(w.expire(clock.now, blocked).empty());
    EXPECT_EQ(w.held(), 1u);
    clock.advance(2ms);
    EXPECT_TRUE(w.add(part("p"), "2", 1, 2, clock.now, nullptr, false).empty());
    EXPECT_TRUE(w.release(clock.now, blocked).empty()) << "no slot yet";
    slot_free = true;
    auto released = w.release(clock.now, blocked);
    ASSERT_EQ(released.size(), 1u);
    EXPECT_EQ(released[0].reason, flush_reason::released);
    EXPECT_EQ(waiters_of(released[0]), (std::vector<int>{1, 2}));
    EXPECT_EQ(w.waiting(), 0u);
}

// The same batch, when a slot has freed by the time it is due: it goes, reason idle.
TEST(WindowAdaptive, NoFreeSlotAtArrivalButOneAtTheDeadlineGoesIdle) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5s, .adaptive = true});
    EXPECT_TRUE(w.add(part("p"), "1", 1, 1, clock.now, nullptr, false).empty());
    auto closed = w.expire(clock.now, [](const std::string&) { return false; });
    ASSERT_EQ(closed.size(), 1u);
    EXPECT_EQ(closed[0].reason, flush_reason::idle);
}

// While the partition's call is in flight, callers collect in one batch; it is due the moment
// that call ends (reason returned), not at max_wait.
TEST(WindowAdaptive, AccumulatesWhileInFlightAndGoesWhenTheCallReturns) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 50ms, .adaptive = true});
    auto first = w.add(part("p"), "1", 1, 1, clock.now, nullptr, true);
    ASSERT_EQ(first.size(), 1u);
    w.call_started("p");
    EXPECT_TRUE(w.in_flight("p"));
    for (int i = 2; i <= 5; ++i) {
        clock.advance(1ms);
        EXPECT_TRUE(w.add(part("p"), std::to_string(i), 1, int{i}, clock.now, nullptr, true).empty())
            << "caller " << i << " joins the batch collecting behind the call in flight";
    }
    // Another partition is not held back by p's call.
    EXPECT_EQ(w.add(part("q"), "1", 1, 9, clock.now, nullptr, true).size(), 1u);
    clock.advance(3ms);  // 7 ms: far from max_wait
    EXPECT_TRUE(w.expire(clock.now).empty());
    w.call_ended("p", clock.now);
    EXPECT_FALSE(w.in_flight("p"));
    EXPECT_EQ(w.next_deadline(), clock.now);
    auto closed = w.expire(clock.now);
    ASSERT_EQ(closed.size(), 1u);
    EXPECT_EQ(closed[0].reason, flush_reason::returned);
    EXPECT_EQ(waiters_of(closed[0]), (std::vector<int>{2, 3, 4, 5}));
    EXPECT_EQ(closed[0].due, clock.now);
    // Its max_wait deadline went stale with it.
    EXPECT_FALSE(w.next_deadline());
}

// max_wait caps the wait even while the partition's call hangs.
TEST(WindowAdaptive, MaxWaitCapsTheWaitBehindASlowCall) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 20ms, .adaptive = true});
    w.add(part("p"), "1", 1, 1, clock.now, nullptr, true);
    w.call_started("p");
    clock.advance(2ms);
    w.add(part("p"), "2", 1, 2, clock.now, nullptr, true);
    clock.advance(19ms);
    EXPECT_TRUE(w.expire(clock.now).empty());
    clock.advance(1ms);  // 20 ms after caller 2
    auto closed = w.expire(clock.now);
    ASSERT_EQ(closed.size(), 1u);
    EXPECT_EQ(closed[0].reason, flush_reason::timer);
    EXPECT_EQ(waiters_of(closed[0]), (std::vector<int>{2}));
    // The call ending later expedites nothing: there is no open batch.
    w.call_ended("p", clock.now);
    EXPECT_FALSE(w.next_deadline());
}

// A full batch goes at once whatever the policy.
TEST(WindowAdaptive, FullBatchGoesAtOnce) {
    manual_clock clock;
    test_window w({.max_items = 3, .max_bytes = 0, .max_wait = 50ms, .adaptive = true});
    w.add(part("p"), "0", 1, 0, clock.now, nullptr, true);
    w.call_started("p");
    EXPECT_TRUE(w.add(part("p"), "1", 1, 1, clock.now).empty());
    EXPECT_TRUE(w.add(part("p"), "2", 1, 2, clock.now).empty());
    auto closed = w.add(part("p"), "3", 1, 3, clock.now);
    ASSERT_EQ(closed.size(), 1u);
    EXPECT_EQ(closed[0].reason, flush_reason::size);
    EXPECT_EQ(waiters_of(closed[0]), (std::vector<int>{1, 2, 3}));
}

// min_wait: an idle batch waits that long, and callers arriving meanwhile join it.
TEST(WindowAdaptive, MinWaitDelaysAnIdleBatchAndLaterCallersJoinIt) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5ms, .adaptive = true, .min_wait = 1ms});
    EXPECT_TRUE(w.add(part("p"), "1", 1, 1, clock.now, nullptr, true).empty());
    clock.advance(500us);
    EXPECT_TRUE(w.add(part("p"), "2", 1, 2, clock.now, nullptr, true).empty());
    EXPECT_TRUE(w.expire(clock.now).empty());
    clock.advance(500us);
    auto closed = w.expire(clock.now);
    ASSERT_EQ(closed.size(), 1u);
    EXPECT_EQ(waiters_of(closed[0]), (std::vector<int>{1, 2}));
    EXPECT_EQ(closed[0].reason, flush_reason::idle);
}

// flush: window (the default) ignores can_send and call ends: every batch waits max_wait.
TEST(WindowAdaptive, WindowPolicyIgnoresSlotsAndReturns) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5ms});
    EXPECT_TRUE(w.add(part("p"), "1", 1, 1, clock.now, nullptr, true).empty());
    w.call_started("p");
    w.call_ended("p", clock.now);
    EXPECT_EQ(w.next_deadline(), clock.now + 5ms);
}

// A batch held for a busy partition (group commit) is released by the owner, not expedited.
TEST(WindowAdaptive, HeldBatchIsNotExpedited) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5ms, .adaptive = true});
    w.add(part("p"), "1", 1, 1, clock.now, nullptr, false);
    clock.advance(5ms);
    EXPECT_TRUE(w.expire(clock.now, [](const std::string&) { return true; }).empty());
    EXPECT_EQ(w.held(), 1u);
    w.call_ended("p", clock.now);
    EXPECT_TRUE(w.expire(clock.now, [](const std::string&) { return true; }).empty());
    auto released = w.release(clock.now, [](const std::string&) { return false; });
    ASSERT_EQ(released.size(), 1u);
    EXPECT_EQ(released[0].reason, flush_reason::released);
}

// Queue deadlines and departed callers: remove_waiters takes them out of open and held batches,
// drops items and batches left empty, and keeps the byte count and the key index right.
TEST(WindowRemove, TakesOutGivenUpWaitersAndEmptyItems) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 1000, .max_wait = 5ms});
    partition p{"p", {}, 10};
    w.add(p, "a", 100, 1, clock.now);
    w.add(p, "b", 200, 2, clock.now);
    w.add(p, "a", 100, 3, clock.now);  // shares a
    w.add(part("q"), "x", 1, 4, clock.now);
    std::vector<int> out;
    auto reopened = w.remove_waiters(clock.now, [](int v) { return v == 2 || v == 1 || v == 4; },
                                     [&](int&& v) { out.push_back(v); });
    EXPECT_TRUE(reopened.empty());
    std::sort(out.begin(), out.end());
    EXPECT_EQ(out, (std::vector<int>{1, 2, 4}));
    EXPECT_EQ(w.waiting(), 1u);
    EXPECT_EQ(w.open_batches(), 1u) << "q lost its only item";
    w.add(p, "a", 100, 5, clock.now);  // still found by key: shares a with 3
    clock.advance(5ms);
    auto closed = w.expire(clock.now);
    ASSERT_EQ(closed.size(), 1u);
    ASSERT_EQ(closed[0].items.size(), 1u);
    EXPECT_EQ(closed[0].items[0].key, "a");
    EXPECT_EQ(waiters_of(closed[0]), (std::vector<int>{3, 5}));
    EXPECT_EQ(closed[0].bytes, 110u);
}

// same_key: sequence. When the batch a write was sequenced behind loses all its items, that
// write opens the partition's next batch; a departed sequenced write is simply dropped.
TEST(WindowRemove, SequencedWritesSurviveTheirBatch) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5ms, .policy = batchgate::coalescer::same_key::sequence});
    w.add(part("p"), "k", 1, 1, clock.now);
    w.add(part("p"), "k", 1, 2, clock.now);  // sequenced behind 1
    w.add(part("p"), "k", 1, 3, clock.now);  // behind 2
    std::vector<int> out;
    w.remove_waiters(clock.now, [](int v) { return v == 1 || v == 3; }, [&](int&& v) { out.push_back(v); });
    EXPECT_EQ(out.size(), 2u);
    EXPECT_EQ(w.waiting(), 1u);
    clock.advance(5ms);
    auto closed = w.expire(clock.now);
    ASSERT_EQ(closed.size(), 1u);
    EXPECT_EQ(waiters_of(closed[0]), (std::vector<int>{2}));
    EXPECT_EQ(w.waiting(), 0u);
}

// A held batch that loses every caller is no longer held; nothing is released for it.
TEST(WindowRemove, HeldBatchLeftEmptyIsForgotten) {
    manual_clock clock;
    test_window w({.max_items = 100, .max_bytes = 0, .max_wait = 5ms});
    w.add(part("p"), "1", 1, 1, clock.now);
    clock.advance(5ms);
    w.expire(clock.now, [](const std::string&) { return true; });
    EXPECT_EQ(w.held_waiters(), 1u);
    w.remove_waiters(clock.now, [](int) { return true; }, [](int&&) {});
    EXPECT_EQ(w.held_waiters(), 0u);
    EXPECT_TRUE(w.release(clock.now, [](const std::string&) { return false; }).empty());
    EXPECT_FALSE(w.next_deadline());
}
