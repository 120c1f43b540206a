#include "gateway/dispatcher.hpp"
#include "gateway/request_head.hpp"

#include <algorithm>
#include <list>
#include <optional>
#include <string>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "coalescer/batcher.hpp"
#include "coalescer/core/codec.hpp"
#include "fanout/engine.hpp"
#include "net/hop_by_hop.hpp"
#include "net/wire.hpp"
#include "text/json_text.hpp"

namespace batchgate::gateway {

namespace {

constexpr std::string_view json_type = "application/json";

// coalescer::batch_overhead (an empty batch call built and measured) of the partition last seen
// on this thread: the callers of one partition, one after another, build it once.
std::size_t partition_overhead(const runtime& rt, const config::coalesce_settings& settings,
                               const coalescer::partition& part) {
    struct memo {
        std::uint64_t runtime = 0;
        const config::coalesce_settings* settings = nullptr;
        std::string key;
        std::size_t overhead = 0;
    };
    thread_local memo last;
    if (last.runtime != rt.id || last.settings != &settings || last.key != part.key) {
        last.overhead = coalescer::batch_overhead(settings, part.values);
        last.runtime = rt.id;
        last.settings = &settings;
        last.key = part.key;
    }
    return last.overhead;
}

// One request on one route, while it is dispatched (on the stack: what outlives the dispatch,
// the answer's handler, moves into the upstream call or the batcher's submission).
struct exchange {
    std::shared_ptr<shared_state> state;
    std::shared_ptr<const runtime> rt;
    const config::route_settings* route;
    request_t req;
    request_context ctx;
    dispatch_done done;

    void fail(gateway_error e, const std::string& message) {
        done(error_response(e, message, route->name, req.version()), {});
    }

    // shadow: the route's shadow batching, told how long the single call took.
    void passthrough(std::shared_ptr<coalescer::route_load> shadow = nullptr) {
        auto pool_it = rt->upstreams.find(route->upstream);
        if (pool_it == rt->upstreams.end()) return fail(gateway_error::internal, "route names an unknown upstream");
        const bool head = req.method() == http::verb::head;
        const unsigned version = req.version();
        // A coalesce route's caller came without the gateway's id (the session sets it only
        // where the request goes upstream as it is): sent alone, it goes with it.
        if (route->mode == config::route_mode::coalesce) req.set("X-Request-Id", ctx.request_id);
        // The caller's request itself goes upstream (no copy of its fields).
        if (!prepare_for_upstream(req, ctx.client_ip, ctx.proto))
            return fail(gateway_error::headers_too_large, std::string(forwarded_for_too_long));
        // From here it may take effect (a coalesce route's caller sent on alone), unless the
        // gateway answered it already (the drain deadline): then it never goes.
        if (ctx.caller && !ctx.caller->claim_for_sending())
            return fail(gateway_error::shutting_down, "the gateway is shutting down");
        upstream_request up = std::move(req);
        up.erase(http::field::content_length);

        // The upstream's request_timeout, cut short by the caller's own deadline.
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(ctx.deadline - std::chrono::steady_clock::now());
        const auto timeout = std::clamp(left, std::chrono::milliseconds(1), pool_it->second->settings().request_timeout);
        auto* um = rt->handles_for(*route).upstream_metrics;
        // route lives in rt's config, which the handler keeps alive: no strings built per request.
        pool_it->second->async_send(
            std::move(up), timeout,
            [um, head, version, rt = rt, route = route, done = std::move(done),
             shadow = std::move(shadow)](upstream_result r) {
                const std::string& route_name = route->name;
                // Failed calls too: a batch call to an upstream that times out or refuses would
                // take about as long.
                if (shadow) shadow->observe_single_call(r.elapsed);
                auto where = [route] { return "upstream '" + route->upstream + "'"; };
                um->duration->Observe(std::chrono::duration<double>(r.elapsed).count());
                dispatch_info info;
                info.upstream_elapsed = r.elapsed;
                if (r.failure != upstream_failure::none) {
                    um->requests->inc(std::string(failure_label(r.failure)));
                    std::string message = r.failure == upstream_failure::over_budget ? r.detail
                                          : r.failure == upstream_failure::timeout  ? where() + " timed out"
                                                                                    : where() + ": " + r.detail;
                    return done(error_response(failure_error(r.failure), message, route_name, version),
                                std::move(info));
                }
                const int status = r.response.result_int();
                um->requests->inc(status);
                info.upstream_status = status;
                response_t res = std::move(r.response);
                strip_hop_by_hop(res);
                res.version(version);
                // Re-framed by its body, but a HEAD or 304 answer keeps the Content-Length the
                // upstream gave (the length a GET would get; RFC 9110 8.6), and a 204 has none:
                // Beast's prepare_payload would say 0 for both.
                if (status == 204)
                    res.erase(http::field::content_length);
                else if (!head && status != 304)
                    res.prepare_payload();
                done(std::move(res), std::move(info));
            });
    }

    void coalesce(std::string_view path, std::string_view query, routes::param_list params) {
        const auto& settings = route->coalesce;
        const metrics::route_metrics* shadow = rt->handles_for(*route).shadow_metrics;
        coalescer::caller_request caller;
        caller.method = req.method_string();
        caller.path = path;
        caller.query = query;
        caller.path_params = std::move(params);
        const request_t& r = req;
        std::list<std::string> joined;  // lives while caller is used, below (empty: no allocation)
        const std::string& request_id = ctx.request_id;
        caller.header = [&r, &joined, &request_id](std::string_view name) -> std::optional<std::string_view> {
            // The gateway's id, as a request that goes upstream carries it (not on this one).
            if (name.size() == 12 && boost::beast::iequals(name, "X-Request-Id")) return std::string_view(request_id);
            // A scan of the head's few fields, case-insensitive: cheaper than the field set's
            // look-up by name (a tree walk comparing names without case).
            std::optional<std::string_view> first;
            bool repeated = false;
            for (const auto& f : r) {
                const auto n = f.name_string();
                if (n.size() != name.size() || !boost::beast::iequals(n, name)) continue;
                if (first) {
                    repeated = true;
                    break;
                }
                first = std::string_view(f.value().data(), f.value().size());
            }
            if (!first || !repeated) return first;
            // Repeated lines are one value: all of them decide the partition, and all of them
            // go on the batch call.
            return std::string_view(joined.emplace_back(*header_value(r, name)));
        };
        caller.body = req.body();

        std::string key;
        if (settings.key.generate == config::key_generation::always) {
            key = coalescer::generate_correlation_id();
        } else {
            coalescer::key_result k = coalescer::extract_key(settings, caller);
            if (k.key) {
                key = std::move(*k.key);
            } else if (settings.key.generate == config::key_generation::when_missing) {
                key = coalescer::generate_correlation_id();
            } else if (settings.on_missing_key == config::missing_key_action::passthrough) {
                return alone(metrics::shadow_outcome::passthrough);
            } else {
                return refuse(gateway_error::bad_request, k.error, metrics::shadow_outcome::no_key);
            }
        }
        coalescer::item_build item = coalescer::build_item(settings, caller, key);
        if (!item.item) return refuse(gateway_error::bad_request, item.error, metrics::shadow_outcome::bad_item);
        coalescer::submission s;
        s.part = coalescer::make_partition(route->name, settings, caller);
        // The shard that owns this partition gathers its callers from every thread.
        auto* batcher = rt->batcher_for(route->name, s.part.key);
        if (!batcher) return fail(gateway_error::internal, "route has no batcher");
        s.cost = settings.request.encoding == config::batch_encoding::json_body ? coalescer::item_cost(*item.item)
                                                                               : coalescer::item_cost(settings, key);
        if (settings.max_batch_bytes != 0) {
            // The byte limit bounds the batch call as sent: its body (json_body) or target
            // (query encodings), envelope included. An item that alone breaks it could only go
            // upstream in a call the route's own limit forbids.
            s.part.overhead = partition_overhead(*rt, settings, s.part);
            if (s.part.overhead + s.cost > settings.max_batch_bytes)
                return refuse(gateway_error::payload_too_large,
                              "a batch call with only this item takes " + std::to_string(s.part.overhead + s.cost) +
                                  " bytes, more than coalesce.max_batch_bytes (" +
                                  std::to_string(settings.max_batch_bytes) + ")",
                              metrics::shadow_outcome::too_large);
        }
        s.caller_values = coalescer::caller_values(settings, caller);
        s.key = std::move(key);
        s.item = std::move(*item.item);
        s.method = std::string(req.method_string());
        s.traceparent = ctx.traceparent;
        s.deadline = ctx.deadline;
        s.caller = ctx.caller;
        if (shadow) {
            // What the batching does with this caller only counts; the caller's answer is its
            // single call's (its request goes upstream after the submission took what it needs).
            s.done = [shadow](coalescer::reply&& r) {
                using metrics::shadow_outcome;
                shadow->count(r.status == 200   ? shadow_outcome::batched
                              : r.status == 499 ? shadow_outcome::left
                              : r.status == 503 ? shadow_outcome::overloaded
                                                : shadow_outcome::timeout);
            };
            batcher->submit(std::move(s));
            return passthrough(batcher->load());
        }
        s.done = [done = std::move(done)](coalescer::reply&& r) {
            // Composed as bytes: the field lines in one string (no Beast fields for the
            // connection to write out again), the body in another. The reply's headers never frame the body (Content-Type, Content-Encoding,
            // Retry-After, WWW-Authenticate: relayed from a parsed answer) and its status is
            // never 1xx: Content-Length is the body's, except on a 204 or 304, which have none.
            composed_answer a;
            a.status = static_cast<unsigned>(r.status);
            const bool has_body = r.status != 204 && r.status != 304;
            // The lines, and room for what the connection adds around them (status line,
            // Connection, Server, X-Request-Id): they become its head in place.
            std::size_t bytes = 320 + r.batch_id.size();
            for (const auto& [name, value] : r.headers) bytes += name.size() + value.size() + 4;
            a.fields.reserve(bytes);
            if (has_body && !r.verbatim) wire::append_field(a.fields, "Content-Type", json_type);
            for (const auto& [name, value] : r.headers) wire::append_field(a.fields, name, value);  // a field may come in several lines
            if (!r.batch_id.empty()) {
                wire::append_field(a.fields, "X-Batchgate-Batch-Id", r.batch_id);
                wire::append_field(a.fields, "X-Batchgate-Batch-Size", r.batch_size);
            }
            if (has_body) {
                wire::append_field(a.fields, "Content-Length", r.body.size());
                a.body = std::move(r.body);
            }
            done(std::move(a), dispatch_info{std::move(r.batch_id), r.batch_size, r.upstream_status, r.upstream_elapsed});
        };
        batcher->submit(std::move(s));
    }

    // A shadow route's shared load (any shard's batcher has it).
    std::shared_ptr<coalescer::route_load> shadow_load() const {
        auto* b = rt->batcher_for(route->name, {});
        return b ? b->load() : nullptr;
    }

    // A coalesce route's caller sent on by its own single call; a shadow route also counts what
    // its batching would have done with it.
    void alone(metrics::shadow_outcome o) {
        const auto* shadow = rt->handles_for(*route).shadow_metrics;
        if (!shadow) return passthrough();
        shadow->count(o);
        passthrough(shadow_load());
    }

    // A caller a coalesce route's batching cannot take: refused, or on a shadow route served
    // by its own single call whatever the batching makes of it, and counted.
    void refuse(gateway_error e, const std::string& message, metrics::shadow_outcome o) {
        if (!rt->handles_for(*route).shadow_metrics) return fail(e, message);
        alone(o);
    }
};

// What a fan-out engine takes from the gateway for one call (fanout/engine.hpp).
fanout::engine_env engine_env_for(const std::shared_ptr<shared_state>& state, const std::shared_ptr<const runtime>& rt,
                                  const config::route_settings& route) {
    fanout::engine_env env{state->metrics, state->executor_here(), state, rt, rt->config->limits, nullptr, nullptr,
                           &state->budget, &state->metrics.budget_rejected()};
    if (route.mode == config::route_mode::fan_out) {
        if (auto it = rt->upstreams.find(route.upstream); it != rt->upstreams.end()) env.pool = it->second;
    } else {
        env.dispatch = [state, rt](request_t req, request_context ctx, dispatch_done done) {
            // A sub-request's Host (the envelope's, or the entry's own) is checked as a client's
            // is: "a b" went upstream as X-Forwarded-Host. Its target the envelope checked.
            // (None: an HTTP/1.0 envelope without one, which is no error.)
            if (auto bad = req.count(http::field::host) ? check_request_head(req.base()) : std::nullopt)
                return done(error_response(bad->error, "sub-request: " + bad->message, "", req.version()), {});
            dispatch(state, rt, std::move(req), std::move(ctx), std::move(done));
        };
    }
    return env;
}

}  // namespace

const config::route_settings* find_route(const runtime& rt, const request_t& req, routes::param_list* params) {
    auto [path, query] = routes::split_target(req.target());
    routes::match_result m = rt.table.match(req.method_string(), path);
    if (params) *params = std::move(m.path_params);
    return m.route;
}

void dispatch(const std::shared_ptr<shared_state>& state, const std::shared_ptr<const runtime>& rt, request_t req,
              request_context ctx, dispatch_done done) {
    routes::param_list params;
    const config::route_settings* route = find_route(*rt, req, &params);
    dispatch_matched(state, rt, route, std::move(params), std::move(req), std::move(ctx), std::move(done));
}

void dispatch_matched(const std::shared_ptr<shared_state>& state, const std::shared_ptr<const runtime>& rt,
                      const config::route_settings* route, routes::param_list params, request_t req,
                      request_context ctx, dispatch_done done) {
    if (!route) {
        auto [path, query] = routes::split_target(req.target());
        return done(error_response(gateway_error::not_found,
                                   "no route matches " + std::string(req.method_string()) + " " + std::string(path), "",
                                   req.version()),
                    {});
    }
    if (route->mode != config::route_mode::passthrough && !req.body().empty()) {
        // These modes parse the body; refuse absurd nesting before anything copies it.
        const std::size_t max_depth = rt->config->limits.max_json_depth;
        if (routes::json_too_deep(req.body(), max_depth)) {
            const std::string message = "request body is " + routes::json_depth_message(max_depth);
            if (route->mode == config::route_mode::coalesce)
                return exchange{state, rt, route, std::move(req), std::move(ctx), std::move(done)}.refuse(
                    gateway_error::bad_request, message, metrics::shadow_outcome::bad_item);
            return done(error_response(gateway_error::bad_request, message, route->name, req.version()), {});
        }
    }
    if (route->mode == config::route_mode::fan_out)
        return fanout::serve_fan_out(engine_env_for(state, rt, *route), *route, std::move(req), std::move(ctx),
                                     std::move(done));
    if (route->mode == config::route_mode::batch_envelope)
        return fanout::serve_batch_envelope(engine_env_for(state, rt, *route), *route, std::move(req), std::move(ctx),
                                            std::move(done));
    exchange ex{state, rt, route, std::move(req), std::move(ctx), std::move(done)};
    if (route->mode == config::route_mode::coalesce) {
        // path and query view into ex.req, which lives as long as ex.
        auto [path, query] = routes::split_target(ex.req.target());
        return ex.coalesce(path, query, std::move(params));
    }
    ex.passthrough();
}

}  // namespace batchgate::gateway
