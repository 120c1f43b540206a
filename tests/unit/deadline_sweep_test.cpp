// The shard's deadline sweep: order, lists per length, disarm, holds, and the real tick.
#include "net/deadline_sweep.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>

using namespace batchgate::gateway;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

struct probe : deadline_entry {
    explicit probe(std::string n, std::vector<std::string>* log) : name(std::move(n)), log(log) {}
    ~probe() { if (destroyed) *destroyed = true; }
    void deadline_passed() override {
        log->push_back(name);
        if (then) then();
    }
    using deadline_entry::armed;
    std::string name;
    std::vector<std::string>* log;
    std::function<void()> then;
    bool* destroyed = nullptr;
};

struct sweep_test : ::testing::Test {
    boost::asio::io_context ioc{1};
    deadline_sweep& sweep = deadline_sweep::of(ioc.get_executor());
    std::vector<std::string> fired;
    const clock_type::time_point t0 = clock_type::now();
};

}  // namespace

TEST_F(sweep_test, FiresInDeadlineOrderAcrossLengthsAndOnlyWhenDue) {
    probe a("a", &fired), b("b", &fired), c("c", &fired), d("d", &fired);
    sweep.arm(a, t0, 30s);
    sweep.arm(b, t0, 1s);
    sweep.arm(c, t0 + 2s, 1s);   // same length as b, later
    sweep.arm(d, t0 - 1s, 30s);  // armed later than a but due first: sorted into its list
    EXPECT_EQ(sweep.armed(), 4u);
    sweep.sweep(t0 + 999ms);
    EXPECT_TRUE(fired.empty());
    sweep.sweep(t0 + 1s);
    EXPECT_EQ(fired, (std::vector<std::string>{"b"}));
    // One list after the other: every due deadline fires in the sweep, each list in order.
    sweep.sweep(t0 + 29s);
    EXPECT_EQ(fired, (std::vector<std::string>{"b", "d", "c"}));
    EXPECT_TRUE(a.armed());
    EXPECT_FALSE(b.armed());
    sweep.sweep(t0 + 31s);
    EXPECT_EQ(fired, (std::vector<std::string>{"b", "d", "c", "a"}));
    EXPECT_EQ(sweep.armed(), 0u);
}

TEST_F(sweep_test, DisarmedAndDestroyedEntriesNeverFire) {
    auto gone = std::make_unique<probe>("gone", &fired);
    probe kept("kept", &fired), cancelled("cancelled", &fired);
    sweep.arm(*gone, t0, 1s);
    sweep.arm(cancelled, t0, 1s);
    sweep.arm(kept, t0, 1s);
    sweep.disarm(cancelled);
    sweep.disarm(cancelled);  // twice is harmless
    gone.reset();             // the destructor unlinks it
    EXPECT_EQ(sweep.armed(), 1u);
    sweep.sweep(t0 + 2s);
    EXPECT_EQ(fired, (std::vector<std::string>{"kept"}));
}

TEST_F(sweep_test, ArmingAgainMovesTheDeadline) {
    probe a("a", &fired);
    sweep.arm(a, t0, 1s);
    sweep.arm(a, t0, 5s);
    EXPECT_EQ(sweep.armed(), 1u);
    sweep.sweep(t0 + 2s);
    EXPECT_TRUE(fired.empty());
    sweep.sweep(t0 + 5s);
    EXPECT_EQ(fired, (std::vector<std::string>{"a"}));
}

// A held owner lives until its deadline has run, and is let go of right after (as a timer's
// pending handler held it); disarming lets go of it at once.
TEST_F(sweep_test, HoldKeepsTheOwnerUntilItsDeadlineHasRun) {
    bool destroyed = false;
    auto owner = std::make_shared<probe>("held", &fired);
    owner->destroyed = &destroyed;
    owner->then = [&] { EXPECT_FALSE(destroyed) << "freed before its own deadline_passed returned"; };
    sweep.arm(*owner, t0, 1s, owner);
    owner.reset();
    EXPECT_FALSE(destroyed);
    sweep.sweep(t0 + 1s);
    EXPECT_EQ(fired, (std::vector<std::string>{"held"}));
    EXPECT_TRUE(destroyed);

    bool freed = false;
    auto other = std::make_shared<probe>("other", &fired);
    other->destroyed = &freed;
    probe* raw = other.get();
    sweep.arm(*raw, t0, 1s, std::move(other));
    sweep.disarm(*raw);
    EXPECT_TRUE(freed);
}

// A deadline_passed may arm itself again, disarm or free others, and arm new ones.
TEST_F(sweep_test, CallbacksMayChangeTheLists) {
    probe a("a", &fired), b("b", &fired), c("c", &fired);
    auto d = std::make_unique<probe>("d", &fired);
    bool once = false;
    a.then = [&] {
        if (std::exchange(once, true)) return;
        sweep.arm(a, t0 + 10s, 1s);  // again, later
        sweep.disarm(b);
        d.reset();
        sweep.arm(c, t0, 2s);  // a new list while the lists are walked
    };
    sweep.arm(a, t0, 1s);
    sweep.arm(b, t0, 1s);
    sweep.arm(*d, t0, 1s);
    sweep.sweep(t0 + 3s);
    EXPECT_EQ(fired, (std::vector<std::string>{"a", "c"}));
    EXPECT_TRUE(a.armed());
    sweep.sweep(t0 + 11s);
    EXPECT_EQ(fired, (std::vector<std::string>{"a", "c", "a"}));
}

// A handler that throws costs only its own deadline: the rest fire, and the tick goes on.
TEST_F(sweep_test, AThrowingHandlerDoesNotStopTheOthers) {
    probe bad("bad", &fired), good("good", &fired), later("later", &fired);
    bad.then = [] { throw std::runtime_error("boom"); };
    sweep.arm(bad, t0, 1s);
    sweep.arm(good, t0, 1s);
    EXPECT_NO_THROW(sweep.sweep(t0 + 1s));
    EXPECT_EQ(fired, (std::vector<std::string>{"bad", "good"}));
    EXPECT_EQ(sweep.armed(), 0u);

    probe again("again", &fired);
    again.then = [] { throw std::runtime_error("boom"); };
    sweep.arm(again, clock_type::now(), 10ms);
    sweep.arm(later, clock_type::now(), 40ms);
    ioc.run_for(2s);  // the real tick: both fire though the first throws
    EXPECT_EQ(fired, (std::vector<std::string>{"bad", "good", "again", "later"}));
}

// The io_context's own tick fires a due deadline, then stops when none is armed; the
// io_context's end lets go of what armed entries hold.
TEST_F(sweep_test, TickFiresOnTheRealClockAndShutdownLetsGo) {
    probe a("a", &fired);
    sweep.arm(a, clock_type::now(), 20ms);
    ioc.run_for(2s);  // returns once the tick has nothing left to wait for
    EXPECT_EQ(fired, (std::vector<std::string>{"a"}));

    bool destroyed = false;
    {
        boost::asio::io_context other{1};
        auto owner = std::make_shared<probe>("never", &fired);
        owner->destroyed = &destroyed;
        deadline_sweep::of(other.get_executor()).arm(*owner, clock_type::now(), 1h, owner);
        owner.reset();
        EXPECT_FALSE(destroyed);
    }
    EXPECT_TRUE(destroyed);
    EXPECT_EQ(fired.size(), 1u);
}

// coarse_now(): the clock while nothing is armed; while the tick runs, the time it last swept to
// (set when the ticking starts), so never ahead of the clock, and moved on only by a tick.
TEST_F(sweep_test, CoarseNowIsTheLastSweptTimeWhileTicking) {
    const auto before = clock_type::now();
    EXPECT_GE(sweep.coarse_now(), before);  // nothing armed: the clock itself
    probe a("a", &fired);
    sweep.arm(a, clock_type::now(), 1h);
    const auto started = sweep.coarse_now();
    EXPECT_GE(started, before);
    EXPECT_LE(started, clock_type::now());
    EXPECT_EQ(sweep.coarse_now(), started);  // no clock read between ticks
    for (int i = 0; i < 500 && sweep.coarse_now() == started; ++i) ioc.run_for(10ms);
    const auto later = sweep.coarse_now();
    EXPECT_GT(later, started);               // a tick moved it on
    EXPECT_LE(later, clock_type::now());
    EXPECT_TRUE(fired.empty());
}

// Lengths past max_lists join the list of the nearest length (found by a binary search of the
// lists): each still fires when due, never before, and in order within a sweep step.
TEST_F(sweep_test, ManyLengthsShareTheNearestListsAndEachFiresWhenDue) {
    std::vector<std::unique_ptr<probe>> probes;
    std::vector<int> lengths_ms;
    for (int i = 0; i < 48; ++i) lengths_ms.push_back(((i * 37) % 48 + 1) * 10);  // 10..480 ms, shuffled
    for (int ms : lengths_ms) {
        probes.push_back(std::make_unique<probe>(std::to_string(ms), &fired));
        sweep.arm(*probes.back(), t0, std::chrono::milliseconds(ms));
    }
    EXPECT_EQ(sweep.lists(), deadline_sweep::max_lists);
    for (int ms = 5; ms <= 485; ms += 10) {
        sweep.sweep(t0 + std::chrono::milliseconds(ms));
        // Exactly those due by now have fired: the ones of 10 .. ms-5.
        EXPECT_EQ(fired.size(), static_cast<std::size_t>(ms / 10)) << "at " << ms << " ms";
    }
    for (std::size_t i = 0; i < fired.size(); ++i) EXPECT_EQ(fired[i], std::to_string((i + 1) * 10));
    EXPECT_EQ(sweep.armed(), 0u);
}

// Lengths armed again and again (found among the recent ones) mixed with lengths computed at run
// time, each seen once, with every list taken: each still fires when due, in deadline order.
TEST_F(sweep_test, RecurringAndOneOffLengthsMixedFireInDeadlineOrder) {
    std::vector<std::unique_ptr<probe>> probes;
    std::vector<int> due_ms;
    auto arm = [&](int ms) {
        probes.push_back(std::make_unique<probe>(std::to_string(ms), &fired));
        sweep.arm(*probes.back(), t0, std::chrono::milliseconds(ms));
        due_ms.push_back(ms);
    };
    for (int i = 0; i < 200; ++i) {
        arm(100 + 100 * (i % 3));               // 100, 200, 300: recurring
        arm(1 + (i * 7919) % 997);              // one-off lengths, 1..997 ms
        if (i % 5 == 0) arm(150 + (i % 2) * 100);  // 150, 250: recurring too
    }
    EXPECT_EQ(sweep.lists(), deadline_sweep::max_lists);
    // Each recurring length has a list of its own, and every entry of it is there.
    std::map<std::string, std::set<std::size_t>> lists_of;
    for (const auto& p : probes) lists_of[p->name].insert(deadline_sweep::list_of(*p));
    std::set<std::size_t> recurring_lists;
    for (const char* name : {"100", "150", "200", "250", "300"}) {
        ASSERT_EQ(lists_of[name].size(), 1u) << name;
        recurring_lists.insert(*lists_of[name].begin());
    }
    EXPECT_EQ(recurring_lists.size(), 5u);
    std::sort(due_ms.begin(), due_ms.end());
    std::size_t before = 0;
    for (int ms = 0; ms <= 1001; ms += 7) {
        sweep.sweep(t0 + std::chrono::milliseconds(ms));
        const auto due = static_cast<std::size_t>(std::upper_bound(due_ms.begin(), due_ms.end(), ms) - due_ms.begin());
        ASSERT_EQ(fired.size(), due) << "at " << ms << " ms";
        // The ones this sweep fired are exactly those that came due since the last (one sweep
        // goes list by list, so among themselves they may come in any order).
        std::multiset<std::string> got(fired.begin() + before, fired.end()), want;
        for (std::size_t i = before; i < due; ++i) want.insert(std::to_string(due_ms[i]));
        EXPECT_EQ(got, want) << "at " << ms << " ms";
        before = due;
    }
    EXPECT_EQ(sweep.armed(), 0u);
}
