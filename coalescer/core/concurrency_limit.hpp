// How many batch calls one upstream may have in flight: an adaptive limit that replaces a fixed
// max_concurrent_batches. Pure logic: no clock and no I/O, every release() brings the call's
// measured round trip and `now`.
//
// The question for batch calls is how many the upstream works on at once: a call beyond that
// only waits in the upstream's queue, and a caller who waits with it could have joined a batch.
// So the signal is TCP Vegas' (and Netflix concurrency-limits' VegasLimit), an estimate of the
// calls queued at the upstream:
//   queued = in_flight x (1 - base_rtt / rtt)
// where base_rtt is the round trip without queueing. While queued < queue_low (and at least
// half the limit is in use) the limit grows by about one call per round trip (1/limit per
// successful call); while queued > queue_high it shrinks by the excess within about one round
// trip ((queued - queue_high) / in_flight per call). An upstream that works on P calls at once
// thus settles at P + queue_low..queue_high in flight, whatever its latency.
//   base_rtt is the least RTT seen, re-measured by a probe every probe_every round trips (about
// probe_every x limit calls): the limit drops to probe_share of itself until that many calls
// sent after the drop have come back, their least RTT is the new base, and the limit returns.
// Without it a queue that never drains would pass for the upstream's latency (Gradient2's
// drift: its averaged baseline let the limit grow to max against a queueing upstream), and a
// lasting slowdown (or larger batches, which take longer) would never become the new normal.
//   A drop (timeout, 429, 503, 504, connect or I/O error) cuts the limit to drop_backoff x limit
// (at least one less), once per congestion event: a drop of a call sent before the last cut
// (now - rtt < that cut) reacted to the same overload, so it does not cut again (TCP's one
// reduction per window). Drops leave base_rtt alone: a timeout's duration is no latency.
// min == max pins the limit (limit_settings::fixed).
#pragma once

#include <chrono>
#include <cstddef>
#include <mutex>
#include <optional>

namespace batchgate::coalescer {

struct limit_settings {
    std::size_t initial = 4;     // starting limit (clamped into [min, max])
    std::size_t min = 1;         // never below (0 is read as 1)
    std::size_t max = 256;       // never above (below min is read as min); max == min: fixed
    // Calls queued at the upstream (the estimate above) below which the limit grows and above
    // which it shrinks.
    double queue_low = 0.5;
    double queue_high = 1.5;
    // Round trips between two measurements of the no-queue RTT, and the share of the limit kept
    // while measuring.
    std::size_t probe_every = 30;
    double probe_share = 0.5;
    // On a drop the limit becomes limit * drop_backoff, at least one less (0..1).
    double drop_backoff = 0.7;

    // A limit that never moves (min == max == n): a route that pins its concurrency.
    static limit_settings fixed(std::size_t n) { return {.initial = n, .min = n, .max = n}; }
};

// What a finished call says about the upstream's load.
enum class call_outcome {
    success,  // answered: its RTT is a latency sample
    dropped,  // timeout, 429, 503, connect or I/O error: the upstream is overloaded
    ignored,  // says nothing about load (another 4xx, the caller left): only frees the slot
};

// One upstream's concurrency limit, shared by every route that calls it. Owned with the upstream
// (a shared_ptr each route's batcher holds); thread-safe, so batchers on different strands call
// it directly. It only counts and adapts: waking a batcher when a slot frees is the owner's job.
class concurrency_limit {
public:
    using clock = std::chrono::steady_clock;

    explicit concurrency_limit(limit_settings s);

    concurrency_limit(const concurrency_limit&) = delete;
    concurrency_limit& operator=(const concurrency_limit&) = delete;

    // Takes a slot (in_flight + 1) when in_flight < limit; false, and nothing taken, otherwise.
    bool try_acquire();
    // Gives back a slot taken by try_acquire() and adapts the limit to how the call went.
    // rtt: from sending the call to its outcome; now: when the outcome arrived.
    void release(call_outcome o, std::chrono::nanoseconds rtt, clock::time_point now);

    std::size_t limit() const;
    std::size_t in_flight() const;
    bool has_free() const;  // in_flight() < limit(), read at once
    // The least round trip of a successful call (since the last probe); 0 before the first.
    std::chrono::nanoseconds base_rtt() const;

private:
    void on_success(double rtt_ns, std::size_t in_flight, clock::time_point sent, clock::time_point now);
    void on_drop(clock::time_point sent, clock::time_point now);
    void set_estimate(double e);
    void schedule_probe();

    const limit_settings settings_;
    mutable std::mutex mutex_;
    std::size_t in_flight_ = 0;
    std::size_t limit_;        // floor of estimate_, in [min, max]
    double estimate_;          // the limit before rounding, so small steps add up
    double base_rtt_ns_ = 0;        // least RTT since the last probe; 0 until the first sample
    double calls_to_probe_ = 0;     // successful calls until the next probe
    bool probing_ = false;
    clock::time_point probe_started_{};
    double probe_restore_ = 0;      // the estimate to return to after the probe
    double probe_min_ns_ = 0;       // least RTT of calls sent during the probe
    std::size_t probe_samples_ = 0;
    std::optional<clock::time_point> last_cut_;
};

}  // namespace batchgate::coalescer
