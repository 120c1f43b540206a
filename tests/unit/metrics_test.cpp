// metrics::histogram: observed from many threads without a lock, published to the exported
// prometheus histogram when the registry is collected. What a scrape shows must be what was
// observed: every observation once, in the bucket prometheus-cpp would have put it in.
#include "metrics/metrics.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <latch>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "metrics/thread_slot.hpp"

using batchgate::metrics::histogram;
using batchgate::metrics::registry;

namespace {

// The histogram child `name`{route=...} as the registry exports it now.
prometheus::ClientMetric::Histogram exported(const registry& r, const std::string& name, const std::string& route) {
    for (const auto& family : r.collect()) {
        if (family.name != name) continue;
        for (const auto& m : family.metric)
            for (const auto& l : m.label)
                if (l.name == "route" && l.value == route) return m.histogram;
    }
    ADD_FAILURE() << name << "{route=" << route << "} is not exported";
    return {};
}

// Observations per bucket (not cumulative), as exported.
std::vector<std::uint64_t> per_bucket(const prometheus::ClientMetric::Histogram& h) {
    std::vector<std::uint64_t> out;
    std::uint64_t before = 0;
    for (const auto& b : h.bucket) {
        out.push_back(b.cumulative_count - before);
        before = b.cumulative_count;
    }
    return out;
}

}  // namespace

// A value equal to a bound counts in that bound's bucket (le), one above the last in +Inf; count
// and sum are what was observed, and a second collect adds nothing that was not observed since.
TEST(Histogram, BucketsAreAsPrometheusCppHasThem) {
    registry r;
    auto& m = r.route("r");
    m.batch_size->Observe(1);     // le=1
    m.batch_size->Observe(1.5);   // le=2
    m.batch_size->Observe(2);     // le=2
    m.batch_size->Observe(1000);  // le=1000, the last bound
    m.batch_size->Observe(1001);  // +Inf
    m.batch_size->Observe(0);     // le=1
    auto h = exported(r, "batchgate_batch_size", "r");
    EXPECT_EQ(h.sample_count, 6u);
    EXPECT_DOUBLE_EQ(h.sample_sum, 2005.5);
    const std::vector<std::uint64_t> want{2, 2, 0, 0, 0, 0, 0, 0, 0, 1, 1};  // 1 2 5 10 20 50 100 200 500 1000 +Inf
    EXPECT_EQ(per_bucket(h), want);

    h = exported(r, "batchgate_batch_size", "r");
    EXPECT_EQ(h.sample_count, 6u) << "collected twice, counted once";
    EXPECT_DOUBLE_EQ(h.sample_sum, 2005.5);

    m.batch_size->Observe(7);
    h = exported(r, "batchgate_batch_size", "r");
    EXPECT_EQ(h.sample_count, 7u);
    EXPECT_DOUBLE_EQ(h.sample_sum, 2012.5);
    EXPECT_EQ(per_bucket(h)[3], 1u);  // le=10
    EXPECT_NE(r.serialize().find("batchgate_batch_size_count{route=\"r\"} 7"), std::string::npos);
}

// More threads than exclusive slots observe at once while another thread scrapes: the threads
// past the exclusive slots share one, and no observation is lost or counted twice. When they
// end they give their slots back, and the next threads' counts add to what is there.
TEST(Histogram, ManyThreadsAndAScraperLoseNothing) {
    registry r;
    auto& m = r.upstream("api", "r");
    constexpr int threads = static_cast<int>(histogram::exclusive_slots) + 8;
    constexpr int each = 100000;
    std::atomic<bool> done{false};
    std::thread scraper([&] {
        while (!done.load()) (void)r.serialize();
    });
    auto run = [&](int n) {
        std::vector<std::thread> workers;
        for (int t = 0; t < n; ++t)
            workers.emplace_back([&, t] {
                for (int i = 0; i < each; ++i) m.duration->Observe(t % 2 ? 0.25 : 20.0);  // le=0.25, +Inf
            });
        for (auto& w : workers) w.join();
    };
    run(threads);
    done = true;
    scraper.join();
    auto h = exported(r, "batchgate_upstream_duration_seconds", "r");
    EXPECT_EQ(h.sample_count, static_cast<std::uint64_t>(threads) * each);
    EXPECT_DOUBLE_EQ(h.sample_sum, threads / 2 * each * (0.25 + 20.0));
    auto buckets = per_bucket(h);
    EXPECT_EQ(buckets[8], static_cast<std::uint64_t>(threads / 2 * each));  // le=0.25
    EXPECT_EQ(buckets.back(), static_cast<std::uint64_t>(threads / 2 * each));

    run(4);  // slots given back by the threads that ended
    h = exported(r, "batchgate_upstream_duration_seconds", "r");
    EXPECT_EQ(h.sample_count, static_cast<std::uint64_t>(threads + 4) * each);
    EXPECT_DOUBLE_EQ(h.sample_sum, (threads + 4) / 2 * each * (0.25 + 20.0));
}

// Every histogram a registry hands out is published: route, shadow route, upstream, fan-out.
TEST(Histogram, EveryKindIsPublished) {
    registry r;
    r.route("a").request_duration->Observe(0.003);
    r.route("a").batch_wait->Observe(0.003);
    r.shadow_route("a").batch_size->Observe(3);
    r.shadow_route("a").batch_wait->Observe(0.003);
    r.fanout("a").items->Observe(3);
    for (const char* name : {"batchgate_request_duration_seconds", "batchgate_batch_wait_seconds",
                             "batchgate_shadow_batch_size", "batchgate_shadow_batch_wait_seconds",
                             "batchgate_fanout_items"})
        EXPECT_EQ(exported(r, name, "a").sample_count, 1u) << name;
}

// Threads alive at once never share an exclusive slot (two plain writers would lose counts);
// those past the exclusive slots share the last one; and a thread that ends gives its slot
// back, so the threads after it write without atomic adds again.
TEST(Histogram, LiveThreadsNeverShareAnExclusiveSlotAndEndedOnesGiveItBack) {
    using batchgate::metrics::this_thread_slot;
    constexpr std::size_t n = histogram::exclusive_slots + 4;
    std::vector<std::size_t> ids(n);
    {
        std::latch all_in(n);
        std::vector<std::thread> threads;
        for (std::size_t i = 0; i < n; ++i)
            threads.emplace_back([&, i] {
                ids[i] = this_thread_slot();
                all_in.arrive_and_wait();  // every one alive until all have their slot
            });
        for (auto& t : threads) t.join();
    }
    std::set<std::size_t> exclusive;
    std::size_t shared = 0;
    for (auto id : ids) {
        ASSERT_LE(id, histogram::exclusive_slots);
        if (id == histogram::exclusive_slots) {
            ++shared;
        } else {
            EXPECT_TRUE(exclusive.insert(id).second) << "slot " << id << " went to two live threads";
        }
    }
    EXPECT_GE(shared, 4u);
    std::size_t later = 0;
    std::thread([&] { later = this_thread_slot(); }).join();
    EXPECT_LT(later, histogram::exclusive_slots) << "the ended threads kept their slots";
}
