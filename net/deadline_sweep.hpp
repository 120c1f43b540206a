// Deadlines of one shard, checked against a coarse clock. A caller's safety-net deadline used
// to be a timer of its own: a timer-queue insert (and at times a timerfd_settime) per request,
// a cancel that ran a handler of its own, and an operation block of a few hundred bytes held
// by every caller waiting in a batch. Here an armed deadline is a node linked into its shard's
// list (two pointers in the session, no allocation), and one timer per shard ticks every
// `tick` while any deadline is armed, so a deadline fires between 0 and `tick` late.
//
// An io_context service: one per shard, used only from that shard's thread (no lock). Its
// lists are sorted by deadline; deadlines of one length go in one list, so an insertion is
// nearly always at the tail whatever mix of timeouts the routes have.
#pragma once

#include <algorithm>
#include <array>
#include <cassert>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include <boost/asio/execution_context.hpp>
#include <boost/asio/io_context.hpp>

#include "net/log.hpp"
#include "net/wire.hpp"

namespace batchgate::gateway {

class deadline_sweep;

// A deadline that can be armed in its shard's sweep: derive from it and say what happens
// when it passes. Disarmed by its destructor; armed once at a time (arming again moves it).
// While armed it may hold its owner alive (as a timer's pending handler did): whatever else
// drops it, it is still there to act at its deadline.
class deadline_entry {
public:
    deadline_entry() = default;
    deadline_entry(const deadline_entry&) = delete;
    deadline_entry& operator=(const deadline_entry&) = delete;

    bool armed() const noexcept { return sweep_ != nullptr; }

protected:
    ~deadline_entry();
    // Runs on the shard's thread, unlinked already (it may arm again).
    virtual void deadline_passed() = 0;

private:
    friend class deadline_sweep;
    deadline_entry* prev_ = nullptr;
    deadline_entry* next_ = nullptr;
    deadline_sweep* sweep_ = nullptr;
    std::size_t list_ = 0;
    std::chrono::steady_clock::time_point at_{};
    std::shared_ptr<void> hold_;
};

class deadline_sweep : public boost::asio::execution_context::service {
public:
    using clock_type = std::chrono::steady_clock;
    static inline boost::asio::execution_context::id id;

    static constexpr std::chrono::milliseconds tick{10};

    explicit deadline_sweep(boost::asio::execution_context& ctx)
        : service(ctx), timer_(std::in_place, static_cast<boost::asio::io_context&>(ctx).get_executor()) {
        by_length_.reserve(max_lists);
    }

    // The sweep of the io_context that runs `ex`.
    static deadline_sweep& of(const executor_t& ex) { return boost::asio::use_service<deadline_sweep>(ex.context()); }

    // e passes at start + length (length is what sorts it into a list); hold is kept until then.
    // The caller keeps e alive through the call (arming again lets go of the old hold first).
    void arm(deadline_entry& e, clock_type::time_point start, clock_type::duration length,
             std::shared_ptr<void> hold = nullptr) {
        assert(!e.sweep_ || e.sweep_ == this);  // an entry belongs to its shard's sweep
        disarm(e);
        const std::size_t i = list_for(length);  // may throw: nothing held yet
        auto& l = lists_[i];
        e.hold_ = std::move(hold);
        e.at_ = start + length;
        e.list_ = i;
        e.sweep_ = this;
        // From the tail back to the first entry not later than e: almost always the tail.
        deadline_entry* after = l.tail;
        while (after && after->at_ > e.at_) after = after->prev_;
        e.prev_ = after;
        e.next_ = after ? after->next_ : l.head;
        (e.next_ ? e.next_->prev_ : l.tail) = &e;
        (after ? after->next_ : l.head) = &e;
        ++armed_;
        if (!ticking_ && timer_) start_ticking();
    }

    // Lets go of e's hold last: that may free e.
    void disarm(deadline_entry& e) noexcept {
        if (e.sweep_ != this) return;
        auto hold = std::move(e.hold_);
        auto& l = lists_[e.list_];
        (e.prev_ ? e.prev_->next_ : l.head) = e.next_;
        (e.next_ ? e.next_->prev_ : l.tail) = e.prev_;
        e.prev_ = e.next_ = nullptr;
        e.sweep_ = nullptr;
        --armed_;
    }

    std::size_t armed() const noexcept { return armed_; }
    std::size_t lists() const noexcept { return lists_.size(); }
    // The list an armed entry is in (tests: which lengths share one).
    static std::size_t list_of(const deadline_entry& e) noexcept { return e.list_; }
    // The latest time swept to: a clock read for free, behind the real one by up to a tick
    // while anything is armed (and by more when nothing is).
    clock_type::time_point swept_to() const noexcept { return swept_to_; }
    // A clock read for free where being early does not matter (a wait of a second, not a
    // deadline): swept_to() while ticking, which start_ticking() sets, else the clock. Never
    // ahead of the clock (tests that sweep() to a made-up future excepted); behind it by a tick,
    // or by a whole stall of the shard's loop, since the tick's handler may run after handlers
    // the same stall held back.
    clock_type::time_point coarse_now() const noexcept { return ticking_ ? swept_to_ : clock_type::now(); }

    // At most this many lists: lengths computed at run time (what is left of a budget) would
    // otherwise each add one. Past it, a deadline joins the list of the nearest length; every
    // list stays sorted whatever its mix, only the walk back from its tail may grow.
    static constexpr std::size_t max_lists = 16;

    // Fires every deadline that has passed by `now` (the tick calls it; tests may too).
    void sweep(clock_type::time_point now) {
        if (now > swept_to_) swept_to_ = now;
        for (std::size_t i = 0; i < lists_.size(); ++i) {
            // Re-read the head each time: a deadline_passed may arm, disarm or free entries.
            while (lists_[i].head && lists_[i].head->at_ <= now) {
                deadline_entry& e = *lists_[i].head;
                auto hold = std::move(e.hold_);  // e stays alive through its call
                disarm(e);
                // One entry's failure stays its own: the others still fire, the tick goes on.
                try {
                    e.deadline_passed();
                } catch (const std::exception& ex) {
                    log_line("error", "a deadline's handler failed", {{"error", ex.what()}});
                } catch (...) {
                    log_line("error", "a deadline's handler failed");
                }
            }
        }
    }

private:
    // The io_context is going: entries let go of what they hold (nothing will fire now), and
    // the timer goes before the timer service does. Entries may still disarm afterwards.
    void shutdown() override {
        timer_.reset();
        for (std::size_t i = 0; i < lists_.size(); ++i)
            while (lists_[i].head) disarm(*lists_[i].head);
    }

    void start_ticking() {
        const auto now = clock_type::now();
        if (now > swept_to_) swept_to_ = now;  // coarse_now() starts from the clock
        timer_->expires_at(now + tick);
        timer_->async_wait([this](boost::system::error_code ec) {
            ticking_ = false;
            if (ec || !timer_) return;
            sweep(clock_type::now());
            if (armed_ > 0 && !ticking_ && timer_) start_ticking();
        });
        ticking_ = true;  // only once the wait is queued: a throw above leaves the next arm() to try
    }

    // The list of `length`, else a new one, else (max_lists reached) the nearest. A binary search
    // of the lists by length: deadlines computed at run time (what is left of a budget) miss
    // every list, and a scan of all sixteen was a fifth of a passthrough request's arming.
    std::size_t list_for(clock_type::duration length) {
        // A request arms a few lengths over and over (the read's, the write's, the FIN probe's):
        // the last few found with a list of their own are looked at first. (A length is
        // remembered the second time it comes: one computed at run time, which rarely comes
        // again, does not push them out.)
        for (std::size_t k = 0; k < recent_count_; ++k)
            if (recent_[k].first == length) return recent_[k].second;
        auto it = std::lower_bound(by_length_.begin(), by_length_.end(), length,
                                   [](const auto& known, clock_type::duration l) { return known.first < l; });
        if (it != by_length_.end() && it->first == length) return remember(length, it->second);
        if (lists_.size() < max_lists) {
            lists_.push_back({nullptr, nullptr});
            by_length_.insert(it, {length, lists_.size() - 1});  // reserved: cannot throw, `it` stays valid
            return lists_.size() - 1;
        }
        if (it == by_length_.end()) return std::prev(it)->second;
        if (it == by_length_.begin()) return it->second;
        const auto below = std::prev(it);
        return length - below->first < it->first - length ? below->second : it->second;
    }

    // A length's own list, kept among the recent ones (lists are never removed: it stays its own).
    std::size_t remember(clock_type::duration length, std::size_t i) noexcept {
        recent_[recent_next_] = {length, i};
        recent_next_ = (recent_next_ + 1) % recent_.size();
        recent_count_ = std::max(recent_count_, recent_next_ == 0 ? recent_.size() : recent_next_);
        return i;
    }

    struct list {  // its length is in by_length_
        deadline_entry* head;
        deadline_entry* tail;
    };
    std::vector<list> lists_;
    std::vector<std::pair<clock_type::duration, std::size_t>> by_length_;  // (length, index in lists_), by length
    // Lengths that have a list of their own, as list_for last found them.
    std::array<std::pair<clock_type::duration, std::size_t>, 4> recent_{};
    std::size_t recent_count_ = 0;
    std::size_t recent_next_ = 0;
    std::size_t armed_ = 0;
    clock_type::time_point swept_to_{};
    bool ticking_ = false;
    std::optional<conn_timer> timer_;
};

inline deadline_entry::~deadline_entry() {
    if (sweep_) sweep_->disarm(*this);
}

}  // namespace batchgate::gateway
