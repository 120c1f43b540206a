// Fan-out engines: a client's batch call served by many single calls, answered once.
// serve_fan_out (mode fan_out) calls the route's upstream once per item; serve_batch_envelope
// (mode batch_envelope) runs each sub-request through dispatch() with depth 1, so it takes
// whatever route it matches (and joins other callers' batches on coalescing routes).
// Both may be called from any thread; done is called exactly once, on an arbitrary thread.
// Each call object is kept alive by its in-flight completions and guards its state with a
// mutex that is never held across a call out (it owns no executor of its own).
#pragma once

#include <memory>

#include "gateway/dispatcher.hpp"

namespace batchgate::fanout {

void serve_fan_out(const std::shared_ptr<gateway::shared_state>& state, const std::shared_ptr<const gateway::runtime>& rt,
                   const config::route_settings& route, gateway::request_t req, gateway::request_context ctx,
                   gateway::dispatch_done done);

void serve_batch_envelope(const std::shared_ptr<gateway::shared_state>& state,
                          const std::shared_ptr<const gateway::runtime>& rt, const config::route_settings& route,
                          gateway::request_t req, gateway::request_context ctx, gateway::dispatch_done done);

}  // namespace batchgate::fanout
