// One coalescing route at run time: feeds callers into a window (coalescer/core/window.hpp),
// owns the one timer that flushes it, sends each closed batch through the upstream pool and
// answers every waiter exactly once. Runs on its own strand; submit() may be called from any
// thread. Holds only completion handlers, never sessions.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include "coalescer/core/window.hpp"
#include "config/config.hpp"
#include "gateway/upstream_pool.hpp"
#include "metrics/metrics.hpp"

namespace batchgate::coalescer {

// A caller's answer. body is JSON text.
struct reply {
    int status = 200;
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;  // extra headers (Retry-After, ...)
    std::string batch_id;
    std::size_t batch_size = 0;     // distinct items in the batch call
    int upstream_status = 0;        // 0 when no upstream answer
    std::chrono::steady_clock::duration upstream_elapsed{};
};

using reply_handler = std::function<void(reply)>;

class batcher : public std::enable_shared_from_this<batcher> {
public:
    // route lives inside config; the batcher keeps config alive for as long as any of its
    // batches is in flight, even after a reload retired the snapshot.
    batcher(boost::asio::any_io_executor executor, std::shared_ptr<const config::gateway_config> config,
            const config::route_settings& route,
            std::shared_ptr<gateway::upstream_pool> upstream, metrics::registry& metrics);

    // Queues one caller. done is called exactly once, on the batcher's strand.
    void submit(partition part, std::string key, std::size_t cost, reply_handler done);

    // Flushes everything now and sends later callers at once (SIGTERM, reload).
    void drain();

private:
    struct waiter {
        reply_handler done;
        std::chrono::steady_clock::time_point enqueued;
    };
    using window_type = window<waiter>;
    using batch = window_type::batch;

    void on_submit(partition part, std::string key, std::size_t cost, reply_handler done);
    void arm_timer();
    void on_timer();
    void dispatch(std::vector<batch> closed);
    void send(batch b);
    void on_answer(batch b, const std::string& batch_id, gateway::upstream_result r);
    void answer_all(batch& b, const reply& proto);
    void update_waiting_gauge();

    boost::asio::strand<boost::asio::any_io_executor> strand_;
    std::shared_ptr<const config::gateway_config> config_;
    const config::route_settings& route_;
    std::shared_ptr<gateway::upstream_pool> upstream_;
    metrics::route_metrics& metrics_;
    metrics::upstream_route_metrics& upstream_metrics_;
    window_type window_;
    boost::asio::steady_timer timer_;
    std::optional<std::chrono::steady_clock::time_point> armed_at_;
    std::deque<batch> ready_;       // closed batches waiting for a concurrency slot
    std::size_t in_flight_ = 0;     // batch calls sent, not yet answered
    std::size_t queued_callers_ = 0;  // callers in ready_ and in flight
    bool draining_ = false;
};

}  // namespace batchgate::coalescer
