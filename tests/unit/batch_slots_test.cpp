// batch_slots: one upstream's concurrency limit shared by several batchers, and the wake-ups a
// batcher gets when a slot frees. Threads race here on purpose: no wake-up may be lost.
#include "coalescer/core/batch_slots.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "metrics/metrics.hpp"

using namespace std::chrono_literals;
using batchgate::coalescer::batch_slots;
using batchgate::coalescer::call_outcome;
using batchgate::coalescer::limit_settings;

TEST(BatchSlots, WaiterIsWokenOnceWhenASlotFrees) {
    batch_slots slots(limit_settings::fixed(1), nullptr);
    ASSERT_TRUE(slots.try_acquire());
    EXPECT_FALSE(slots.has_free());
    int woken = 0;
    slots.notify_when_free([&] { ++woken; });
    EXPECT_EQ(woken, 0);
    slots.release(call_outcome::success, 1ms);
    EXPECT_EQ(woken, 1);
    ASSERT_TRUE(slots.try_acquire());
    slots.release(call_outcome::success, 1ms);
    EXPECT_EQ(woken, 1) << "a wake-up is given once, then forgotten";
}

TEST(BatchSlots, AskingWhileASlotIsFreeWakesAtOnce) {
    batch_slots slots(limit_settings::fixed(2), nullptr);
    int woken = 0;
    slots.notify_when_free([&] { ++woken; });
    EXPECT_EQ(woken, 1);
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
// it back; when refused, it waits for the wake-up and tries again. Every round completes (a lost
// wake-up would leave a thread waiting forever) and the slot is never held twice.
TEST(BatchSlots, NoWakeUpIsLostBetweenThreads) {
    batch_slots slots(limit_settings::fixed(1), nullptr);
    std::atomic<int> holders{0};
    std::atomic<bool> overlap{false};
    auto route = [&] {
        for (int round = 0; round < 2000; ++round) {
            while (!slots.try_acquire()) {
                std::atomic<bool> woken{false};
                slots.notify_when_free([&woken] { woken = true; });
                const auto give_up = std::chrono::steady_clock::now() + 5s;
                while (!woken && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
                ASSERT_TRUE(woken) << "no wake-up after a release";
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
