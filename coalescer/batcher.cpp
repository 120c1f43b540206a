#include "coalescer/batcher.hpp"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <unordered_map>
#include <unordered_set>

#include <boost/asio/post.hpp>
#include <boost/beast/http.hpp>
#include <boost/range/iterator_range.hpp>

#include "net/errors.hpp"
#include "net/log.hpp"
#include "text/http_date.hpp"

namespace batchgate::coalescer {

namespace net = boost::asio;
namespace http = boost::beast::http;
using clock_type = std::chrono::steady_clock;

namespace {

std::string next_batch_id() {
    // Unique per process; replicas are told apart by the pod in logs.
    static std::atomic<std::uint64_t> counter{0};
    char buf[32];
    std::snprintf(buf, sizeof buf, "b-%llx", static_cast<unsigned long long>(++counter));
    return buf;
}

double seconds(clock_type::duration d) { return std::chrono::duration<double>(d).count(); }

same_key window_policy(config::same_key_policy p) {
    switch (p) {
        case config::same_key_policy::share: return same_key::share;
        case config::same_key_policy::sequence: return same_key::sequence;
        case config::same_key_policy::last_write_wins: return same_key::last_write_wins;
        case config::same_key_policy::merge_patch: return same_key::merge_patch;
        case config::same_key_policy::in_batch: return same_key::in_batch;
    }
    return same_key::share;
}

// Retry-After (RFC 9110 section 10.2.3): delay-seconds, or an HTTP-date, as a delay from now
// of at most an hour (a date passed is no delay; more digits than a long holds is the hour).
// Anything else is as if absent.
std::optional<std::chrono::milliseconds> retry_after(const gateway::upstream_response& res) {
    auto it = res.find(http::field::retry_after);
    if (it == res.end()) return std::nullopt;
    const std::string_view v(it->value().data(), it->value().size());
    constexpr std::chrono::seconds cap = std::chrono::hours(1);
    unsigned long secs = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), secs);
    if (p == v.data() + v.size() && !v.empty()) {
        if (ec == std::errc::result_out_of_range) return cap;
        if (ec == std::errc()) return std::chrono::seconds(std::min<unsigned long>(secs, cap.count()));
    }
    const auto now = std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now());
    auto date = routes::parse_http_date(v, now);
    if (!date) return std::nullopt;
    return std::clamp<std::chrono::seconds>(*date - now, std::chrono::seconds(0), cap);
}

// What a finished batch call says about the upstream's load, for the concurrency limit.
call_outcome outcome_of(const gateway::upstream_result& r) {
    switch (r.failure) {
        case gateway::upstream_failure::timeout:
        case gateway::upstream_failure::connect_failed:
        case gateway::upstream_failure::io_error: return call_outcome::dropped;
        case gateway::upstream_failure::bad_response:
        case gateway::upstream_failure::over_budget: return call_outcome::ignored;  // not the upstream's load
        case gateway::upstream_failure::none: break;
    }
    const int status = r.response.result_int();
    if (status == 429 || status == 503 || status == 504) return call_outcome::dropped;
    if (status >= 200 && status <= 299) return call_outcome::success;
    return call_outcome::ignored;
}

// A caller's answer that is the upstream's whole answer: its status and body, with the fields
// that go with them (what the body is, how to retry, how to authenticate), every line of each.
// A 204 or 304 has no body to describe.
void relay_whole_answer(reply& rep, const gateway::upstream_response& res) {
    rep.status = res.result_int();
    rep.body = res.body();
    rep.verbatim = true;
    const bool has_body = rep.status != 204 && rep.status != 304;
    for (auto field : {http::field::content_type, http::field::content_encoding, http::field::retry_after,
                       http::field::www_authenticate}) {
        if (!has_body && (field == http::field::content_type || field == http::field::content_encoding)) continue;
        for (const auto& line : boost::make_iterator_range(res.equal_range(field)))
            rep.headers.emplace_back(std::string(line.name_string()), std::string(line.value()));
    }
}

// Callers' handlers running on this thread, from any batcher (call_safely). A submit made from
// inside one (a $batch envelope whose sub-request's answer starts the next sub-request) is
// posted: the batcher that called out may be in the middle of its window or its batch.
thread_local unsigned answering = 0;

}  // namespace

config::duration caller_timeout(const config::gateway_config& config, const config::route_settings& route) {
    if (route.timeout.count() > 0) return route.timeout;
    const auto* up = config.find_upstream(route.upstream);
    auto t = (up ? up->request_timeout : config::duration(10000)) + std::chrono::seconds(1);
    if (route.mode == config::route_mode::coalesce) t += route.coalesce.max_wait;
    return t;
}

batcher::batcher(net::io_context::executor_type executor, std::shared_ptr<const config::gateway_config> config,
                 const config::route_settings& route, std::shared_ptr<gateway::upstream_pool> upstream,
                 std::shared_ptr<batch_slots> slots, metrics::registry& metrics, std::shared_ptr<route_load> load,
                 batcher_mode mode)
    : executor_(std::move(executor)),
      config_(std::move(config)),
      route_(route),
      upstream_(std::move(upstream)),
      slots_(std::move(slots)),
      metrics_(mode == batcher_mode::shadow ? metrics.shadow_route(route.name) : metrics.route(route.name)),
      upstream_metrics_(metrics.upstream(route.upstream, route.name)),
      window_(window_limits{route.coalesce.max_batch_items, route.coalesce.max_batch_bytes, route.coalesce.max_wait,
                            window_policy(route.coalesce.same_key),
                            route.coalesce.flush == config::flush_policy::adaptive, route.coalesce.min_wait}),
      ordered_(route.coalesce.ordered),
      adaptive_(route.coalesce.flush == config::flush_policy::adaptive),
      timer_(executor_),
      sweep_timer_(executor_),
      rng_(std::random_device{}()),
      load_(std::move(load)),
      mode_(mode) {}

// on_submit moves the submission's parts into the caller's waiter. Posted, only the pointer
// moves into the handler.
void batcher::submit(submission&& s) {
    if (answering == 0 && executor_.running_in_this_thread()) return on_submit(s);
    net::post(executor_, [self = shared_from_this(), s = std::make_unique<submission>(std::move(s))] {
        self->on_submit(*s);
    });
}

void batcher::on_submit(submission& s) {
    // Callers who gave up while their batch waited no longer count. The other shards' callers
    // count as last published.
    auto waiting = [this] {
        const std::size_t elsewhere = load_->waiting.load(std::memory_order_relaxed) - published_waiting_;
        return elsewhere + window_.waiting() + queued_callers_;
    };
    if (waiting() >= route_.coalesce.max_waiting) sweep();
    if (waiting() >= route_.coalesce.max_waiting) {
        metrics_.rejected->Increment();
        reply r;
        r.status = http_status(gateway_error::overloaded);
        r.body = error_body(gateway_error::overloaded, "too many callers waiting on this route", route_.name);
        r.headers.emplace_back("Retry-After", "1");
        call_safely(s.done, std::move(r));
        update_waiting_gauge();  // shedding may have moved it
        return;
    }
    const auto now = clock_type::now();
    waiter w{std::move(s.done), now, s.deadline, std::move(s.method), std::move(s.traceparent),
             std::move(s.caller_values), std::move(s.caller), ++next_serial_};
    unsent_.insert(w.serial);
    caller_deadlines_.emplace(w.deadline, w.serial);
    // flush: adaptive: a caller whose partition could send right now (a free slot, nothing of
    // it in flight or queued) does not wait for others to come. (Not asked under flush: window,
    // whose add never reads it: the slots are behind two mutexes every shard shares.)
    const bool can_send = adaptive_ && !draining_ && slot_free() && !partition_busy(s.part.key);
    auto closed = window_.add(s.part, std::move(s.key), s.cost, std::move(w), now, std::move(s.item), can_send);
    if (auto d = window_.take_deduplicated()) metrics_.deduplicated->Increment(static_cast<double>(d));
    if (auto m = window_.take_merged()) metrics_.merged->Increment(static_cast<double>(m));
    if (draining_) {
        auto rest = window_.drain(now);
        std::move(rest.begin(), rest.end(), std::back_inserter(closed));
    }
    // With nothing closed, queued or held, pump would find nothing to send (the usual caller under
    // flush: window); the timers are armed just below either way.
    if (!closed.empty() || !ready_.empty() || window_.held()) enqueue(std::move(closed));
    arm_timer();
    arm_sweep();
    update_waiting_gauge();
}

void batcher::arm_timer() {
    auto next = window_.next_deadline();
    if (!next) return;
    if (armed_at_ && *armed_at_ <= *next) return;  // an earlier or equal wake-up is already set
    armed_at_ = *next;
    timer_.expires_at(*next);
    // Wake up when the oldest waiter has waited max_wait.
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
        if (ec == net::error::operation_aborted) return;  // re-armed earlier; that wait takes over
        self->armed_at_.reset();
        self->on_timer();
    });
}

void batcher::on_timer() {
    enqueue(window_.expire(clock_type::now(), [this](const std::string& pkey) { return blocked(pkey); }));
    arm_timer();
    update_waiting_gauge();
}

void batcher::drain() {
    slots_->retire();  // shutdown, or a reload whose new batchers publish their own limits
    net::post(executor_, [self = shared_from_this()] {
        self->draining_ = true;
        self->enqueue(self->window_.drain(clock_type::now()));
        self->timer_.cancel();
        self->armed_at_.reset();
        self->update_waiting_gauge();
    });
}

void batcher::abandon() {
    window_.drain(clock_type::now());
    ready_.clear();
    queued_callers_ = 0;
    unsent_.clear();
}

void batcher::enqueue(std::vector<batch> closed) {
    record(std::move(closed));
    pump();
}

void batcher::record(std::vector<batch> closed) {
    const auto now = clock_type::now();
    for (auto& b : closed) {
        const auto callers = b.waiter_count();
        for (const auto& item : b.items)
            for (const auto& w : item.waiters) metrics_.batch_wait->Observe(seconds(now - w.enqueued));
        queued_callers_ += callers;
        ready_.push_back(pending{std::move(b), 1});
    }
}

// Sends what may go while the route has free slots, longest-due first: queued batches, and
// batches the window holds open (group commit) whose partition is free. A held batch competes
// with the queue by when it became due, so it keeps growing while slots are taken but never
// starves behind busier partitions. On ordered routes a partition never has two calls in flight
// and its batches go in order, so one key's writes arrive in order.
void batcher::pump() {
    const auto busy = [this](const std::string& pkey) { return partition_busy(pkey); };
    while (true) {
        auto next = next_ready();
        auto held_due = window_.held() ? window_.first_releasable(busy) : std::nullopt;
        if (held_due && (next == ready_.end() || *held_due < next->b.due)) {
            if (!slot_free()) {
                wait_for_slot();  // it keeps collecting callers meanwhile
                break;
            }
            auto released = window_.release(clock_type::now(), busy);
            if (released.empty()) break;  // not reached: first_releasable found one
            record(std::move(released));
            continue;  // the released batch is now the longest-due in the queue
        }
        if (next == ready_.end()) break;
        if (shed_expired(*next)) {  // nobody is waiting for this batch any more
            ready_.erase(next);
            continue;
        }
        if (!take_slot()) {
            wait_for_slot();
            break;
        }
        pending p = std::move(*next);
        ready_.erase(next);
        send(std::move(p));
    }
    // Releasing a held batch may open the partition's next one (writes sequenced behind it), and
    // the timer must be set for it: nothing else may come to wake this route.
    arm_timer();
    arm_sweep();
}

// No free slot for a due batch: the batcher queues in the limit (shared with the route's other
// shards and the upstream's other routes), which hands it a slot when a call ends, on whichever
// thread that happens, so the hand-over is posted here. A slot it then has no use for goes back.
void batcher::wait_for_slot() {
    if (waiting_for_slot_) return;
    waiting_for_slot_ = true;
    slots_->when_granted([weak = weak_from_this()](batch_slots& slots) {
        auto self = weak.lock();
        if (!self) return slots.release(call_outcome::ignored, {});
        net::post(self->executor_, [self] {
            self->waiting_for_slot_ = false;
            ++self->granted_;
            self->pump();
            self->return_unused_slots();
            self->update_waiting_gauge();
        });
    });
}

bool batcher::take_slot() {
    if (granted_ > 0) {
        --granted_;
        return true;
    }
    return slots_->try_acquire();
}

void batcher::return_unused_slots() {
    for (; granted_ > 0; --granted_) slots_->release(call_outcome::ignored, {});
}

// The queued batch to send next: the longest-due one whose partition is free (on ordered
// routes only a partition's first queued batch counts, so its batches keep their order).
std::deque<batcher::pending>::iterator batcher::next_ready() {
    auto best = ready_.end();
    std::unordered_set<std::string_view> seen;
    for (auto it = ready_.begin(); it != ready_.end(); ++it) {
        if (ordered_) {
            if (!seen.insert(it->b.partition_key).second) continue;  // not this partition's first
            if (window_.in_flight(it->b.partition_key)) continue;
        }
        if (best == ready_.end() || it->b.due < best->b.due) best = it;
    }
    return best;
}

// A partition whose next batch cannot go yet: a call of it in flight (or backing off), or an
// earlier batch of it queued. Only ordered routes keep one call per partition.
bool batcher::partition_busy(const std::string& partition_key) const {
    if (draining_ || !ordered_) return false;
    return window_.in_flight(partition_key) ||
           std::any_of(ready_.begin(), ready_.end(), [&](const pending& r) { return r.b.partition_key == partition_key; });
}

// Whether a due batch stays open in the window (group commit): its partition is busy, or the
// route has no free slot, so it may as well keep collecting callers.
bool batcher::blocked(const std::string& partition_key) const {
    if (draining_) return false;
    return !slot_free() || partition_busy(partition_key);
}

void batcher::release_slot(const pending& p, call_outcome outcome, std::chrono::nanoseconds rtt) {
    slots_->release(outcome, rtt);
    // flush: adaptive: what collected while this call was in flight is due now.
    window_.call_ended(p.b.partition_key, clock_type::now());
}

// A closed batch's first call: counted by why its batch closed, with its size and the calls it
// saves. Counted when sent, not when closed: a batch whose callers all gave up makes no call.
// Retries and isolation re-sends are not new flushes.
void batcher::count_flush(pending& p) {
    if (p.counted) return;
    p.counted = true;
    switch (p.b.reason) {
        case flush_reason::size: metrics_.flush_size->Increment(); break;
        case flush_reason::bytes: metrics_.flush_bytes->Increment(); break;
        case flush_reason::timer: metrics_.flush_timer->Increment(); break;
        case flush_reason::shutdown: metrics_.flush_shutdown->Increment(); break;
        case flush_reason::released: metrics_.flush_released->Increment(); break;
        case flush_reason::idle: metrics_.flush_idle->Increment(); break;
        case flush_reason::returned: metrics_.flush_returned->Increment(); break;
    }
    const auto callers = p.b.waiter_count();
    metrics_.batch_size->Observe(static_cast<double>(p.b.items.size()));
    if (callers > 1) metrics_.calls_saved->Increment(static_cast<double>(callers - 1));
}

void batcher::send(pending p) {
    if (mode_ == batcher_mode::shadow) return send_shadow(std::move(p));
    if (!claim_callers(p)) {  // every caller was answered before it could go: nothing is sent
        slots_->release(call_outcome::ignored, {});
        return;  // pump, which called, goes on with the next
    }
    count_flush(p);
    p.sent = clock_type::now();
    window_.call_started(p.b.partition_key);
    std::vector<std::string> keys;
    std::vector<nlohmann::json> items;  // only a JSON body carries them; a query holds the keys
    const bool json_body = route_.coalesce.request.encoding == config::batch_encoding::json_body;
    keys.reserve(p.b.items.size());
    if (json_body) items.reserve(p.b.items.size());
    std::string traceparent;
    auto latest = clock_type::now();
    bool reads_only = true;  // then the batch call is a read, whatever its method (else a write)
    for (const auto& item : p.b.items) {
        keys.push_back(item.key);
        if (json_body) items.push_back(item.payload.is_null() ? nlohmann::json(item.key) : item.payload);
        for (const auto& w : item.waiters) {
            if (traceparent.empty()) traceparent = w.traceparent;
            reads_only = reads_only && (w.method == "GET" || w.method == "HEAD");
            latest = std::max(latest, w.deadline);
            unsent_.erase(w.serial);
        }
    }
    // No point waiting for the upstream after the last caller stopped waiting.
    const auto budget = std::max<std::chrono::milliseconds>(
        std::chrono::milliseconds(1),
        std::min(upstream_->settings().request_timeout,
                 std::chrono::ceil<std::chrono::milliseconds>(latest - clock_type::now())));
    outgoing_request out = build_batch_request(route_.coalesce, p.b.values, keys, items);

    gateway::upstream_request req;
    req.method_string(out.method);
    req.target(out.target);
    for (auto& [name, value] : out.headers) req.set(name, value);
    std::string batch_id = next_batch_id();
    // The batch call carries the first caller's trace and names itself.
    req.set("X-Batchgate-Batch-Id", batch_id);
    req.set("X-Request-Id", batch_id);
    if (!traceparent.empty()) req.set("traceparent", traceparent);
    req.body() = std::move(out.body);
    gateway::accept_identity_only(req);  // the gateway reads the answer itself

    upstream_->async_send(
        std::move(req), budget,
        [self = shared_from_this(), p = std::move(p), batch_id](gateway::upstream_result r) mutable {
            // Back onto the batcher's thread: the window, queue and counters are its own.
            net::post(self->executor_, [self, p = std::move(p), batch_id = std::move(batch_id),
                                      r = std::move(r)]() mutable {
                self->on_answer(std::move(p), batch_id, std::move(r));
            });
        },
        reads_only ? gateway::upstream_pool::repeat::yes : gateway::upstream_pool::repeat::no);
}

// From here each caller's write may be applied (an answer made up for it must not invite a
// retry), except a caller the gateway already answered (abandoned at the drain deadline), which
// must never go: nor may its item, whose payload carries its change even when other callers share
// it (merge_patch, last_write_wins). Such an item is left out whole, and its other callers are
// answered 503 too (truthfully: nothing was sent for them). False: nothing is left to send.
bool batcher::claim_callers(pending& p) {
    std::vector<bool> drop(p.b.items.size(), false);
    bool any = false;
    for (std::size_t i = 0; i < p.b.items.size(); ++i)
        for (auto& w : p.b.items[i].waiters)
            if (w.caller && !w.caller->claim_for_sending()) drop[i] = any = true;
    if (!any) return true;
    std::vector<waiter> left_out;
    std::size_t kept = 0;
    for (std::size_t i = 0; i < p.b.items.size(); ++i) {
        auto& item = p.b.items[i];
        if (!drop[i]) {
            if (kept != i) p.b.items[kept] = std::move(item);
            ++kept;
            continue;
        }
        p.b.bytes -= item.cost;
        for (auto& w : item.waiters) left_out.push_back(std::move(w));
    }
    p.b.items.resize(kept);
    for (auto& w : left_out) {
        reply r;
        r.status = http_status(gateway_error::shutting_down);
        r.body = error_body(gateway_error::shutting_down, "the gateway is shutting down", route_.name);
        r.headers.emplace_back("Retry-After", "1");
        answer(w, std::move(r));  // the abandoned ones were answered by their connection: theirs is dropped
    }
    return !p.b.items.empty();
}

// Shadow: the batch is counted as sent, holds its slot and its partition for as long as the
// route's single calls take, then "answers" its callers 200 (their handlers only count them:
// each caller was served by its own single call meanwhile).
void batcher::send_shadow(pending p) {
    count_flush(p);
    p.sent = clock_type::now();
    window_.call_started(p.b.partition_key);
    for (const auto& item : p.b.items)
        for (const auto& w : item.waiters) unsent_.erase(w.serial);
    shadow_call(std::move(p), std::make_shared<net::steady_timer>(executor_), std::chrono::milliseconds(1));
}

// The shadow call ends when the route's single calls, on average, would have answered it. Until
// the first single call has ended there is no average: the call is checked again after 1, 2, 4
// ... 64 ms (a batch call takes at least about as long as a single call does), for at most the
// upstream's request_timeout.
void batcher::shadow_call(pending p, std::shared_ptr<net::steady_timer> timer, std::chrono::milliseconds recheck) {
    const std::chrono::nanoseconds took(load_->single_call_ns.load(std::memory_order_relaxed));
    const auto give_up = p.sent + upstream_->settings().request_timeout;
    const bool known = took.count() > 0;
    timer->expires_at(known ? p.sent + took : std::min(clock_type::now() + recheck, give_up));
    timer->async_wait([self = shared_from_this(), timer, p = std::move(p), known, give_up,
                       recheck](boost::system::error_code) mutable {
        // Not timed yet: timed by the average once there is one, else checked again until give_up.
        if (!known && (self->load_->single_call_ns.load(std::memory_order_relaxed) > 0 || clock_type::now() < give_up))
            return self->shadow_call(std::move(p), std::move(timer), std::min(recheck * 2, std::chrono::milliseconds(64)));
        reply done;
        done.status = 200;
        self->answer_all(p, done);
        self->release_slot(p, call_outcome::success, clock_type::now() - p.sent);
        self->on_timer();
    });
}

void batcher::on_answer(pending p, const std::string& batch_id, gateway::upstream_result r) {
    upstream_metrics_.duration->Observe(seconds(r.elapsed));

    reply proto;
    proto.batch_id = batch_id;
    proto.batch_size = p.b.items.size();
    proto.upstream_elapsed = r.elapsed;
    const std::string where = "upstream '" + route_.upstream + "'";
    auto fail_all = [&](gateway_error e, const std::string& message) {
        // Every caller of the batch gets this error: worth one line for the operator.
        gateway::log_line("warn", "batch call failed",
                          {{"route", route_.name}, {"batch_id", batch_id}, {"items", p.b.items.size()},
                           {"callers", p.b.waiter_count()}, {"error", message}});
        proto.status = http_status(e);
        proto.body = error_body(e, message, route_.name);
        answer_all(p, proto);
    };

    bool keep_busy = false;  // the partition stays busy while a retry backs off
    switch (r.failure) {
        case gateway::upstream_failure::timeout:
            upstream_metrics_.requests->inc(std::string("timeout"));
            fail_all(gateway_error::upstream_timeout, where + " timed out: " + r.detail);
            break;
        case gateway::upstream_failure::connect_failed:
            upstream_metrics_.requests->inc(std::string("connect_error"));
            fail_all(gateway_error::upstream_unreachable, where + ": " + r.detail);
            break;
        case gateway::upstream_failure::io_error:
            upstream_metrics_.requests->inc(std::string("io_error"));
            fail_all(gateway_error::upstream_unreachable, where + ": " + r.detail);
            break;
        case gateway::upstream_failure::bad_response:
            upstream_metrics_.requests->inc(std::string("bad_response"));
            fail_all(gateway_error::upstream_bad_response, where + ": " + r.detail);
            break;
        case gateway::upstream_failure::over_budget:
            upstream_metrics_.requests->inc(std::string("over_budget"));
            // The batch call went out: its writes may have been applied (no Retry-After).
            fail_all(gateway_error::answer_over_budget, r.detail);
            break;
        case gateway::upstream_failure::none: {
            const int status = r.response.result_int();
            upstream_metrics_.requests->inc(status);
            proto.upstream_status = status;
            auto pass_through = [&] {
                // The upstream's own answer is the right one for every caller of the batch.
                relay_whole_answer(proto, r.response);
                answer_all(p, proto);
            };
            const auto& retry = route_.coalesce.retry;
            const bool retry_status =
                std::find(retry.statuses.begin(), retry.statuses.end(), status) != retry.statuses.end();
            if (retry_status) keep_busy = try_retry(p, r);
            if (keep_busy) {
                // retried later
            } else if (retry_status && (status < 200 || status > 299)) {
                pass_through();
            } else if (status >= 200 && status <= 299) {
                // (A 2xx whose retries ran out is split too: the whole batch's answer never goes
                // to every caller.)
                // Asked for identity (send): an answer encoded anyway cannot be split.
                if (auto coding = gateway::content_coding(r.response); !coding.empty())
                    fail_all(gateway_error::upstream_bad_response,
                             where + " answered the batch call with " + gateway::coded_answer(coding));
                else
                    deliver_split(p, r.response.body(), proto);
            } else if (status == 401 || status == 403 || status == 408 || status == 429) {
                pass_through();  // credentials and rate limits are shared by the whole partition
            } else if (status >= 400 && status <= 499) {
                if (route_.coalesce.on_batch_error == config::batch_error_policy::isolate && p.b.items.size() > 1) {
                    isolate(std::move(p), r, proto);
                    keep_busy = true;  // isolate() released the slot itself
                } else if (p.b.items.size() == 1) {
                    // A lone item: its own entry in the answer if there is one, else the whole answer.
                    answer_refused(p.b.items[0], r, proto);
                } else {
                    pass_through();  // fail_all: nothing was applied, every caller learns why
                }
            } else {
                fail_all(gateway_error::upstream_bad_response,
                         where + " answered the batch call with status " + std::to_string(status));
            }
            break;
        }
    }
    if (!keep_busy) release_slot(p, outcome_of(r), r.elapsed);
    // What came due meanwhile (flush: adaptive: the partition's batch, now that its call ended),
    // then everything sendable, longest-due first.
    on_timer();
}

// 429/503: back off (Retry-After, else exponential with full jitter) when the retry can
// still start before the earliest caller deadline. True when a retry was scheduled.
bool batcher::try_retry(pending& p, const gateway::upstream_result& r) {
    const auto& retry = route_.coalesce.retry;
    if (p.attempt >= retry.max_attempts) return false;
    std::chrono::milliseconds delay;
    if (auto ra = retry_after(r.response)) {
        delay = *ra;
    } else {
        auto cap = std::min<std::chrono::milliseconds>(retry.max_backoff, retry.initial_backoff * (1u << std::min(p.attempt - 1, 16u)));
        std::uniform_int_distribution<long long> jitter(0, std::max<long long>(cap.count(), 0));
        delay = std::chrono::milliseconds(jitter(rng_));
    }
    auto earliest = clock_type::time_point::max();
    for (const auto& item : p.b.items)
        for (const auto& w : item.waiters) earliest = std::min(earliest, w.deadline);
    const auto start_at = clock_type::now() + delay;
    if (start_at >= earliest) return false;
    metrics_.retries->Increment();
    auto timer = std::make_shared<net::steady_timer>(executor_);
    timer->expires_at(start_at);
    ++p.attempt;
    const auto outcome = outcome_of(r);
    const auto rtt = r.elapsed;
    timer->async_wait([self = shared_from_this(), timer, p = std::move(p), outcome,
                       rtt](boost::system::error_code) mutable {
        // The slot and the partition stay held through the back-off; the retry re-takes them.
        self->release_slot(p, outcome, rtt);
        self->ready_.push_front(std::move(p));
        self->pump();
    });
    return true;
}

// A batch of the same partition, empty, to be filled with some of p's items.
batcher::pending batcher::part_of(const pending& p) const {
    pending part{batch{}, 1};
    part.b.partition_key = p.b.partition_key;
    part.b.values = p.b.values;
    part.b.opened = p.b.opened;
    part.b.due = p.b.due;
    part.b.reason = p.b.reason;
    part.counted = true;  // counted with the batch it came from
    return part;
}

// One refused item's callers: its own entry in the refused answer when there is one (with
// the route's status mapping), else the upstream's status and body.
void batcher::answer_refused(window_type::item& item, const gateway::upstream_result& r, const reply& proto) {
    split_outcome split = split_batch_response(route_.coalesce, route_.name, r.response.body(), {item.key},
                                               config_->limits.max_json_depth);
    reply rep = proto;
    const item_outcome* own = split.error.empty() ? split.find(item.key) : nullptr;
    // Never a 2xx: the batch was refused, so nothing of this item was applied.
    if (own && own->status >= 300 && own->status != route_.coalesce.response.missing_status) {
        rep.status = own->status;
        rep.body = own->body;
    } else {
        relay_whole_answer(rep, r.response);
    }
    for (auto& w : item.waiters) answer(w, reply(rep));
    item.waiters.clear();
}

// An all-or-nothing upstream refused the batch, so nothing of it was applied. When the answer
// names the failing items (coalesce.failed_items), their callers get their error now and the
// rest go again in one call. A named key with several operations in the batch (same_key:
// in_batch) cannot be told apart: its operations go again on their own, after the rest, in
// their order. When the answer names nothing usable, bisect.
void batcher::isolate(pending p, const gateway::upstream_result& r, const reply& proto) {
    auto named = named_failures(route_.coalesce, r.response.body(), config_->limits.max_json_depth);
    if (!named) return bisect(std::move(p));
    std::unordered_set<std::string> failed(named->begin(), named->end());
    std::unordered_map<std::string, std::size_t> count;
    for (const auto& item : p.b.items) ++count[item.key];
    pending rest = part_of(p), unsure = part_of(p);
    std::vector<window_type::item> refused;
    for (auto& item : p.b.items) {
        if (!failed.contains(item.key)) rest.b.items.push_back(std::move(item));
        else if (count[item.key] == 1) refused.push_back(std::move(item));
        else unsure.b.items.push_back(std::move(item));
    }
    if (refused.empty() && (rest.b.items.empty() || unsure.b.items.empty())) {
        // No progress from the names (they match nothing, or only one key's several operations).
        p.b.items.clear();
        for (auto* part : {&rest, &unsure})
            for (auto& item : part->b.items) p.b.items.push_back(std::move(item));
        return bisect(std::move(p));
    }
    metrics_.isolations->Increment(static_cast<double>(!rest.b.items.empty() + !unsure.b.items.empty()));
    release_slot(p, call_outcome::ignored, r.elapsed);
    if (!unsure.b.items.empty()) ready_.push_front(std::move(unsure));
    if (!rest.b.items.empty()) ready_.push_front(std::move(rest));
    for (auto& item : refused) answer_refused(item, r, proto);
}

// No names to go by: re-send each half on its own, so valid callers succeed and only the
// invalid one gets the upstream's error.
void batcher::bisect(pending p) {
    const std::size_t half = p.b.items.size() / 2;
    pending first = part_of(p), second = part_of(p);
    for (std::size_t i = 0; i < p.b.items.size(); ++i) (i < half ? first : second).b.items.push_back(std::move(p.b.items[i]));
    metrics_.isolations->Increment(2);
    release_slot(p, call_outcome::ignored, clock_type::now() - p.sent);
    ready_.push_front(std::move(second));
    ready_.push_front(std::move(first));
}

void batcher::deliver_split(pending& p, const std::string& body, const reply& proto) {
    std::vector<std::string> keys;
    keys.reserve(p.b.items.size());
    for (const auto& item : p.b.items) keys.push_back(item.key);
    split_outcome split =
        split_batch_response(route_.coalesce, route_.name, body, std::move(keys), config_->limits.max_json_depth);
    if (!split.error.empty()) {
        reply r = proto;
        r.status = http_status(gateway_error::upstream_bad_response);
        r.body = error_body(gateway_error::upstream_bad_response, "upstream '" + route_.upstream + "': " + split.error,
                            route_.name);
        answer_all(p, r);
        return;
    }
    for (std::size_t i = 0; i < p.b.items.size(); ++i) {
        auto& item = p.b.items[i];
        for (std::size_t wi = 0; wi < item.waiters.size(); ++wi) {
            auto& w = item.waiters[wi];
            reply mine = proto;
            if (i < split.items.size()) {
                item_outcome& outcome = split.items[i];
                mine.status = outcome.status;
                // The item's last caller takes its body as it is: one copy fewer per caller.
                const bool last = wi + 1 == item.waiters.size();
                rendered_answer body_of = last && !outcome.render ? rendered_answer{std::move(outcome.body), {}}
                                                                  : render_answer(outcome, w.caller_values, item.key);
                if (body_of.error.empty()) {
                    mine.body = std::move(body_of.body);
                } else {
                    mine.status = 502;
                    mine.body = error_body(gateway_error::upstream_bad_response, body_of.error, route_.name);
                }
            } else {  // the splitter answers every key; this is a safety net
                mine.status = 502;
                mine.body = error_body(gateway_error::upstream_bad_response, "no answer for this item", route_.name);
            }
            mine.status = apply_success_status(route_.coalesce, w.method, mine.status);
            answer(w, std::move(mine));
        }
        item.waiters.clear();
    }
}

void batcher::answer(waiter& w, reply&& r) {
    --queued_callers_;
    unsent_.erase(w.serial);
    call_safely(w.done, std::move(r));
}

void batcher::call_safely(reply_handler& done, reply&& r) {
    if (!done) return;
    // Counted until the handler and what it holds are destroyed too (declared before it).
    ++answering;
    struct leave {
        ~leave() { --answering; }
    } on_return;
    auto handler = std::move(done);
    done = nullptr;
    // A caller's handler must never unwind through the batcher: the rest of the batch and
    // the route's in-flight count depend on this loop finishing.
    try {
        handler(std::move(r));
    } catch (const std::exception& e) {
        gateway::log_line("error", "a caller's completion failed", {{"route", route_.name}, {"error", e.what()}});
    } catch (...) {
        gateway::log_line("error", "a caller's completion failed", {{"route", route_.name}});
    }
}

bool batcher::gave_up(const waiter& w, clock_type::time_point now) const { return w.deadline <= now || w.left(); }

void batcher::answer_gave_up(waiter& w, clock_type::time_point now) {
    reply r;
    // A write merged into one item with other callers' (merge_patch, last_write_wins) still goes
    // with theirs when they wait on: its caller is not told only that its batch was not sent.
    const bool merged = route_.coalesce.same_key == config::same_key_policy::merge_patch ||
                        route_.coalesce.same_key == config::same_key_policy::last_write_wins;
    const std::string merged_note =
        merged ? " (a change merged into an item that other callers still wait for goes with theirs)" : "";
    if (w.left()) {
        metrics_.callers_left->Increment();
        r.status = http_status(gateway_error::client_closed);  // 499: rarely read, the access log does
        r.body = error_body(gateway_error::client_closed,
                            "the caller closed its connection before its batch was sent" + merged_note, route_.name);
    } else if (w.deadline <= now) {
        r.status = http_status(gateway_error::upstream_timeout);
        r.body = error_body(gateway_error::upstream_timeout,
                            "the caller's deadline passed before its batch could be sent (the upstream had no free slot)" +
                                merged_note,
                            route_.name);
    } else {
        r.status = http_status(gateway_error::upstream_timeout);
        r.body = error_body(gateway_error::upstream_timeout,
                            "the caller's deadline comes before the upstream could answer (its quickest batch call "
                            "took longer than the time left), so its batch was not sent" +
                                merged_note,
                            route_.name);
    }
    answer(w, std::move(r));
}

bool batcher::shed_expired(pending& p) {
    const auto now = clock_type::now();
    // Each caller who gave up (deadline passed, or hung up) is answered now and taken out; an
    // item nobody waits for any more is not sent, so a write nobody waits for is never applied.
    // An item another caller still waits for goes (a shared read, or a merged write that
    // carries the others' changes too). About to be sent, a caller whose deadline comes before
    // the upstream's quickest answer so far could only time out: it is not sent either.
    const auto too_late = now + slots_->base_rtt();
    window_type::remove_from(
        p.b, [&](const waiter& w) { return gave_up(w, now) || w.deadline <= too_late; },
        [&](waiter&& w) {
            waiter gone = std::move(w);
            answer_gave_up(gone, now);
        });
    return p.b.items.empty();
}

// Answers, at their deadline, the callers whose batch is still open, held or queued for a slot,
// and takes them out so that nothing is sent for them. Departed callers are taken out too.
void batcher::sweep() {
    const auto now = clock_type::now();
    last_sweep_ = now;
    for (auto it = ready_.begin(); it != ready_.end();) {
        if (shed_expired(*it))
            it = ready_.erase(it);
        else
            ++it;
    }
    auto reopened = window_.remove_waiters(
        now, [&](const waiter& w) { return gave_up(w, now); },
        [&](waiter&& w) {
            ++queued_callers_;  // answer() counts it out
            waiter gone = std::move(w);
            answer_gave_up(gone, now);
        });
    enqueue(std::move(reopened));
}

// The earliest deadline of a caller not yet sent, dropping the entries of callers sent or
// answered since.
std::optional<clock_type::time_point> batcher::next_caller_deadline() {
    while (!caller_deadlines_.empty() && !unsent_.contains(caller_deadlines_.top().second)) caller_deadlines_.pop();
    if (caller_deadlines_.empty()) return std::nullopt;
    return caller_deadlines_.top().first;
}

void batcher::arm_sweep() {
    const auto next = next_caller_deadline();
    if (!next) return;
    // Never more than one sweep a millisecond, whatever a caller's deadline: a sweep walks the
    // queue and the window.
    const auto at = std::max(*next, last_sweep_ + std::chrono::milliseconds(1));
    if (sweep_at_ && *sweep_at_ <= at) return;  // an earlier or equal wake-up is already set
    sweep_at_ = at;
    sweep_timer_.expires_at(at);
    sweep_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
        if (ec == net::error::operation_aborted) return;  // re-armed earlier; that wait takes over
        self->sweep_at_.reset();
        if (auto next = self->next_caller_deadline(); next && *next <= clock_type::now()) {
            self->sweep();
            self->arm_timer();
        }
        self->arm_sweep();
        self->update_waiting_gauge();
    });
}

void batcher::answer_all(pending& p, const reply& proto) {
    for (auto& item : p.b.items) {
        for (auto& w : item.waiters) answer(w, reply(proto));
        item.waiters.clear();
    }
}

// The gauges are the sum over the route's shards (and over a retired snapshot's batchers still
// finishing): each batcher adds the change of its own part.
void batcher::update_waiting_gauge() {
    const std::size_t waiting = window_.waiting() + queued_callers_;
    std::size_t for_slot = window_.held() ? window_.held_waiters() : 0;
    for (const auto& p : ready_) for_slot += p.b.waiter_count();
    if (waiting != published_waiting_) {
        load_->waiting.fetch_add(waiting - published_waiting_, std::memory_order_relaxed);  // wraps when it shrinks
        metrics_.waiting->Increment(static_cast<double>(waiting) - static_cast<double>(published_waiting_));
        published_waiting_ = waiting;
    }
    if (metrics_.partitions && window_.open_batches() != published_partitions_) {
        metrics_.partitions->Increment(static_cast<double>(window_.open_batches()) -
                                       static_cast<double>(published_partitions_));
        published_partitions_ = window_.open_batches();
    }
    if (for_slot != published_for_slot_) {
        metrics_.waiting_for_slot->Increment(static_cast<double>(for_slot) - static_cast<double>(published_for_slot_));
        published_for_slot_ = for_slot;
    }
}

}  // namespace batchgate::coalescer
