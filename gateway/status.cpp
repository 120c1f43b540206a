#include "gateway/status.hpp"

#include <chrono>
#include <cmath>
#include <unordered_map>

#include <nlohmann/json.hpp>

namespace batchgate::gateway {

namespace {

using nlohmann::json;
using prometheus::ClientMetric;
using prometheus::MetricFamily;

const auto process_started = std::chrono::steady_clock::now();

// The collected families by name, and the samples of one whose labels match.
class families {
public:
    explicit families(const std::vector<MetricFamily>& all) {
        for (const auto& f : all) by_name_.emplace(f.name, &f);
    }

    // Calls f(metric) for each sample of `name` that carries every label of `match`.
    template <class F>
    void each(const std::string& name, std::initializer_list<std::pair<const char*, std::string>> match, F&& f) const {
        auto it = by_name_.find(name);
        if (it == by_name_.end()) return;
        for (const auto& m : it->second->metric) {
            bool all = true;
            for (const auto& [k, v] : match) all = all && label(m, k) == v;
            if (all) f(m);
        }
    }

    double counter(const std::string& name, std::initializer_list<std::pair<const char*, std::string>> match) const {
        double sum = 0;
        each(name, match, [&](const ClientMetric& m) { sum += m.counter.value; });
        return sum;
    }
    double gauge(const std::string& name, std::initializer_list<std::pair<const char*, std::string>> match) const {
        double sum = 0;
        each(name, match, [&](const ClientMetric& m) { sum += m.gauge.value; });
        return sum;
    }
    // A counter's samples summed by the value of one label: {"200": n, "timeout": n, ...}.
    json counter_by(const std::string& name, std::initializer_list<std::pair<const char*, std::string>> match,
                    const char* by) const {
        json out = json::object();
        each(name, match, [&](const ClientMetric& m) {
            auto& slot = out[std::string(label(m, by))];
            slot = (slot.is_null() ? 0.0 : slot.get<double>()) + m.counter.value;
        });
        return out;
    }
    // A histogram, summed over the matching samples: count, sum and the cumulative buckets as
    // [upper bound, count] (the last bound is +Inf, written as null).
    json histogram(const std::string& name, std::initializer_list<std::pair<const char*, std::string>> match) const {
        std::uint64_t count = 0;
        double sum = 0;
        std::vector<std::pair<double, std::uint64_t>> buckets;
        each(name, match, [&](const ClientMetric& m) {
            count += m.histogram.sample_count;
            sum += m.histogram.sample_sum;
            if (buckets.empty())
                for (const auto& b : m.histogram.bucket) buckets.emplace_back(b.upper_bound, 0);
            for (std::size_t i = 0; i < buckets.size() && i < m.histogram.bucket.size(); ++i)
                buckets[i].second += m.histogram.bucket[i].cumulative_count;
        });
        json b = json::array();
        for (const auto& [le, n] : buckets) b.push_back({std::isinf(le) ? json(nullptr) : json(le), n});
        return {{"count", count}, {"sum", sum}, {"buckets", std::move(b)}};
    }

private:
    static std::string_view label(const ClientMetric& m, std::string_view name) {
        for (const auto& l : m.label)
            if (l.name == name) return l.value;
        return {};
    }
    std::unordered_map<std::string, const MetricFamily*> by_name_;
};

const char* mode_name(const config::route_settings& r) {
    switch (r.mode) {
        case config::route_mode::passthrough: return "passthrough";
        case config::route_mode::coalesce: return r.coalesce.shadow ? "shadow" : "coalesce";
        case config::route_mode::fan_out: return "fan_out";
        case config::route_mode::batch_envelope: return "batch_envelope";
    }
    return "unknown";
}

// An upstream status label that counts as an error: 5xx, or no HTTP answer at all.
bool is_error(const std::string& status) {
    return status.empty() || status[0] < '0' || status[0] > '9' || status[0] >= '5';
}

json batching_of(const families& f, const config::route_settings& r) {
    const bool shadow = r.coalesce.shadow;
    const std::string p = shadow ? "batchgate_shadow_" : "batchgate_";
    const std::string& name = r.name;
    json b = {
        {"flush", r.coalesce.flush == config::flush_policy::adaptive ? "adaptive" : "window"},
        {"max_wait_ms", std::chrono::duration<double, std::milli>(r.coalesce.max_wait).count()},
        {"max_batch_items", r.coalesce.max_batch_items},
        {"batch_size", f.histogram(p + "batch_size", {{"route", name}})},
        {"wait_seconds", f.histogram(p + "batch_wait_seconds", {{"route", name}})},
        {"flushes", f.counter_by(p + "batch_flushes_total", {{"route", name}}, "reason")},
        {"calls_saved", f.counter(p + "upstream_calls_saved_total", {{"route", name}})},
        {"deduplicated", f.counter(p + "deduplicated_keys_total", {{"route", name}})},
        {"merged", f.counter(p + "merged_writes_total", {{"route", name}})},
        {"waiting", f.gauge(p + "waiting_callers", {{"route", name}})},
    };
    if (shadow) {
        b["callers"] = f.counter_by("batchgate_shadow_callers_total", {{"route", name}}, "outcome");
        b["open_partitions"] = f.gauge("batchgate_shadow_open_partitions", {{"route", name}});
    } else {
        b["waiting_for_slot"] = f.gauge("batchgate_callers_waiting_for_slot", {{"route", name}});
        b["rejected"] = f.counter("batchgate_callers_rejected_total", {{"route", name}});
        b["callers_left"] = f.counter("batchgate_callers_left_total", {{"route", name}});
        b["retries"] = f.counter("batchgate_upstream_retries_total", {{"route", name}});
        b["isolations"] = f.counter("batchgate_isolations_total", {{"route", name}});
        // The route's own limit (max_concurrent_batches) or its upstream's shared one.
        const std::string scope = r.coalesce.max_concurrent_batches ? name : "*";
        b["concurrency"] = {
            {"scope", r.coalesce.max_concurrent_batches ? "route" : "upstream"},
            {"limit", f.gauge("batchgate_concurrency_limit", {{"upstream", r.upstream}, {"route", scope}})},
            {"in_flight", f.gauge("batchgate_batches_in_flight", {{"upstream", r.upstream}, {"route", scope}})},
        };
    }
    return b;
}

json route_of(const families& f, const config::route_settings& r) {
    const std::string& name = r.name;
    json requests = f.counter_by("batchgate_requests_total", {{"route", name}}, "status");
    double total = 0;
    for (const auto& [status, n] : requests.items()) total += n.get<double>();
    json out = {
        {"name", name},
        {"mode", mode_name(r)},
        {"upstream", r.upstream},
        {"requests", {{"total", total}, {"by_status", std::move(requests)}}},
        {"duration_seconds", f.histogram("batchgate_request_duration_seconds", {{"route", name}})},
    };
    if (r.mode == config::route_mode::coalesce) out["batching"] = batching_of(f, r);
    if (r.mode == config::route_mode::fan_out || r.mode == config::route_mode::batch_envelope)
        out["fan_out"] = {
            {"calls", f.counter("batchgate_fanout_calls_total", {{"route", name}})},
            {"items", f.histogram("batchgate_fanout_items", {{"route", name}})},
            {"outcomes", f.counter_by("batchgate_fanout_item_outcomes_total", {{"route", name}}, "outcome")},
        };
    return out;
}

json upstream_of(const families& f, const config::upstream_settings& u) {
    json by_status = f.counter_by("batchgate_upstream_requests_total", {{"upstream", u.name}}, "status");
    double total = 0, errors = 0;
    for (const auto& [status, n] : by_status.items()) {
        total += n.get<double>();
        if (is_error(status)) errors += n.get<double>();
    }
    return {
        {"name", u.name},
        {"url", u.url},
        {"max_connections", u.max_connections},
        {"connections",
         {{"in_use", f.gauge("batchgate_upstream_connections", {{"upstream", u.name}, {"state", "in_use"}})},
          {"idle", f.gauge("batchgate_upstream_connections", {{"upstream", u.name}, {"state", "idle"}})},
          {"queued", f.gauge("batchgate_upstream_connections", {{"upstream", u.name}, {"state", "queued"}})}}},
        {"requests", {{"total", total}, {"errors", errors}, {"by_status", std::move(by_status)}}},
        {"duration_seconds", f.histogram("batchgate_upstream_duration_seconds", {{"upstream", u.name}})},
    };
}

}  // namespace

void refresh_pool_gauges(metrics::registry& metrics, const runtime& rt) {
    auto set = [&](const std::string& name, const upstream_pool::usage& u) {
        metrics.upstream_connections(name, "in_use").Set(static_cast<double>(u.in_use));
        metrics.upstream_connections(name, "idle").Set(static_cast<double>(u.idle));
        metrics.upstream_connections(name, "queued").Set(static_cast<double>(u.queued));
    };
    // Upstreams a reload removed read 0 from then on (their series stay: a child cannot go).
    for (const auto& name : metrics.upstreams_with_connection_gauges())
        if (!rt.upstreams.contains(name)) set(name, {});
    for (const auto& [name, pool] : rt.upstreams) set(name, pool->current_usage());
}

std::string status_json(const shared_state& state, const runtime& rt) {
    state.budget.publish();
    const auto all = state.metrics.collect();
    const families f(all);
    json routes = json::array();
    for (const auto& r : rt.config->routes) routes.push_back(route_of(f, r));
    json upstreams = json::array();
    for (const auto& u : rt.config->upstreams) upstreams.push_back(upstream_of(f, u));
    const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    json out = {
        {"version", BATCHGATE_VERSION},
        {"time", now},
        {"uptime_seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - process_started).count()},
        {"worker_threads", state.shards.size()},
        {"ready", state.ready.load() && !state.draining.load()},
        {"draining", state.draining.load()},
        {"open_connections", f.gauge("batchgate_open_connections", {})},
        {"buffered_bytes", f.gauge("batchgate_buffered_bytes", {})},
        {"config_reloads", f.counter_by("batchgate_config_reloads_total", {}, "result")},
        {"routes", std::move(routes)},
        {"upstreams", std::move(upstreams)},
    };
    return out.dump();
}

}  // namespace batchgate::gateway
