#include "coalescer/core/concurrency_limit.hpp"

#include <algorithm>
#include <cmath>

namespace batchgate::coalescer {

namespace {

limit_settings sanitized(limit_settings s) {
    s.min = std::max<std::size_t>(s.min, 1);
    s.max = std::max(s.max, s.min);
    s.initial = std::clamp(s.initial, s.min, s.max);
    s.queue_low = std::max(s.queue_low, 0.0);
    s.queue_high = std::max(s.queue_high, s.queue_low);
    s.probe_every = std::max<std::size_t>(s.probe_every, 1);
    s.probe_share = std::clamp(s.probe_share, 0.0, 1.0);
    return s;
}

}  // namespace

concurrency_limit::concurrency_limit(limit_settings s)
    : settings_(sanitized(s)), limit_(settings_.initial), estimate_(static_cast<double>(settings_.initial)) {
    schedule_probe();
}

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
    if (settings_.min == settings_.max) {  // fixed: nothing adapts, but the RTT floor is known
        if (o == call_outcome::success && rtt.count() > 0 &&
            (base_rtt_ns_ == 0 || static_cast<double>(rtt.count()) < base_rtt_ns_))
            base_rtt_ns_ = static_cast<double>(rtt.count());
        return;
    }
    switch (o) {
        case call_outcome::success:
            // A zero or negative duration is a clock mix-up, not a latency.
            if (rtt.count() > 0) on_success(static_cast<double>(rtt.count()), was_in_flight, now - rtt, now);
            break;
        case call_outcome::dropped: on_drop(now - std::max(rtt, std::chrono::nanoseconds{0}), now); break;
        case call_outcome::ignored: break;
    }
}

std::size_t concurrency_limit::limit() const {
    std::lock_guard lock(mutex_);
    return limit_;
}

std::chrono::nanoseconds concurrency_limit::base_rtt() const {
    std::lock_guard lock(mutex_);
    return std::chrono::nanoseconds(static_cast<std::int64_t>(base_rtt_ns_));
}

bool concurrency_limit::has_free() const {
    std::lock_guard lock(mutex_);
    return in_flight_ < limit_;
}

std::size_t concurrency_limit::in_flight() const {
    std::lock_guard lock(mutex_);
    return in_flight_;
}

void concurrency_limit::on_success(double rtt_ns, std::size_t in_flight, clock::time_point sent,
                                   clock::time_point now) {
    if (probing_) {
        if (sent < probe_started_) return;  // queued behind the calls the probe waits out
        probe_min_ns_ = probe_samples_ == 0 ? rtt_ns : std::min(probe_min_ns_, rtt_ns);
        if (++probe_samples_ < std::max<std::size_t>(3, limit_)) return;
        base_rtt_ns_ = probe_min_ns_;
        probing_ = false;
        set_estimate(probe_restore_);
        schedule_probe();
        return;
    }
    if (base_rtt_ns_ == 0 || rtt_ns < base_rtt_ns_) base_rtt_ns_ = rtt_ns;
    // The limit is what holds calls back only while at least half of it is in use. Below that,
    // calls see no queue of ours, so there is nothing to probe for and no reason to grow.
    const bool saturated = 2 * static_cast<double>(in_flight) >= estimate_;
    if (saturated && --calls_to_probe_ <= 0) {
        probing_ = true;
        probe_started_ = now;
        probe_restore_ = estimate_;
        probe_samples_ = 0;
        set_estimate(estimate_ * settings_.probe_share);
        return;
    }
    const double queued = static_cast<double>(in_flight) * (1 - base_rtt_ns_ / rtt_ns);
    if (queued > settings_.queue_high) {
        set_estimate(estimate_ - (queued - settings_.queue_high) / static_cast<double>(in_flight));
    } else if (queued < settings_.queue_low && saturated) {
        // One call at a time proves nothing about fifty at once.
        set_estimate(estimate_ + 1 / estimate_);
    }
}

void concurrency_limit::schedule_probe() {
    calls_to_probe_ = static_cast<double>(settings_.probe_every) * std::max(estimate_, 1.0);
}

void concurrency_limit::on_drop(clock::time_point sent, clock::time_point now) {
    // Sent before the last cut: it met the overload that cut already answered.
    if (last_cut_ && sent < *last_cut_) return;
    last_cut_ = now;
    const double base = probing_ ? probe_restore_ : estimate_;
    const double cut = std::min(base * settings_.drop_backoff, std::floor(base) - 1);
    if (probing_)
        probe_restore_ = std::max(cut, static_cast<double>(settings_.min));
    else
        set_estimate(cut);
}

void concurrency_limit::set_estimate(double e) {
    estimate_ = std::clamp(e, static_cast<double>(settings_.min), static_cast<double>(settings_.max));
    limit_ = static_cast<std::size_t>(std::floor(estimate_));
}

}  // namespace batchgate::coalescer
