// Slots for batch calls to one upstream: a concurrency_limit (adaptive, or fixed) shared by the
// batchers that use it (a route's batchers on every shard, and the upstream's other routes),
// plus the hand-over a limit alone cannot give. A batcher that finds no free slot queues; a
// slot that frees goes to the first in the queue, taken on its behalf, and nobody else may take
// one while the queue is not empty. So a batcher on the thread that frees slots cannot keep
// retaking them while another waits (first come, first served). Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <deque>

#include "coalescer/core/concurrency_limit.hpp"
#include "metrics/metrics.hpp"

namespace batchgate::coalescer {

class batch_slots {
public:
    // metrics may be null (tests).
    batch_slots(limit_settings settings, metrics::limiter_metrics* metrics);

    // Takes a slot when one is free and nobody queues for one.
    bool try_acquire();
    // Gives the slot back, adapts the limit to the call's outcome, and hands the slots now free
    // to the first queued. A slot handed over and not used goes back with call_outcome::ignored.
    void release(call_outcome outcome, std::chrono::nanoseconds rtt);
    // Calls granted once, with a slot taken for the caller: at once (on this thread) when one
    // is free and nobody queues, else when a release hands it one, in the order they asked.
    // granted must be cheap. It is handed this object (to give back a slot it cannot use), so
    // it never needs to own it: a queued hand-over that owned the slots it waits in would keep
    // them, and itself, alive for ever.
    using grant = std::function<void(batch_slots&)>;
    void when_granted(grant granted);

    bool has_free() const;  // a slot could be taken now
    // A reload replaced this limit: its gauges belong to the new one from now on.
    void retire() { metrics_.store(nullptr); }
    std::size_t limit() const { return limit_.limit(); }
    std::size_t in_flight() const { return limit_.in_flight(); }
    std::chrono::nanoseconds base_rtt() const { return limit_.base_rtt(); }

private:
    void publish();

    concurrency_limit limit_;
    std::atomic<metrics::limiter_metrics*> metrics_;
    mutable std::mutex mutex_;
    std::deque<grant> waiting_;
};

}  // namespace batchgate::coalescer
