// Wires the gateway together: one io_context per worker thread (net/shard.hpp), the traffic
// listeners, the runtime snapshot (routes, upstream pools, batchers), reload and drain.
// Owned by main() or by a test; thread-safe to call reload()/shutdown() from any thread.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "config/config.hpp"
#include "metrics/metrics.hpp"

namespace batchgate::gateway {

class server {
public:
    explicit server(std::shared_ptr<const config::gateway_config> config);
    ~server();  // shuts down and joins if still running
    server(const server&) = delete;
    server& operator=(const server&) = delete;

    // Binds both listeners (throws std::system_error naming the address) and starts the
    // worker threads. Returns at once.
    void start();
    // Blocks until the server has stopped (after shutdown() or a SIGTERM/SIGINT when
    // handle_signals was called).
    void wait();
    // SIGTERM/SIGINT → shutdown(), SIGHUP → reload of config_path.
    void handle_signals(std::string config_path);

    // Drain: stop accepting, flush every waiting batch, answer every caller, then stop the
    // threads once no request is in flight or drain_timeout has passed.
    void shutdown();

    // Applies a new config to new requests; batches already waiting finish under the old one.
    void reload(std::shared_ptr<const config::gateway_config> next);

    unsigned short port() const;        // traffic listener (real port when configured as 0)
    unsigned short admin_port() const;
    std::size_t worker_threads() const;  // shards: one io_context and one thread each
    metrics::registry& metrics();

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace batchgate::gateway
