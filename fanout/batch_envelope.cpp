// Mode batch_envelope: {"requests":[...]} -> one dispatch() per sub-request (depth 1), in
// dependsOn order and at most `concurrency` at a time -> {"responses":[...]} in request order.
#include "fanout/engine.hpp"

#include <algorithm>
#include <mutex>
#include <optional>
#include <vector>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include <boost/beast/core/string.hpp>
#include <boost/beast/http.hpp>

#include "fanout/core/batch_envelope.hpp"
#include "fanout/core/plan_runner.hpp"
#include "fanout/core/request_check.hpp"
#include "net/hop_by_hop.hpp"

namespace batchgate::fanout {

namespace {

namespace http = boost::beast::http;
namespace beast = boost::beast;
using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;
using gateway::request_t;
using gateway::response_t;

bool hidden_header(std::string_view name) {
    static constexpr std::string_view hidden[] = {"connection", "keep-alive", "transfer-encoding", "content-length",
                                                  "te", "trailer", "upgrade", "proxy-connection"};
    for (auto h : hidden)
        if (beast::iequals(name, h)) return true;
    return false;
}

class envelope_call : public std::enable_shared_from_this<envelope_call> {
public:
    envelope_call(const engine_env& env, const config::route_settings& route, request_t req,
                  gateway::request_context ctx, gateway::dispatch_done done, std::vector<sub_request> requests)
        : env_(env),
          route_(route),
          req_(std::move(req)),
          ctx_(std::move(ctx)),
          done_(std::move(done)),
          requests_(std::move(requests)),
          deadline_(std::min(ctx_.deadline, clock_type::now() + route_.batch_envelope.timeout)),
          metrics_(env_.metrics.fanout(route_.name)),
          entries_(requests_.size()),
          statuses_(requests_.size(), 0),
          timer_(boost::asio::make_strand(env_.executor)),
          runner_(plan(requests_), route_.batch_envelope.concurrency,
                  // Raw this: the runner is a member, and every hook runs while a holder of
                  // shared_from_this() (start() or a sub-request's completion) is on the stack.
                  {[this](std::size_t i) { send(i); }, [this](std::size_t i) { skip(i); }, [this] { answer(); }}) {}

    void start() {
        auto self = shared_from_this();
        metrics_.calls->Increment();
        metrics_.items->Observe(static_cast<double>(requests_.size()));
        // At the deadline the call is answered with what has finished; the rest get 504.
        timer_.expires_at(deadline_);
        timer_.async_wait([self](boost::system::error_code ec) {
            if (!ec) self->on_deadline();
        });
        runner_.run();
    }

private:
    static dependency_plan plan(const std::vector<sub_request>& requests) {
        std::vector<std::vector<std::size_t>> deps;
        for (const auto& r : requests) deps.push_back(r.depends_on);
        return dependency_plan(std::move(deps));
    }

    // Copies a header of the outer call unless the sub-request names its own.
    void inherit(request_t& sub, const sub_request& r, http::field f, std::string_view name) {
        if (names_header(r, name)) return;
        if (auto v = gateway::header_value(req_, name)) sub.set(f, *v);  // every line of it
    }

    void send(std::size_t i) {
        const sub_request& r = requests_[i];
        if (auto err = check_sub_url(r.url))
            return reject(i, 400, "bad_request", *err);
        if (auto err = check_request(r.method, r.url, r.headers))  // what the listener would refuse
            return reject(i, 400, "bad_request", *err);
        if (clock_type::now() >= deadline_)
            return reject(i, 504, "upstream_timeout", "the $batch call's deadline passed before this sub-request was sent");

        const std::size_t header_limit = env_.limits.max_header_bytes;
        std::size_t header_bytes = 0;
        for (const auto& [name, value] : r.headers) header_bytes += name.size() + value.size() + 4;
        if (header_bytes > header_limit)  // also keeps Beast's 64 KiB field limit from throwing
            return reject(i, 431, "headers_too_large", "the sub-request's headers exceed limits.max_header");
        request_t sub;
        try {
            sub = build_sub_request(r);
        } catch (const std::exception& e) {
            // Beast refuses some shapes (a TRACE with a body, say): this entry only.
            return reject(i, 400, "bad_request", std::string("cannot build the sub-request: ") + e.what());
        }
        gateway::request_context ctx;
        ctx.client_ip = ctx_.client_ip;
        ctx.proto = ctx_.proto;
        ctx.request_id = ctx_.request_id;
        ctx.traceparent = ctx_.traceparent;
        ctx.deadline = deadline_;
        ctx.depth = ctx_.depth + 1;
        env_.dispatch(std::move(sub), std::move(ctx),
                      [self = shared_from_this(), i](gateway::answer&& res, gateway::dispatch_info) {
                          self->on_response(i, gateway::to_response(std::move(res), 11));
                      });
    }

    request_t build_sub_request(const sub_request& r) {
        request_t sub{http::string_to_verb(r.method), r.url, 11};
        if (sub.method() == http::verb::unknown) sub.method_string(r.method);
        for (const auto& [name, value] : r.headers)
            if (!hidden_header(name)) sub.set(name, value);
        inherit(sub, r, http::field::authorization, "authorization");
        inherit(sub, r, http::field::cookie, "cookie");
        inherit(sub, r, http::field::host, "host");
        // The client's X-Forwarded-For list, unless the entry sends its own: the dispatch adds the
        // client's address after it, as on the client's own requests.
        if (!names_header(r, "x-forwarded-for")) {
            std::string list;  // every line's elements and ", " after each: the address comes later
            gateway::append_forwarded_for(list, req_, "");
            if (!list.empty()) sub.set("X-Forwarded-For", list.substr(0, list.size() - 2));
        }
        sub.set("X-Request-Id", ctx_.request_id);
        // Its answer is embedded in the envelope's JSON: asked for unencoded, whatever the entry says.
        gateway::accept_identity_only(sub);
        if (r.body) {
            auto [bytes, is_json] = encode_body(*r.body);
            if (is_json && !names_header(r, "content-type")) sub.set(http::field::content_type, "application/json");
            sub.body() = std::move(bytes);
            sub.prepare_payload();
        }
        return sub;
    }

    void on_response(std::size_t i, response_t res) {
        // A HEAD has no body to embed (a coalesce route composes one, which a client's connection
        // never sends for a HEAD): not held, parsed or checked for a coding either.
        if (requests_[i].method == "HEAD") res.body().clear();
        // Held until the envelope goes out: every entry's answer counts against max_buffered.
        if (!held_.take(res.body().size() + 64 * std::distance(res.begin(), res.end()))) {
            if (env_.budget_rejected) env_.budget_rejected->Increment();
            return reject(i, 502, "answer_over_budget", std::string(gateway::held_answer_refused));
        }
        // Asked for identity (build_sub_request): a coded body would be embedded as garbage.
        const std::string coding = res.body().empty() ? std::string() : gateway::content_coding(res);
        const int status = coding.empty() ? res.result_int() : 502;
        std::vector<std::pair<std::string, std::string>> headers;
        for (const auto& f : res)
            if (!hidden_header(f.name_string())) headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
        std::string_view type;
        if (auto it = res.find(http::field::content_type); it != res.end()) type = it->value();
        {
            std::lock_guard lock(mutex_);
            if (answered_) return;  // the deadline answered (and counted) it already
            if (status == 504) metrics_.timeout->Increment();
            else if (status >= 200 && status < 300) metrics_.success->Increment();
            else metrics_.error->Increment();
            entries_[i] = coding.empty() ? response_entry(requests_[i].id, status, headers, type, res.body(),
                                                          env_.limits.max_json_depth)
                                         : error_entry(requests_[i].id, 502, "upstream_bad_response",
                                                       "the answer came with " + gateway::coded_answer(coding));
            statuses_[i] = status;
        }
        runner_.finish(i, status);
    }

    // Answered by the gateway without dispatching (bad URL, deadline passed).
    void reject(std::size_t i, int status, std::string_view code, const std::string& message) {
        {
            std::lock_guard lock(mutex_);
            if (answered_) return;
            (status == 504 ? metrics_.skipped : metrics_.error)->Increment();
            entries_[i] = error_entry(requests_[i].id, status, code, message);
            statuses_[i] = status;
        }
        runner_.finish(i, status);
    }

    // A dependency did not succeed: 424, naming it.
    void skip(std::size_t i) {
        std::lock_guard lock(mutex_);
        if (answered_) return;
        metrics_.skipped->Increment();
        std::string failed;
        for (std::size_t d : requests_[i].depends_on)
            if (statuses_[d] < 200 || statuses_[d] >= 300) {
                failed = requests_[d].id;
                break;
            }
        entries_[i] = error_entry(requests_[i].id, 424, "failed_dependency",
                                  "not sent: sub-request \"" + failed + "\" it depends on did not succeed");
        statuses_[i] = 424;
    }

    void answer() {
        response_t res{http::status::ok, req_.version()};
        {
            std::lock_guard lock(mutex_);
            if (answered_) return;
            answered_ = true;
            // A HEAD has no body to embed, whoever answered it (the gateway's own errors carry one
            // that a client's connection never sends for a HEAD).
            for (std::size_t i = 0; i < entries_.size(); ++i)
                if (requests_[i].method == "HEAD" && entries_[i].is_object()) entries_[i].erase("body");
            res.body() = json{{"responses", std::move(entries_)}}.dump(-1, ' ', false, json::error_handler_t::replace);
        }
        held_.release();  // the session's lease counts the envelope from here
        // Stop the deadline timer on its own strand; it holds this call alive until then.
        boost::asio::post(timer_.get_executor(), [self = shared_from_this()] { self->timer_.cancel(); });
        res.set(http::field::content_type, "application/json");
        res.prepare_payload();
        auto done = std::move(done_);
        done(std::move(res), {});
    }

    // The call's deadline passed with sub-requests still out (a coalesced one can wait on a
    // batch that other callers keep open longer): answer now, those entries 504.
    void on_deadline() {
        {
            std::lock_guard lock(mutex_);
            if (answered_) return;
            for (std::size_t i = 0; i < entries_.size(); ++i) {
                if (statuses_[i] != 0) continue;
                entries_[i] = error_entry(requests_[i].id, 504, "upstream_timeout",
                                          "no answer before the $batch call's deadline");
                statuses_[i] = 504;
                metrics_.timeout->Increment();
            }
        }
        answer();
    }

    engine_env env_;  // keeps route_ alive; sub-requests route with its snapshot
    const config::route_settings& route_;
    request_t req_;
    gateway::request_context ctx_;
    gateway::dispatch_done done_;
    std::vector<sub_request> requests_;
    clock_type::time_point deadline_;
    metrics::fanout_metrics& metrics_;
    std::mutex mutex_;  // entries_, statuses_ and answered_: completions arrive on any thread
    std::vector<json> entries_;
    gateway::shared_lease held_{env_.budget};  // the entries' answers (max_buffered)
    std::vector<int> statuses_;  // 0 = not finished yet
    bool answered_ = false;
    boost::asio::steady_timer timer_;
    plan_runner runner_;
};

}  // namespace

void serve_batch_envelope(const engine_env& env, const config::route_settings& route, request_t req,
                          gateway::request_context ctx, gateway::dispatch_done done) {
    const unsigned version = req.version();
    if (ctx.depth > 0)
        return done(gateway::error_response(gateway_error::bad_request, "a $batch call cannot be nested in another",
                                            route.name, version),
                    {});
    parsed_envelope e = parse_envelope(req.body(), route.batch_envelope.max_requests);
    if (e.error == envelope_error::too_many)
        return done(gateway::error_response(gateway_error::payload_too_large, e.message, route.name, version), {});
    if (e.error != envelope_error::none)
        return done(gateway::error_response(gateway_error::bad_request, e.message, route.name, version), {});
    std::make_shared<envelope_call>(env, route, std::move(req), std::move(ctx), std::move(done), std::move(e.requests))
        ->start();
}

}  // namespace batchgate::fanout
