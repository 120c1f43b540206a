// One client connection: reads requests (HTTP/1.1 keep-alive, one at a time), routes each
// to passthrough or a batcher, and writes exactly one answer per request. Runs on the
// connection's thread; replies from batchers and upstream pools are posted back onto it.
#pragma once

#include <memory>

#include <boost/asio/ip/tcp.hpp>

#include "gateway/listener.hpp"
#include "gateway/shared_state.hpp"
#include "net/wire.hpp"

namespace batchgate::gateway {

// owed_request: the connection was taken from the backlog as the listener stopped; its request
// counts as in flight from now on, so the drain waits for it to be read and answered.
void start_session(socket_t socket, listener_role role, std::shared_ptr<shared_state> state,
                   bool owed_request = false);

}  // namespace batchgate::gateway
