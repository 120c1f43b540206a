#include "gateway/http_session.hpp"

#include <chrono>
#include <optional>
#include <string>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "coalescer/core/codec.hpp"
#include "gateway/errors.hpp"

namespace batchgate::gateway {

namespace net = boost::asio;
namespace beast = boost::beast;
using tcp = net::ip::tcp;
using clock_type = std::chrono::steady_clock;

namespace {

using request_t = http::request<http::string_body>;
using response_t = http::response<http::string_body>;

constexpr std::string_view json_type = "application/json";

bool is_hop_by_hop(std::string_view name) {
    static constexpr std::string_view hop[] = {"connection", "keep-alive", "proxy-authenticate",
                                               "proxy-authorization", "te", "trailer",
                                               "transfer-encoding", "upgrade", "proxy-connection"};
    for (auto h : hop)
        if (beast::iequals(name, h)) return true;
    return false;
}

// Removes hop-by-hop headers, including any the Connection header names.
template <class Fields>
void strip_hop_by_hop(Fields& fields) {
    std::vector<std::string> named;
    for (auto it = fields.find(http::field::connection); it != fields.end() && beast::iequals(it->name_string(), "connection");
         ++it) {
        for (auto token : http::token_list(it->value())) named.emplace_back(token);
    }
    for (const auto& n : named) fields.erase(n);
    for (auto it = fields.begin(); it != fields.end();) {
        if (is_hop_by_hop(it->name_string()))
            it = fields.erase(it);
        else
            ++it;
    }
}

class http_session : public std::enable_shared_from_this<http_session> {
public:
    http_session(tcp::socket socket, listener_role role, std::shared_ptr<shared_state> state)
        : stream_(std::move(socket)), role_(role), state_(std::move(state)), deadline_(stream_.get_executor()) {
        state_->metrics.open_connections().Increment();
    }

    ~http_session() { state_->metrics.open_connections().Decrement(); }

    void run() {
        // Start on the connection's strand.
        net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->do_read(); });
    }

private:
    void do_read() {
        runtime_ = state_->current();
        const auto& limits = runtime_->config->limits;
        parser_.emplace();
        parser_->body_limit(limits.max_body_bytes);
        parser_->header_limit(static_cast<std::uint32_t>(limits.max_header_bytes));
        // Idle keep-alive connections (and slow senders) are closed after idle_timeout.
        stream_.expires_after(limits.idle_timeout);
        http::async_read(stream_, buffer_, *parser_,
                         [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_read(ec); });
    }

    void on_read(beast::error_code ec) {
        if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == net::error::connection_reset ||
            ec == net::error::operation_aborted || ec == net::error::eof)
            return close();
        if (ec) {
            // The request cannot be trusted as a whole: answer it and close the connection.
            keep_alive_ = false;
            route_name_.clear();
            route_metrics_ = nullptr;
            started_ = clock_type::now();
            ++generation_;
            state_->active_requests.fetch_add(1);
            answered_ = false;
            if (ec == http::error::body_limit)
                return respond_error(gateway_error::payload_too_large,
                                     "request body exceeds limits.max_body (" +
                                         std::to_string(runtime_->config->limits.max_body_bytes) + " bytes)");
            if (ec == http::error::header_limit)
                return respond_error(gateway_error::headers_too_large, "request headers exceed limits.max_header");
            return respond_error(gateway_error::bad_request, "malformed HTTP request: " + ec.message());
        }
        request_ = parser_->release();
        parser_.reset();
        runtime_ = state_->current();  // route with the config current when the request arrived
        keep_alive_ = request_.keep_alive() && !state_->draining.load();
        started_ = clock_type::now();
        ++generation_;
        answered_ = false;
        route_name_.clear();
        route_metrics_ = nullptr;
        state_->active_requests.fetch_add(1);
        stream_.expires_never();
        if (role_ == listener_role::admin) return handle_admin();
        handle_traffic();
    }

    // --- admin listener: metrics and health ---------------------------------------------

    void handle_admin() {
        auto [path, query] = routes::split_target(request_.target());
        if (request_.method() != http::verb::get && request_.method() != http::verb::head)
            return respond_error(gateway_error::bad_request, "admin endpoints accept GET only");
        if (path == "/metrics")
            return respond(200, state_->metrics.serialize(), "text/plain; version=0.0.4; charset=utf-8");
        if (path == "/healthz") return respond(200, R"({"status":"ok"})", json_type);
        if (path == "/readyz") {
            if (state_->ready.load() && !state_->draining.load())
                return respond(200, R"({"status":"ready"})", json_type);
            return respond(503, state_->draining.load() ? R"({"status":"draining"})" : R"({"status":"starting"})",
                           json_type);
        }
        respond_error(gateway_error::not_found, "admin endpoints are /metrics, /healthz and /readyz");
    }

    // --- traffic listener ---------------------------------------------------------------------

    void handle_traffic() {
        auto [path, query] = routes::split_target(request_.target());
        routes::match_result m = runtime_->table.match(request_.method_string(), path);
        if (!m.route)
            return respond_error(gateway_error::not_found,
                                 "no route matches " + std::string(request_.method_string()) + " " + std::string(path));
        route_ = m.route;
        route_name_ = route_->name;
        route_metrics_ = &state_->metrics.route(route_name_);
        arm_deadline();
        if (route_->mode == config::route_mode::coalesce) return coalesce(path, query, std::move(m.path_params));
        passthrough();
    }

    config::duration caller_timeout() const {
        if (route_->timeout.count() > 0) return route_->timeout;
        const auto* up = runtime_->config->find_upstream(route_->upstream);
        auto t = (up ? up->request_timeout : config::duration(10000)) + std::chrono::seconds(1);
        if (route_->mode == config::route_mode::coalesce) t += route_->coalesce.max_wait;
        return t;
    }

    // Safety net: whatever happens downstream, the caller is answered by its deadline.
    void arm_deadline() {
        deadline_.expires_after(caller_timeout());
        deadline_.async_wait([self = shared_from_this(), gen = generation_](beast::error_code ec) {
            if (ec || gen != self->generation_ || self->answered_) return;
            self->respond_error(gateway_error::upstream_timeout, "no answer before the route's timeout");
        });
    }

    void coalesce(std::string_view path, std::string_view query, routes::param_list params) {
        const auto& settings = route_->coalesce;
        coalescer::caller_request caller;
        caller.method = request_.method_string();
        caller.path = path;
        caller.query = query;
        caller.path_params = std::move(params);
        caller.header = [this](std::string_view name) -> std::optional<std::string_view> {
            auto it = request_.find(name);
            if (it == request_.end()) return std::nullopt;
            return std::string_view(it->value().data(), it->value().size());
        };
        caller.body = request_.body();

        coalescer::key_result key = coalescer::extract_key(settings, caller);
        if (!key.key) return respond_error(gateway_error::bad_request, key.error);
        coalescer::partition part = coalescer::make_partition(route_->name, settings, caller);
        const std::size_t cost = coalescer::item_cost(settings, *key.key);

        auto it = runtime_->batchers.find(route_->name);
        if (it == runtime_->batchers.end())
            return respond_error(gateway_error::internal, "route has no batcher");
        it->second->submit(std::move(part), std::move(*key.key), cost,
                           [self = shared_from_this(), gen = generation_](coalescer::reply r) {
                               // Back onto this connection's strand.
                               net::post(self->stream_.get_executor(), [self, gen, r = std::move(r)]() mutable {
                                   self->on_reply(gen, std::move(r));
                               });
                           });
    }

    void on_reply(std::uint64_t gen, coalescer::reply r) {
        if (gen != generation_ || answered_) return;  // the deadline already answered this caller
        response_t res{static_cast<http::status>(r.status), request_.version()};
        if (r.status != 204 && r.status != 304) {
            res.set(http::field::content_type, json_type);
            res.body() = std::move(r.body);
        }
        for (auto& [name, value] : r.headers) res.set(name, value);
        if (!r.batch_id.empty()) {
            res.set("X-Batchgate-Batch-Id", r.batch_id);
            res.set("X-Batchgate-Batch-Size", std::to_string(r.batch_size));
        }
        send(std::move(res));
    }

    void passthrough() {
        auto pool_it = runtime_->upstreams.find(route_->upstream);
        if (pool_it == runtime_->upstreams.end())
            return respond_error(gateway_error::internal, "route names an unknown upstream");
        upstream_request up{request_.method(), request_.target(), 11};
        if (request_.method() == http::verb::unknown) up.method_string(request_.method_string());
        for (const auto& f : request_) up.insert(f.name_string(), f.value());
        strip_hop_by_hop(up);
        up.erase(http::field::host);
        up.erase(http::field::content_length);

        beast::error_code ec;
        auto remote = stream_.socket().remote_endpoint(ec);
        std::string client_ip = ec ? std::string("unknown") : remote.address().to_string();
        if (auto xff = request_.find("X-Forwarded-For"); xff != request_.end())
            up.set("X-Forwarded-For", std::string(xff->value()) + ", " + client_ip);
        else
            up.set("X-Forwarded-For", client_ip);
        up.set("X-Forwarded-Proto", "http");
        if (auto host = request_.find(http::field::host); host != request_.end())
            up.set("X-Forwarded-Host", host->value());
        up.body() = std::move(request_.body());

        auto pool = pool_it->second;
        auto* um = &state_->metrics.upstream(route_->upstream, route_->name);
        pool->async_send(std::move(up), caller_timeout(),
                         [self = shared_from_this(), gen = generation_, um](upstream_result r) {
                             net::post(self->stream_.get_executor(), [self, gen, r = std::move(r), um]() mutable {
                                 self->on_upstream(gen, std::move(r), um);
                             });
                         });
    }

    void on_upstream(std::uint64_t gen, upstream_result r, metrics::upstream_route_metrics* um) {
        um->duration->Observe(std::chrono::duration<double>(r.elapsed).count());
        switch (r.failure) {
            case upstream_failure::none: um->requests->inc(r.response.result_int()); break;
            case upstream_failure::timeout: um->requests->inc(std::string("timeout")); break;
            case upstream_failure::connect_failed: um->requests->inc(std::string("connect_error")); break;
            case upstream_failure::io_error: um->requests->inc(std::string("io_error")); break;
            case upstream_failure::bad_response: um->requests->inc(std::string("bad_response")); break;
        }
        // A late answer for a request the deadline already answered: drop it.
        if (gen != generation_ || answered_) return;
        if (r.failure != upstream_failure::none) {
            const std::string where = "upstream '" + route_->upstream + "'";
            if (r.failure == upstream_failure::timeout)
                return respond_error(gateway_error::upstream_timeout, where + " timed out");
            if (r.failure == upstream_failure::bad_response)
                return respond_error(gateway_error::upstream_bad_response, where + ": " + r.detail);
            return respond_error(gateway_error::upstream_unreachable, where + ": " + r.detail);
        }
        response_t res = std::move(r.response);
        strip_hop_by_hop(res);
        res.version(request_.version());
        send(std::move(res), request_.method() == http::verb::head);
    }

    // --- answering ------------------------------------------------------------------------------

    void respond_error(gateway_error e, const std::string& message) {
        respond(http_status(e), error_body(e, message, route_name_), json_type);
    }

    void respond(int status, std::string body, std::string_view content_type) {
        response_t res{static_cast<http::status>(status), request_.version() ? request_.version() : 11};
        res.set(http::field::content_type, content_type);
        res.body() = std::move(body);
        send(std::move(res));
    }

    void send(response_t res, bool head_response = false) {
        if (answered_) return;  // exactly one answer per request
        answered_ = true;
        deadline_.cancel();
        const int status = res.result_int();
        if (route_metrics_) {
            route_metrics_->requests->inc(status);
            route_metrics_->request_duration->Observe(
                std::chrono::duration<double>(clock_type::now() - started_).count());
        } else if (role_ == listener_role::traffic) {
            state_->metrics.route("(none)").requests->inc(status);
        }
        if (state_->draining.load()) keep_alive_ = false;
        res.keep_alive(keep_alive_);
        res.set(http::field::server, "batchgate");
        if (!head_response) res.prepare_payload();
        response_ = std::move(res);
        stream_.expires_after(runtime_->config->limits.idle_timeout);
        http::async_write(stream_, *response_,
                          [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_write(ec); });
    }

    void on_write(beast::error_code ec) {
        response_.reset();
        request_ = {};
        route_ = nullptr;
        state_->active_requests.fetch_sub(1);
        if (ec || !keep_alive_) return close();
        do_read();
    }

    void close() {
        beast::error_code ignored;
        stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
        stream_.close();
    }

    beast::tcp_stream stream_;
    listener_role role_;
    std::shared_ptr<shared_state> state_;
    std::shared_ptr<const runtime> runtime_;  // the snapshot this request was routed with
    beast::flat_buffer buffer_;
    std::optional<http::request_parser<http::string_body>> parser_;
    request_t request_;
    std::optional<response_t> response_;
    net::steady_timer deadline_;
    const config::route_settings* route_ = nullptr;
    std::string route_name_;
    metrics::route_metrics* route_metrics_ = nullptr;
    clock_type::time_point started_{};
    std::uint64_t generation_ = 0;  // ties late replies to the request they belong to
    bool answered_ = false;
    bool keep_alive_ = true;
};

}  // namespace

void start_session(tcp::socket socket, listener_role role, std::shared_ptr<shared_state> state) {
    std::make_shared<http_session>(std::move(socket), role, std::move(state))->run();
}

}  // namespace batchgate::gateway
