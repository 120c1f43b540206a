// Mode fan_out: one upstream call per item of the client's batch call, at most `concurrency`
// at a time, each bounded by item_timeout and all by the call's deadline.
#include "fanout/engine.hpp"

#include <algorithm>
#include <optional>
#include <vector>

#include <boost/beast/http.hpp>

#include "fanout/core/fan_out.hpp"
#include "fanout/core/plan_runner.hpp"
#include "fanout/core/request_check.hpp"
#include "net/hop_by_hop.hpp"
#include "text/json_text.hpp"

namespace batchgate::fanout {

namespace {

namespace http = boost::beast::http;
using clock_type = std::chrono::steady_clock;
using gateway::request_t;
using gateway::response_t;

enum class outcome { success, error, timeout, skipped };

class fan_out_call_state : public std::enable_shared_from_this<fan_out_call_state> {
public:
    fan_out_call_state(const engine_env& env, const config::route_settings& route, request_t req,
                       gateway::request_context ctx, gateway::dispatch_done done, fan_out_call call)
        : env_(env),
          route_(route),
          pool_(env.pool),
          req_(std::move(req)),
          ctx_(std::move(ctx)),
          done_(std::move(done)),
          call_(std::move(call)),
          deadline_(std::min(ctx_.deadline, clock_type::now() + route_.fan_out.timeout)),
          metrics_(env_.metrics.fanout(route_.name)),
          upstream_metrics_(env_.metrics.upstream(route_.upstream, route_.name)),
          entries_(call_.items.size()),
          succeeded_(call_.items.size(), false),
          runner_(dependency_plan(std::vector<std::vector<std::size_t>>(call_.items.size())),
                  route_.fan_out.concurrency,
                  // Raw this: the runner is a member, and every hook runs while a holder of
                  // shared_from_this() (start() or an item's completion) is on the stack.
                  {[this](std::size_t i) { send(i); }, [](std::size_t) {}, [this] { answer(); }}) {
        header_ = [this](std::string_view name) { return gateway::header_value(req_, name); };
        // Each item goes on the client's behalf: the list it came with, then its address, as on
        // passthrough.
        gateway::append_forwarded_for(forwarded_for_, req_, ctx_.client_ip);
    }

    void start() {
        auto self = shared_from_this();
        metrics_.calls->Increment();
        metrics_.items->Observe(static_cast<double>(call_.items.size()));
        runner_.run();
    }

private:
    void send(std::size_t i) {
        item_request item = build_item_request(route_.fan_out, call_, header_, i);
        if (!item.error.empty()) return complete(i, {400, json{{"error", item.error}}}, outcome::error);
        if (auto err = check_message(item.target, item.headers))  // item values in the URL or headers
            return complete(i, {400, json{{"error", *err}}}, outcome::error);
        const auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - clock_type::now());
        if (remaining.count() <= 0)
            return complete(i, {504, json{{"error", "the call's deadline passed before this item was sent"}}},
                            outcome::skipped);

        std::size_t header_bytes = 0;
        for (const auto& [name, value] : item.headers) header_bytes += name.size() + value.size() + 4;
        if (header_bytes > env_.limits.max_header_bytes)  // Beast throws past 64 KiB per field
            return complete(i, {431, json{{"error", "the item's headers exceed limits.max_header"}}}, outcome::error);
        if (forwarded_for_.size() > gateway::max_field_value)
            return complete(i, {431, json{{"error", std::string(gateway::forwarded_for_too_long)}}}, outcome::error);
        gateway::upstream_request up{http::string_to_verb(item.method), item.target, 11};
        if (up.method() == http::verb::unknown) up.method_string(item.method);
        for (const auto& [name, value] : item.headers) up.set(name, value);
        up.set("X-Request-Id", ctx_.request_id);
        if (!ctx_.traceparent.empty()) up.set("traceparent", ctx_.traceparent);
        up.set("X-Forwarded-For", forwarded_for_);
        up.set("X-Forwarded-Proto", ctx_.proto);  // https with listen_tls
        gateway::accept_identity_only(up);  // the answer is read here, into the call's answer
        if (!item.body.empty()) {
            up.body() = std::move(item.body);
            up.prepare_payload();
        }
        // Why min: item_timeout bounds each item, the call's deadline bounds them all.
        const auto timeout = std::min<std::chrono::milliseconds>(route_.fan_out.item_timeout, remaining);
        pool_->async_send(std::move(up), timeout, [self = shared_from_this(), i](gateway::upstream_result r) {
            self->on_upstream(i, std::move(r));
        });
    }

    void on_upstream(std::size_t i, gateway::upstream_result r) {
        upstream_metrics_.duration->Observe(std::chrono::duration<double>(r.elapsed).count());
        const std::string where = "upstream '" + route_.upstream + "'";
        switch (r.failure) {
            case gateway::upstream_failure::none: break;
            case gateway::upstream_failure::timeout:
                upstream_metrics_.requests->inc(std::string("timeout"));
                return complete(i, {504, json{{"error", where + " timed out"}}}, outcome::timeout);
            case gateway::upstream_failure::connect_failed:
                upstream_metrics_.requests->inc(std::string("connect_error"));
                return complete(i, {502, json{{"error", where + ": " + r.detail}}}, outcome::error);
            case gateway::upstream_failure::io_error:
                upstream_metrics_.requests->inc(std::string("io_error"));
                return complete(i, {502, json{{"error", where + ": " + r.detail}}}, outcome::error);
            case gateway::upstream_failure::bad_response:
                upstream_metrics_.requests->inc(std::string("bad_response"));
                return complete(i, {502, json{{"error", where + ": " + r.detail}}}, outcome::error);
            case gateway::upstream_failure::over_budget:
                upstream_metrics_.requests->inc(std::string("over_budget"));
                return complete(i, {502, json{{"error", r.detail}}}, outcome::error);
        }
        if (auto coding = gateway::content_coding(r.response); !coding.empty() && !r.response.body().empty()) {
            upstream_metrics_.requests->inc(std::string("bad_response"));
            return complete(i, {502, json{{"error", where + " answered with " + gateway::coded_answer(coding)}}},
                            outcome::error);
        }
        // Held until the call's answer goes out: every item's answer counts against max_buffered.
        if (!held_.take(r.response.body().size())) {
            if (env_.budget_rejected) env_.budget_rejected->Increment();
            return complete(i, {502, json{{"error", std::string(gateway::held_answer_refused)}}}, outcome::error);
        }
        const int status = r.response.result_int();
        const std::size_t max_depth = env_.limits.max_json_depth;
        auto parsed = routes::parse_json(r.response.body(), max_depth);
        if (parsed.status == routes::json_status::too_deep) {
            upstream_metrics_.requests->inc(std::string("bad_response"));
            return complete(i, {502, json{{"error", where + " answered with " + routes::json_depth_message(max_depth)}}},
                            outcome::error);
        }
        upstream_metrics_.requests->inc(status);
        json body = parsed.ok() ? std::move(parsed.value) : json(r.response.body());
        const outcome o = status >= 200 && status < 300 ? outcome::success : outcome::error;
        complete(i, {status, std::move(body)}, o);
    }

    void complete(std::size_t i, item_result result, outcome o) {
        switch (o) {
            case outcome::success: metrics_.success->Increment(); break;
            case outcome::error: metrics_.error->Increment(); break;
            case outcome::timeout: metrics_.timeout->Increment(); break;
            case outcome::skipped: metrics_.skipped->Increment(); break;
        }
        // Each index is written once, before finish(); answer() reads after the runner's lock.
        entries_[i] = render_item(route_.fan_out, call_, header_, i, result);
        succeeded_[i] = result.ok();
        runner_.finish(i, result.status);
    }

    void answer() {
        const auto succeeded = static_cast<std::size_t>(std::count(succeeded_.begin(), succeeded_.end(), char(1)));
        response_t res{http::status::ok, req_.version()};
        res.set(http::field::content_type, "application/json");
        res.body() = render_envelope(route_.fan_out, call_, header_, std::move(entries_), succeeded,
                                     std::chrono::system_clock::now());
        res.prepare_payload();
        held_.release();  // the session's lease counts the answer from here
        auto done = std::move(done_);
        done(std::move(res), {});
    }

    engine_env env_;  // keeps route_ and pool_ alive
    const config::route_settings& route_;
    std::shared_ptr<gateway::upstream_pool> pool_;
    request_t req_;
    gateway::request_context ctx_;
    gateway::dispatch_done done_;
    fan_out_call call_;
    header_lookup header_;
    std::string forwarded_for_;  // X-Forwarded-For of every item
    clock_type::time_point deadline_;
    metrics::fanout_metrics& metrics_;
    metrics::upstream_route_metrics& upstream_metrics_;
    std::vector<json> entries_;
    std::vector<char> succeeded_;  // not vector<bool>: items complete on different threads
    plan_runner runner_;
    gateway::shared_lease held_{env_.budget};  // the items' answers (max_buffered)
};

}  // namespace

void serve_fan_out(const engine_env& env, const config::route_settings& route, request_t req,
                   gateway::request_context ctx, gateway::dispatch_done done) {
    const unsigned version = req.version();
    fan_out_call call = parse_fan_out(route.fan_out, req.body());
    if (!call.error.empty())
        return done(gateway::error_response(gateway_error::bad_request, call.error, route.name, version), {});
    if (!env.pool)
        return done(gateway::error_response(gateway_error::internal, "route names an unknown upstream", route.name, version),
                    {});
    std::make_shared<fan_out_call_state>(env, route, std::move(req), std::move(ctx), std::move(done), std::move(call))
        ->start();
}

}  // namespace batchgate::fanout
