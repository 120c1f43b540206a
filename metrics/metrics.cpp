#include "metrics/metrics.hpp"

#include <algorithm>
#include <bit>
#include <limits>

#include <prometheus/text_serializer.h>

#include "metrics/thread_slot.hpp"

namespace batchgate::metrics {

namespace {

// Which exclusive slots a live thread holds. The mutex orders one owner's last stores before
// the next owner's first loads. Both trivially destructible: usable until the process ends.
std::mutex slots_mutex;
std::array<bool, histogram::exclusive_slots> slots_taken{};

constexpr std::size_t no_slot_yet = std::numeric_limits<std::size_t>::max();
thread_local std::size_t thread_slot_id = no_slot_yet;  // trivial: no guard on the hot path

// Gives the thread's slot back when it ends; from then on the thread (a later thread_local's
// destructor that observes) writes to the shared slot.
struct slot_return {
    ~slot_return() {
        std::lock_guard lock(slots_mutex);
        if (thread_slot_id < histogram::exclusive_slots) slots_taken[thread_slot_id] = false;
        thread_slot_id = histogram::exclusive_slots;
    }
};

}  // namespace

std::size_t this_thread_slot() noexcept {
    if (thread_slot_id == no_slot_yet) [[unlikely]] {
        {
            std::lock_guard lock(slots_mutex);
            const auto free = std::find(slots_taken.begin(), slots_taken.end(), false);
            thread_slot_id = static_cast<std::size_t>(free - slots_taken.begin());
            if (free != slots_taken.end()) *free = true;
        }
        thread_local slot_return give_back;  // destroyed when the thread ends
    }
    return thread_slot_id;
}

namespace {

const prometheus::Histogram::BucketBoundaries& latency_buckets() {
    static const prometheus::Histogram::BucketBoundaries b{
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
    return b;
}

const prometheus::Histogram::BucketBoundaries& wait_buckets() {
    static const prometheus::Histogram::BucketBoundaries b{
        0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5};
    return b;
}

const prometheus::Histogram::BucketBoundaries& size_buckets() {
    static const prometheus::Histogram::BucketBoundaries b{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000};
    return b;
}

// A route's batch_flushes children, one per reason.
void add_flushes(prometheus::Family<prometheus::Counter>& family, route_metrics& m) {
    auto add = [&](const char* reason) { return &family.Add({{"route", m.name}, {"reason", reason}}); };
    m.flush_size = add("size");
    m.flush_bytes = add("bytes");
    m.flush_timer = add("timer");
    m.flush_shutdown = add("shutdown");
    m.flush_released = add("released");
    m.flush_idle = add("idle");
    m.flush_returned = add("returned");
}

}  // namespace

histogram::histogram(prometheus::Histogram& exported, std::vector<double> bounds)
    : exported_(exported),
      bounds_(std::move(bounds)),
      words_per_slot_((1 + bounds_.size() + 1 + 7) / 8 * 8),
      lines_((exclusive_slots + 1) * words_per_slot_ / 8),
      published_(bounds_.size() + 1) {}

void histogram::Observe(double value) noexcept {
    const auto bucket = static_cast<std::size_t>(
        std::find_if(bounds_.begin(), bounds_.end(), [value](double bound) { return bound >= value; }) -
        bounds_.begin());
    const std::size_t slot = this_thread_slot();
    auto& sum = word(slot, 0);
    auto& count = word(slot, 1 + bucket);
    if (slot < exclusive_slots) {  // only this thread writes here: publish() only reads
        sum.store(std::bit_cast<std::uint64_t>(std::bit_cast<double>(sum.load(std::memory_order_relaxed)) + value),
                  std::memory_order_relaxed);
        count.store(count.load(std::memory_order_relaxed) + 1, std::memory_order_release);  // after the sum
        return;
    }
    std::uint64_t old = sum.load(std::memory_order_relaxed);
    while (!sum.compare_exchange_weak(old, std::bit_cast<std::uint64_t>(std::bit_cast<double>(old) + value),
                                      std::memory_order_relaxed)) {
    }
    count.fetch_add(1, std::memory_order_release);
}

void histogram::publish() {
    std::lock_guard lock(publish_mutex_);
    std::vector<double> increments(published_.size());
    double sum = 0;
    bool any = false;
    for (std::size_t b = 0; b < published_.size(); ++b) {
        std::uint64_t total = 0;
        for (std::size_t slot = 0; slot <= exclusive_slots; ++slot)
            total += word(slot, 1 + b).load(std::memory_order_acquire);  // with the sums stored before
        increments[b] = static_cast<double>(total - published_[b]);
        any = any || total != published_[b];
        published_[b] = total;
    }
    for (std::size_t slot = 0; slot <= exclusive_slots; ++slot)
        sum += std::bit_cast<double>(word(slot, 0).load(std::memory_order_relaxed));
    // Counts are read before sums, each with what was stored before it: an observation whose
    // count is read has its value in the sum. One whose value is read without its count (it
    // came in between) is in this sum and in the next count.
    if (!any) return;
    exported_.ObserveMultiple(increments, sum - published_sum_);
    published_sum_ = sum;
}

status_counters::status_counters(prometheus::Family<prometheus::Counter>& family,
                                 std::map<std::string, std::string> labels)
    : family_(family), labels_(std::move(labels)) {}

void status_counters::inc(int status) {
    if (status < 0 || status >= static_cast<int>(by_status_.size())) {
        inc(std::string("invalid"));
        return;
    }
    prometheus::Counter* c = by_status_[status].load(std::memory_order_acquire);
    if (!c) {
        std::lock_guard lock(mutex_);
        auto labels = labels_;
        labels["status"] = std::to_string(status);
        c = &family_.Add(labels);
        by_status_[status].store(c, std::memory_order_release);
    }
    c->Increment();
}

void status_counters::inc(const std::string& outcome) {
    std::lock_guard lock(mutex_);
    auto labels = labels_;
    labels["status"] = outcome;
    family_.Add(labels).Increment();
}

registry::registry()
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(prometheus::BuildCounter()
                    .Name("batchgate_requests_total")
                    .Help("Client requests answered, by route and HTTP status")
                    .Register(*registry_)),
      request_duration_(prometheus::BuildHistogram()
                            .Name("batchgate_request_duration_seconds")
                            .Help("Time from a complete client request to its answer, by route")
                            .Register(*registry_)),
      batch_size_(prometheus::BuildHistogram()
                      .Name("batchgate_batch_size")
                      .Help("Distinct items per upstream batch call, by route")
                      .Register(*registry_)),
      batch_wait_(prometheus::BuildHistogram()
                      .Name("batchgate_batch_wait_seconds")
                      .Help("Time a caller waited in the window before its batch was flushed")
                      .Register(*registry_)),
      flushes_(prometheus::BuildCounter()
                   .Name("batchgate_batch_flushes_total")
                   .Help("Batch calls sent, by route and why their batch closed (size, bytes, timer, idle, returned, released, shutdown); a batch whose callers all gave up makes no call and is not counted")
                   .Register(*registry_)),
      upstream_requests_(prometheus::BuildCounter()
                             .Name("batchgate_upstream_requests_total")
                             .Help("Calls made to upstreams, by upstream, route and status")
                             .Register(*registry_)),
      upstream_duration_(prometheus::BuildHistogram()
                             .Name("batchgate_upstream_duration_seconds")
                             .Help("Upstream call duration, by upstream and route")
                             .Register(*registry_)),
      deduplicated_(prometheus::BuildCounter()
                        .Name("batchgate_deduplicated_keys_total")
                        .Help("Callers that joined an identical key already waiting in a batch")
                        .Register(*registry_)),
      waiting_(prometheus::BuildGauge()
                   .Name("batchgate_waiting_callers")
                   .Help("Callers waiting for a batch answer, by route")
                   .Register(*registry_)),
      calls_saved_(prometheus::BuildCounter()
                       .Name("batchgate_upstream_calls_saved_total")
                       .Help("Upstream calls avoided by coalescing (callers minus batch calls)")
                       .Register(*registry_)),
      rejected_(prometheus::BuildCounter()
                    .Name("batchgate_callers_rejected_total")
                    .Help("Callers refused with 503 because too many were already waiting")
                    .Register(*registry_)),
      merged_(prometheus::BuildCounter()
                  .Name("batchgate_merged_writes_total")
                  .Help("Writes merged into an item already waiting for the same key")
                  .Register(*registry_)),
      callers_left_(prometheus::BuildCounter()
                        .Name("batchgate_callers_left_total")
                        .Help("Callers that closed their connection before their batch was sent: nothing was sent for them")
                        .Register(*registry_)),
      stream_aborts_(prometheus::BuildCounter()
                         .Name("batchgate_stream_aborts_total")
                         .Help("Passthrough streams cut after the answer's head went out (the client connection was closed), by the side that failed")
                         .Register(*registry_)),
      stream_bytes_(prometheus::BuildCounter()
                        .Name("batchgate_stream_bytes_total")
                        .Help("Body and tunnel bytes relayed by passthrough routes, by direction (in: client to upstream)")
                        .Register(*registry_)),
      upgrades_(prometheus::BuildCounter()
                    .Name("batchgate_upgrades_total")
                    .Help("Connections switched to another protocol (WebSocket) and tunnelled")
                    .Register(*registry_)),
      interim_relayed_(prometheus::BuildCounter()
                           .Name("batchgate_interim_answers_relayed_total")
                           .Help("Interim (1xx) answers of an upstream relayed to the client before the final one, by route")
                           .Register(*registry_)),
      waiting_for_slot_(prometheus::BuildGauge()
                            .Name("batchgate_callers_waiting_for_slot")
                            .Help("Callers whose batch is due but waits for a free upstream slot (queued or held open), by route")
                            .Register(*registry_)),
      concurrency_limit_(prometheus::BuildGauge()
                             .Name("batchgate_concurrency_limit")
                             .Help("Batch calls allowed in flight: an upstream's shared limit (route=\"*\", adaptive by default) or a route's own max_concurrent_batches")
                             .Register(*registry_)),
      batches_in_flight_(prometheus::BuildGauge()
                             .Name("batchgate_batches_in_flight")
                             .Help("Batch calls holding a slot of a concurrency limit (sent, or backing off before a retry)")
                             .Register(*registry_)),
      isolations_(prometheus::BuildCounter()
                      .Name("batchgate_isolations_total")
                      .Help("Batch halves re-sent to isolate an item an all-or-nothing upstream rejected")
                      .Register(*registry_)),
      retries_(prometheus::BuildCounter()
                   .Name("batchgate_upstream_retries_total")
                   .Help("Batch calls retried after 429/503 from the upstream")
                   .Register(*registry_)),
      reloads_(prometheus::BuildCounter()
                   .Name("batchgate_config_reloads_total")
                   .Help("Configuration reloads, by result")
                   .Register(*registry_)),
      connections_family_(prometheus::BuildGauge()
                              .Name("batchgate_open_connections")
                              .Help("Client connections currently open")
                              .Register(*registry_)),
      reload_ok_(&reloads_.Add({{"result", "success"}})),
      reload_failed_(&reloads_.Add({{"result", "failure"}})),
      connections_(&connections_family_.Add({})),
      refused_family_(prometheus::BuildCounter()
                          .Name("batchgate_connections_refused_total")
                          .Help("Client connections refused: over limits.max_connections, or accept() failed "
                                "(out of file descriptors)")
                          .Register(*registry_)),
      refused_limit_(&refused_family_.Add({{"reason", "max_connections"}})),
      refused_accept_(&refused_family_.Add({{"reason", "accept_error"}})),
      buffered_(&prometheus::BuildGauge()
                     .Name("batchgate_buffered_bytes")
                     .Help("Bytes of request and response bodies held in memory now (limits.max_buffered)")
                     .Register(*registry_)
                     .Add({})),
      budget_rejected_(&prometheus::BuildCounter()
                            .Name("batchgate_budget_rejected_total")
                            .Help("Requests answered 503 because limits.max_buffered could not hold their body or request window, streams answered 502 because it could not hold their answer window, and fan_out items or $batch entries whose answer it could not hold")
                            .Register(*registry_)
                            .Add({})),
      send_timeouts_(&prometheus::BuildCounter()
                          .Name("batchgate_send_timeouts_total")
                          .Help("Client connections dropped because the client read nothing for limits.send_timeout")
                          .Register(*registry_)
                          .Add({})),
      tls_handshake_failures_(&prometheus::BuildCounter()
                                   .Name("batchgate_tls_handshake_failures_total")
                                   .Help("Client connections on listen_tls closed because their TLS handshake failed or timed out")
                                   .Register(*registry_)
                                   .Add({})),
      accepted_(prometheus::BuildCounter()
                    .Name("batchgate_connections_accepted_total")
                    .Help("Client connections accepted, by the worker thread whose listener took them")
                    .Register(*registry_)),
      fanout_calls_(prometheus::BuildCounter()
                        .Name("batchgate_fanout_calls_total")
                        .Help("Client batch calls fanned out to single calls, by route")
                        .Register(*registry_)),
      fanout_items_(prometheus::BuildHistogram()
                        .Name("batchgate_fanout_items")
                        .Help("Items (or sub-requests) per fanned-out call, by route")
                        .Register(*registry_)),
      fanout_outcomes_(prometheus::BuildCounter()
                           .Name("batchgate_fanout_item_outcomes_total")
                           .Help("Fanned-out items by route and outcome (success, error, timeout, skipped)")
                           .Register(*registry_)),
      upstream_connections_(prometheus::BuildGauge()
                                .Name("batchgate_upstream_connections")
                                .Help("Upstream connections by upstream and state (in_use: lent out or connecting; idle: kept alive), and calls queued for one (state=queued)")
                                .Register(*registry_)),
      shadow_batch_size_(prometheus::BuildHistogram()
                             .Name("batchgate_shadow_batch_size")
                             .Help("Shadow routes: distinct items per batch call the route would have sent")
                             .Register(*registry_)),
      shadow_batch_wait_(prometheus::BuildHistogram()
                             .Name("batchgate_shadow_batch_wait_seconds")
                             .Help("Shadow routes: time a caller would have waited in the window before its batch was flushed")
                             .Register(*registry_)),
      shadow_flushes_(prometheus::BuildCounter()
                          .Name("batchgate_shadow_batch_flushes_total")
                          .Help("Shadow routes: batch calls the route would have sent, by why their batch closed")
                          .Register(*registry_)),
      shadow_calls_saved_(prometheus::BuildCounter()
                              .Name("batchgate_shadow_upstream_calls_saved_total")
                              .Help("Shadow routes: upstream calls batching would have saved (callers minus batch calls)")
                              .Register(*registry_)),
      shadow_callers_(prometheus::BuildCounter()
                          .Name("batchgate_shadow_callers_total")
                          .Help("Shadow routes: callers served by a single call, by what batching would have done with them "
                                "(batched; timeout, overloaded, left: answered 504, 503, 499; no_key, bad_item, too_large: "
                                "refused 400 or 413; passthrough: no key, sent on alone by on_missing_key)")
                          .Register(*registry_)),
      shadow_deduplicated_(prometheus::BuildCounter()
                               .Name("batchgate_shadow_deduplicated_keys_total")
                               .Help("Shadow routes: callers that would have joined an identical key already waiting")
                               .Register(*registry_)),
      shadow_merged_(prometheus::BuildCounter()
                         .Name("batchgate_shadow_merged_writes_total")
                         .Help("Shadow routes: writes that would have been merged into an item already waiting")
                         .Register(*registry_)),
      shadow_waiting_(prometheus::BuildGauge()
                          .Name("batchgate_shadow_waiting_callers")
                          .Help("Shadow routes: callers the batching holds now (their single calls run meanwhile)")
                          .Register(*registry_)),
      shadow_partitions_(prometheus::BuildGauge()
                             .Name("batchgate_shadow_open_partitions")
                             .Help("Shadow routes: partitions with a batch open now")
                             .Register(*registry_)),
      unexported_(std::make_shared<prometheus::Registry>()),
      unexported_counters_(prometheus::BuildCounter().Name("unexported_total").Register(*unexported_)),
      unexported_gauges_(prometheus::BuildGauge().Name("unexported").Register(*unexported_)) {
    prometheus::BuildGauge()
        .Name("batchgate_build_info")
        .Help("Build information")
        .Register(*registry_)
        .Add({{"version", BATCHGATE_VERSION}})
        .Set(1);
}

prometheus::Counter& registry::connections_accepted(std::size_t thread) {
    return accepted_.Add({{"thread", std::to_string(thread)}});
}

route_metrics& registry::route(const std::string& name) {
    std::lock_guard lock(mutex_);
    auto& slot = routes_[name];
    if (!slot) {
        auto m = std::make_unique<route_metrics>();
        const std::map<std::string, std::string> labels{{"route", name}};
        m->name = name;
        m->requests = std::make_unique<status_counters>(requests_, labels);
        m->request_duration = add_histogram(request_duration_, labels, latency_buckets());
        m->batch_size = add_histogram(batch_size_, labels, size_buckets());
        m->batch_wait = add_histogram(batch_wait_, labels, wait_buckets());
        add_flushes(flushes_, *m);
        m->deduplicated = &deduplicated_.Add(labels);
        m->calls_saved = &calls_saved_.Add(labels);
        m->rejected = &rejected_.Add(labels);
        m->merged = &merged_.Add(labels);
        m->callers_left = &callers_left_.Add(labels);
        m->stream_aborts_upstream = &stream_aborts_.Add({{"route", name}, {"side", "upstream"}});
        m->stream_aborts_client = &stream_aborts_.Add({{"route", name}, {"side", "client"}});
        m->stream_bytes_in = &stream_bytes_.Add({{"route", name}, {"direction", "in"}});
        m->stream_bytes_out = &stream_bytes_.Add({{"route", name}, {"direction", "out"}});
        m->upgrades = &upgrades_.Add(labels);
        m->interim_relayed = &interim_relayed_.Add(labels);
        m->isolations = &isolations_.Add(labels);
        m->retries = &retries_.Add(labels);
        m->waiting = &waiting_.Add(labels);
        m->waiting_for_slot = &waiting_for_slot_.Add(labels);
        slot = std::move(m);
    }
    return *slot;
}

route_metrics& registry::shadow_route(const std::string& name) {
    std::lock_guard lock(mutex_);
    auto& slot = shadow_routes_[name];
    if (!slot) {
        auto m = std::make_unique<route_metrics>();
        const std::map<std::string, std::string> labels{{"route", name}};
        m->name = name;
        m->batch_size = add_histogram(shadow_batch_size_, labels, size_buckets());
        m->batch_wait = add_histogram(shadow_batch_wait_, labels, wait_buckets());
        add_flushes(shadow_flushes_, *m);
        m->deduplicated = &shadow_deduplicated_.Add(labels);
        m->calls_saved = &shadow_calls_saved_.Add(labels);
        m->merged = &shadow_merged_.Add(labels);
        m->waiting = &shadow_waiting_.Add(labels);
        m->partitions = &shadow_partitions_.Add(labels);
        for (std::size_t i = 0; i < shadow_outcome_names.size(); ++i)
            m->shadow_callers[i] = &shadow_callers_.Add({{"route", name}, {"outcome", shadow_outcome_names[i]}});
        // Counted by the shadow_callers outcomes instead, or never by a shadow batcher.
        const std::map<std::string, std::string> hidden{{"route", name}};
        m->rejected = &unexported_counters_.Add(hidden);
        m->callers_left = &unexported_counters_.Add(hidden);
        m->isolations = &unexported_counters_.Add(hidden);
        m->retries = &unexported_counters_.Add(hidden);
        m->waiting_for_slot = &unexported_gauges_.Add(hidden);
        slot = std::move(m);
    }
    return *slot;
}

upstream_route_metrics& registry::upstream(const std::string& upstream, const std::string& route) {
    std::lock_guard lock(mutex_);
    auto& slot = upstreams_[{upstream, route}];
    if (!slot) {
        auto m = std::make_unique<upstream_route_metrics>();
        const std::map<std::string, std::string> labels{{"upstream", upstream}, {"route", route}};
        m->requests = std::make_unique<status_counters>(upstream_requests_, labels);
        m->duration = add_histogram(upstream_duration_, labels, latency_buckets());
        slot = std::move(m);
    }
    return *slot;
}

limiter_metrics& registry::limiter(const std::string& upstream, const std::string& route) {
    std::lock_guard lock(mutex_);
    auto& slot = limiters_[{upstream, route}];
    if (!slot) {
        auto m = std::make_unique<limiter_metrics>();
        const std::map<std::string, std::string> labels{{"upstream", upstream}, {"route", route}};
        m->limit = &concurrency_limit_.Add(labels);
        m->in_flight = &batches_in_flight_.Add(labels);
        slot = std::move(m);
    }
    return *slot;
}

fanout_metrics& registry::fanout(const std::string& route) {
    std::lock_guard lock(mutex_);
    auto& slot = fanouts_[route];
    if (!slot) {
        auto m = std::make_unique<fanout_metrics>();
        m->calls = &fanout_calls_.Add({{"route", route}});
        m->items = add_histogram(fanout_items_, {{"route", route}}, size_buckets());
        m->success = &fanout_outcomes_.Add({{"route", route}, {"outcome", "success"}});
        m->error = &fanout_outcomes_.Add({{"route", route}, {"outcome", "error"}});
        m->timeout = &fanout_outcomes_.Add({{"route", route}, {"outcome", "timeout"}});
        m->skipped = &fanout_outcomes_.Add({{"route", route}, {"outcome", "skipped"}});
        slot = std::move(m);
    }
    return *slot;
}

std::set<std::string> registry::upstreams_with_connection_gauges() const {
    std::set<std::string> names;
    for (const auto& family : upstream_connections_.Collect())
        for (const auto& metric : family.metric)
            for (const auto& label : metric.label)
                if (label.name == "upstream") names.insert(label.value);
    return names;
}

histogram* registry::add_histogram(prometheus::Family<prometheus::Histogram>& family,
                                   const std::map<std::string, std::string>& labels,
                                   const std::vector<double>& bounds) {
    return &histograms_.emplace_back(family.Add(labels, bounds), bounds);  // under mutex_
}

std::vector<prometheus::MetricFamily> registry::collect() const {
    {
        std::lock_guard lock(mutex_);
        for (auto& h : histograms_) h.publish();
    }
    return registry_->Collect();
}

std::string registry::serialize() const {
    return prometheus::TextSerializer{}.Serialize(collect());
}

}  // namespace batchgate::metrics
