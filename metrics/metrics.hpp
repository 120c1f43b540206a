// All Prometheus metrics of the gateway. Families are built once at start-up; per-route
// children are created when a config is applied (not per request) and handed out by
// reference. Thread-safe: prometheus-cpp counters and gauges are atomic; histograms are ours
// (metrics::histogram: per-thread slots, no lock); our caches take a mutex only on first use
// of a label value.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace batchgate::metrics {

// A histogram observed without a lock. prometheus::Histogram::Observe takes a mutex and makes
// two compare-and-swap loops on every call; this one keeps a slot of counts per thread (the
// first `exclusive_slots` threads that observe each own one: a plain load and store, no
// read-modify-write; later ones share one more slot with atomic adds) and adds what was
// observed since the last time to the exported prometheus::Histogram when the registry is
// collected (registry::serialize, registry::collect). Buckets as prometheus-cpp's: a value goes
// to the first bound >= it, else to +Inf.
class histogram {
public:
    static constexpr std::size_t exclusive_slots = 16;

    histogram(prometheus::Histogram& exported, std::vector<double> bounds);
    histogram(const histogram&) = delete;
    histogram& operator=(const histogram&) = delete;

    void Observe(double value) noexcept;
    // Adds the observations made since the last publish() to the exported histogram.
    void publish();

private:
    // One cache line of words; a slot is [sum's bits, count per bucket...] over whole lines.
    struct alignas(64) line {
        std::atomic<std::uint64_t> word[8];
    };
    std::atomic<std::uint64_t>& word(std::size_t slot, std::size_t i) noexcept {
        const std::size_t at = slot * words_per_slot_ + i;
        return lines_[at / 8].word[at % 8];
    }

    prometheus::Histogram& exported_;
    const std::vector<double> bounds_;
    const std::size_t words_per_slot_;  // 1 + buckets, rounded up to whole lines
    std::vector<line> lines_;           // exclusive_slots + 1 slots
    std::mutex publish_mutex_;
    std::vector<std::uint64_t> published_;  // counts per bucket as of the last publish()
    double published_sum_ = 0;
};

// A counter family child per HTTP status, created lazily once per status.
class status_counters {
public:
    status_counters(prometheus::Family<prometheus::Counter>& family,
                    std::map<std::string, std::string> labels);
    void inc(int status);
    void inc(const std::string& outcome);  // non-HTTP outcomes: "timeout", "connect_error", ...

private:
    prometheus::Family<prometheus::Counter>& family_;
    std::map<std::string, std::string> labels_;
    std::array<std::atomic<prometheus::Counter*>, 600> by_status_{};
    std::mutex mutex_;
};

// Shadow mode (coalesce.shadow): what the batching would have done with a caller it saw.
// passthrough: no key, and the route's on_missing_key: passthrough would send it on alone.
enum class shadow_outcome { batched, timeout, overloaded, left, no_key, bad_item, too_large, passthrough };
inline constexpr std::array<const char*, 8> shadow_outcome_names{"batched", "timeout",  "overloaded", "left",
                                                                 "no_key",  "bad_item", "too_large",  "passthrough"};

struct route_metrics {
    std::string name;
    std::unique_ptr<status_counters> requests;
    histogram* request_duration = nullptr;
    histogram* batch_size = nullptr;
    histogram* batch_wait = nullptr;
    prometheus::Counter* flush_size = nullptr;
    prometheus::Counter* flush_bytes = nullptr;
    prometheus::Counter* flush_timer = nullptr;
    prometheus::Counter* flush_shutdown = nullptr;
    prometheus::Counter* flush_released = nullptr;  // held open while the partition was busy (group commit)
    prometheus::Counter* flush_idle = nullptr;      // flush: adaptive, sent at once: nothing else was in flight
    prometheus::Counter* flush_returned = nullptr;  // flush: adaptive, sent when the partition's call came back
    prometheus::Counter* callers_left = nullptr;    // hung up before their batch was sent: left out of it
    prometheus::Counter* deduplicated = nullptr;
    prometheus::Counter* calls_saved = nullptr;
    prometheus::Counter* rejected = nullptr;
    prometheus::Counter* merged = nullptr;
    prometheus::Counter* isolations = nullptr;
    prometheus::Counter* retries = nullptr;
    // Passthrough streams: ended after the answer's head went out (client connection closed),
    // by the side that failed; bytes relayed; upgrades tunnelled.
    prometheus::Counter* stream_aborts_upstream = nullptr;
    prometheus::Counter* stream_aborts_client = nullptr;
    prometheus::Counter* stream_bytes_in = nullptr;   // request bodies and tunnel bytes, client to upstream
    prometheus::Counter* stream_bytes_out = nullptr;  // answer bodies and tunnel bytes, upstream to client
    prometheus::Counter* upgrades = nullptr;
    prometheus::Counter* interim_relayed = nullptr;  // 1xx interim answers relayed to the client
    prometheus::Gauge* waiting = nullptr;
    prometheus::Gauge* waiting_for_slot = nullptr;  // callers whose batch is due and waits for a slot
    // A shadow route's (registry::shadow_route) only: partitions with an open batch, and every
    // caller the shadow saw, by what its batching would have done with it.
    prometheus::Gauge* partitions = nullptr;
    std::array<prometheus::Counter*, shadow_outcome_names.size()> shadow_callers{};
    void count(shadow_outcome o) const { shadow_callers[static_cast<std::size_t>(o)]->Increment(); }
};

struct upstream_route_metrics {
    std::unique_ptr<status_counters> requests;
    histogram* duration = nullptr;
};

// One concurrency limit for batch calls: an upstream's shared one (route "*") or a route's own
// fixed max_concurrent_batches.
struct limiter_metrics {
    prometheus::Gauge* limit = nullptr;      // the current limit
    prometheus::Gauge* in_flight = nullptr;  // batch calls holding a slot
};

// Fan-out routes (fan_out, batch_envelope): one client call becomes several upstream/sub calls.
struct fanout_metrics {
    prometheus::Counter* calls = nullptr;     // client batch calls served
    histogram* items = nullptr;               // items (or sub-requests) per call
    prometheus::Counter* success = nullptr;   // item answered 2xx
    prometheus::Counter* error = nullptr;     // item answered with another status
    prometheus::Counter* timeout = nullptr;   // item got no answer in time (504)
    prometheus::Counter* skipped = nullptr;   // item never sent (failed dependency, deadline, rejected)
};

class registry {
public:
    registry();
    registry(const registry&) = delete;
    registry& operator=(const registry&) = delete;

    // Stable references: created on first request for a name, then reused (also across reloads).
    route_metrics& route(const std::string& name);
    // A shadow route's batching (coalesce.shadow): the batcher's metrics in families of their
    // own (batchgate_shadow_*); what a shadow batcher never does (retries, isolations) goes to
    // children nobody exports.
    route_metrics& shadow_route(const std::string& name);
    upstream_route_metrics& upstream(const std::string& upstream, const std::string& route);
    fanout_metrics& fanout(const std::string& route);
    // route "*": the upstream's shared limit.
    limiter_metrics& limiter(const std::string& upstream, const std::string& route);

    prometheus::Counter& reloads(bool ok) { return ok ? *reload_ok_ : *reload_failed_; }
    prometheus::Gauge& open_connections() { return *connections_; }
    // reason: "max_connections" (over the cap) or "accept_error" (e.g. out of descriptors)
    prometheus::Gauge& buffered_bytes() { return *buffered_; }
    prometheus::Counter& budget_rejected() { return *budget_rejected_; }
    prometheus::Counter& send_timeouts() { return *send_timeouts_; }
    prometheus::Counter& tls_handshake_failures() { return *tls_handshake_failures_; }
    // Client connections accepted by the traffic listener of one worker thread.
    prometheus::Counter& connections_accepted(std::size_t thread);
    prometheus::Counter& connections_refused(std::string_view reason) {
        return reason == "max_connections" ? *refused_limit_ : *refused_accept_;
    }

    // An upstream pool's connections by state ("in_use", "idle") and its calls queued for one
    // ("queued"): set from the pool just before /metrics or /status.json is served.
    prometheus::Gauge& upstream_connections(const std::string& upstream, const char* state) {
        return upstream_connections_.Add({{"upstream", upstream}, {"state", state}});
    }
    // The upstreams those gauges were ever set for (a reload may have removed some since).
    std::set<std::string> upstreams_with_connection_gauges() const;

    // Prometheus text exposition of everything.
    std::string serialize() const;
    // Everything, as the families /metrics serializes (the status page reads them).
    std::vector<prometheus::MetricFamily> collect() const;

private:
    std::shared_ptr<prometheus::Registry> registry_;
    prometheus::Family<prometheus::Counter>& requests_;
    prometheus::Family<prometheus::Histogram>& request_duration_;
    prometheus::Family<prometheus::Histogram>& batch_size_;
    prometheus::Family<prometheus::Histogram>& batch_wait_;
    prometheus::Family<prometheus::Counter>& flushes_;
    prometheus::Family<prometheus::Counter>& upstream_requests_;
    prometheus::Family<prometheus::Histogram>& upstream_duration_;
    prometheus::Family<prometheus::Counter>& deduplicated_;
    prometheus::Family<prometheus::Gauge>& waiting_;
    prometheus::Family<prometheus::Counter>& calls_saved_;
    prometheus::Family<prometheus::Counter>& rejected_;
    prometheus::Family<prometheus::Counter>& merged_;
    prometheus::Family<prometheus::Counter>& callers_left_;
    prometheus::Family<prometheus::Counter>& stream_aborts_;
    prometheus::Family<prometheus::Counter>& stream_bytes_;
    prometheus::Family<prometheus::Counter>& upgrades_;
    prometheus::Family<prometheus::Counter>& interim_relayed_;
    prometheus::Family<prometheus::Gauge>& waiting_for_slot_;
    prometheus::Family<prometheus::Gauge>& concurrency_limit_;
    prometheus::Family<prometheus::Gauge>& batches_in_flight_;
    prometheus::Family<prometheus::Counter>& isolations_;
    prometheus::Family<prometheus::Counter>& retries_;
    prometheus::Family<prometheus::Counter>& reloads_;
    prometheus::Family<prometheus::Gauge>& connections_family_;
    prometheus::Counter* reload_ok_;
    prometheus::Counter* reload_failed_;
    prometheus::Gauge* connections_;
    prometheus::Family<prometheus::Counter>& refused_family_;
    prometheus::Counter* refused_limit_;
    prometheus::Counter* refused_accept_;
    prometheus::Gauge* buffered_;
    prometheus::Counter* budget_rejected_;
    prometheus::Counter* send_timeouts_;
    prometheus::Counter* tls_handshake_failures_;
    prometheus::Family<prometheus::Counter>& accepted_;
    prometheus::Family<prometheus::Counter>& fanout_calls_;
    prometheus::Family<prometheus::Histogram>& fanout_items_;
    prometheus::Family<prometheus::Counter>& fanout_outcomes_;

    prometheus::Family<prometheus::Gauge>& upstream_connections_;
    prometheus::Family<prometheus::Histogram>& shadow_batch_size_;
    prometheus::Family<prometheus::Histogram>& shadow_batch_wait_;
    prometheus::Family<prometheus::Counter>& shadow_flushes_;
    prometheus::Family<prometheus::Counter>& shadow_calls_saved_;
    prometheus::Family<prometheus::Counter>& shadow_callers_;
    prometheus::Family<prometheus::Counter>& shadow_deduplicated_;
    prometheus::Family<prometheus::Counter>& shadow_merged_;
    prometheus::Family<prometheus::Gauge>& shadow_waiting_;
    prometheus::Family<prometheus::Gauge>& shadow_partitions_;
    // Families of a registry nobody serializes: what a shadow batcher never counts.
    std::shared_ptr<prometheus::Registry> unexported_;
    prometheus::Family<prometheus::Counter>& unexported_counters_;
    prometheus::Family<prometheus::Gauge>& unexported_gauges_;

    // A histogram child of `family`, observed through a metrics::histogram (kept in histograms_).
    histogram* add_histogram(prometheus::Family<prometheus::Histogram>& family,
                             const std::map<std::string, std::string>& labels, const std::vector<double>& bounds);

    mutable std::mutex mutex_;
    mutable std::deque<histogram> histograms_;  // stable addresses; each published before a collect
    std::map<std::string, std::unique_ptr<route_metrics>> routes_;
    std::map<std::string, std::unique_ptr<route_metrics>> shadow_routes_;
    std::map<std::pair<std::string, std::string>, std::unique_ptr<upstream_route_metrics>> upstreams_;
    std::map<std::pair<std::string, std::string>, std::unique_ptr<limiter_metrics>> limiters_;
    std::map<std::string, std::unique_ptr<fanout_metrics>> fanouts_;
};

}  // namespace batchgate::metrics
