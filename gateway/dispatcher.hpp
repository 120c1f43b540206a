// Routes one request — from a client connection or a $batch sub-request — to passthrough or
// a batcher, and produces exactly one response. Holds no state of its own; safe to call from
// any thread. The completion runs on an arbitrary thread: callers post to their own executor.
#pragma once

#include <memory>

#include "gateway/shared_state.hpp"
#include "net/request.hpp"

namespace batchgate::gateway {

// The route a request will take, or nullptr (then dispatch() answers 404).
const config::route_settings* find_route(const runtime& rt, const request_t& req, routes::param_list* params = nullptr);

// Serves req on an already matched route (route == nullptr: 404); done is called exactly once.
void dispatch_matched(const std::shared_ptr<shared_state>& state, const std::shared_ptr<const runtime>& rt,
                      const config::route_settings* route, routes::param_list params, request_t req,
                      request_context ctx, dispatch_done done);

// Matches and serves req; done is called exactly once.
void dispatch(const std::shared_ptr<shared_state>& state, const std::shared_ptr<const runtime>& rt, request_t req,
              request_context ctx, dispatch_done done);

}  // namespace batchgate::gateway
