// What every session needs, shared by all of them: the current runtime snapshot (config,
// route table, upstream pools, batchers), metrics, and the drain state. The snapshot is
// swapped whole on reload; a request keeps the snapshot it started with.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>
#include <string>
#include <unordered_map>

#include <boost/asio/io_context.hpp>

#include "coalescer/batcher.hpp"
#include "config/config.hpp"
#include "metrics/metrics.hpp"
#include "net/memory_budget.hpp"
#include "net/shard.hpp"
#include "net/upstream_pool.hpp"
#include "routes/route_table.hpp"

namespace boost::asio::ssl {
class context;
}

namespace batchgate::gateway {

// Per-route metric children, looked up once per config instead of once per request.
struct route_handles {
    metrics::route_metrics* metrics = nullptr;
    metrics::upstream_route_metrics* upstream_metrics = nullptr;  // null when the route has no upstream
    metrics::route_metrics* shadow_metrics = nullptr;  // coalesce.shadow: what its batching would do
};

struct runtime {
    explicit runtime(std::shared_ptr<const config::gateway_config> c) : config(std::move(c)), table(*config) {}
    // Never the same for two runtimes of one process (an address may be): memos of what a
    // config implies key on it.
    const std::uint64_t id = next_id();
    std::shared_ptr<const config::gateway_config> config;
    routes::route_table table;
    std::unordered_map<std::string, std::shared_ptr<upstream_pool>> upstreams;          // by upstream name
    // By route name: one batcher per shard, each owning the partitions that hash to it.
    std::unordered_map<std::string, std::vector<std::shared_ptr<coalescer::batcher>>> batchers;
    std::unordered_map<const config::route_settings*, route_handles> handles;           // every route
    std::shared_ptr<boost::asio::ssl::context> tls;  // listen_tls: for connections accepted now; null: plain

    const route_handles& handles_for(const config::route_settings& route) const { return handles.at(&route); }
    static std::uint64_t next_id() {
        static std::atomic<std::uint64_t> n{0};
        return ++n;
    }
    // The batcher that owns a partition of a coalesce route; null when the route has none.
    coalescer::batcher* batcher_for(const std::string& route, std::string_view partition_key) const {
        auto it = batchers.find(route);
        if (it == batchers.end() || it->second.empty()) return nullptr;
        return it->second[shard_of(partition_key, it->second.size())].get();
    }
};

// A client connection, as the drain sees it: at the drain deadline, whatever it still owes
// its caller is answered 503 instead of the socket just closing.
class drainable {
public:
    virtual ~drainable() = default;
    virtual void answer_shutting_down() = 0;  // thread-safe: posts to the connection's executor
};

// Admin connections open at once (probes and scrapes need few); more get a 503 and are closed.
inline constexpr std::size_t max_admin_connections = 32;

struct shared_state {
    shared_state(metrics::registry& m, std::vector<shard_executor> shard_executors)
        : metrics(m), shards(std::move(shard_executors)), budget(m.buffered_bytes()) {}

    // Connections register once when they start and leave in their destructor.
    void track(const std::shared_ptr<drainable>& c) {
        std::lock_guard lock(connections_mutex_);
        connections_.emplace(c.get(), c);
    }
    void untrack(const drainable* c) {
        std::lock_guard lock(connections_mutex_);
        connections_.erase(c);
    }
    std::vector<std::shared_ptr<drainable>> connections() {
        std::vector<std::shared_ptr<drainable>> out;
        std::lock_guard lock(connections_mutex_);
        for (auto& [raw, weak] : connections_)
            if (auto c = weak.lock()) out.push_back(std::move(c));
        return out;
    }

    std::shared_ptr<const runtime> current() const { return std::atomic_load(&runtime_); }
    void replace(std::shared_ptr<const runtime> next) {
        std::atomic_store(&runtime_, std::move(next));
        generation_.fetch_add(1, std::memory_order_release);
    }
    // Refreshes `held` from current() only when a reload replaced the snapshot since `seen`
    // (a connection's per-request look costs one load, not atomic_load's lock and two
    // reference counts).
    void refresh(std::shared_ptr<const runtime>& held, std::uint64_t& seen) const {
        const auto now = generation_.load(std::memory_order_acquire);
        if (held && now == seen) return;
        seen = now;
        held = current();
    }

    metrics::registry& metrics;
    std::vector<shard_executor> shards;  // one per worker thread
    // For timers of work that has no connection: the calling thread's shard.
    const shard_executor& executor_here() const { return gateway::executor_here(shards); }
    memory_budget budget;                              // limits.max_buffered, process-wide
    std::atomic<bool> draining{false};
    std::atomic<bool> ready{false};
    std::atomic<std::size_t> active_requests{0};  // read, not yet answered
    std::atomic<std::size_t> client_connections{0};  // traffic connections open now
    std::atomic<std::size_t> admin_connections{0};   // admin connections open now
    // limits.max_connections, lowered to what the descriptor limit leaves (server.cpp).
    std::atomic<std::size_t> max_connections{10000};

private:
    std::shared_ptr<const runtime> runtime_;
    std::atomic<std::uint64_t> generation_{0};  // replace() calls, after the store
    std::mutex connections_mutex_;
    std::unordered_map<const drainable*, std::weak_ptr<drainable>> connections_;
};

}  // namespace batchgate::gateway
