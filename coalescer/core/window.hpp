// The pure batching logic of one coalescing route: partitions, deduplication and the three
// flush triggers (items, bytes, oldest waiter's age). It has no clock and no I/O: every call
// takes `now`, and the owner (coalescer/batcher.hpp) arms one timer at next_deadline().
// Not thread-safe: the owner calls it from one strand.
#pragma once

#include <chrono>
#include <cstddef>
#include <deque>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "coalescer/core/codec.hpp"

namespace batchgate::coalescer {

enum class flush_reason { size, bytes, timer, shutdown };

inline const char* to_string(flush_reason r) {
    switch (r) {
        case flush_reason::size: return "size";
        case flush_reason::bytes: return "bytes";
        case flush_reason::timer: return "timer";
        case flush_reason::shutdown: return "shutdown";
    }
    return "unknown";
}

struct window_limits {
    std::size_t max_items = 100;                // distinct keys per batch
    std::size_t max_bytes = 0;                  // 0 = unlimited
    std::chrono::nanoseconds max_wait{5'000'000};
};

// Waiter is whatever the owner needs to answer one caller (a completion handler).
template <class Waiter>
class window {
public:
    using clock = std::chrono::steady_clock;
    using time_point = clock::time_point;

    struct item {
        std::string key;
        std::vector<Waiter> waiters;  // >1 when callers asked for the same key in one window
    };

    struct batch {
        std::string partition_key;
        partition_values values;
        std::vector<item> items;  // distinct keys in arrival order
        std::size_t bytes = 0;
        time_point opened{};
        flush_reason reason = flush_reason::timer;
        std::size_t waiter_count() const {
            std::size_t n = 0;
            for (const auto& i : items) n += i.waiters.size();
            return n;
        }
    };

    explicit window(window_limits limits) : limits_(limits) {}

    // Adds one caller and returns the batches this add closed (usually none). A caller whose
    // key is already waiting in its partition joins that item (deduplication).
    std::vector<batch> add(const partition& part, std::string key, std::size_t cost, Waiter waiter,
                           time_point now) {
        std::vector<batch> closed;
        ++waiting_;
        auto it = open_.find(part.key);
        if (it != open_.end()) {
            open_batch& ob = it->second;
            if (auto idx = ob.index.find(key); idx != ob.index.end()) {
                ob.b.items[idx->second].waiters.push_back(std::move(waiter));
                ++deduplicated_;
                return closed;
            }
            // Byte limit: close the current batch first, so the new key starts a fresh one.
            if (limits_.max_bytes && ob.b.bytes + cost > limits_.max_bytes && !ob.b.items.empty()) {
                closed.push_back(close(it, flush_reason::bytes));
                it = open_.end();
            }
        }
        if (it == open_.end()) it = open_new(part, now);
        open_batch& ob = it->second;
        ob.index.emplace(key, ob.b.items.size());
        ob.b.bytes += cost;
        item fresh{std::move(key), {}};
        fresh.waiters.push_back(std::move(waiter));
        ob.b.items.push_back(std::move(fresh));
        if (ob.b.items.size() >= limits_.max_items)
            closed.push_back(close(it, flush_reason::size));
        else if (limits_.max_bytes && ob.b.bytes >= limits_.max_bytes)
            closed.push_back(close(it, flush_reason::bytes));
        return closed;
    }

    // When the oldest open batch must be flushed; nullopt when nothing waits.
    std::optional<time_point> next_deadline() {
        drop_stale();
        if (deadlines_.empty()) return std::nullopt;
        return deadlines_.front().at;
    }

    // Closes every batch whose oldest waiter has waited max_wait by `now`.
    std::vector<batch> expire(time_point now) {
        std::vector<batch> closed;
        drop_stale();
        while (!deadlines_.empty() && deadlines_.front().at <= now) {
            auto it = open_.find(deadlines_.front().partition_key);
            deadlines_.pop_front();
            closed.push_back(close(it, flush_reason::timer));
            drop_stale();
        }
        return closed;
    }

    // Closes everything (shutdown, reload): every waiter is handed back exactly once.
    std::vector<batch> drain() {
        std::vector<batch> closed;
        for (auto& d : deadlines_) {
            auto it = open_.find(d.partition_key);
            if (it != open_.end() && it->second.generation == d.generation)
                closed.push_back(close(it, flush_reason::shutdown));
        }
        deadlines_.clear();
        return closed;
    }

    std::size_t waiting() const { return waiting_; }         // callers in open batches
    std::size_t open_batches() const { return open_.size(); }
    // Callers that joined an existing item since the last call (for a metric).
    std::size_t take_deduplicated() { return std::exchange(deduplicated_, 0); }

private:
    struct open_batch {
        batch b;
        std::unordered_map<std::string, std::size_t> index;  // key -> position in b.items
        std::uint64_t generation = 0;
    };
    struct deadline {
        time_point at;
        std::string partition_key;
        std::uint64_t generation;
    };
    using map = std::unordered_map<std::string, open_batch>;

    typename map::iterator open_new(const partition& part, time_point now) {
        open_batch ob;
        ob.b.partition_key = part.key;
        ob.b.values = part.values;
        ob.b.opened = now;
        ob.generation = ++generation_;
        // max_wait is the same for every partition of a route, so deadlines stay sorted.
        deadlines_.push_back({now + limits_.max_wait, part.key, ob.generation});
        return open_.emplace(part.key, std::move(ob)).first;
    }

    batch close(typename map::iterator it, flush_reason reason) {
        batch b = std::move(it->second.b);
        open_.erase(it);
        b.reason = reason;
        waiting_ -= b.waiter_count();
        return b;
    }

    // Deadlines of batches already closed by size or bytes are removed lazily.
    void drop_stale() {
        while (!deadlines_.empty()) {
            auto it = open_.find(deadlines_.front().partition_key);
            if (it != open_.end() && it->second.generation == deadlines_.front().generation) return;
            deadlines_.pop_front();
        }
    }

    window_limits limits_;
    map open_;
    std::deque<deadline> deadlines_;
    std::uint64_t generation_ = 0;
    std::size_t waiting_ = 0;
    std::size_t deduplicated_ = 0;
};

}  // namespace batchgate::coalescer
