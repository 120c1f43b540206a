// Fan-out engines: a client's batch call served by many single calls, answered once.
// serve_fan_out (mode fan_out) calls the route's upstream once per item; serve_batch_envelope
// (mode batch_envelope) runs each sub-request through env.dispatch (the gateway's dispatch()
// with depth 1), so it takes whatever route it matches (and joins other callers' batches on
// coalescing routes).
// Both may be called from any thread; done is called exactly once, on an arbitrary thread.
// Each call object is kept alive by its in-flight completions and guards its state with a
// mutex that is never held across a call out (it owns no executor of its own).
#pragma once

#include <functional>
#include <memory>

#include "config/config.hpp"
#include "metrics/metrics.hpp"
#include "net/request.hpp"
#include "net/shard.hpp"
#include "net/upstream_pool.hpp"

namespace batchgate::fanout {

// Serves one request as the gateway serves any; done is called exactly once.
using dispatch_fn = std::function<void(gateway::request_t, gateway::request_context, gateway::dispatch_done)>;

// What an engine takes from the gateway for one call. The gateway's dispatcher fills it in
// (gateway/dispatcher.cpp), so fanout/ needs nothing above net/.
struct engine_env {
    metrics::registry& metrics;
    gateway::shard_executor executor;  // the calling thread's shard: the call's timer runs there
    // The gateway's shared state and the runtime snapshot the call started with, held until
    // the call is done: the route, limits and pool below live in the snapshot.
    std::shared_ptr<const void> state;
    std::shared_ptr<const void> snapshot;
    const config::limits_settings& limits;
    std::shared_ptr<gateway::upstream_pool> pool;  // mode fan_out: the route's upstream; null if unknown
    dispatch_fn dispatch;                          // mode batch_envelope: sub-requests, same snapshot
    gateway::memory_budget* budget = nullptr;      // limits.max_buffered: the items' answers, held
    prometheus::Counter* budget_rejected = nullptr;  // items refused for it
};

void serve_fan_out(const engine_env& env, const config::route_settings& route, gateway::request_t req,
                   gateway::request_context ctx, gateway::dispatch_done done);

void serve_batch_envelope(const engine_env& env, const config::route_settings& route, gateway::request_t req,
                          gateway::request_context ctx, gateway::dispatch_done done);

}  // namespace batchgate::fanout
