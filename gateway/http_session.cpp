#include "gateway/http_session.hpp"

#include <chrono>
#include <optional>
#include <string>

#include <boost/asio/bind_allocator.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <atomic>
#include <random>
#include <type_traits>
#include <utility>

#include "coalescer/batcher.hpp"
#include "gateway/dispatcher.hpp"
#include "gateway/request_head.hpp"
#include "gateway/status.hpp"
#include "gateway/stream_exchange.hpp"
#include "net/deadline_sweep.hpp"
#include "net/hop_by_hop.hpp"
#include "net/log.hpp"
#include "net/swept_stream.hpp"
#include "net/wire.hpp"

namespace batchgate::gateway {

namespace net = boost::asio;
namespace beast = boost::beast;
using tcp = net::ip::tcp;
using clock_type = std::chrono::steady_clock;

namespace {

constexpr std::string_view json_type = "application/json";

// X-Request-Id: kept when the caller sent a sane one, made up otherwise. Written into id, whose
// buffer a connection keeps from one request to the next.
void set_request_id(const request_t& req, std::string& id) {
    if (auto it = req.find("X-Request-Id"); it != req.end()) {
        auto v = it->value();
        bool sane = !v.empty() && v.size() <= 128;
        for (char c : v) sane = sane && c > 0x20 && c < 0x7f;
        if (sane) return (void)id.assign(v.data(), v.size());
    }
    // 16 hex digits of a per-thread random seed, 8 of a per-thread counter: no shared
    // counter for the worker threads to pass between them, no printf per request.
    thread_local const std::uint64_t seed = std::random_device{}() ^ (std::uint64_t(std::random_device{}()) << 32);
    thread_local std::uint32_t counter = 0;
    static constexpr char hex[] = "0123456789abcdef";
    id.assign(24, '0');
    for (int i = 0; i < 16; ++i) id[i] = hex[(seed >> (60 - 4 * i)) & 0xf];
    const std::uint32_t n = ++counter;
    for (int i = 0; i < 8; ++i) id[16 + i] = hex[(n >> (28 - 4 * i)) & 0xf];
}

using tls_client_stream = beast::ssl_stream<stream_t>;

// GET and HEAD: the safe methods whose coalesced callers' first hang-up look may wait.
bool reads_only(http::verb method) { return method == http::verb::get || method == http::verb::head; }

// A session whose hang-up watch wants its first look later (first_looks, below).
class hang_up_watcher {
public:
    virtual void first_look(std::uint64_t generation) noexcept = 0;

protected:
    ~hang_up_watcher() = default;
};

// The first look of a reader's hang-up watch, a tick or two of the shard's sweep after the
// request came. After a read that drained the socket, asio tries no receive before the
// socket's next edge (net/swept_stream.hpp), and a FIN that came in with the request raises
// none: only a peek of our own sees it. Made at once, that peek was a system call for every
// coalesced caller (2.1 receives per caller where nginx makes 1; bench/syscalls.sh coalesce).
// Made here, only for readers still waiting 10-20 ms after their request: under load, where a
// batch answers in a few milliseconds, almost none. A FIN that comes later raises an edge,
// which the watch's pending receive sees at once. Writers still get their peek at once.
// Each entry holds a weak reference: a session's memory block stays allocated (not the
// session) until its entry is looked at.
//
// An io_context service, like the sweep it rides on: one per shard, used from that shard's
// thread only. Callers join `young_`; each firing looks at `old_` and ages `young_` into it.
class first_looks : public net::execution_context::service, private deadline_entry {
public:
    static inline net::execution_context::id id;

    // The shard's sweep exists before this service (made here if not yet), so it shuts down after.
    explicit first_looks(net::execution_context& ctx)
        : service(ctx), sweep_(net::use_service<deadline_sweep>(static_cast<net::io_context&>(ctx))) {}

    static first_looks& of(const executor_t& ex) { return net::use_service<first_looks>(ex.context()); }

    void add(std::weak_ptr<hang_up_watcher> who, std::uint64_t generation) {
        if (shut_down_) return;
        young_.push_back({std::move(who), generation});
        if (!armed()) sweep_.arm(*this, sweep_.coarse_now(), deadline_sweep::tick);
    }

private:
    struct entry {
        std::weak_ptr<hang_up_watcher> who;
        std::uint64_t generation;
    };

    void deadline_passed() override {
        // A look adds nothing here, and may free its session.
        for (auto& e : old_)
            if (auto who = e.who.lock()) who->first_look(e.generation);
        old_.clear();
        old_.swap(young_);
        if (!old_.empty()) sweep_.arm(*this, sweep_.coarse_now(), deadline_sweep::tick);
    }

    void shutdown() override {
        shut_down_ = true;
        sweep_.disarm(*this);
        young_.clear();
        old_.clear();
    }

    deadline_sweep& sweep_;
    std::vector<entry> young_, old_;
    bool shut_down_ = false;
};


// The most of an answer that waits unsent in a client socket's kernel buffer (the session's
// constructor, TCP_NOTSENT_LOWAT): a client that reads at all takes half of it within
// send_timeout unless it reads slower than 32 KiB per send_timeout.
constexpr int unsent_limit = 64 * 1024;

// Stream: stream_t (plain), or tls_client_stream (listen_tls).
template <class Stream>
class http_session : public drainable,
                     public hang_up_watcher,
                     public stream_owner,
                     public std::enable_shared_from_this<http_session<Stream>>,
                     private deadline_entry {
public:
    static constexpr bool tls = std::is_same_v<Stream, tls_client_stream>;

    // tls_context: the one the stream was made with, kept while the connection lives.
    http_session(Stream stream, listener_role role, std::shared_ptr<shared_state> state,
                 std::shared_ptr<net::ssl::context> tls_context = nullptr)
        : stream_(std::move(stream)),
          tls_context_(std::move(tls_context)),
          role_(role),
          state_(std::move(state)),
          sweep_(&deadline_sweep::of(stream_.get_executor())),
          first_looks_(&first_looks::of(stream_.get_executor())),
          request_lease_(&state_->budget),
          response_lease_(&state_->budget) {
        if (role_ == listener_role::traffic) {
            state_->client_connections.fetch_add(1, std::memory_order_relaxed);
            state_->metrics.open_connections().Increment();
        } else {
            state_->admin_connections.fetch_add(1, std::memory_order_relaxed);
        }
        beast::error_code ec;
        tcp().socket().set_option(tcp::no_delay(true), ec);
        // At most unsent_limit of an answer waits unsent in the kernel (TCP_NOTSENT_LOWAT): a
        // send takes no more, and the socket is writable again once half of that has gone. So
        // a write that waits, waits for a slow reader to take a few KiB, not for an autotuned
        // send buffer of several MiB to drain by a third (at 100 KB/s, longer than send_timeout:
        // a client reading steadily was dropped mid-answer as if it read nothing). It also
        // bounds the kernel memory a slow reader holds. Bytes in flight are not limited by it.
        tcp().socket().set_option(net::detail::socket_option::integer<IPPROTO_TCP, TCP_NOTSENT_LOWAT>(unsent_limit), ec);
        auto remote = tcp().socket().remote_endpoint(ec);
        client_ip_ = ec ? std::string("unknown") : remote.address().to_string();
    }

    ~http_session() override {
        if (owed_request_) state_->active_requests.fetch_sub(1);
        state_->untrack(this);
        if (role_ == listener_role::traffic) {
            state_->client_connections.fetch_sub(1, std::memory_order_relaxed);
            state_->metrics.open_connections().Decrement();
        } else {
            state_->admin_connections.fetch_sub(1, std::memory_order_relaxed);
        }
    }

    void run(bool owed_request) {
        if (owed_request) {
            owed_request_ = true;
            state_->active_requests.fetch_add(1);
        }
        state_->track(this->shared_from_this());
        // Start on the connection's thread.
        net::dispatch(stream_.get_executor(), [self = this->shared_from_this()] {
            if constexpr (tls) return self->handshake();
            self->do_read();
        });
    }

    void answer_shutting_down() override {
        net::post(stream_.get_executor(), [self = this->shared_from_this()] {
            if (auto ex = self->exchange_.lock()) return ex->shut_down();  // a stream owes its rest
            if (self->answered_ || self->generation_ == 0) return;  // nothing owed
            // A write that may have gone upstream (in a batch call, alone, or as part of a fan-out
            // or $batch call: those do not say) may have taken effect: a 503 with Retry-After
            // would invite applying it twice. A read is safe to retry, and so is a write still held
            // back, which abandon() makes sure never goes (a batcher about to send it leaves it out).
            const bool may_have_taken_effect =
                !reads_only(http::string_to_verb(self->method_)) && (!self->caller_ || !self->caller_->abandon());
            if (may_have_taken_effect)
                return self->send(error_response(gateway_error::upstream_timeout, std::string(sent_before_shutdown),
                                                 self->route_name_, self->version_));
            self->send(error_response(gateway_error::shutting_down, "the gateway is shutting down",
                                      self->route_name_, self->version_));
        });
    }

private:
    // A client that does not finish its TLS handshake within idle_timeout is dropped.
    void handshake() {
        tcp().expires_after(state_->current()->config->limits.idle_timeout);
        stream_.async_handshake(net::ssl::stream_base::server, [self = this->shared_from_this()](beast::error_code ec) {
            if (ec) {
                self->state_->metrics.tls_handshake_failures().Increment();
                return self->close();
            }
            self->do_read();
        });
    }

    void do_read() {
        state_->refresh(runtime_, runtime_generation_);
        const auto& limits = runtime_->config->limits;
        // Bytes Beast has not parsed yet: a head, or a chunk-size line or trailers, which Beast
        // does not bound; without a cap one endless chunk line grows the buffer without end.
        buffer_.max_size(limits.max_header_bytes + 64 * 1024);
        // Idle keep-alive connections (and slow senders) are closed after idle_timeout.
        tcp().expires_after(limits.idle_timeout);
        wait_for_message(stream_, buffer_);
        read_head();
    }

    // Reads a request head with a new parser (under the deadline do_read armed).
    void read_head() {
        // On the heap, and only while a request is read: a caller waiting in a batch holds
        // neither (memory per waiting caller).
        parser_ = make_cached<http::request_parser<http::string_body>>();
        chunked_head_.reset();
        apply_limits(*parser_, runtime_->config->limits);
        // limits.max_body is checked once the route is known: passthrough routes stream, and
        // have their own optional cap (passthrough.max_body).
        parser_->body_limit(boost::none);
        // The head first: a client that sent "Expect: 100-continue" waits for our word before
        // it sends the body.
        http::async_read_header(stream_, buffer_, *parser_,
                                [self = this->shared_from_this()](beast::error_code ec, std::size_t) { self->on_header(ec); });
    }

    // RFC 9112 2.2: a server SHOULD ignore at least one empty line (CRLF) before a request-line,
    // as old clients send after a POST body. Beast refuses one as a bad method: the empty lines
    // in front of the head are dropped here, and the head is read again. Each pass drops bytes
    // (the buffer's cap bounds them) and do_read's deadline still runs: no endless loop.
    enum class empty_lines { none, dropped, half };  // half: a CR whose LF has not come yet
    empty_lines skip_empty_lines() {
        const auto data = buffer_.data();
        const std::string_view bytes(static_cast<const char*>(data.data()), data.size());
        std::size_t n = 0;
        // CRLF only: a bare LF ends no line of a head here either (Beast refuses it).
        while (bytes.substr(n, 2) == "\r\n") n += 2;
        buffer_.consume(n);
        // Beast refuses a lone CR at once, though its LF may be in the next segment.
        if (bytes.substr(n) == "\r") return empty_lines::half;
        return n > 0 ? empty_lines::dropped : empty_lines::none;
    }

    // The LF of a CR that ended the buffer: one more read, then the head again (or the error).
    void read_rest_of_empty_line() {
        stream_.async_read_some(buffer_.prepare(1024), [self = this->shared_from_this()](beast::error_code ec, std::size_t n) {
            if (ec) return self->on_header(ec);
            self->buffer_.commit(n);
            self->read_head();
        });
    }

    void on_header(beast::error_code ec) {
        if (ec == http::error::bad_method) {
            switch (skip_empty_lines()) {
                case empty_lines::dropped: return read_head();
                case empty_lines::half: return read_rest_of_empty_line();
                case empty_lines::none: break;
            }
        }
        // Routed with the config current when the head came in: the snapshot do_read took (for
        // the head's limits) is as old as the wait, and a kept-alive connection may have waited
        // there through a reload.
        state_->refresh(runtime_, runtime_generation_);
        // Framing that cannot be trusted (smuggling), or a head no route may see: refused before
        // the body is read, and the connection closed.
        if (!ec)
            if (auto bad = check_request_head(parser_->get().base())) return refuse(bad->error, bad->message);
        // "GET http://c/a": routed and forwarded as "/a" with Host c.
        if (!ec)
            if (auto bad = normalize_target(parser_->get().base())) return refuse(bad->error, bad->message);
        // Passthrough routes stream: the body is relayed as it comes, never held whole.
        if (!ec && role_ == listener_role::traffic) {
            // Matched once: handle_traffic takes the route and its parameters from here.
            matched_params_.clear();
            matched_route_ = find_route(*runtime_, parser_->get(), &matched_params_);
            matched_runtime_ = runtime_.get();
            if (matched_route_ && matched_route_->mode == config::route_mode::passthrough)
                return begin_stream(*matched_route_);
        }
        if (ec || parser_->is_done()) return on_read(ec);
        const auto max_body = runtime_->config->limits.max_body_bytes;
        if (auto length = parser_->content_length(); length && *length > max_body) return on_read(http::error::body_limit);
        parser_->body_limit(max_body);
        // The body's memory is reserved before it is read (and before 100 Continue invites it).
        if (auto length = parser_->content_length(); length && !request_lease_.grow_to(*length))
            return refuse_over_budget();
        // RFC 9110 6.5.1: trailer fields never join the head, and Beast appends them to it.
        if (parser_->chunked()) chunked_head_ = std::make_unique<http::request_header<>>(parser_->get().base());
        const auto& h = parser_->get();
        auto expect = h.find(http::field::expect);
        // Not when the body is already arriving (RFC 9110 10.1.1: the server may then omit it).
        if (h.version() >= 11 && expect != h.end() && beast::iequals(expect->value(), "100-continue") &&
            buffer_.size() == 0) {
            static constexpr std::string_view go_on = "HTTP/1.1 100 Continue\r\n\r\n";
            return net::async_write(stream_, net::buffer(go_on.data(), go_on.size()),
                                    [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                                        if (ec) return self->close();
                                        self->read_body();
                                    });
        }
        read_body();
    }

    void read_body() {
        // A chunked body is reserved step by step (a Content-Length one was, all at once).
        if (!parser_->content_length() &&
            !make_room(parser_->get().body(), request_lease_, runtime_->config->limits.max_body_bytes))
            return refuse_over_budget();
        http::async_read_some(stream_, buffer_, *parser_, [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
            if (ec || self->parser_->is_done()) return self->on_read(ec);
            self->read_body();
        });
    }

    // The request is answered without its (rest of the) body: the connection cannot go on.
    void begin_unread_request() {
        keep_alive_ = false;
        linger_ = true;
        request_.reset();
        version_ = 11;
        set_request_id(req(), request_id_);
        begin_request();
    }

    // A head refused before its body is read: answered, then the connection closes (the
    // rest of the bytes cannot be told apart from a next request).
    void refuse(gateway_error e, const std::string& message) {
        begin_unread_request();
        send(error_response(e, message, "", version_));
    }

    void refuse_over_budget() {
        state_->metrics.budget_rejected().Increment();
        refuse(gateway_error::overloaded, "the gateway's memory budget (limits.max_buffered) cannot hold this request body now");
    }

    // Beast reports a head over header_limit as one error. The request line was too long (414,
    // not 431) when Beast never parsed it and no line end came within the limit; once parsed,
    // its bytes have left buffer_.
    bool request_line_too_long() const {
        if (!parser_->get().target().empty()) return false;
        const auto data = buffer_.data();
        const std::string_view seen(static_cast<const char*>(data.data()), data.size());
        return seen.substr(0, runtime_->config->limits.max_header_bytes).find('\n') == std::string_view::npos;
    }

    void begin_request() {
        ++generation_;
        answered_ = false;
        started_ = clock_type::now();
        route_name_.clear();
        route_metrics_ = nullptr;
        info_ = {};
        head_request_ = false;
        state_->active_requests.fetch_add(1);
        if (std::exchange(owed_request_, false)) state_->active_requests.fetch_sub(1);  // now counted above
    }

    void on_read(beast::error_code ec) {
        if (ec && (ec == http::error::end_of_stream || ec == beast::error::timeout ||
                   ec == net::error::connection_reset || ec == net::error::operation_aborted || ec == net::error::eof))
            return close();
        // A TLS client that hangs up without close_notify, as many do, before a byte of its next
        // request: gone, as a plain client's FIN there says (end_of_stream), not a bad request.
        if (ec == net::ssl::error::stream_truncated && !(parser_ && parser_->got_some())) return close();
        if (ec) {
            // The request cannot be trusted as a whole: answer it and close the connection.
            begin_unread_request();
            if (ec == http::error::body_limit)
                return send(error_response(gateway_error::payload_too_large,
                                           "request body exceeds limits.max_body (" +
                                               std::to_string(runtime_->config->limits.max_body_bytes) + " bytes)",
                                           ""));
            if (ec == http::error::header_limit && request_line_too_long())
                return send(error_response(gateway_error::uri_too_long, "request-target exceeds limits.max_header", ""));
            if (ec == http::error::header_limit)
                return send(error_response(gateway_error::headers_too_large, "request headers exceed limits.max_header", ""));
            return send(error_response(gateway_error::bad_request, "malformed HTTP request: " + ec.message(), ""));
        }
        request_ = std::make_unique<request_t>(parser_->release());
        parser_.reset();
        if (chunked_head_) request_->base() = std::move(*std::exchange(chunked_head_, nullptr));
        state_->refresh(runtime_, runtime_generation_);  // route with the config current when the request arrived
        keep_alive_ = connection_persists(*request_, request_->version()) && !state_->draining.load();
        version_ = request_->version();
        set_request_id(*request_, request_id_);
        begin_request();
        head_request_ = request_->method() == http::verb::head;
        tcp().expires_never();
        if (role_ == listener_role::admin) return handle_admin();
        handle_traffic();
    }

    // The scheme the upstream is told (X-Forwarded-Proto): this connection's, unless the client is
    // a trusted proxy (trusted_proxies, a TLS-terminating ingress) that said http or https itself:
    // the last value, which that proxy set (one that appends to a list leaves the values before
    // it as whoever came before sent them).
    // Whether this client is one of them is decided once per config snapshot, not per request.
    template <class Fields>
    std::string_view forwarded_proto(const Fields& h) {
        const std::string_view own = tls ? "https" : "http";
        const auto& cfg = *runtime_->config;
        if (cfg.trusted_proxies.empty()) return own;
        if (trust_generation_ != runtime_generation_) {
            trusted_proxy_ = cfg.trusts(client_ip_);
            trust_generation_ = runtime_generation_;
        }
        if (!trusted_proxy_) return own;
        std::string_view last_value;  // of every line, as one list (Beast's token_list trims OWS)
        for (auto [it, end] = h.equal_range("X-Forwarded-Proto"); it != end; ++it)
            for (auto token : http::token_list(it->value())) last_value = token;
        if (beast::iequals(last_value, "https")) return "https";
        if (beast::iequals(last_value, "http")) return "http";
        return own;
    }

    // --- streamed passthrough -------------------------------------------------------------------

    void begin_stream(const config::route_settings& route) {
        const auto& head = parser_->get();
        request_.reset();
        version_ = head.version();
        keep_alive_ = connection_persists(head, head.version()) && !state_->draining.load();
        set_request_id(head, request_id_);
        method_.assign(head.method_string().data(), head.method_string().size());  // no allocation once it has room
        target_.assign(head.target().data(), head.target().size());
        begin_request();
        head_request_ = head.method() == http::verb::head;
        route_name_ = route.name;
        const auto& handles = runtime_->handles_for(route);
        route_metrics_ = handles.metrics;
        tcp().expires_never();
        auto pool = runtime_->upstreams.find(route.upstream);
        if (pool == runtime_->upstreams.end()) {
            keep_alive_ = false;
            return send(error_response(gateway_error::internal, "route names an unknown upstream", route_name_, version_));
        }
        const auto& upstream = pool->second->settings();
        stream_params p;
        p.pool = pool->second;
        p.route = &route;
        p.route_metrics = route_metrics_;
        p.upstream_metrics = handles.upstream_metrics;
        p.budget = &state_->budget;
        p.started = started_;
        p.head_deadline = started_ + std::min<clock_type::duration>(coalescer::caller_timeout(*runtime_->config, route),
                                                                    upstream.request_timeout);
        p.request_timeout = upstream.request_timeout;
        p.send_timeout = runtime_->config->limits.send_timeout;
        p.client_ip = client_ip_;
        p.proto = forwarded_proto(head);
        p.request_id = request_id_;
        p.keep_alive = keep_alive_;
        p.budget_rejected = &state_->metrics.budget_rejected();
        p.send_timeouts = &state_->metrics.send_timeouts();
        auto ex = std::allocate_shared<stream_exchange<Stream>>(
            thread_cached_allocator<stream_exchange<Stream>>(), stream_, buffer_, std::move(*parser_), std::move(p), this->shared_from_this());
        parser_.reset();
        exchange_ = ex;
        ex->start();
    }

    // On the connection's thread, exactly once per streamed request.
    void end_stream(stream_outcome out) override {
        exchange_.reset();
        info_ = std::move(out.info);
        if (out.close_client) keep_alive_ = false, linger_ = true;
        exchange_reading_ = out.client_read_pending;
        if (out.error) return send(std::move(*out.error));
        answered_ = true;
        record_answer(out.status);
        on_write({});
    }

    // --- admin listener: metrics and health ---------------------------------------------

    void respond_text(int status, std::string body, std::string_view content_type) {
        response_t res{static_cast<http::status>(status), req().version()};
        res.set(http::field::content_type, content_type);
        res.body() = std::move(body);
        res.prepare_payload();
        send(std::move(res));
    }

    void handle_admin() {
        auto [path, query] = routes::split_target(req().target());
        if (req().method() != http::verb::get && req().method() != http::verb::head) {
            auto res = error_response(gateway_error::method_not_allowed, "admin endpoints accept GET only", "",
                                      req().version());
            res.set(http::field::allow, "GET, HEAD");
            return send(std::move(res));
        }
        if (path == "/metrics") {
            refresh_pool_gauges(state_->metrics, *state_->current());
            state_->budget.publish();
            return respond_text(200, state_->metrics.serialize(), "text/plain; version=0.0.4; charset=utf-8");
        }
        if (path == "/status.json") {
            const auto rt = state_->current();
            refresh_pool_gauges(state_->metrics, *rt);
            return respond_text(200, status_json(*state_, *rt), json_type);
        }
        if (path == "/status" || path == "/") return respond_text(200, std::string(status_page()), "text/html; charset=utf-8");
        if (path == "/healthz") return respond_text(200, R"({"status":"ok"})", json_type);
        if (path == "/readyz") {
            if (state_->ready.load() && !state_->draining.load()) return respond_text(200, R"({"status":"ready"})", json_type);
            return respond_text(503, state_->draining.load() ? R"({"status":"draining"})" : R"({"status":"starting"})",
                                json_type);
        }
        send(error_response(gateway_error::not_found,
                            "admin endpoints are /status (a page), /status.json, /metrics, /healthz and /readyz", "",
                            req().version()));
    }

    // The request being handled, or an empty one (none read, or already handed on).
    const request_t& req() const {
        static const request_t none;
        return request_ ? *request_ : none;
    }

    // --- traffic listener ---------------------------------------------------------------------

    void handle_traffic() {
        // The head's match, unless a reload came between the head and the end of the body.
        // (runtime_ was current while the one matched against was still held: never the same
        // address for another runtime.)
        routes::param_list params;
        const config::route_settings* route = nullptr;
        if (std::exchange(matched_runtime_, nullptr) == runtime_.get()) {
            route = matched_route_;
            params = std::move(matched_params_);
        } else {
            route = find_route(*runtime_, *request_, &params);
        }
        config::duration timeout = std::chrono::seconds(30);
        if (route) {
            route_name_ = route->name;
            route_metrics_ = runtime_->handles_for(*route).metrics;
            timeout = coalescer::caller_timeout(*runtime_->config, *route);
        }
        // The request's id on the request that goes upstream. A coalesce route's caller goes in a
        // batch call with an id of its own; the exchange sets it if the caller goes alone.
        if (!route || route->mode != config::route_mode::coalesce) request_->set("X-Request-Id", request_id_);
        request_context ctx;
        ctx.client_ip = client_ip_;
        ctx.proto = forwarded_proto(*request_);
        ctx.request_id = request_id_;
        if (auto tp = request_->find("traceparent"); tp != request_->end()) ctx.traceparent = std::string(tp->value());
        ctx.deadline = started_ + timeout;
        arm_deadline(started_, timeout);
        auto last_flags = std::move(caller_);
        if (route && route->mode == config::route_mode::coalesce) {
            // The last request's flags once nothing else holds them (no allocation per request):
            // only this session hands out copies, so a count of one stays one.
            if (last_flags && last_flags.use_count() == 1) {
                // What the last holder (a batcher's thread) wrote is seen before it is reset.
                std::atomic_thread_fence(std::memory_order_acquire);
                last_flags->gone.store(false, std::memory_order_relaxed);
                last_flags->state.store(caller_flags::waiting, std::memory_order_relaxed);
                caller_ = std::move(last_flags);
            } else {
                caller_ = std::make_shared<caller_flags>();
            }
            ctx.caller = caller_;
            // After a read that drained the socket, the watch's receive waits for the socket's
            // next edge, and a FIN that came with the request raises none: a peek of our own
            // looks for it. At once for a write, which must not be applied for a caller who
            // left; for a read (GET, HEAD), only if the caller still waits a tick or two from
            // now (first_looks): a departed reader's key sent upstream costs nothing but its
            // share of the call, and a peek per reader is a system call nginx does not make.
            peer_state seen = peer_state::quiet;
            if (tcp().drained()) {
                if (reads_only(request_->method()))
                    first_looks_->add(this->weak_from_this(), generation_);
                else
                    seen = peek_peer();
            }
            watch_for_hang_up(ctx.caller, seen);
            // A caller may wait a whole window: its read buffer goes back meanwhile (the next
            // request on this connection gets a new one), unless it holds pipelined bytes.
            if (buffer_.size() == 0) buffer_.shrink_to_fit();
        }
        method_.assign(request_->method_string().data(), request_->method_string().size());
        target_.assign(request_->target().data(), request_->target().size());
        // Not kept while the caller waits (memory per waiting caller): dispatch has it now.
        auto request = std::move(*std::exchange(request_, nullptr));
        dispatching_ = true;
        try {
            dispatch_matched(state_, runtime_, route, std::move(params), std::move(request), std::move(ctx),
                             [self = this->shared_from_this(), gen = generation_](answer&& res, dispatch_info&& info) {
                                 auto deliver = [self, gen, res = std::move(res), info = std::move(info)]() mutable {
                                     if (gen != self->generation_ || self->answered_)
                                         return;  // the deadline answered already
                                     self->info_ = std::move(info);
                                     self->send(std::move(res));
                                 };
                                 // Back onto this connection's thread: at once when on it already
                                 // (a batcher of its own shard answering: no post per caller), but
                                 // never from inside dispatch_matched, whose caller has not
                                 // returned (dispatching_ is read on this thread only).
                                 const auto ex = self->stream_.get_executor();
                                 if (ex.running_in_this_thread() && !self->dispatching_)
                                     deliver();
                                 else
                                     net::post(ex, std::move(deliver));
                             });
        } catch (const std::exception& e) {
            // Never expected; the caller still gets exactly one answer.
            log_line("error", "request handling failed", {{"route", route_name_}, {"error", e.what()}});
            send(error_response(gateway_error::internal, "internal error", route_name_, version_));  // once: send checks
        }
        dispatching_ = false;
    }

    // A caller waiting in a batch may hang up. Like nginx (ngx_http_test_reading), the socket
    // is peeked: 0 bytes is EOF and an error a reset (the caller is gone), EAGAIN nothing yet.
    // Bytes after the request (a pipelined request, a stray CRLF) do not mean the caller stays:
    // the kernel's TCP state tells whether its FIN came after them (CLOSE_WAIT). A client that
    // half-closes after its request is taken as gone too, as nginx does; it still reads the 499,
    // and the connection closes after it (its pipelined requests are not served). Checked at
    // once (for a reader whose request drained the socket: a tick or two later, if it still
    // waits; first_looks), then again each time the socket turns readable. The batcher leaves
    // a gone caller's item out of a batch not sent yet.
    enum class peer_state { quiet, bytes, gone };

    void watch_for_hang_up(std::shared_ptr<caller_flags> flags, peer_state seen = peer_state::quiet) {
        if (seen == peer_state::gone) {
            flags->gone.store(true, std::memory_order_relaxed);
            return;
        }
        watching_ = true;
        // What a caller holds while it waits: a block of its own size, not a recycled one
        // (memory per waiting caller).
        auto look_again = [self = this->shared_from_this(), gen = generation_, flags = std::move(flags)](
                              beast::error_code ec, std::size_t = 0) mutable {
            if (gen != self->generation_ || self->answered_) return;
            self->watching_ = false;
            // EOF or a reset, seen by the receive below: the peek tells which.
            if (ec && ec != net::error::eof && ec != net::error::connection_reset) return;
            self->watch_for_hang_up(std::move(flags), self->peek_peer());
        };
        if (seen == peer_state::quiet) {
            // A receive that peeks: asio tries it at once unless the socket was drained (then no
            // system call at all; otherwise it completes at once if the caller already left or
            // sent more), then waits on the reactor's edge-triggered registration. (A wait,
            // async_wait, would re-arm the descriptor with epoll_ctl: a system call per caller.)
            tcp().socket().async_receive(net::buffer(&peeked_, 1), tcp::socket::message_peek,
                                         net::bind_allocator(exact_allocator<void>(), std::move(look_again)));
        } else {
            // Bytes after the request stay readable: only a wait, re-armed, sees the FIN behind them.
            tcp().socket().async_wait(tcp::socket::wait_read, net::bind_allocator(exact_allocator<void>(),
                                                                                  [look_again = std::move(look_again)](
                                                                                      beast::error_code ec) mutable {
                                                                                      if (!ec) look_again(ec);
                                                                                  }));
        }
    }

    // first_looks: the caller of request `generation` still waits; has its FIN come?
    void first_look(std::uint64_t generation) noexcept override {
        if (generation != generation_ || answered_ || !caller_) return;
        if (peek_peer() == peer_state::gone) caller_->gone.store(true, std::memory_order_relaxed);
    }

    peer_state peek_peer() {
        const int fd = tcp().socket().native_handle();
        switch (peek_socket(fd)) {
            case peeked::nothing: return peer_state::quiet;
            case peeked::fin:
            case peeked::error: return peer_state::gone;
            case peeked::bytes: break;
        }
        tcp_info info{};
        socklen_t len = sizeof info;
        if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return peer_state::bytes;
        const bool closed =
            info.tcpi_state == TCP_CLOSE_WAIT || info.tcpi_state == TCP_CLOSE || info.tcpi_state == TCP_LAST_ACK;
        return closed ? peer_state::gone : peer_state::bytes;
    }

    // Safety net: whatever happens downstream, the caller is answered by its deadline. The
    // shard's sweep (net/deadline_sweep.hpp) holds the session until then, as a timer's
    // handler would, but costs no timer per request.
    void arm_deadline(clock_type::time_point start, config::duration timeout) {
        // 50 ms after the route's own timeout, which should answer first.
        sweep_->arm(*this, start, timeout + std::chrono::milliseconds(50), this->shared_from_this());
    }

    void deadline_passed() override {
        if (answered_) return;
        send(error_response(gateway_error::upstream_timeout, "no answer before the route's timeout", route_name_,
                            version_));
    }

    // --- answering ------------------------------------------------------------------------------

    void send(answer&& a) {
        if (answered_) return;  // exactly one answer per request
        answered_ = true;
        // A hang-up watch still pending is done with: cancelled now (no system call), it does not
        // peek again when the next request arrives. Nothing else is pending on the socket here.
        if (std::exchange(watching_, false)) {
            beast::error_code ignored;
            tcp().socket().cancel(ignored);
        }
        auto* res = std::get_if<response_t>(&a);
        record_answer(res ? res->result_int() : static_cast<int>(std::get<composed_answer>(a).status));
        if (state_->draining.load()) keep_alive_ = false;
        // A caller seen hanging up gets nothing more on this connection: bytes it left in our
        // buffer (pipelined requests) are not served for a client that is gone.
        if (caller_ && caller_->gone.load(std::memory_order_relaxed)) keep_alive_ = false;
        response_ = std::make_unique<outgoing>();
        if (res) {
            res->version(version_);
            res->keep_alive(keep_alive_);
            write_head(*res);
            response_->body = std::move(res->body());
        } else {
            auto& composed = std::get<composed_answer>(a);
            write_head(composed);
            response_->body = std::move(composed.body);
        }
        // Traffic answers only: a scrape must never count against (or show up in) the budget.
        if (role_ == listener_role::traffic) response_lease_.force_to(response_->body.size());
        // One head buffer plus the body in place: a single writev, no per-field buffers.
        // A HEAD answer keeps its Content-Length but never carries the body.
        const auto& body = response_->body;
        response_->unsent.emplace(std::array<net::const_buffer, 2>{
            net::buffer(response_->head), head_request_ ? net::const_buffer() : net::buffer(body)});
        write_more();
    }

    // The answer's head, written once into a buffer sized first (one allocation): its fields
    // as they are, except Server and X-Request-Id, which are the gateway's own and come last
    // (no field set on the answer to be copied again).
    void write_head(const response_t& res) {
        const bool traffic = role_ == listener_role::traffic;
        auto own = [traffic](const auto& f) {
            return f.name() == http::field::server || (traffic && is_request_id(f));
        };
        auto& out = response_->head;
        out.reserve(wire::fields_bytes(res) + 104 + request_id_.size());
        wire::append_status_line(out, res);
        bool dated = false;  // a relayed answer keeps the upstream's Date
        for (const auto& f : res)
            if (!own(f)) {
                dated = dated || f.name() == http::field::date;
                wire::append_field(out, f.name_string(), f.value());
            }
        end_head(out, dated);
    }

    // A composed answer's head: its fields as composed (none of them Connection, Server or
    // X-Request-Id), then what Beast's keep_alive() would have said for this version.
    // A composed answer's lines become the head in place, its status line put in front of them
    // (their composer leaves room for that and the lines after: no second buffer).
    void write_head(composed_answer& a) {
        thread_local std::string status_line;
        status_line.clear();
        wire::append_status_line(status_line, version_, a.status);
        auto& out = response_->head;
        out = std::move(a.fields);
        out.reserve(out.size() + status_line.size() + 152 + request_id_.size());
        out.insert(0, status_line);
        wire::append_connection(out, version_, keep_alive_);
        end_head(out, false);
    }

    void end_head(std::string& out, bool dated) const {
        if (!dated) wire::append_date(out);
        wire::append_field(out, "Server", "batchgate");
        if (role_ == listener_role::traffic) wire::append_field(out, "X-Request-Id", request_id_);
        out += "\r\n";
    }

    // Metrics and the access log line of the request's answer.
    void record_answer(int status) {
        // Disarming lets go of the sweep's hold: whoever called keeps the session alive, and so
        // does this, should a caller one day hold none.
        auto self = this->shared_from_this();
        sweep_->disarm(*this);
        const auto elapsed = clock_type::now() - started_;
        if (route_metrics_) {
            route_metrics_->requests->inc(status);
            route_metrics_->request_duration->Observe(std::chrono::duration<double>(elapsed).count());
        } else if (role_ == listener_role::traffic) {
            state_->metrics.route("(none)").requests->inc(status);
        }
        if (role_ == listener_role::traffic) access_log(status, elapsed);
    }

    // A client that takes no byte for send_timeout is dropped: its answer would otherwise
    // stay in memory for as long as it likes.
    void write_more() {
        tcp().expires_after(runtime_->config->limits.send_timeout);
        if constexpr (std::is_same_v<Stream, swept_stream>) {
            // Plain TCP: what the socket takes now goes at once (swept_stream::send_now), and an
            // answer it takes whole needs no asynchronous write. Every send() is its caller's
            // last step, so on_write (and the next read it starts) may run here.
            beast::error_code ec;
            auto& unsent = *response_->unsent;
            unsent.consume(stream_.send_now(unsent, ec));
            if (ec || beast::buffer_bytes(unsent) == 0) return on_write(ec);
        }
        stream_.async_write_some(*response_->unsent, [self = this->shared_from_this()](beast::error_code ec, std::size_t n) {
            if (ec == beast::error::timeout) self->state_->metrics.send_timeouts().Increment();
            if (ec) return self->on_write(ec);
            auto& unsent = *self->response_->unsent;
            unsent.consume(n);
            if (beast::buffer_bytes(unsent) == 0) return self->on_write(ec);
            self->write_more();
        });
    }

    void access_log(int status, clock_type::duration elapsed) {
        if (!logging().access_log.load(std::memory_order_relaxed)) return;
        nlohmann::json line = nlohmann::json::object();
        line["ts"] = unix_time();
        line["type"] = "access";
        line["request_id"] = request_id_;
        line["client"] = client_ip_;
        line["method"] = method_;
        line["path"] = routes::split_target(target_).first;
        line["route"] = route_name_;
        line["status"] = status;
        line["duration_ms"] = std::chrono::duration<double, std::milli>(elapsed).count();
        if (!info_.batch_id.empty()) {
            line["batch_id"] = info_.batch_id;
            line["batch_size"] = info_.batch_size;
        }
        if (info_.upstream_status) {
            line["upstream_status"] = info_.upstream_status;
            line["upstream_ms"] = std::chrono::duration<double, std::milli>(info_.upstream_elapsed).count();
        }
        write_json_line(line, stdout);
    }

    void on_write(beast::error_code ec) {
        response_.reset();
        request_lease_.reset();
        response_lease_.reset();
        request_.reset();
        method_.clear();
        // Its room kept for the next request, unless a long target made it big.
        if (target_.capacity() > 512) std::string().swap(target_);
        target_.clear();
        state_->active_requests.fetch_sub(1);
        if (ec || !keep_alive_) return close();
        do_read();
    }

    void close() {
        beast::error_code ignored;
        tcp().socket().shutdown(tcp::socket::shutdown_send, ignored);
        if (!std::exchange(linger_, false)) return tcp().close();
        // The client may still be sending the body its answer did not wait for: closing with
        // unread bytes sends a reset, which can destroy the answer before the client reads it.
        // Like nginx's lingering close, what still comes is read and dropped for a while.
        linger_until_ = clock_type::now() + std::chrono::seconds(5);
        if (std::exchange(exchange_reading_, false)) {
            // The stream's read of the body (or of a tunnel) is still pending: it ends first,
            // aborted, and the lingering read begins after its handler ran. Two reads at once
            // shared the stream's one read deadline and the reactor's one edge: the client's FIN
            // ended the stream's read, and the lingering one waited for ever.
            tcp().socket().cancel(ignored);
            return net::post(stream_.get_executor(), [self = this->shared_from_this()] {
                self->discard_rest(std::make_shared<std::array<char, 4096>>());
            });
        }
        discard_rest(std::make_shared<std::array<char, 4096>>());
    }

    void discard_rest(std::shared_ptr<std::array<char, 4096>> sink) {
        const auto left = linger_until_ - clock_type::now();
        if (left <= clock_type::duration::zero()) return tcp().close();
        tcp().expires_after(std::min<clock_type::duration>(left, std::chrono::seconds(1)));
        tcp().async_read_some(net::buffer(*sink), [self = this->shared_from_this(), sink](beast::error_code ec, std::size_t) {
            if (ec) return self->tcp().close();
            self->discard_rest(sink);
        });
    }

    stream_t& tcp() { return beast::get_lowest_layer(stream_); }

    Stream stream_;
    std::shared_ptr<net::ssl::context> tls_context_;
    listener_role role_;
    std::shared_ptr<shared_state> state_;
    std::shared_ptr<const runtime> runtime_;  // the snapshot this request was routed with
    std::uint64_t runtime_generation_ = 0;     // shared_state's generation it was taken at
    beast::flat_buffer buffer_;
    cached_ptr<http::request_parser<http::string_body>> parser_;  // while a request is read
    std::unique_ptr<http::request_header<>> chunked_head_;  // the head of a chunked request, without trailers
    std::unique_ptr<request_t> request_;  // from its head's end until it is dispatched or answered
    // An answer while it is written; none while a caller waits (memory per waiting caller).
    struct outgoing {
        std::string head;  // its status line and fields
        std::string body;
        std::optional<beast::buffers_suffix<std::array<net::const_buffer, 2>>> unsent;  // of head and body
    };
    std::unique_ptr<outgoing> response_;
    deadline_sweep* sweep_;  // this shard's
    first_looks* first_looks_;  // this shard's
    budget_lease request_lease_;   // the request body, until its answer is written
    budget_lease response_lease_;  // the answer, while it is written
    std::string client_ip_;
    std::uint64_t trust_generation_ = ~std::uint64_t{0};  // the snapshot trusted_proxy_ was decided for
    bool trusted_proxy_ = false;                          // client_ip_ in its trusted_proxies
    std::string request_id_;
    std::string method_;
    std::string target_;
    std::string route_name_;
    metrics::route_metrics* route_metrics_ = nullptr;
    dispatch_info info_;
    clock_type::time_point started_{};
    std::uint64_t generation_ = 0;  // ties late replies to the request they belong to
    unsigned version_ = 11;
    bool answered_ = false;
    bool keep_alive_ = true;
    std::shared_ptr<caller_flags> caller_;  // the current request's flags (coalesce routes)
    bool dispatching_ = false;  // inside handle_traffic's dispatch_matched: its answers are posted
    std::weak_ptr<stream_exchange<Stream>> exchange_;  // the current request's, when streamed
    const runtime* matched_runtime_ = nullptr;  // what on_header matched the head against
    const config::route_settings* matched_route_ = nullptr;
    routes::param_list matched_params_;
    char peeked_ = 0;        // the hang-up watch's receive peeks into it (nothing is taken)
    bool watching_ = false;  // a hang-up watch is pending on the socket
    bool head_request_ = false;
    bool owed_request_ = false;  // taken from the backlog at shutdown, request not read yet
    bool linger_ = false;        // close() drains what the client still sends first
    bool exchange_reading_ = false;  // the ended stream left a read of the client pending
    clock_type::time_point linger_until_{};
};

}  // namespace

void start_session(socket_t socket, listener_role role, std::shared_ptr<shared_state> state, bool owed_request) {
    // listen_tls as it is now: a reload changes the certificate for connections to come.
    if (role == listener_role::traffic)
        if (auto context = state->current()->tls) {
            tls_client_stream stream(stream_t(std::move(socket)), *context);
            return std::make_shared<http_session<tls_client_stream>>(std::move(stream), role, std::move(state), std::move(context))
                ->run(owed_request);
        }
    std::make_shared<http_session<stream_t>>(stream_t(std::move(socket)), role, std::move(state))->run(owed_request);
}

}  // namespace batchgate::gateway
