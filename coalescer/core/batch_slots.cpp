#include "coalescer/core/batch_slots.hpp"

#include <utility>

namespace batchgate::coalescer {

batch_slots::batch_slots(limit_settings settings, metrics::limiter_metrics* metrics)
    : limit_(settings), metrics_(metrics) {
    publish();
}

bool batch_slots::try_acquire() {
    const bool ok = limit_.try_acquire();
    if (ok) publish();
    return ok;
}

bool batch_slots::has_free() const { return limit_.has_free(); }

void batch_slots::release(call_outcome outcome, std::chrono::nanoseconds rtt) {
    limit_.release(outcome, rtt, concurrency_limit::clock::now());
    publish();
    std::vector<std::function<void()>> wake;
    {
        // After the slot is back: a batcher that failed try_acquire() and registers now sees
        // it free in notify_when_free(), so no wake-up is lost in between.
        std::lock_guard lock(mutex_);
        wake.swap(waiting_);
    }
    for (auto& w : wake) w();
}

void batch_slots::notify_when_free(std::function<void()> wake) {
    {
        std::lock_guard lock(mutex_);
        if (!has_free()) {
            waiting_.push_back(std::move(wake));
            return;
        }
    }
    wake();
}

void batch_slots::publish() {
    auto* m = metrics_.load();
    if (!m) return;
    m->limit->Set(static_cast<double>(limit_.limit()));
    m->in_flight->Set(static_cast<double>(limit_.in_flight()));
}

}  // namespace batchgate::coalescer
