// How many batch calls one upstream may have in flight: an adaptive limit that replaces a fixed
// max_concurrent_batches. Pure logic: no clock and no I/O, every release() brings the call's
// measured round trip and `now`.
//
// The algorithm is Netflix concurrency-limits' Gradient2Limit (Gradient2Limit.java), per sample,
// plus the multiplicative decrease on drops of its AIMDLimit, which Gradient2 lacks:
//   - Signal: the RTT of each successful call (short) against a baseline (long), an exponential
//     average over the last ~long_window successful calls.
//   - gradient = clamp(rtt_tolerance * long / short, 0.5, 1): 1 while latency stays under
//     tolerance x baseline, down to 0.5 when it rises further.
//   - estimate = limit * gradient + queue_size, and limit moves a `smoothing` share of the way
//     there: +queue_size*smoothing (0.8) per call while latency holds, about -5% per call at
//     2x the baseline, -10% from 3x up. The limit stays put while under half of it is in use: an idle
//     upstream proves nothing, and a limit grown while idle would flood it at the next burst.
//   - After an overload the baseline is inflated; while it is over twice the current RTT it
//     decays by 5% a call, so the limit grows back without waiting for the average.
//   - A drop (timeout, 429, 503, connect or I/O error) cuts the limit to drop_backoff x limit
//     (at least one less), once per congestion event: a drop of a call sent before the last cut
//     (now - rtt < that cut) reacted to the same overload, so it does not cut again (TCP's one
//     reduction per window). Drops leave the baseline alone: a timeout's duration is no latency.
// The defaults are Gradient2's, which count calls rather than time, so they hold for batch calls
// of 1 ms as of 1 s; initial/min/max are sized for batch calls (a few large calls, not hundreds of
// single requests), drop_backoff is CUBIC's 0.7 (halving overreacts to one timeout; AIMDLimit's
// 0.9 needs seven 429 floods to halve). min == max pins the limit (limit_settings::fixed).
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
    // Latency may reach this multiple of the baseline before the limit shrinks: the queueing
    // the upstream is allowed, and room for larger batches taking longer. Gradient2: 1.5.
    double rtt_tolerance = 1.5;
    // Share of the way the limit moves toward each new estimate (0..1]. Gradient2: 0.2.
    double smoothing = 0.2;
    // Headroom added to each estimate: how fast the limit probes upward while latency holds
    // (queue_size * smoothing per successful call). Gradient2: 4.
    double queue_size = 4;
    // Successful calls the baseline averages over: how long a new, higher latency takes to
    // become the normal one (~long_window calls). Gradient2: 600.
    std::size_t long_window = 600;
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

private:
    void on_success(double rtt_ns, std::size_t in_flight);
    void on_drop(clock::time_point sent, clock::time_point now);
    void set_estimate(double e);

    const limit_settings settings_;
    mutable std::mutex mutex_;
    std::size_t in_flight_ = 0;
    std::size_t limit_;        // floor of estimate_, in [min, max]
    double estimate_;          // the limit before rounding, so small steps add up
    double long_rtt_ns_ = 0;   // the baseline; 0 until the first sample
    std::size_t samples_ = 0;  // successful calls seen, for the baseline's warm-up
    std::optional<clock::time_point> last_cut_;
};

}  // namespace batchgate::coalescer
