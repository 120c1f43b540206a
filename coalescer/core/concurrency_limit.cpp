#include "coalescer/core/concurrency_limit.hpp"

#include <algorithm>
#include <cmath>

namespace batchgate::coalescer {

namespace {

// The baseline is a plain mean of the first calls: one early outlier must not set it.
constexpr std::size_t baseline_warmup = 10;

limit_settings sanitized(limit_settings s) {
    s.min = std::max<std::size_t>(s.min, 1);
    s.max = std::max(s.max, s.min);
    s.initial = std::clamp(s.initial, s.min, s.max);
    s.long_window = std::max<std::size_t>(s.long_window, 1);
    return s;
}

}  // namespace

concurrency_limit::concurrency_limit(limit_settings s)
    : settings_(sanitized(s)), limit_(settings_.initial), estimate_(static_cast<double>(settings_.initial)) {}

bool concurrency_limit::try_acquire() {
    std::lock_guard lock(mutex_);
    if (in_flight_ >= limit_) return false;
    ++in_flight_;
    return true;
}

void concurrency_limit::release(call_outcome o, std::chrono::nanoseconds rtt, clock::time_point now) {
    std::lock_guard lock(mutex_);
    const std::size_t was_in_flight = in_flight_;  // this call included
    if (in_flight_ > 0) --in_flight_;
    if (settings_.min == settings_.max) return;
    switch (o) {
        case call_outcome::success:
            // A zero or negative duration is a clock mix-up, not a latency.
            if (rtt.count() > 0) on_success(static_cast<double>(rtt.count()), was_in_flight);
            break;
        case call_outcome::dropped: on_drop(now - std::max(rtt, std::chrono::nanoseconds{0}), now); break;
        case call_outcome::ignored: break;
    }
}

std::size_t concurrency_limit::limit() const {
    std::lock_guard lock(mutex_);
    return limit_;
}

std::size_t concurrency_limit::in_flight() const {
    std::lock_guard lock(mutex_);
    return in_flight_;
}

void concurrency_limit::on_success(double rtt_ns, std::size_t in_flight) {
    ++samples_;
    if (samples_ <= baseline_warmup)
        long_rtt_ns_ += (rtt_ns - long_rtt_ns_) / static_cast<double>(samples_);
    else
        long_rtt_ns_ += (rtt_ns - long_rtt_ns_) * 2.0 / (static_cast<double>(settings_.long_window) + 1.0);
    // Back from an overload: let the inflated baseline fall faster than the average would.
    if (long_rtt_ns_ > 2 * rtt_ns) long_rtt_ns_ *= 0.95;

    if (2 * static_cast<double>(in_flight) < estimate_) return;  // the limit is not what holds calls back

    const double gradient = std::clamp(settings_.rtt_tolerance * long_rtt_ns_ / rtt_ns, 0.5, 1.0);
    const double target = estimate_ * gradient + settings_.queue_size;
    set_estimate(estimate_ * (1 - settings_.smoothing) + target * settings_.smoothing);
}

void concurrency_limit::on_drop(clock::time_point sent, clock::time_point now) {
    // Sent before the last cut: it met the overload that cut already answered.
    if (last_cut_ && sent < *last_cut_) return;
    last_cut_ = now;
    set_estimate(std::min(estimate_ * settings_.drop_backoff, static_cast<double>(limit_) - 1));
}

void concurrency_limit::set_estimate(double e) {
    estimate_ = std::clamp(e, static_cast<double>(settings_.min), static_cast<double>(settings_.max));
    limit_ = static_cast<std::size_t>(std::floor(estimate_));
}

}  // namespace batchgate::coalescer
