// Bytes of message bodies held in memory at once, process-wide (limits.max_buffered): request
// bodies being read or waiting for their answer, upstream answers being read, answers being
// written to clients. New body-bearing work that would go over it gets a 503 instead of a
// bigger process. Thread-safe; shared by every session and upstream pool.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <string>
#include <string_view>

#include <prometheus/gauge.h>

namespace batchgate::gateway {

class memory_budget {
public:
    explicit memory_budget(prometheus::Gauge& gauge) : gauge_(gauge) {}
    memory_budget(const memory_budget&) = delete;
    memory_budget& operator=(const memory_budget&) = delete;

    void set_limit(std::size_t bytes) { limit_.store(bytes, std::memory_order_relaxed); }
    std::size_t limit() const { return limit_.load(std::memory_order_relaxed); }
    std::size_t used() const { return used_.load(std::memory_order_relaxed); }

    // Reserves n bytes unless that would go over the limit; false reserves nothing.
    bool try_reserve(std::size_t n) {
        const std::size_t limit = limit_.load(std::memory_order_relaxed);
        std::size_t now = used_.load(std::memory_order_relaxed);
        do {
            if (n > limit || now > limit - n) return false;
        } while (!used_.compare_exchange_weak(now, now + n, std::memory_order_relaxed));
        return true;
    }
    // Memory already held (an answer about to be written): counted, never refused.
    void force(std::size_t n) {
        used_.fetch_add(n, std::memory_order_relaxed);
    }
    void release(std::size_t n) {
        if (!n) return;
        used_.fetch_sub(n, std::memory_order_relaxed);
    }
    // Sets the gauge (batchgate_buffered_bytes) to what is held now. Called before every
    // collection (/metrics, the status page), not on each reservation: a request changes the
    // count two to four times, and each Change of a prometheus-cpp gauge is a CAS loop of its own.
    void publish() const { gauge_.Set(static_cast<double>(used())); }

private:
    std::atomic<std::size_t> used_{0};
    std::atomic<std::size_t> limit_{256u * 1024 * 1024};
    prometheus::Gauge& gauge_;
};

// Bytes reserved for one message; given back when it goes.
class budget_lease {
public:
    budget_lease() = default;
    explicit budget_lease(memory_budget* budget) : budget_(budget) {}
    budget_lease(budget_lease&& o) noexcept : budget_(o.budget_), bytes_(o.bytes_) { o.bytes_ = 0; }
    budget_lease& operator=(budget_lease&& o) noexcept {
        if (this != &o) {
            reset();
            budget_ = o.budget_;
            bytes_ = o.bytes_;
            o.bytes_ = 0;
        }
        return *this;
    }
    ~budget_lease() { reset(); }

    // Grows the reservation to total bytes; false (nothing changed) when over the budget.
    bool grow_to(std::size_t total) {
        if (total <= bytes_ || !budget_) return true;
        if (!budget_->try_reserve(total - bytes_)) return false;
        bytes_ = total;
        return true;
    }
    // Down (or up, unrefused) to exactly total: memory already held, or given back.
    void set_to(std::size_t total) {
        if (!budget_) return;
        if (total > bytes_) budget_->force(total - bytes_);
        else budget_->release(bytes_ - total);
        bytes_ = total;
    }
    void force_to(std::size_t total) {
        if (total <= bytes_ || !budget_) return;
        budget_->force(total - bytes_);
        bytes_ = total;
    }
    void reset() {
        if (budget_) budget_->release(bytes_);
        bytes_ = 0;
    }
    std::size_t bytes() const { return bytes_; }

private:
    memory_budget* budget_ = nullptr;
    std::size_t bytes_ = 0;
};

// Before more of a body of unknown length (chunked, or closed by the sender) is read: room for
// at least one more read. While the string moves to a bigger block (libstdc++ at least doubles
// it), the old and the new block are both held: that moment is what is reserved, and the lease
// is the new capacity afterwards. False: over the budget.
inline bool make_room(std::string& body, budget_lease& lease, std::size_t limit) {
    constexpr std::size_t step = 64 * 1024;  // more than one read of a stream brings
    if (body.capacity() - body.size() >= step) return true;
    const std::size_t want = std::min(limit + step, body.size() + std::max(step, body.size() / 4));
    if (!lease.grow_to(body.capacity() + std::max(want, 2 * body.capacity()))) return false;
    body.reserve(want);
    lease.set_to(body.capacity());
    return true;
}

// Said once a request went upstream and its answer cannot be held: it may have taken effect, so
// the caller is not told to try again (answer_over_budget, 502, no Retry-After).
inline constexpr std::string_view held_answer_refused =
    "the gateway's memory budget (limits.max_buffered) cannot hold this item's answer; the request was sent, so it "
    "may have taken effect";
inline constexpr std::string_view answer_refused =
    "the gateway's memory budget (limits.max_buffered) cannot hold the upstream's answer; the request was sent, so "
    "it may have taken effect";

// Bytes a fan-out or $batch call holds for the answers of its items (which complete on any
// worker thread) until its own answer goes to the session, whose lease then counts it. Each
// item's answer is taken or refused as a whole; everything goes back at once.
class shared_lease {
public:
    explicit shared_lease(memory_budget* budget) : budget_(budget) {}
    shared_lease(const shared_lease&) = delete;
    shared_lease& operator=(const shared_lease&) = delete;
    ~shared_lease() { release(); }

    // n more bytes held; false (nothing held) when over the budget.
    bool take(std::size_t n) {
        if (!budget_ || n == 0) return true;
        if (!budget_->try_reserve(n)) return false;
        bytes_.fetch_add(n, std::memory_order_relaxed);
        return true;
    }
    void release() {
        if (budget_) budget_->release(bytes_.exchange(0, std::memory_order_relaxed));
    }

private:
    memory_budget* budget_;
    std::atomic<std::size_t> bytes_{0};
};

}  // namespace batchgate::gateway
