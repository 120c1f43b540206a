// The adaptive upstream limit under RTTs and a clock the test chooses: no sleeps, no real upstream.
#include "coalescer/core/concurrency_limit.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <deque>
#include <map>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using batchgate::coalescer::call_outcome;
using batchgate::coalescer::concurrency_limit;
using batchgate::coalescer::limit_settings;

namespace {

using time_point = concurrency_limit::clock::time_point;

// An upstream with more callers than slots: every slot is refilled as soon as it frees, so
// the limit, not demand, decides how many calls are in flight.
struct saturated_upstream {
    concurrency_limit& limit;
    time_point now{};
    std::deque<time_point> sent;  // in-flight calls, oldest first

    void fill() {
        while (limit.try_acquire()) sent.push_back(now);
    }
    // The oldest call comes back after `rtt`; the clock moves to its answer.
    void complete(call_outcome o, std::chrono::nanoseconds rtt) {
        fill();
        now = std::max(now, sent.front() + rtt);
        sent.pop_front();
        limit.release(o, rtt, now);
        fill();
    }
    void complete_n(std::size_t n, std::chrono::nanoseconds rtt, std::size_t* highest = nullptr) {
        for (std::size_t i = 0; i < n; ++i) {
            complete(call_outcome::success, rtt);
            if (highest) *highest = std::max(*highest, limit.limit());
        }
    }
    // Runs calls at `rtt` until the limit reaches `target`; false if 20,000 calls don't.
    bool grows_to(std::size_t target, std::chrono::nanoseconds rtt) {
        for (int i = 0; i < 20000 && limit.limit() != target; ++i) complete(call_outcome::success, rtt);
        return limit.limit() == target;
    }
};

// An upstream that serves `workers` calls at once, each taking `service`, and queues the rest
// (FIFO), driven by more callers than the limit lets through. Its RTTs rise only when the limit
// lets more calls in than it has workers: the overshoot the limit must find and undo.
struct queueing_upstream {
    concurrency_limit& limit;
    std::size_t workers;
    std::chrono::nanoseconds service;
    time_point now{};
    std::vector<time_point> free_at;  // when each worker is next free
    std::multimap<time_point, time_point> finishing;  // finish -> sent

    void fill() {
        if (free_at.empty()) free_at.assign(workers, now);
        while (limit.try_acquire()) {
            auto w = std::min_element(free_at.begin(), free_at.end());
            const time_point finish = std::max(now, *w) + service;
            *w = finish;
            finishing.emplace(finish, now);
        }
    }
    // Runs n calls; returns the mean in-flight count seen at each answer over the last half.
    double run(std::size_t n) {
        double sum = 0;
        std::size_t counted = 0;
        for (std::size_t i = 0; i < n; ++i) {
            fill();
            auto first = finishing.begin();
            now = first->first;
            const auto rtt = first->first - first->second;
            finishing.erase(first);
            if (i >= n / 2) {
                sum += static_cast<double>(limit.in_flight());
                ++counted;
            }
            limit.release(call_outcome::success, rtt, now);
        }
        return counted ? sum / static_cast<double>(counted) : 0;
    }
};

}  // namespace

// The upstream serves 8 at a time. Batch calls beyond that only wait in its queue (and take
// callers that could have joined a batch), so the limit must settle near 8, not keep growing
// while the queueing hides in its baseline.
TEST(ConcurrencyLimit, SettlesNearTheUpstreamsParallelismWhenItQueues) {
    for (std::chrono::milliseconds service : {1ms, 50ms, 1000ms}) {
        concurrency_limit limit({.initial = 4, .min = 1, .max = 64});
        queueing_upstream up{limit, 8, service};
        const double in_flight = up.run(4000);
        EXPECT_GE(limit.limit(), 7u) << service.count();
        EXPECT_LE(limit.limit(), 11u) << service.count();
        EXPECT_LE(in_flight, 11.0) << service.count();
    }
}

TEST(ConcurrencyLimit, GrowsToMaxWhileLatencyHolds) {
    concurrency_limit limit({.initial = 4, .min = 1, .max = 64});
    saturated_upstream up{limit};
    up.complete_n(20, 10ms);
    EXPECT_GT(limit.limit(), 4u);  // growing from the first calls, about one a round trip
    EXPECT_LE(limit.limit(), 9u);
    std::size_t highest = 0;
    up.complete_n(5000, 10ms, &highest);
    EXPECT_EQ(limit.limit(), 64u);
    EXPECT_EQ(highest, 64u);  // and never past max on the way
    EXPECT_EQ(limit.in_flight(), 64u);
}

TEST(ConcurrencyLimit, GrowsTheSameForMillisecondAndSecondCalls) {
    // The defaults count calls, not time: a 1 s upstream adapts in as many calls as a 1 ms one.
    concurrency_limit fast({.max = 64}), slow({.max = 64});
    saturated_upstream f{fast}, s{slow};
    f.complete_n(100, 1ms);
    s.complete_n(100, 1s);
    EXPECT_EQ(fast.limit(), slow.limit());
    EXPECT_GT(fast.limit(), 4u);
    EXPECT_TRUE(f.grows_to(64, 1ms));
}

TEST(ConcurrencyLimit, DoesNotGrowWhileMostOfItIsUnused) {
    // One caller at a time proves nothing about 50 in parallel; a limit grown while idle would
    // let the next burst hit the upstream all at once.
    concurrency_limit limit({.initial = 8, .min = 1, .max = 256});
    time_point now{};
    for (int i = 0; i < 1000; ++i) {
        ASSERT_TRUE(limit.try_acquire());
        now += 10ms;
        limit.release(call_outcome::success, 10ms, now);
    }
    EXPECT_EQ(limit.limit(), 8u);
}

TEST(ConcurrencyLimit, ShrinksWhenLatencyRisesAndRecoversWhenItFalls) {
    concurrency_limit limit({.initial = 4, .min = 1, .max = 128});
    saturated_upstream up{limit};
    ASSERT_TRUE(up.grows_to(128, 10ms));

    // The upstream slows to 5x its usual latency: 4 of 5 calls in flight are read as queued, and
    // the limit sheds that excess within about one round trip of calls (128).
    up.complete_n(10, 50ms);
    const std::size_t after_10 = limit.limit();
    EXPECT_LT(after_10, 128u);
    up.complete_n(190, 50ms);
    EXPECT_LT(limit.limit(), after_10);
    EXPECT_LE(limit.limit(), 8u);

    // Latency back to normal: the limit grows back to max.
    EXPECT_TRUE(up.grows_to(128, 10ms));
}

TEST(ConcurrencyLimit, ALastingSlowdownBecomesTheNewNormal) {
    // A latency that stays (a slower upstream, or larger batches, which take longer) first reads
    // as queueing; the next probe re-measures the no-queue RTT and the limit grows again instead
    // of starving the upstream forever.
    concurrency_limit limit({.initial = 4, .min = 1, .max = 64});
    saturated_upstream up{limit};
    ASSERT_TRUE(up.grows_to(64, 10ms));
    up.complete_n(100, 30ms);
    EXPECT_LT(limit.limit(), 32u);
    EXPECT_TRUE(up.grows_to(64, 30ms));
}

TEST(ConcurrencyLimit, DropCutsTheLimitMultiplicativelyOncePerOverload) {
    concurrency_limit limit({.initial = 40, .min = 2, .max = 64});
    time_point now = time_point{} + 1s;
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(limit.try_acquire());

    // A 429 cuts 40 to 28 (x0.7).
    limit.release(call_outcome::dropped, 20ms, now);
    EXPECT_EQ(limit.limit(), 28u);
    // Calls sent before that cut met the same overload: their 503s and timeouts cut no further.
    limit.release(call_outcome::dropped, 30ms, now + 5ms);
    limit.release(call_outcome::dropped, 2s, now + 1s);
    EXPECT_EQ(limit.limit(), 28u);
    // A call sent after the cut that is dropped again: the overload goes on, cut again.
    limit.release(call_outcome::dropped, 20ms, now + 1s + 20ms);
    EXPECT_EQ(limit.limit(), 19u);  // 28 x 0.7 = 19.6

    // Overload after overload: down to min, never below.
    time_point t = now + 2s;
    for (int i = 0; i < 6; ++i) {
        t += 1s;
        limit.release(call_outcome::dropped, 10ms, t);
    }
    EXPECT_EQ(limit.limit(), 2u);
    EXPECT_EQ(limit.in_flight(), 0u);
}

TEST(ConcurrencyLimit, DropCutsAtLeastOneSlot) {
    // With a gentle backoff a small limit must still lose a slot per overload (AIMDLimit's rule),
    // or 4.5 x 0.95 would floor to 4 again and the drop would change nothing.
    concurrency_limit limit({.initial = 5, .min = 1, .max = 64, .drop_backoff = 0.95});
    time_point t{};
    for (std::size_t expected : {4u, 3u, 2u, 1u, 1u}) {
        ASSERT_TRUE(limit.try_acquire());
        t += 1s;
        limit.release(call_outcome::dropped, 10ms, t);
        EXPECT_EQ(limit.limit(), expected);
    }
}

TEST(ConcurrencyLimit, DropsLeaveTheLatencyBaselineAlone) {
    // A timeout's duration is the timeout, not the upstream's latency. Had five 5 s timeouts
    // entered a 10 ms baseline, 50 ms calls right after would look fast and grow the limit.
    concurrency_limit limit({.initial = 4, .min = 1, .max = 64});
    saturated_upstream up{limit};
    ASSERT_TRUE(up.grows_to(64, 10ms));
    for (int i = 0; i < 5; ++i) {
        up.now += 10s;
        up.complete(call_outcome::dropped, 5s);
    }
    const std::size_t after_drops = limit.limit();
    EXPECT_EQ(after_drops, 10u);  // 64 x 0.7^5 = 10.76
    up.complete_n(10, 50ms);
    EXPECT_LT(limit.limit(), after_drops);
    EXPECT_TRUE(up.grows_to(64, 10ms));
}

TEST(ConcurrencyLimit, NeverAboveMax) {
    concurrency_limit limit({.initial = 100, .min = 1, .max = 8});  // initial clamped into range
    EXPECT_EQ(limit.limit(), 8u);
    saturated_upstream up{limit};
    std::size_t highest = 0;
    up.complete_n(500, 1ms, &highest);
    EXPECT_EQ(highest, 8u);
    EXPECT_EQ(limit.in_flight(), 8u);
}

TEST(ConcurrencyLimit, TryAcquireRefusesAtTheLimitAndAcceptsAfterRelease) {
    concurrency_limit limit({.initial = 3, .min = 1, .max = 3});
    EXPECT_TRUE(limit.try_acquire());
    EXPECT_TRUE(limit.try_acquire());
    EXPECT_TRUE(limit.try_acquire());
    EXPECT_FALSE(limit.try_acquire());
    EXPECT_EQ(limit.in_flight(), 3u);  // a refusal takes nothing
    limit.release(call_outcome::success, 5ms, time_point{} + 5ms);
    EXPECT_EQ(limit.in_flight(), 2u);
    EXPECT_TRUE(limit.try_acquire());
    EXPECT_FALSE(limit.try_acquire());
}

TEST(ConcurrencyLimit, SlotsOverANewlyShrunkLimitStayTakenUntilReleased) {
    concurrency_limit limit({.initial = 10, .min = 1, .max = 64});
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(limit.try_acquire());
    limit.release(call_outcome::dropped, 10ms, time_point{} + 10ms);  // 10 -> 7, 9 in flight
    EXPECT_EQ(limit.limit(), 7u);
    EXPECT_FALSE(limit.try_acquire());
    for (int i = 0; i < 2; ++i) limit.release(call_outcome::ignored, 10ms, time_point{} + 11ms);
    EXPECT_FALSE(limit.try_acquire());  // 7 in flight, limit 7
    limit.release(call_outcome::ignored, 10ms, time_point{} + 12ms);
    EXPECT_TRUE(limit.try_acquire());
}

TEST(ConcurrencyLimit, IgnoredOutcomesOnlyFreeTheSlot) {
    concurrency_limit limit({.initial = 16, .min = 1, .max = 64});
    saturated_upstream up{limit};
    up.complete_n(20, 10ms);
    const std::size_t before = limit.limit();
    // Callers who left, 404s: even at 100x the latency nothing moves.
    for (int i = 0; i < 500; ++i) up.complete(call_outcome::ignored, 1s);
    EXPECT_EQ(limit.limit(), before);
    EXPECT_EQ(limit.in_flight(), before);
    // Nor did they enter the baseline: 50 ms still reads as 5x slower than usual.
    up.complete_n(10, 50ms);
    EXPECT_LT(limit.limit(), before);
}

TEST(ConcurrencyLimit, FixedNeverMoves) {
    concurrency_limit limit(limit_settings::fixed(3));
    saturated_upstream up{limit};
    up.complete_n(500, 1ms);
    EXPECT_EQ(limit.limit(), 3u);
    up.complete_n(100, 1s);
    for (int i = 0; i < 10; ++i) {
        up.now += 10s;
        up.complete(call_outcome::dropped, 5s);
    }
    EXPECT_EQ(limit.limit(), 3u);
    EXPECT_EQ(limit.in_flight(), 3u);
    EXPECT_FALSE(limit.try_acquire());
}

TEST(ConcurrencyLimit, SettingsOutOfRangeAreClamped) {
    concurrency_limit zero(limit_settings{.initial = 0, .min = 0, .max = 0});
    EXPECT_EQ(zero.limit(), 1u);  // a limit of 0 would never send anything
    concurrency_limit inverted(limit_settings{.initial = 4, .min = 8, .max = 2});
    EXPECT_EQ(inverted.limit(), 8u);
    concurrency_limit pinned(limit_settings::fixed(0));
    EXPECT_EQ(pinned.limit(), 1u);
}

TEST(ConcurrencyLimit, ManyThreadsShareOneLimit) {
    // Routes on different strands share their upstream's limit: slots are never over-granted
    // and every one comes back.
    concurrency_limit limit({.initial = 8, .min = 2, .max = 16});
    std::atomic<int> held{0}, most_held{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&, t] {
            time_point now = time_point{} + std::chrono::seconds(t);
            for (int i = 0; i < 20000; ++i) {
                if (!limit.try_acquire()) continue;
                const int h = ++held;
                int m = most_held.load();
                while (h > m && !most_held.compare_exchange_weak(m, h)) {}
                --held;
                now += 1ms;
                const auto o = i % 97 == 0 ? call_outcome::dropped
                               : i % 13 == 0 ? call_outcome::ignored
                                             : call_outcome::success;
                limit.release(o, std::chrono::microseconds(500 + (i * 7919) % 1500), now);
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(limit.in_flight(), 0u);
    EXPECT_LE(most_held.load(), 16);
    EXPECT_GE(limit.limit(), 2u);
    EXPECT_LE(limit.limit(), 16u);
}

TEST(ConcurrencyLimit, KnowsTheQuickestRoundTripEvenWhenFixed) {
    for (auto settings : {limit_settings{}, limit_settings::fixed(2)}) {
        concurrency_limit limit(settings);
        EXPECT_EQ(limit.base_rtt(), 0ns);
        saturated_upstream up{limit};
        up.complete_n(3, 30ms);
        up.complete_n(3, 20ms);
        up.complete(call_outcome::dropped, 1ms);  // a drop's duration is no round trip
        up.complete(call_outcome::ignored, 2ms);
        EXPECT_EQ(limit.base_rtt(), 20ms);
    }
}
