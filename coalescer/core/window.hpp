// The pure batching logic of one coalescing route: partitions, deduplication and the three
// flush triggers (items, bytes, oldest waiter's age). It has no clock and no I/O: every call
// takes `now`, and the owner (coalescer/batcher.hpp) arms one timer at next_deadline().
//
// Group commit: when a batch's time is up but it cannot be sent (its partition has a call in
// flight, or the route has no free slot), the owner says so through expire()'s `blocked`
// predicate and the batch stays open: everything that arrives for the partition meanwhile joins
// it (up to the item and byte limits), and release() closes it the moment the partition can
// send. One next call per partition, never several small back-to-back ones.
// Not thread-safe: the owner calls it from one strand.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <deque>
#include <optional>
#include <queue>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "coalescer/core/codec.hpp"

namespace batchgate::coalescer {

enum class flush_reason { size, bytes, timer, shutdown, released, idle, returned };

inline const char* to_string(flush_reason r) {
    switch (r) {
        case flush_reason::size: return "size";
        case flush_reason::bytes: return "bytes";
        case flush_reason::timer: return "timer";
        case flush_reason::shutdown: return "shutdown";
        case flush_reason::released: return "released";
        case flush_reason::idle: return "idle";
        case flush_reason::returned: return "returned";
    }
    return "unknown";
}

// What a caller whose key already waits in its partition's open batch does.
enum class same_key { share, sequence, last_write_wins, merge_patch, in_batch };

struct window_limits {
    std::size_t max_items = 100;                // items per batch (with in_batch, one per caller)
    std::size_t max_bytes = 0;                  // 0 = unlimited; partition.overhead + item costs
    std::chrono::nanoseconds max_wait{5'000'000};
    same_key policy = same_key::share;
    // flush: adaptive. A batch opened while none of its partition's calls is in flight is due
    // after min_wait, not max_wait: at low load a caller waits for nobody. If no slot is free
    // then, the owner's blocked() holds it open until one is (group commit), however long
    // max_wait. While the partition's calls are in flight, callers collect in one batch that is
    // due when one of those calls ends (or at max_wait, or when full): under load batches fill
    // by themselves.
    bool adaptive = false;
    std::chrono::nanoseconds min_wait{0};
};

// Waiter is whatever the owner needs to answer one caller (a completion handler).
template <class Waiter>
class window {
public:
    using clock = std::chrono::steady_clock;
    using time_point = clock::time_point;

    struct item {
        std::string key;
        nlohmann::json payload;       // what goes into the batch call for this key (null: the key alone)
        std::vector<Waiter> waiters;  // >1 when callers shared or merged into this key
        std::size_t cost = 0;         // bytes the payload adds to the batch call
    };

    struct batch {
        std::string partition_key;
        partition_values values;
        // Arrival order. Keys are distinct except under in_batch, where each caller of a key
        // is its own item (the n-th item of a key is that key's n-th operation).
        std::vector<item> items;
        std::size_t bytes = 0;  // the batch call's size: partition overhead + item costs
        time_point opened{};
        time_point due{};  // when it became due to be sent (set at close)
        flush_reason reason = flush_reason::timer;
        std::size_t waiter_count() const {
            std::size_t n = 0;
            for (const auto& i : items) n += i.waiters.size();
            return n;
        }
    };

    explicit window(window_limits limits) : limits_(limits) {}

    // Adds one caller and returns the batches this add closed (usually none). What happens to
    // a caller whose key already waits in its partition depends on the same_key policy:
    // share (read dedup), merge (one item, every merged caller answered), sequence (the
    // later write waits for a later batch, keeping arrival order) or in_batch (another item
    // for the same key in the same batch, after the earlier one).
    // flush: adaptive. A batch this caller opens while none of the partition's calls is in
    // flight is idle: due after min_wait. can_send: the owner could send it now (a free slot,
    // nothing of the partition queued); with min_wait 0 it is then closed (reason idle) before
    // add returns. Otherwise it is due at once and the owner's expire(blocked) holds it open
    // until it can go: a slot that frees sends it, rather than max_wait.
    // Taken by reference to the caller's objects, moved only into the batch: a caller's waiter
    // and key are moved once on the way, not once per call level.
    std::vector<batch> add(const partition& part, std::string&& key, std::size_t cost, Waiter&& waiter,
                           time_point now, nlohmann::json&& payload = nullptr, bool can_send = false) {
        std::vector<batch> closed;
        opening_idle_ = limits_.adaptive && !calls_.contains(part.key);
        add_to(part.key, part.values, part.overhead, std::move(key), cost, std::move(waiter), now, std::move(payload),
               closed);
        opening_idle_ = false;
        if (limits_.adaptive && limits_.min_wait.count() == 0 && can_send) {
            auto it = open_.find(part.key);
            if (it != open_.end() && it->second.idle) close(it, flush_reason::idle, now, closed);
        }
        return closed;
    }

    // The owner sent a batch call of this partition (or a retry of one).
    void call_started(const std::string& partition_key) { ++calls_[partition_key]; }

    // A call of this partition ended. flush: adaptive: the partition's open batch, collecting
    // while that call was in flight, is due now rather than at max_wait (reason returned).
    void call_ended(const std::string& partition_key, time_point now) {
        auto c = calls_.find(partition_key);
        if (c != calls_.end() && --c->second == 0) calls_.erase(c);
        if (!limits_.adaptive) return;
        auto it = open_.find(partition_key);
        if (it == open_.end() || it->second.held || it->second.expedited) return;
        it->second.expedited = true;
        // The batch's later deadline stays queued and is skipped as stale once it has closed.
        deadlines_.push({now, partition_key, it->second.generation});
    }

    // Whether a call of this partition is in flight (started and not ended).
    bool in_flight(const std::string& partition_key) const { return calls_.contains(partition_key); }

    // Takes out every waiter gone(w) says has given up (deadline passed, hung up) and hands it
    // to sink(Waiter&&), from open and held batches and from writes sequenced behind them. An
    // item with no waiter left is dropped (nothing is sent for it), and so is a batch with no
    // item left; writes sequenced behind a dropped batch open the partition's next one (returned
    // when that closes it at once, which only max_batch_items: 1 can do).
    template <class Gone, class Sink>
    std::vector<batch> remove_waiters(time_point now, Gone&& gone, Sink&& sink) {
        struct orphaned {  // writes sequenced behind a batch that lost all its items
            std::string partition_key;
            partition_values values;
            std::size_t overhead;
            std::vector<deferred> writes;
        };
        std::vector<orphaned> orphans;
        for (auto it = open_.begin(); it != open_.end();) {
            open_batch& ob = it->second;
            std::erase_if(ob.overflow, [&](deferred& d) {
                if (!gone(d.waiter)) return false;
                --waiting_;
                sink(std::move(d.waiter));
                return true;
            });
            const bool changed = remove_from(ob.b, gone, [&](Waiter&& w) {
                --waiting_;
                sink(std::move(w));
            });
            if (changed) {
                ob.index.clear();
                for (std::size_t i = 0; i < ob.b.items.size(); ++i) ob.index.emplace(ob.b.items[i].key, i);
            }
            if (!ob.b.items.empty()) {
                ++it;
                continue;
            }
            if (!ob.overflow.empty()) {
                waiting_ -= ob.overflow.size();  // counted again as they are re-added
                orphans.push_back({it->first, ob.b.values, ob.overhead, std::move(ob.overflow)});
            }
            it = open_.erase(it);  // its deadline and hold go stale with it
        }
        std::vector<batch> closed;  // a re-added write may fill a batch at once
        for (auto& o : orphans)
            for (auto& d : o.writes)
                add_to(o.partition_key, o.values, o.overhead, std::move(d.key), d.cost, std::move(d.waiter), now,
                       std::move(d.payload), closed);
        return closed;
    }

    // Takes the waiters gone(w) says gave up out of b's items, handing each to sink(Waiter&&),
    // and drops the items left with no waiter (and their bytes). True when any was taken. For
    // closed batches too (the owner's queue).
    template <class Gone, class Sink>
    static bool remove_from(batch& b, Gone&& gone, Sink&& sink) {
        bool changed = false;
        for (auto& item : b.items) {
            std::erase_if(item.waiters, [&](Waiter& w) {
                if (!gone(w)) return false;
                changed = true;
                sink(std::move(w));
                return true;
            });
        }
        if (changed) {
            std::erase_if(b.items, [&](const item& i) {
                if (!i.waiters.empty()) return false;
                b.bytes -= i.cost;
                return true;
            });
        }
        return changed;
    }

    // Callers in due batches held open for a blocked partition.
    std::size_t held_waiters() const {
        std::size_t n = 0;
        for (const auto& d : held_) {
            auto it = open_.find(d.partition_key);
            if (it != open_.end() && it->second.generation == d.generation) n += it->second.b.waiter_count();
        }
        return n;
    }

    // When the oldest open batch must be flushed; nullopt when nothing waits.
    std::optional<time_point> next_deadline() {
        drop_stale();
        if (deadlines_.empty()) return std::nullopt;
        return deadlines_.top().at;
    }

    // Closes every batch whose oldest waiter has waited max_wait by `now`, except those whose
    // partition is blocked(partition_key): they are held open (group commit) until release().
    template <class Blocked>
    std::vector<batch> expire(time_point now, Blocked&& blocked) {
        std::vector<batch> closed;
        drop_stale();
        while (!deadlines_.empty() && deadlines_.top().at <= now) {
            deadline d = deadlines_.top();
            deadlines_.pop();
            auto it = open_.find(d.partition_key);
            if (blocked(d.partition_key)) {
                if (!it->second.held) {
                    it->second.held = true;
                    held_.push_back(std::move(d));
                }
            } else {
                const auto reason = it->second.expedited ? flush_reason::returned
                                    : it->second.idle    ? flush_reason::idle
                                                         : flush_reason::timer;
                close(it, reason, now, closed, d.at);
            }
            drop_stale();
        }
        return closed;
    }
    std::vector<batch> expire(time_point now) {
        return expire(now, [](const std::string&) { return false; });
    }

    // When the oldest held batch whose partition is not blocked became due; nullopt when none.
    template <class Blocked>
    std::optional<time_point> first_releasable(Blocked&& blocked) {
        auto h = releasable(blocked);
        if (h == held_.end()) return std::nullopt;
        return h->at;
    }

    // Closes the oldest held batch whose partition is no longer blocked; empty when there is
    // none. The owner calls it again after sending what it returned, since sending may block
    // other partitions (the route's last free slot).
    template <class Blocked>
    std::vector<batch> release(time_point now, Blocked&& blocked) {
        std::vector<batch> closed;
        auto h = releasable(blocked);
        if (h == held_.end()) return closed;
        const deadline d = std::move(*h);
        held_.erase(h);
        close(open_.find(d.partition_key), flush_reason::released, now, closed, d.at);
        return closed;
    }

    // Batches held open for a blocked partition (some may have closed by size since).
    std::size_t held() const { return held_.size(); }

    // Closes everything (shutdown, reload): every waiter is handed back exactly once.
    // Sequenced writes come out as successive batches, in arrival order.
    std::vector<batch> drain(time_point now = {}) {
        std::vector<batch> closed;
        // Held batches first: they came due before any batch still waiting for its deadline.
        auto close_current = [&](const deadline& d) {
            auto it = open_.find(d.partition_key);
            if (it != open_.end() && it->second.generation == d.generation) close(it, flush_reason::shutdown, now, closed);
        };
        for (; !held_.empty(); held_.pop_front()) close_current(held_.front());
        for (; !deadlines_.empty(); deadlines_.pop()) close_current(deadlines_.top());
        return closed;
    }

    std::size_t waiting() const { return waiting_; }         // callers in open batches
    std::size_t open_batches() const { return open_.size(); }
    // Callers that joined an existing item since the last call (for a metric).
    std::size_t take_deduplicated() { return std::exchange(deduplicated_, 0); }
    // Writes merged into an existing item since the last call (for a metric).
    std::size_t take_merged() { return std::exchange(merged_, 0); }

private:
    struct deferred {  // a write sequenced behind an earlier write of the same key
        std::string key;
        nlohmann::json payload;
        std::size_t cost;
        Waiter waiter;
    };
    struct open_batch {
        batch b;
        std::unordered_map<std::string, std::size_t> index;  // key -> position in b.items
        std::vector<deferred> overflow;
        std::size_t overhead = 0;  // bytes of the batch call without items
        std::uint64_t generation = 0;
        bool idle = false;  // opened while its partition could send at once (flush: adaptive)
        bool held = false;  // due, kept open for a blocked partition (in held_)
        bool expedited = false;  // due early: its partition's call came back (flush: adaptive)
    };
    struct deadline {
        time_point at;
        std::string partition_key;
        std::uint64_t generation;
    };
    using map = std::unordered_map<std::string, open_batch>;

    void add_to(const std::string& pkey, const partition_values& values, std::size_t overhead, std::string&& key,
                std::size_t cost, Waiter&& waiter, time_point now, nlohmann::json&& payload,
                std::vector<batch>& closed) {
        ++waiting_;
        auto it = open_.find(pkey);
        if (it != open_.end()) {
            open_batch& ob = it->second;
            auto idx = ob.index.find(key);
            if (idx != ob.index.end() && limits_.policy != same_key::in_batch) {
                item& existing = ob.b.items[idx->second];
                auto defer = [&] { ob.overflow.push_back({std::move(key), std::move(payload), cost, std::move(waiter)}); };
                // A merge that would break the byte limit waits for the next batch, and so does
                // every later write of that key (the latest must stay the latest).
                const bool key_deferred = std::any_of(ob.overflow.begin(), ob.overflow.end(),
                                                      [&](const deferred& d) { return d.key == key; });
                switch (limits_.policy) {
                    case same_key::share:
                        if (existing.payload != payload) {
                            // Same key, different item (another ?fields=, say): not the same
                            // answer, so it waits for the partition's next batch.
                            ob.overflow.push_back({std::move(key), std::move(payload), cost, std::move(waiter)});
                            return;
                        }
                        ++deduplicated_;
                        break;
                    case same_key::last_write_wins:
                        if (key_deferred || !fits_after_merge(ob.b, existing, cost)) return defer();
                        ob.b.bytes = ob.b.bytes - existing.cost + cost;
                        existing.payload = std::move(payload);
                        existing.cost = cost;
                        ++merged_;
                        break;
                    case same_key::merge_patch: {
                        if (key_deferred) return defer();
                        nlohmann::json merged = existing.payload;
                        if (merged.is_object() && payload.is_object())
                            merged.merge_patch(payload);
                        else
                            merged = payload;
                        const std::size_t merged_cost = item_cost(merged);
                        if (!fits_after_merge(ob.b, existing, merged_cost)) return defer();
                        ob.b.bytes = ob.b.bytes - existing.cost + merged_cost;
                        existing.payload = std::move(merged);
                        existing.cost = merged_cost;
                        ++merged_;
                        break;
                    }
                    case same_key::sequence:
                        ob.overflow.push_back({std::move(key), std::move(payload), cost, std::move(waiter)});
                        return;
                    case same_key::in_batch:
                        break;  // not reached
                }
                existing.waiters.push_back(std::move(waiter));
                return;
            }
            // in_batch: a key already in the batch gets another item after its earlier ones.
            if (!ob.overflow.empty() && limits_.policy == same_key::sequence) {
                // Keep arrival order within the partition: once writes are sequenced behind
                // this batch, later ones queue behind them too.
                ob.overflow.push_back({std::move(key), std::move(payload), cost, std::move(waiter)});
                return;
            }
            // Byte limit: close the current batch first, so the new item starts a fresh one.
            if (limits_.max_bytes && ob.b.bytes + cost > limits_.max_bytes && !ob.b.items.empty()) {
                close(it, flush_reason::bytes, now, closed);
                --waiting_;  // counted again below
                return add_to(pkey, values, overhead, std::move(key), cost, std::move(waiter), now, std::move(payload),
                              closed);
            }
        }
        if (it == open_.end()) it = open_new(pkey, values, overhead, now);
        open_batch& ob = it->second;
        ob.index.emplace(key, ob.b.items.size());  // the first item of a key (in_batch: one of several)
        ob.b.bytes += cost;
        item& fresh = ob.b.items.emplace_back(item{std::move(key), std::move(payload), {}, cost});
        fresh.waiters.push_back(std::move(waiter));
        if (ob.b.items.size() >= limits_.max_items)
            close(it, flush_reason::size, now, closed);
        else if (limits_.max_bytes && ob.b.bytes >= limits_.max_bytes)
            close(it, flush_reason::bytes, now, closed);
    }

    // Whether replacing `existing`'s cost by new_cost keeps the batch within max_bytes.
    bool fits_after_merge(const batch& b, const item& existing, std::size_t new_cost) const {
        return !limits_.max_bytes || b.bytes - existing.cost + new_cost <= limits_.max_bytes;
    }

    typename map::iterator open_new(const std::string& key, const partition_values& values, std::size_t overhead,
                                    time_point now) {
        open_batch ob;
        ob.b.partition_key = key;
        ob.b.values = values;
        ob.b.bytes = overhead;
        ob.overhead = overhead;
        ob.b.opened = now;
        ob.generation = ++generation_;
        // Deadlines differ (min_wait for idle batches, expedite), so they are kept in a heap.
        ob.idle = opening_idle_;
        deadlines_.push({now + (opening_idle_ ? limits_.min_wait : limits_.max_wait), key, ob.generation});
        return open_.emplace(key, std::move(ob)).first;
    }

    // Moves the batch out; writes sequenced behind it open the partition's next batch.
    // due: when the batch became due to be sent (its deadline for timer and held batches, now for
    // the rest); the owner sends the longest-due first.
    void close(typename map::iterator it, flush_reason reason, time_point now, std::vector<batch>& closed,
               std::optional<time_point> due = std::nullopt) {
        batch b = std::move(it->second.b);
        b.due = due.value_or(now);
        std::vector<deferred> overflow = std::move(it->second.overflow);
        const std::size_t overhead = it->second.overhead;
        open_.erase(it);
        b.reason = reason;
        waiting_ -= b.waiter_count();
        waiting_ -= overflow.size();  // counted again as they are re-added
        const std::string pkey = b.partition_key;
        const partition_values values = overflow.empty() ? partition_values{} : b.values;
        closed.push_back(std::move(b));
        for (auto& d : overflow)
            add_to(pkey, values, overhead, std::move(d.key), d.cost, std::move(d.waiter), now, std::move(d.payload),
                   closed);
    }

    // The oldest held batch whose partition is not blocked (held_.end() when none), dropping
    // the holds of batches closed meanwhile by size or bytes.
    template <class Blocked>
    typename std::deque<deadline>::iterator releasable(Blocked& blocked) {
        for (auto h = held_.begin(); h != held_.end();) {
            auto it = open_.find(h->partition_key);
            if (it == open_.end() || it->second.generation != h->generation) {
                h = held_.erase(h);
                continue;
            }
            if (!blocked(h->partition_key)) return h;
            ++h;
        }
        return held_.end();
    }

    // Deadlines of batches already closed by size or bytes are removed lazily.
    void drop_stale() {
        while (!deadlines_.empty()) {
            auto it = open_.find(deadlines_.top().partition_key);
            if (it != open_.end() && it->second.generation == deadlines_.top().generation && !it->second.held) return;
            deadlines_.pop();
        }
    }

    window_limits limits_;
    map open_;
    struct later {
        bool operator()(const deadline& a, const deadline& b) const { return a.at > b.at; }
    };
    // Earliest first. Entries of batches closed meanwhile (size, bytes, release) or already held
    // are skipped when they come up.
    std::priority_queue<deadline, std::vector<deadline>, later> deadlines_;
    std::deque<deadline> held_;  // due batches of blocked partitions, oldest first
    bool opening_idle_ = false;  // add(..., idle): the batch this add opens is due after min_wait
    std::unordered_map<std::string, std::size_t> calls_;  // calls in flight per partition
    std::uint64_t generation_ = 0;
    std::size_t waiting_ = 0;
    std::size_t deduplicated_ = 0;
    std::size_t merged_ = 0;
};

}  // namespace batchgate::coalescer
