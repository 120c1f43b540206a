#include "coalescer/core/batch_slots.hpp"

#include <utility>
#include <vector>

namespace batchgate::coalescer {

batch_slots::batch_slots(limit_settings settings, metrics::limiter_metrics* metrics)
    : limit_(settings), metrics_(metrics) {
    publish();
}

bool batch_slots::try_acquire() {
    bool ok = false;
    {
        std::lock_guard lock(mutex_);
        ok = waiting_.empty() && limit_.try_acquire();
    }
    if (ok) publish();
    return ok;
}

bool batch_slots::has_free() const {
    std::lock_guard lock(mutex_);
    return waiting_.empty() && limit_.has_free();
}

void batch_slots::release(call_outcome outcome, std::chrono::nanoseconds rtt) {
    std::vector<grant> granted;
    {
        // Under the lock, so that a batcher queuing now either sees the slot free in
        // when_granted() or is in the queue when it is handed over: no wake-up is lost.
        std::lock_guard lock(mutex_);
        limit_.release(outcome, rtt, concurrency_limit::clock::now());
        // A grown limit may free more than one.
        while (!waiting_.empty() && limit_.try_acquire()) {
            granted.push_back(std::move(waiting_.front()));
            waiting_.pop_front();
        }
    }
    publish();
    for (auto& g : granted) g(*this);
}

void batch_slots::when_granted(grant granted) {
    {
        std::lock_guard lock(mutex_);
        if (!waiting_.empty() || !limit_.try_acquire()) {
            waiting_.push_back(std::move(granted));
            return;
        }
    }
    publish();
    granted(*this);
}

void batch_slots::publish() {
    auto* m = metrics_.load();
    if (!m) return;
    m->limit->Set(static_cast<double>(limit_.limit()));
    m->in_flight->Set(static_cast<double>(limit_.in_flight()));
}

}  // namespace batchgate::coalescer
