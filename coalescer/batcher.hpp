// One coalescing route at run time: feeds callers into a window (coalescer/core/window.hpp),
// owns the one timer that flushes it, sends each closed batch through the upstream pool
// (retrying 429/503 with backoff, bisecting all-or-nothing failures when the route says so)
// and answers every waiter exactly once. A route has one batcher per worker thread (shard),
// each owning the partitions that hash to it (net/shard.hpp); a batcher runs on its
// shard's executor, which one thread runs, so its state needs no strand or lock. submit() may be
// called from any thread: on the batcher's own it takes the caller in at once, from another it
// posts. Holds only completion handlers, never sessions.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "coalescer/core/batch_slots.hpp"
#include "coalescer/core/window.hpp"
#include "config/config.hpp"
#include "metrics/metrics.hpp"
#include "net/request.hpp"
#include "net/upstream_pool.hpp"

namespace batchgate::coalescer {

// A caller's answer. body is JSON text.
struct reply {
    int status = 200;
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;  // extra headers (Retry-After, ...)
    // The body is the upstream's whole answer, as it came: its own Content-Type and
    // Content-Encoding (in headers) or none, never the gateway's application/json.
    bool verbatim = false;
    std::string batch_id;
    std::size_t batch_size = 0;     // distinct items in the batch call
    int upstream_status = 0;        // 0 when no upstream answer
    std::chrono::steady_clock::duration upstream_elapsed{};
};

using reply_handler = std::function<void(reply&&)>;

// One caller, as the batcher sees it.
struct submission {
    partition part;
    std::string key;
    nlohmann::json item;          // built item (codec build_item)
    std::size_t cost = 0;         // bytes it adds to the batch call
    std::string method;           // the caller's method (success_status)
    std::string traceparent;      // W3C trace context, "" when none
    nlohmann::json caller_values; // what the response templates use of the caller's request (codec caller_values)
    std::chrono::steady_clock::time_point deadline;  // retries never start after it
    std::shared_ptr<gateway::caller_flags> caller;   // hung up, sent (nullptr: never known)
    reply_handler done;           // called exactly once, on the batcher's thread
};

// The deadline of a caller on this route: route.timeout, or max_wait + the upstream's
// request_timeout + 1s.
config::duration caller_timeout(const config::gateway_config& config, const config::route_settings& route);

// What the batchers of one route (one per shard) count together: the callers waiting in all of
// them, for coalesce.max_waiting and the route's gauges.
struct route_load {
    std::atomic<std::size_t> waiting{0};
    // Shadow routes: how long the route's single calls take (a moving average of the last few,
    // nanoseconds, 0 before the first), which the shadow takes for each batch call it would have
    // made. Updated from any thread; a lost update only skips one sample.
    std::atomic<std::int64_t> single_call_ns{0};
    void observe_single_call(std::chrono::nanoseconds took) {
        const std::int64_t old = single_call_ns.load(std::memory_order_relaxed);
        single_call_ns.store(old == 0 ? took.count() : old + (took.count() - old) / 8, std::memory_order_relaxed);
    }
};

// What a batcher does with a closed batch: send it (live), or only count it (shadow: its
// callers are served by single calls, and the batch "call" lasts as long as the route's single
// calls do).
enum class batcher_mode { live, shadow };

class batcher : public std::enable_shared_from_this<batcher> {
public:
    // route lives inside config; the batcher keeps config alive for as long as any of its
    // batches is in flight, even after a reload retired the snapshot.
    batcher(boost::asio::io_context::executor_type executor, std::shared_ptr<const config::gateway_config> config,
            const config::route_settings& route, std::shared_ptr<gateway::upstream_pool> upstream,
            std::shared_ptr<batch_slots> slots, metrics::registry& metrics,
            std::shared_ptr<route_load> load = std::make_shared<route_load>(), batcher_mode mode = batcher_mode::live);

    const std::shared_ptr<route_load>& load() const { return load_; }

    // On the batcher's own thread (its shard owns the caller's partition) the caller goes into
    // the window at once: no post, no allocation. The caller's handler may then run before
    // submit returns (503: the route is over max_waiting; or the batch this caller closed is
    // cut before it is sent: 499 for a writer whose FIN came with its request, 504 for a
    // deadline nearer than a round trip): whoever submits must not answer from inside it (the
    // session posts when dispatching; a batch call's answer is always posted). From
    // another shard's thread the submission moves to the heap and its pointer into a post.
    void submit(submission&& s);

    // Flushes everything now and sends later callers at once (SIGTERM, reload).
    void drain();

    // After the io_context has stopped for good (the drain deadline passed and every caller
    // was answered 503 by its connection): drops the callers still queued without calling
    // them. Their handlers hold sessions, which hold the runtime that holds this batcher.
    void abandon();

private:
    struct waiter {
        reply_handler done;
        std::chrono::steady_clock::time_point enqueued;
        std::chrono::steady_clock::time_point deadline;
        std::string method;
        std::string traceparent;
        nlohmann::json caller_values;
        std::shared_ptr<gateway::caller_flags> caller;
        std::uint64_t serial = 0;  // in unsent_ until sent or answered
        bool left() const { return caller && caller->gone.load(std::memory_order_relaxed); }
    };
    using window_type = window<waiter>;
    using batch = window_type::batch;
    struct pending {
        batch b;
        unsigned attempt = 1;  // 1 = first call
        std::chrono::steady_clock::time_point sent{};  // when this attempt took its slot
        bool counted = false;  // in the flush metrics (count_flush)
    };

    void on_submit(submission& s);
    void arm_timer();
    void on_timer();
    void enqueue(std::vector<batch> closed);
    void record(std::vector<batch> closed);  // metrics, then into ready_
    void pump();
    std::deque<pending>::iterator next_ready();
    bool partition_busy(const std::string& partition_key) const;
    // A due batch that cannot be sent now stays open in the window (group commit).
    bool blocked(const std::string& partition_key) const;
    void release_slot(const pending& p, call_outcome outcome, std::chrono::nanoseconds rtt);
    void wait_for_slot();
    // Queue deadlines: callers still unsent when their deadline passes are answered then.
    void arm_sweep();
    void sweep();
    std::optional<std::chrono::steady_clock::time_point> next_caller_deadline();
    void count_flush(pending& p);
    void send(pending p);
    bool claim_callers(pending& p);
    void send_shadow(pending p);  // batcher_mode::shadow: the call it would have made, timed
    void shadow_call(pending p, std::shared_ptr<boost::asio::steady_timer> timer, std::chrono::milliseconds recheck);
    void on_answer(pending p, const std::string& batch_id, gateway::upstream_result r);
    bool try_retry(pending& p, const gateway::upstream_result& r);
    // A refused all-or-nothing batch: the items the answer names fail, the rest go again in one
    // call; bisection when the answer names nothing usable. Takes over the batch's slot.
    void isolate(pending p, const gateway::upstream_result& r, const reply& proto);
    void bisect(pending p);
    void answer_refused(window_type::item& item, const gateway::upstream_result& r, const reply& proto);
    pending part_of(const pending& p) const;
    void deliver_split(pending& p, const std::string& body, const reply& proto);
    void answer(waiter& w, reply&& r);
    void call_safely(reply_handler& done, reply&& r);
    // Answers (504, or 499 for a caller who hung up) and drops the waiters that gave up; true
    // when none is left.
    bool shed_expired(pending& p);
    bool gave_up(const waiter& w, std::chrono::steady_clock::time_point now) const;
    void answer_gave_up(waiter& w, std::chrono::steady_clock::time_point now);
    void answer_all(pending& p, const reply& proto);
    void update_waiting_gauge();

    boost::asio::io_context::executor_type executor_;  // its shard's: every member is touched there only
    std::shared_ptr<const config::gateway_config> config_;
    const config::route_settings& route_;
    std::shared_ptr<gateway::upstream_pool> upstream_;
    std::shared_ptr<batch_slots> slots_;       // the upstream's shared limit, or the route's own
    bool waiting_for_slot_ = false;            // queued in slots_ for a slot
    std::size_t granted_ = 0;                  // slots slots_ handed over, not used yet
    bool slot_free() const { return granted_ > 0 || slots_->has_free(); }
    bool take_slot();                          // a granted slot, or one from slots_
    void return_unused_slots();
    metrics::route_metrics& metrics_;
    metrics::upstream_route_metrics& upstream_metrics_;
    window_type window_;
    bool ordered_;
    const bool adaptive_;  // flush: adaptive
    boost::asio::steady_timer timer_;
    std::optional<std::chrono::steady_clock::time_point> armed_at_;
    std::deque<pending> ready_;                // closed batches waiting for a slot
    // Queue deadlines: (deadline, serial) of every caller not yet sent; entries of callers sent
    // or answered since are skipped when they come to the top.
    using deadline_entry = std::pair<std::chrono::steady_clock::time_point, std::uint64_t>;
    std::priority_queue<deadline_entry, std::vector<deadline_entry>, std::greater<>> caller_deadlines_;
    std::unordered_set<std::uint64_t> unsent_;
    std::uint64_t next_serial_ = 0;
    boost::asio::steady_timer sweep_timer_;
    std::optional<std::chrono::steady_clock::time_point> sweep_at_;
    std::chrono::steady_clock::time_point last_sweep_{};
    std::size_t queued_callers_ = 0;           // callers handed out of the window, not yet answered
    std::minstd_rand rng_;
    bool draining_ = false;
    std::shared_ptr<route_load> load_;     // shared with the route's other shards
    std::size_t published_waiting_ = 0;    // this batcher's part of load_->waiting and the gauge
    std::size_t published_for_slot_ = 0;   // its part of the waiting_for_slot gauge
    std::size_t published_partitions_ = 0; // shadow: its part of the open partitions gauge
    batcher_mode mode_;
};

}  // namespace batchgate::coalescer
