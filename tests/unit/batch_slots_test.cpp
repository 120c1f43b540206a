// batch_slots: one upstream's concurrency limit shared by several batchers, and the hand-over a
// queued batcher gets when a slot frees. Threads race here on purpose: no hand-over may be lost.
#include "coalescer/core/batch_slots.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "metrics/metrics.hpp"

using namespace std::chrono_literals;
using batchgate::coalescer::batch_slots;
using batchgate::coalescer::call_outcome;
using batchgate::coalescer::limit_settings;

TEST(BatchSlots, AQueuedBatcherIsHandedTheSlotThatFrees) {
    batch_slots slots(limit_settings::fixed(1), nullptr);
    ASSERT_TRUE(slots.try_acquire());
    EXPECT_FALSE(slots.has_free());
    int granted = 0;
    slots.when_granted([&](batch_slots&) { ++granted; });
    EXPECT_EQ(granted, 0);
    slots.release(call_outcome::success, 1ms);
    EXPECT_EQ(granted, 1);
    EXPECT_EQ(slots.in_flight(), 1u) << "the slot went to the queued batcher, taken on its behalf";
    EXPECT_FALSE(slots.try_acquire());
    slots.release(call_outcome::ignored, {});  // the batcher had no use for it
    EXPECT_EQ(slots.in_flight(), 0u);
    EXPECT_EQ(granted, 1) << "a hand-over is given once, then forgotten";
}

// A batcher's hand-over (coalescer/batcher.cpp): it holds its batcher weakly, and a slot handed
// to a batcher that is gone goes back through the slots it is handed. It owns nothing that owns
// the slots, so slots with a hand-over still queued (a route shut down while a batch waited for
// a slot) are freed like any others; one that held them leaked them and every batcher in them.
TEST(BatchSlots, AHandOverForABatcherThatIsGoneGivesTheSlotBack) {
    auto slots = std::make_shared<batch_slots>(limit_settings::fixed(1), nullptr);
    ASSERT_TRUE(slots->try_acquire());
    auto batcher = std::make_shared<int>(0);
    auto hand_over = [weak = std::weak_ptr<int>(batcher)](batch_slots& s) {
        if (!weak.lock()) s.release(call_outcome::ignored, {});
    };
    slots->when_granted(hand_over);
    batcher.reset();
    slots->release(call_outcome::success, 1ms);
    EXPECT_EQ(slots->in_flight(), 0u) << "the slot went to a batcher that is gone, and came back";
    ASSERT_TRUE(slots->try_acquire());
    slots->when_granted(hand_over);  // still queued when the route goes
    std::weak_ptr<batch_slots> weak_slots = slots;
    slots.reset();
    EXPECT_TRUE(weak_slots.expired());
}

TEST(BatchSlots, AskingWhileASlotIsFreeGrantsAtOnce) {
    batch_slots slots(limit_settings::fixed(2), nullptr);
    int granted = 0;
    slots.when_granted([&](batch_slots&) { ++granted; });
    EXPECT_EQ(granted, 1);
    EXPECT_EQ(slots.in_flight(), 1u);
}

// The batcher whose call ends (on the thread that frees slots) cannot take the slot back while
// others queue: they get slots in the order they asked.
TEST(BatchSlots, QueuedBatchersAreServedFirstComeFirstServed) {
    batch_slots slots(limit_settings::fixed(1), nullptr);
    ASSERT_TRUE(slots.try_acquire());  // "a", the busy one
    std::vector<char> order;
    slots.when_granted([&](batch_slots&) { order.push_back('b'); });
    slots.when_granted([&](batch_slots&) { order.push_back('c'); });
    slots.release(call_outcome::success, 1ms);  // a's call ends
    EXPECT_FALSE(slots.try_acquire()) << "a retook the slot while b and c queued";
    EXPECT_FALSE(slots.has_free());
    slots.release(call_outcome::success, 1ms);  // b's call ends
    EXPECT_FALSE(slots.try_acquire()) << "c still queued";
    slots.release(call_outcome::success, 1ms);  // c's call ends
    EXPECT_EQ(order, (std::vector<char>{'b', 'c'}));
    EXPECT_TRUE(slots.try_acquire()) << "nobody queues: a takes it";
}

// A limit that grows frees more than one slot at once: every one goes to a queued batcher.
TEST(BatchSlots, AGrownLimitHandsOverEverySlotItFrees) {
    batch_slots slots(limit_settings{.initial = 1, .min = 1, .max = 10}, nullptr);
    ASSERT_TRUE(slots.try_acquire());
    int granted = 0;
    for (int i = 0; i < 5; ++i) slots.when_granted([&](batch_slots&) { ++granted; });
    for (int round = 0; round < 200 && granted < 5; ++round) {
        // Successes at full use grow the limit; each ends a call that was handed a slot.
        slots.release(call_outcome::success, 1ms);
        if (slots.in_flight() == 0) ASSERT_TRUE(slots.try_acquire() || granted == 5);
    }
    EXPECT_EQ(granted, 5);
}

TEST(BatchSlots, GaugesShowTheLimitAndTheCallsInFlight) {
    batchgate::metrics::registry registry;
    auto& m = registry.limiter("api", "*");
    batch_slots slots(limit_settings{.initial = 3, .min = 1, .max = 10}, &m);
    EXPECT_EQ(m.limit->Value(), 3);
    ASSERT_TRUE(slots.try_acquire());
    ASSERT_TRUE(slots.try_acquire());
    EXPECT_EQ(m.in_flight->Value(), 2);
    // 429s, timeouts and 503s shrink the shared limit.
    slots.release(call_outcome::dropped, 5ms);
    EXPECT_LT(m.limit->Value(), 3);
    EXPECT_EQ(m.in_flight->Value(), 1);
}

// Two "routes" on threads of their own share one slot: each takes it, holds it briefly and gives
// it back; when refused, it queues and is handed the slot. Every round completes (a lost
// hand-over would leave a thread waiting forever) and the slot is never held twice.
TEST(BatchSlots, NoWakeUpIsLostBetweenThreads) {
    batch_slots slots(limit_settings::fixed(1), nullptr);
    std::atomic<int> holders{0};
    std::atomic<bool> overlap{false};
    auto route = [&] {
        for (int round = 0; round < 2000; ++round) {
            if (!slots.try_acquire()) {
                std::atomic<bool> granted{false};
                slots.when_granted([&granted](batch_slots&) { granted = true; });
                const auto give_up = std::chrono::steady_clock::now() + 5s;
                while (!granted && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
                ASSERT_TRUE(granted) << "no hand-over after a release";
            }
            if (holders.fetch_add(1) != 0) overlap = true;
            holders.fetch_sub(1);
            slots.release(call_outcome::success, 1ms);
        }
    };
    std::thread a(route), b(route);
    a.join();
    b.join();
    EXPECT_FALSE(overlap);
    EXPECT_EQ(slots.in_flight(), 0u);
}
