// Slots for batch calls to one upstream: a concurrency_limit (adaptive, or fixed) shared by the
// batchers that use it, plus the wake-ups a limit alone cannot give. A batcher that finds no
// free slot asks to be told when one frees; every release tells everyone waiting, and each
// batcher then tries again on its own strand. Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "coalescer/core/concurrency_limit.hpp"
#include "metrics/metrics.hpp"

namespace batchgate::coalescer {

class batch_slots {
public:
    // metrics may be null (tests).
    batch_slots(limit_settings settings, metrics::limiter_metrics* metrics);

    bool try_acquire();
    // Gives the slot back, adapts the limit to the call's outcome, wakes everyone waiting.
    void release(call_outcome outcome, std::chrono::nanoseconds rtt);
    // Calls wake once, soon after a slot frees, or at once (on this thread) when one is free
    // now. wake must be cheap and must not call back into this object synchronously.
    void notify_when_free(std::function<void()> wake);

    bool has_free() const;
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
    std::vector<std::function<void()>> waiting_;
};

}  // namespace batchgate::coalescer
