#include "coalescer/batcher.hpp"

#include <atomic>

#include <boost/asio/post.hpp>
#include <boost/beast/http.hpp>

#include "gateway/errors.hpp"

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

}  // namespace

batcher::batcher(net::any_io_executor executor, std::shared_ptr<const config::gateway_config> config,
                 const config::route_settings& route, std::shared_ptr<gateway::upstream_pool> upstream,
                 metrics::registry& metrics)
    : strand_(net::make_strand(executor)),
      config_(std::move(config)),
      route_(route),
      upstream_(std::move(upstream)),
      metrics_(metrics.route(route.name)),
      upstream_metrics_(metrics.upstream(route.upstream, route.name)),
      window_(window_limits{route.coalesce.max_batch_items, route.coalesce.max_batch_bytes,
                            route.coalesce.max_wait}),
      timer_(strand_) {}

void batcher::submit(partition part, std::string key, std::size_t cost, reply_handler done) {
    net::post(strand_, [self = shared_from_this(), part = std::move(part), key = std::move(key), cost,
                        done = std::move(done)]() mutable {
        self->on_submit(std::move(part), std::move(key), cost, std::move(done));
    });
}

void batcher::on_submit(partition part, std::string key, std::size_t cost, reply_handler done) {
    if (window_.waiting() + queued_callers_ >= route_.coalesce.max_waiting) {
        metrics_.rejected->Increment();
        reply r;
        r.status = http_status(gateway_error::overloaded);
        r.body = error_body(gateway_error::overloaded, "too many callers waiting on this route", route_.name);
        r.headers.emplace_back("Retry-After", "1");
        done(std::move(r));
        return;
    }
    const auto now = clock_type::now();
    auto closed = window_.add(part, std::move(key), cost, waiter{std::move(done), now}, now);
    if (auto d = window_.take_deduplicated()) metrics_.deduplicated->Increment(static_cast<double>(d));
    if (draining_) {
        auto rest = window_.drain();
        std::move(rest.begin(), rest.end(), std::back_inserter(closed));
    }
    dispatch(std::move(closed));
    arm_timer();
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
    dispatch(window_.expire(clock_type::now()));
    arm_timer();
    update_waiting_gauge();
}

void batcher::drain() {
    net::post(strand_, [self = shared_from_this()] {
        self->draining_ = true;
        self->dispatch(self->window_.drain());
        self->timer_.cancel();
        self->armed_at_.reset();
        self->update_waiting_gauge();
    });
}

void batcher::dispatch(std::vector<batch> closed) {
    const auto now = clock_type::now();
    for (auto& b : closed) {
        switch (b.reason) {
            case flush_reason::size: metrics_.flush_size->Increment(); break;
            case flush_reason::bytes: metrics_.flush_bytes->Increment(); break;
            case flush_reason::timer: metrics_.flush_timer->Increment(); break;
            case flush_reason::shutdown: metrics_.flush_shutdown->Increment(); break;
        }
        const auto callers = b.waiter_count();
        metrics_.batch_size->Observe(static_cast<double>(b.items.size()));
        if (callers > 1) metrics_.calls_saved->Increment(static_cast<double>(callers - 1));
        for (const auto& item : b.items)
            for (const auto& w : item.waiters) metrics_.batch_wait->Observe(seconds(now - w.enqueued));
        queued_callers_ += callers;
        ready_.push_back(std::move(b));
    }
    // Per-route cap on batch calls in flight, so the gateway never floods the upstream.
    while (!ready_.empty() && in_flight_ < route_.coalesce.max_concurrent_batches) {
        batch b = std::move(ready_.front());
        ready_.pop_front();
        send(std::move(b));
    }
}

void batcher::send(batch b) {
    ++in_flight_;
    std::vector<std::string> keys;
    keys.reserve(b.items.size());
    for (const auto& item : b.items) keys.push_back(item.key);
    outgoing_request out = build_batch_request(route_.coalesce, b.values, keys);

    gateway::upstream_request req;
    req.method_string(out.method);
    req.target(out.target);
    for (auto& [name, value] : out.headers) req.set(name, value);
    std::string batch_id = next_batch_id();
    req.set("X-Batchgate-Batch-Id", batch_id);
    req.body() = std::move(out.body);

    upstream_->async_send(
        std::move(req), upstream_->settings().request_timeout,
        [self = shared_from_this(), b = std::move(b), batch_id](gateway::upstream_result r) mutable {
            // Back onto the strand: the window, queue and counters are strand-owned.
            net::post(self->strand_, [self, b = std::move(b), batch_id = std::move(batch_id),
                                      r = std::move(r)]() mutable {
                self->on_answer(std::move(b), batch_id, std::move(r));
            });
        });
}

void batcher::on_answer(batch b, const std::string& batch_id, gateway::upstream_result r) {
    --in_flight_;
    queued_callers_ -= b.waiter_count();
    upstream_metrics_.duration->Observe(seconds(r.elapsed));

    reply proto;
    proto.batch_id = batch_id;
    proto.batch_size = b.items.size();
    proto.upstream_elapsed = r.elapsed;
    const std::string& upstream_name = route_.upstream;

    auto fail_all = [&](gateway_error e, const std::string& message) {
        proto.status = http_status(e);
        proto.body = error_body(e, message, route_.name);
        answer_all(b, proto);
    };

    switch (r.failure) {
        case gateway::upstream_failure::none: break;
        case gateway::upstream_failure::timeout:
            upstream_metrics_.requests->inc(std::string("timeout"));
            fail_all(gateway_error::upstream_timeout, "upstream '" + upstream_name + "' timed out: " + r.detail);
            break;
        case gateway::upstream_failure::connect_failed:
            upstream_metrics_.requests->inc(std::string("connect_error"));
            fail_all(gateway_error::upstream_unreachable, "upstream '" + upstream_name + "': " + r.detail);
            break;
        case gateway::upstream_failure::io_error:
            upstream_metrics_.requests->inc(std::string("io_error"));
            fail_all(gateway_error::upstream_unreachable, "upstream '" + upstream_name + "': " + r.detail);
            break;
        case gateway::upstream_failure::bad_response:
            upstream_metrics_.requests->inc(std::string("bad_response"));
            fail_all(gateway_error::upstream_bad_response, "upstream '" + upstream_name + "': " + r.detail);
            break;
    }
    if (r.failure == gateway::upstream_failure::none) {
        const int status = r.response.result_int();
        upstream_metrics_.requests->inc(status);
        proto.upstream_status = status;
        if (status == 401 || status == 403 || status == 429) {
            // The whole partition shares these credentials / this rate limit: the upstream's
            // own answer is the right one for every caller.
            proto.status = status;
            proto.body = r.response.body();
            for (auto field : {http::field::retry_after, http::field::www_authenticate})
                if (auto it = r.response.find(field); it != r.response.end())
                    proto.headers.emplace_back(std::string(it->name_string()), std::string(it->value()));
            answer_all(b, proto);
        } else if (status < 200 || status > 299) {
            fail_all(gateway_error::upstream_bad_response,
                     "upstream '" + upstream_name + "' answered the batch call with status " + std::to_string(status));
        } else {
            std::vector<std::string> keys;
            keys.reserve(b.items.size());
            for (const auto& item : b.items) keys.push_back(item.key);
            split_outcome split = split_batch_response(route_.coalesce, route_.name, r.response.body(), keys);
            if (!split.error.empty()) {
                fail_all(gateway_error::upstream_bad_response, "upstream '" + upstream_name + "': " + split.error);
            } else {
                for (auto& item : b.items) {
                    reply rep = proto;
                    if (auto it = split.items.find(item.key); it != split.items.end()) {
                        rep.status = it->second.status;
                        rep.body = it->second.body;
                    } else {  // the splitter answers every key; this is a safety net
                        rep.status = 502;
                        rep.body = error_body(gateway_error::upstream_bad_response, "no answer for this item", route_.name);
                    }
                    for (auto& w : item.waiters) w.done(rep);
                    item.waiters.clear();
                }
            }
        }
    }
    dispatch({});
    update_waiting_gauge();
}

void batcher::answer_all(batch& b, const reply& proto) {
    for (auto& item : b.items) {
        for (auto& w : item.waiters) w.done(proto);
        item.waiters.clear();
    }
}

void batcher::update_waiting_gauge() {
    metrics_.waiting->Set(static_cast<double>(window_.waiting() + queued_callers_));
}

}  // namespace batchgate::coalescer
