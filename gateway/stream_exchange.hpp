// Streamed passthrough: one request and its answer relayed between a client connection and a
// connection lent by the upstream's pool, through one fixed window per direction. Nothing is
// held whole: a window is refilled only after it was written on (backpressure), so a slow
// reader slows the upstream read, and a slow upstream the client's upload.
//
// Two executors take part: the client connection's (S) and the upstream connection's (U): the
// same thread, unless the pool lent an idle connection of another shard. Each side's I/O starts
// on its own executor; a finished read posts the window to the other side, whose finished write
// posts back. Every decision (what was sent, when it ends) is made on S.
//
// Framing: the request keeps its Content-Length, or is sent chunked (re-framed piece by piece,
// trailers dropped). The answer keeps its Content-Length; a chunked or close-delimited answer
// goes to an HTTP/1.1 client chunked, to an HTTP/1.0 one delimited by closing. After an
// upstream 101 on a route that allows upgrades, bytes are tunnelled both ways until either
// side closes.
//
// Errors: before the answer's head went out, the session answers (502, 504, 413, 400); after
// it, the client connection is closed (no second status) and the failure counted. The
// upstream connection goes back to the pool only after complete messages both ways.
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "gateway/dispatcher.hpp"
#include "metrics/metrics.hpp"
#include "net/hop_by_hop.hpp"
#include "net/memory_budget.hpp"
#include "net/upstream_connection.hpp"
#include "net/wire.hpp"

namespace batchgate::gateway {

namespace net = boost::asio;

// The drain deadline's answer (504, no Retry-After) to a write that may have gone upstream, for a
// stream and for a buffered request alike.
inline constexpr std::string_view sent_before_shutdown =
    "the gateway is shutting down before the upstream's answer could be relayed; the request was sent, so it may "
    "have taken effect";

// What the session does once the exchange is over.
struct stream_outcome {
    std::optional<response_t> error;  // failed before the answer's head went out: send this
    bool close_client = false;        // the connection cannot carry another request
    bool client_read_pending = false; // a read of the client (its body, a tunnel) is still pending
    int status = 0;                   // the status relayed (when error is empty)
    dispatch_info info;
};

// The session an exchange serves: told on S, exactly once, that the exchange is over. The
// exchange holds it alive until then.
class stream_owner {
public:
    virtual void end_stream(stream_outcome out) = 0;

protected:
    ~stream_owner() = default;
};

struct stream_params {
    std::shared_ptr<upstream_pool> pool;
    const config::route_settings* route = nullptr;
    metrics::route_metrics* route_metrics = nullptr;
    metrics::upstream_route_metrics* upstream_metrics = nullptr;
    memory_budget* budget = nullptr;
    std::chrono::steady_clock::time_point started;        // the request's start: upstream_elapsed counts from it
    std::chrono::steady_clock::time_point head_deadline;  // the answer's head, at the latest
    std::chrono::steady_clock::duration request_timeout{};  // after the request body: for the head
    std::chrono::steady_clock::duration send_timeout{};     // a client that takes no byte
    std::string client_ip;
    std::string request_id;
    std::string_view proto = "http";  // X-Forwarded-Proto
    bool keep_alive = true;           // the client's request allows another one after it
    prometheus::Counter* budget_rejected = nullptr;
    prometheus::Counter* send_timeouts = nullptr;
};

template <class ClientStream>
class stream_exchange : public std::enable_shared_from_this<stream_exchange<ClientStream>>,
                        public upstream_pool::lease_taker {
public:
    using request_parser_t = http::request_parser<http::buffer_body>;
    using clock = std::chrono::steady_clock;

    // owner keeps the client stream and buffer alive; its end_stream runs on S, exactly once.
    // parser: the client's, with the request's head read and none of its body.
    stream_exchange(ClientStream& client, boost::beast::flat_buffer& client_buffer,
                    http::request_parser<http::string_body>&& parser,
                    stream_params params, std::shared_ptr<stream_owner> owner)
        : client_(client),
          client_buffer_(client_buffer),
          s_(client.get_executor()),
          req_(std::move(parser)),
          p_(std::move(params)),
          owner_(std::move(owner)),
          request_charge_(p_.budget),
          response_charge_(p_.budget),
          upstream_head_(thread_string_pool::take()),
          ready_head_(thread_string_pool::take()) {}

    ~stream_exchange() {
        thread_string_pool::give(upstream_head_);
        thread_string_pool::give(ready_head_);
        thread_string_pool::give(client_head_);  // the answer's head, moved there from ready_head_
        if (conn_) {  // ended early: the connection is not reused
            auto ex = conn_->tcp().get_executor();
            net::post(ex, [pool = p_.pool, c = std::move(conn_)]() mutable { pool->give_back(std::move(c), false); });
        }
    }

    // On S, after the request's head was read.
    void start() {
        const auto& h = req_.get();
        version_ = h.version();
        head_request_ = h.method() == http::verb::head;
        read_only_ = head_request_ || h.method() == http::verb::get;
        idempotent_ = is_idempotent(h.method());
        request_done_ = req_.is_done();
        bodyless_ = request_done_;
        const auto& settings = p_.route->passthrough;
        if (auto length = req_.content_length(); length && settings.max_body_bytes && *length > settings.max_body_bytes)
            return fail_before_head(gateway_error::payload_too_large, too_big("request body", "max_body", settings.max_body_bytes));
        req_.body_limit(settings.max_body_bytes ? boost::optional<std::uint64_t>(settings.max_body_bytes) : boost::none);
        upgrade_ = bodyless_ && wants_upgrade(h);
        if (upgrade_ && !settings.upgrade)
            return fail_before_head(gateway_error::bad_request, "route '" + p_.route->name + "' does not allow protocol upgrades");
        // Windows are sized to the body when it is small (most calls: no 64 KiB per tiny
        // request), and charged to limits.max_buffered while the exchange lives.
        const std::size_t request_window = upgrade_        ? stream_window
                                           : request_done_ ? 0
                                                           : std::clamp<std::uint64_t>(req_.content_length().value_or(stream_window), 1, stream_window);
        if (!request_charge_.grow_to(request_window)) return over_budget();
        request_window_.ensure(request_window);
        // The upstream's head up to its framing, from the fields as read now: Beast appends a
        // chunked body's trailer fields to them later, and trailers never join the head (RFC
        // 9110 6.5.1).
        begin_upstream_head(h);
        // The client is invited to send its body now, as the gateway relays it from here on.
        const auto expect = h.find(http::field::expect);
        if (!request_done_ && version_ >= 11 && expect != h.end() &&
            boost::beast::iequals(expect->value(), "100-continue") && client_buffer_.size() == 0) {
            static constexpr std::string_view go_on = "HTTP/1.1 100 Continue\r\n\r\n";
            boost::beast::get_lowest_layer(client_).expires_after(p_.send_timeout);
            client_writing_ = true;
            return net::async_write(client_, net::buffer(go_on.data(), go_on.size()),
                                    [self = this->shared_from_this()](boost::system::error_code ec, std::size_t) {
                                        if (self->client_write_ended(ec)) self->read_request_piece();
                                    });
        }
        if (!request_done_) return read_request_piece();
        upstream_begun_ = true;
        begin_upstream();
    }

    // On S: the drain deadline. What is owed becomes a 503, or the connection closes. A write
    // that was handed an upstream connection may have gone out (and, retried on a fresh one
    // after a reset, gone out before) and taken effect: a 504 that says so, never a 503
    // inviting a retry.
    void shut_down() {
        if (finished_) return;
        if (!head_sent_ && request_may_be_out_ && !read_only_)
            return fail_before_head(gateway_error::upstream_timeout, std::string(sent_before_shutdown));
        if (!head_sent_) return fail_before_head(gateway_error::shutting_down, "the gateway is shutting down");
        end(true, false);
    }

    bool head_sent() const { return head_sent_; }

private:
    // Its fields on the exchange's head_arena (response_arena_).
    using response_parser_t = http::response_parser<http::buffer_body, arena_allocator<char>>;
    using error_code = boost::system::error_code;

    static bool is_idempotent(http::verb v) {
        return v == http::verb::get || v == http::verb::head || v == http::verb::options || v == http::verb::put ||
               v == http::verb::delete_;
    }

    static std::string too_big(const char* what, const char* key, std::size_t cap) {
        return std::string(what) + " exceeds passthrough." + key + " (" + std::to_string(cap) + " bytes)";
    }

    // Connection: Upgrade with an Upgrade field (RFC 9110 7.8), HTTP/1.1 only.
    bool wants_upgrade(const http::request_header<>& h) const {
        if (h.version() < 11 || h.find(http::field::upgrade) == h.end()) return false;
        auto c = h.find(http::field::connection);
        return c != h.end() && http::token_list(c->value()).exists("upgrade");
    }

    // On S, once the first window of the body (or all of it) is in: a body that fits goes with
    // a Content-Length, so the upstream sees nothing of a request whose body turns out
    // malformed, and legacy upstreams without chunked requests still take small chunked ones.
    void begin_upstream() {
        replayable_ = first_done_ || bodyless_;
        chunked_in_ = !first_done_ && req_.chunked();
        build_upstream_head();
        lease(false);
    }

    // Start line and fields, written straight into upstream_head_ (no copy of the client's
    // fields to edit): its own that cross, then the gateway's (append_upstream_fields).
    template <class Head>
    void begin_upstream_head(const Head& h) {
        auto method = h.method_string();
        auto target = h.target();
        upstream_head_.clear();
        // Room for the start line, the client's fields and the gateway's: one allocation.
        upstream_head_.reserve(method.size() + target.size() + wire::fields_bytes(h) + p_.client_ip.size() +
                               p_.request_id.size() + p_.pool->host_header().size() + 224);
        upstream_head_.append(method.data(), method.size());
        upstream_head_ += ' ';
        upstream_head_.append(target.data(), target.size());
        upstream_head_.append(" HTTP/1.1\r\n", 11);
        append_upstream_fields(upstream_head_, h, h.version(), p_.client_ip, p_.proto, p_.request_id, p_.pool->host_header());
        if (upgrade_) upgrade_value_ = std::string(h[http::field::upgrade]);
    }

    // The framing, known once the first window of the body is in, and the end of the head.
    void build_upstream_head() {
        if (chunked_in_) {
            wire::append_field(upstream_head_, "Transfer-Encoding", "chunked");
        } else if (!bodyless_ || req_.content_length()) {
            const std::uint64_t length = first_done_ ? first_n_ : *req_.content_length();
            wire::append_field(upstream_head_, "Content-Length", static_cast<std::size_t>(length));
        }
        if (upgrade_) {
            wire::append_field(upstream_head_, "Connection", "Upgrade");
            wire::append_field(upstream_head_, "Upgrade", upgrade_value_);
        } else if (!p_.pool->settings().keep_alive) {
            wire::append_field(upstream_head_, "Connection", "close");  // one request per connection
        }
        upstream_head_.append("\r\n", 2);
    }

    // --- the upstream connection (U) -------------------------------------------------------

    void lease(bool fresh) {
        p_.pool->async_lease(p_.head_deadline, fresh, this->shared_from_this());
    }

    void take_lease(upstream_pool::lease l) override { on_lease(std::move(l)); }

    // On the lent connection's thread, or any thread when no connection came.
    void on_lease(upstream_pool::lease l) {
        if (l.failure != upstream_failure::none) {
            const bool timed_out = l.failure == upstream_failure::timeout;
            count_upstream(failure_label(l.failure));
            return on_s([this, timed_out, error = failure_error(l.failure), detail = std::move(l.detail)] {
                fail_before_head(error, upstream_name() + (timed_out ? " timed out" : ": " + detail));
            });
        }
        // The client side decides whether the request goes out: the session may have ended the
        // stream while it waited for the lease (the drain's 503, a client gone), and then nothing
        // is sent upstream: a caller told "failed" must not have its request applied. conn_ and
        // u_ are set on S, where close_upstream() reads them.
        on_s([this, l = std::move(l)]() mutable {
            if (finished_) {
                auto ex = l.conn->tcp().get_executor();
                return net::post(ex, [pool = p_.pool, conn = std::move(l.conn)]() mutable {
                    pool->give_back(std::move(conn), true);  // nothing was sent on it
                });
            }
            conn_ = std::move(l.conn);
            request_may_be_out_ = true;  // S's own record: conn_ itself moves on U (a retry gives it back)
            reused_ = l.reused;
            u_.emplace(conn_->tcp().get_executor());
            on_u([this] {
                // A lease that came at the deadline sends nothing: the caller's 504 must not
                // stand for a request the upstream applied (the immediate write below does
                // not look at the deadline, as an asynchronous one did).
                const auto now = clock::now();
                if (now >= p_.head_deadline) return upstream_failed(boost::beast::error::timeout);
                conn_->tcp().expires_at(p_.head_deadline, now);
                write_request_piece(first_n_, first_done_ || bodyless_, true);
            });
        });
    }

    void read_response_head() {
        response_.reset();  // an interim head's fields, or a failed try's, let go of the arena first
        response_arena_.reset();
        response_.emplace(std::piecewise_construct, std::make_tuple(),
                          std::make_tuple(arena_allocator<char>(response_arena_)));
        response_->header_limit(upstream_head_limit);
        const auto cap = p_.route->passthrough.max_response_bytes;
        response_->body_limit(cap ? boost::optional<std::uint64_t>(cap) : boost::none);
        if (head_request_) response_->skip(true);
        with_upstream([this](auto& stream) {
            wait_for_message(stream, conn_->buffer);
            http::async_read_header(stream, conn_->buffer, *response_,
                                    [self = this->shared_from_this()](error_code ec, std::size_t) { self->on_response_head(ec); });
        });
    }

    void on_response_head(error_code ec) {
        if (ec) return upstream_failed(ec);
        const auto check = check_answer_head(response_->get(), head_request_, upgrade_);
        if (check.kind == answer_head::interim) {
            interim_seen_ = true;  // the connection was alive: never sent again on another
            if (!relays_interim(response_->get().result_int()) || interim_relayed_ == max_interim_relayed)
                return read_response_head();
            ++interim_relayed_;
            write_interim_head(response_->get());
            return on_s([this] { send_interim(); });
        }
        const int status = response_->get().result_int();
        head_seen_ = true;
        // The request went up whole: its head is never written again (no retry after an answer).
        if (request_sent_) thread_string_pool::give(upstream_head_);
        if (head_timer_) head_timer_->cancel();
        const auto elapsed = head_elapsed_ = clock::now() - p_.started;
        p_.upstream_metrics->duration->Observe(std::chrono::duration<double>(elapsed).count());
        if (!valid_status(status)) count_upstream(failure_label(upstream_failure::bad_response));
        else p_.upstream_metrics->requests->inc(status);
        if (check.kind == answer_head::refused)
            return on_s([this, why = check.why] {
                fail_before_head(gateway_error::upstream_bad_response, upstream_name() + " answered " + why);
            });
        const bool no_body = head_request_ || status == 204 || status == 304 || status == 101;
        bool chunk_out = false, close_after = false;
        if (status != 101 && !no_body && !response_->content_length()) {
            if (version_ >= 11) chunk_out = true;
            else close_after = true;
        }
        write_client_head(response_->get(), status, chunk_out, close_after, response_->content_length());
        const bool done = response_->is_done() || status == 101;
        const std::size_t window =
            status == 101 ? stream_window : std::clamp<std::uint64_t>(response_->content_length().value_or(stream_window), 1, stream_window);
        if (!no_body && !response_charge_.grow_to(window)) {
            close_upstream_now();
            return on_s([this] {
                p_.budget_rejected->Increment();
                fail_before_head(gateway_error::answer_over_budget, std::string(answer_refused));
            });
        }
        response_window_.ensure(window);
        const bool reusable = done && status != 101 && response_->keep_alive();
        if (!done && conn_->buffer.size() > 0) {
            // Body bytes came with the head: they go out with it.
            head_pending_ = true;
            return take_buffered_piece();
        }
        on_s([this, done, reusable, elapsed] {
            send_head(elapsed);
            write_response_piece(0, done, reusable);
        });
    }

    void read_response_piece() {
        auto& body = response_->get().body();
        body.data = response_window_.data();
        body.size = response_window_.size();
        conn_->tcp().expires_after(p_.route->passthrough.idle_timeout);
        // Beast reads at most the buffer's free capacity: a buffer left at its head's size
        // would relay a large body a few KiB per read (measured: 15x nginx's CPU per GiB).
        if (conn_->buffer.capacity() < response_window_.size()) conn_->buffer.reserve(response_window_.size());
        with_upstream([this](auto& stream) {
            http::async_read_some(stream, conn_->buffer, *response_, [self = this->shared_from_this()](error_code ec, std::size_t) {
                self->on_response_piece(ec);
            });
        });
    }

    // What Beast's read first does with bytes already buffered, done here: Beast's read that
    // needed no receive still posts its completion (a scheduler round per answer whose body
    // came with its head, most small answers).
    void take_buffered_piece() {
        auto& body = response_->get().body();
        body.data = response_window_.data();
        body.size = response_window_.size();
        error_code ec;
        const auto used = response_->put(conn_->buffer.data(), ec);
        conn_->buffer.consume(used);
        // More is needed than is buffered (a chunk-size line cut short): what was parsed goes
        // out, and the next read waits for the rest.
        if (ec == http::error::need_more) ec = {};
        on_response_piece(ec);
    }

    void on_response_piece(error_code ec) {
        if (ec == http::error::need_buffer) ec = {};
        if (ec) return upstream_failed(ec);
        const std::size_t n = response_window_.size() - response_->get().body().size;
        const bool done = response_->is_done();
        if (n == 0 && !done) return read_response_piece();  // a chunk's size line only
        const bool reusable = done && response_->keep_alive();
        on_s([this, n, done, reusable, head = std::exchange(head_pending_, false), elapsed = head_elapsed_] {
            if (head) send_head(elapsed);  // as the duration histogram has it (U's, copied here)
            write_response_piece(n, done, reusable);
        });
    }

    // On U: a failure of the upstream connection, sending or reading.
    void upstream_failed(error_code ec) {
        if (head_timed_out_) ec = boost::beast::error::timeout;
        const bool nothing_received = !interim_seen_ && (!response_ || !response_->got_some());
        if (!head_seen_ && reused_ && nothing_received && !retried_ && ec != boost::beast::error::timeout &&
            replayable_ && idempotent_) {
            // An idle keep-alive connection the upstream had closed: once more on a new one.
            retried_ = true;
            close_upstream_now();
            p_.pool->give_back(std::move(conn_), false);
            response_.reset();
            return lease(true);
        }
        close_upstream_now();
        auto failure = classify_upstream_failure(ec);
        if (!head_seen_) count_upstream(failure.label);
        on_s([this, failure = std::move(failure)] {
            if (head_sent_) return abort(true);
            fail_before_head(failure.error, failure.message);
        });
    }

    struct stream_failure {
        const char* label;  // batchgate_upstream_requests_total{outcome}
        gateway_error error;
        std::string message;
    };

    // The pool's rule (classify_exchange_error), in the words and labels of a stream.
    stream_failure classify_upstream_failure(error_code ec) const {
        if (ec == http::error::body_limit)
            return {"bad_response", gateway_error::upstream_bad_response,
                    upstream_name() + ": answer " +
                        too_big("body", "max_response", p_.route->passthrough.max_response_bytes)};
        auto failure = classify_exchange_error(ec, upstream_name());
        return {failure_label(failure.kind), failure_error(failure.kind), std::move(failure.message)};
    }

    void close_upstream_now() {
        if (!conn_) return;
        error_code ignored;
        conn_->tcp().socket().shutdown(net::ip::tcp::socket::shutdown_both, ignored);
        conn_->tcp().socket().close(ignored);
    }

    // --- the request body: S reads, U writes ------------------------------------------------

    // offset: bytes of the first window already in (it fills before anything goes upstream).
    void read_request_piece(std::size_t offset = 0) {
        if (finished_ || owed_failure_) return;
        auto& body = req_.get().body();
        body.data = request_window_.data() + offset;
        body.size = request_window_.size() - offset;
        boost::beast::get_lowest_layer(client_).expires_after(p_.route->passthrough.idle_timeout);
        const auto want = std::min(request_window_.size(), client_buffer_.max_size());
        if (client_buffer_.capacity() < want) client_buffer_.reserve(want);  // as for the answer, below
        client_reading_ = true;
        http::async_read_some(client_, client_buffer_, req_, [self = this->shared_from_this()](error_code ec, std::size_t) {
            self->client_reading_ = false;
            self->on_request_piece(ec);
        });
    }

    void on_request_piece(error_code ec) {
        if (finished_ || owed_failure_) return;
        if (ec == http::error::need_buffer) ec = {};
        if (ec) {
            if (head_sent_) return abort(false);
            if (ec == http::error::body_limit)
                return fail_before_head(gateway_error::payload_too_large,
                                        too_big("request body", "max_body", p_.route->passthrough.max_body_bytes));
            // A malformed body, or a FIN mid-body (partial_message: the client may have only
            // half-closed, and still reads): the 400 a buffered route gives (the upstream call,
            // if begun, is ended).
            if (ec.category() == error_code(http::error::end_of_stream).category() && ec != http::error::end_of_stream)
                return fail_before_head(gateway_error::bad_request, "malformed request body: " + ec.message());
            return abort(false);  // the client went away mid-body (a reset): nobody to answer
        }
        const bool first = !upstream_begun_;
        // Counted from the window's start: the first window fills before anything goes upstream.
        const std::size_t n = request_window_.size() - req_.get().body().size;
        const bool done = req_.is_done();
        if (first && !done && n < request_window_.size()) {
            first_n_ = n;
            return read_request_piece(n);
        }
        if (n == 0 && !done) return read_request_piece();
        p_.route_metrics->stream_bytes_in->Increment(static_cast<double>(n));
        if (first) {
            upstream_begun_ = true;
            first_n_ = n;
            first_done_ = done;
            return begin_upstream();
        }
        on_u([this, n, done] { write_request_piece(n, done, false); });
    }

    // On U: a window of the body (after the request's head, the first time), framed.
    void write_request_piece(std::size_t n, bool done, bool with_head) {
        framed_.clear();
        if (chunked_in_ && n) framed_ = chunk_size_line(n);
        std::string_view tail = !chunked_in_ ? "" : done ? (n ? "\r\n0\r\n\r\n" : "0\r\n\r\n") : n ? "\r\n" : "";
        if (!with_head && !head_seen_) conn_->tcp().expires_after(p_.route->passthrough.idle_timeout);
        with_upstream([&](auto& stream) {
            write_then(stream,
                       boost::beast::buffers_cat(net::buffer(with_head ? std::string_view(upstream_head_) : std::string_view()),
                                                 net::buffer(framed_), net::buffer(request_window_.data(), n),
                                                 net::buffer(tail.data(), tail.size())),
                       [this, done, with_head](error_code ec) { on_request_piece_written(ec, done, with_head); });
        });
    }

    void on_request_piece_written(error_code ec, bool done, bool with_head) {
        if (ec && with_head) return upstream_failed(ec);
        // A failed write of a later window ends the request only: the answer may still come
        // (an early 413, say), and a dead connection shows on the read side too.
        if (ec) return;
        if (done) request_sent_ = true;
        if (with_head) {
            // While the body streams, the head's read waits without a timer (Beast keeps a
            // pending read's expiry as it was): the writes' idle timeout covers that time, and
            // the head is owed within request_timeout once the body is through.
            if (!done) conn_->tcp().expires_never();
            read_response_head();
        }
        if (done && !with_head && !head_seen_) {
            head_timer_.emplace(*u_);
            head_timer_->expires_after(p_.request_timeout);
            head_timer_->async_wait([self = this->shared_from_this()](error_code ec) {
                if (ec || self->head_seen_) return;
                self->head_timed_out_ = true;
                self->close_upstream_now();
            });
        }
        if (upgrade_) return;
        on_s([this, done] {
            if (done) {
                request_done_ = true;
                return maybe_finish();
            }
            read_request_piece();
        });
    }

    // --- the answer: U reads, S writes -------------------------------------------------------

    // An upstream answer's fields the client never gets as sent, final or interim: Server and
    // X-Request-Id (the gateway's own) and Content-Length (counted again, or none on a 1xx).
    template <class Field>
    static bool not_relayed(const Field& f) {
        return f.name() == http::field::server || f.name() == http::field::content_length || is_request_id(f);
    }

    // On U: the client's head, written straight from the upstream's (no copy of its fields to
    // edit) into ready_head_, which S sends. The upstream's fields that cross, in order, but
    // Server and X-Request-Id (the gateway's); the framing; Connection as Beast's keep_alive()
    // would set it for the client's version; Server; X-Request-Id.
    template <class Head>
    void write_client_head(const Head& h, int status, bool chunk_out, bool close_after,
                           boost::optional<std::uint64_t> content_length) {
        std::string& out = ready_head_;
        out.clear();
        out.reserve(wire::fields_bytes(h) + p_.request_id.size() + 200);  // one allocation
        wire::append_status_line(out, version_, static_cast<unsigned>(status), wire::reason_phrase(h.reason(), h.result_int()));
        // Content-Length as the parser read it: one number, whatever list the upstream sent
        // ("2, 2" is one length to the parser, an ambiguous field to a client, RFC 9110 8.6),
        // and none on a 204, which has no content to measure.
        bool dated = false;  // the upstream's Date goes on; an answer without one (or whose Connection
                             // names it) gets the gateway's
        append_crossing_fields(out, h, not_relayed<typename Head::value_type>,
                               [&dated](const auto& f) { dated = dated || f.name() == http::field::date; });
        if (content_length && status != 204 && status != 101)
            wire::append_field(out, "Content-Length", static_cast<std::size_t>(*content_length));
        if (status == 101) {
            wire::append_field(out, "Connection", "Upgrade");
            wire::append_field(out, "Upgrade", h[http::field::upgrade]);
        } else if (chunk_out) {
            wire::append_field(out, "Transfer-Encoding", "chunked");
        }
        // An answer that comes before the whole request went upstream (an early 413, say) ends
        // the client's connection (maybe_finish): the head says so (RFC 9112 9.6).
        ready_keep_client_ = p_.keep_alive && !close_after && status != 101 && request_sent_;
        ready_chunk_out_ = chunk_out;
        if (status != 101) wire::append_connection(out, version_, ready_keep_client_);
        if (!dated) wire::append_date(out);
        wire::append_field(out, "Server", "batchgate");
        wire::append_field(out, "X-Request-Id", p_.request_id);
        out.append("\r\n", 2);
        ready_status_ = status;
    }

    // An interim answer (1xx but 101) goes on to the client (RFC 9110 15.2: a proxy forwards
    // them), unless the client spoke HTTP/1.0 (it must get none), the route says not to, or it is
    // a 100 Continue: the client's was the gateway's own to give (start()), and a client that
    // asked for none needs none.
    bool relays_interim(int status) const {
        return status != 100 && version_ >= 11 && p_.route->passthrough.relay_interim;
    }
    // Past this many, an upstream's further interim answers are read and dropped (each relayed
    // one costs a write to the client and a hop between S and U).
    static constexpr unsigned max_interim_relayed = 32;

    // On U: the interim answer's head as the client gets it: its status line and the fields
    // that cross (no Content-Length: a 1xx has no content, RFC 9110 8.6).
    template <class Head>
    void write_interim_head(const Head& h) {
        std::string& out = ready_head_;  // free until the final head (U reads it only after S wrote this)
        out.clear();
        out.reserve(wire::fields_bytes(h) + 64);
        wire::append_status_line(out, 11, static_cast<unsigned>(h.result_int()), wire::reason_phrase(h.reason(), h.result_int()));
        // Server and X-Request-Id are the gateway's, as on the final head (which carries them).
        append_crossing_fields(out, h, not_relayed<typename Head::value_type>);
        out.append("\r\n", 2);
    }

    // On S: the interim head is written, then U reads the next head (one write to the client
    // at a time: the final head waits for this one).
    void send_interim() {
        if (finished_) return;
        client_writing_ = true;
        client_head_ = std::move(ready_head_);
        boost::beast::get_lowest_layer(client_).expires_after(p_.send_timeout);
        write_then(client_, net::buffer(client_head_), [this](error_code ec) {
            thread_string_pool::give(client_head_);
            client_head_.clear();
            if (!client_write_ended(ec)) return;
            p_.route_metrics->interim_relayed->Increment();
            on_u([this] {
                // The head's read keeps the deadline the first one had (a body write meanwhile
                // set its idle timeout on the idle read direction too): none while the body is
                // still going up or the head timer runs, else the head's deadline.
                if (!request_sent_ || head_timer_)
                    conn_->tcp().expires_never();
                else
                    conn_->tcp().expires_at(p_.head_deadline);
                read_response_head();
            });
        });
    }

    // On S, when a write of the gateway's own to the client before the final head ends (100
    // Continue, an interim head): whether the exchange goes on. A failure owed meanwhile (the
    // drain, the head's timeout, a bad body) is answered now, as the client's one final answer.
    bool client_write_ended(error_code ec) {
        client_writing_ = false;
        if (finished_) return false;
        if (ec == boost::beast::error::timeout) p_.send_timeouts->Increment();
        if (ec) {
            abort(false);
            return false;
        }
        if (owed_failure_) {
            auto [error, message] = std::move(*owed_failure_);
            owed_failure_.reset();
            fail_before_head(error, message);
            return false;
        }
        return true;
    }

    // On S: the head U wrote goes out with the first piece of the body.
    void send_head(clock::duration elapsed) {
        if (finished_) return;
        head_sent_ = true;
        status_ = ready_status_;
        chunk_out_ = ready_chunk_out_;
        keep_client_ = ready_keep_client_;
        info_.upstream_status = status_;
        info_.upstream_elapsed = elapsed;
        client_head_ = std::move(ready_head_);
    }

    void write_response_piece(std::size_t n, bool done, bool reusable) {
        if (finished_) return;
        p_.route_metrics->stream_bytes_out->Increment(static_cast<double>(n));
        piece_head_.clear();
        if (chunk_out_ && n) piece_head_ = chunk_size_line(n);
        std::string_view tail = !chunk_out_ ? "" : done ? (n ? "\r\n0\r\n\r\n" : "0\r\n\r\n") : n ? "\r\n" : "";
        boost::beast::get_lowest_layer(client_).expires_after(p_.send_timeout);
        write_then(client_,
                   boost::beast::buffers_cat(net::buffer(client_head_), net::buffer(piece_head_),
                                             net::buffer(response_window_.data(), n), net::buffer(tail.data(), tail.size())),
                   [this, done, reusable](error_code ec) { on_response_piece_written(ec, done, reusable); });
    }

    void on_response_piece_written(error_code ec, bool done, bool reusable) {
        if (finished_) return;
        if (ec == boost::beast::error::timeout) p_.send_timeouts->Increment();
        if (ec) return abort(false);
        thread_string_pool::give(client_head_);  // written: a long stream does not hold its room
        client_head_.clear();
        if (status_ == 101) return start_tunnel();
        if (done) {
            response_done_ = true;
            upstream_reusable_ = reusable;
            return maybe_finish();
        }
        on_u([this] { read_response_piece(); });
    }

    static std::string chunk_size_line(std::size_t n) {
        char line[24];
        const int len = std::snprintf(line, sizeof line, "%zx\r\n", n);
        return std::string(line, static_cast<std::size_t>(len));
    }

    // --- upgrades: bytes both ways ------------------------------------------------------------

    void start_tunnel() {
        p_.route_metrics->upgrades->Increment();
        tunnel_client_to_upstream();
        net::post(*u_, [self = this->shared_from_this()] { self->tunnel_read_upstream(); });
    }

    // S: from the client (what it sent after its head first), then to U.
    void tunnel_client_to_upstream() {
        if (finished_) return;
        if (client_buffer_.size() > 0) {
            const auto n = net::buffer_copy(net::buffer(request_window_.data(), request_window_.size()), client_buffer_.data());
            client_buffer_.consume(n);
            return net::post(*u_, [self = this->shared_from_this(), n] { self->tunnel_write_upstream(n); });
        }
        boost::beast::get_lowest_layer(client_).expires_after(p_.route->passthrough.idle_timeout);
        client_reading_ = true;
        client_.async_read_some(net::buffer(request_window_.data(), request_window_.size()), [self = this->shared_from_this()](error_code ec, std::size_t n) {
            self->client_reading_ = false;
            if (self->finished_) return;
            if (ec) return self->tunnel_side_ended(ec, true);
            self->p_.route_metrics->stream_bytes_in->Increment(static_cast<double>(n));
            net::post(*self->u_, [self, n] { self->tunnel_write_upstream(n); });
        });
    }

    void tunnel_write_upstream(std::size_t n) {
        conn_->tcp().expires_after(p_.route->passthrough.idle_timeout);
        with_upstream([&](auto& stream) {
            net::async_write(stream, net::buffer(request_window_.data(), n), [self = this->shared_from_this()](error_code ec, std::size_t) {
                self->on_s([self, ec] {
                    if (ec) return self->tunnel_side_ended(ec, false);
                    self->tunnel_client_to_upstream();
                });
            });
        });
    }

    // U: from the upstream (what came after its 101 first), then to S.
    void tunnel_read_upstream() {
        if (conn_->buffer.size() > 0) {
            const auto n = net::buffer_copy(net::buffer(response_window_.data(), response_window_.size()), conn_->buffer.data());
            conn_->buffer.consume(n);
            return on_s([this, n] { tunnel_write_client(n); });
        }
        conn_->tcp().expires_after(p_.route->passthrough.idle_timeout);
        with_upstream([&](auto& stream) {
            stream.async_read_some(net::buffer(response_window_.data(), response_window_.size()), [self = this->shared_from_this()](error_code ec, std::size_t n) {
                self->on_s([self, ec, n] {
                    if (ec) return self->tunnel_side_ended(ec, false);
                    self->p_.route_metrics->stream_bytes_out->Increment(static_cast<double>(n));
                    self->tunnel_write_client(n);
                });
            });
        });
    }

    void tunnel_write_client(std::size_t n) {
        if (finished_) return;
        boost::beast::get_lowest_layer(client_).expires_after(p_.route->passthrough.idle_timeout);
        net::async_write(client_, net::buffer(response_window_.data(), n), [self = this->shared_from_this()](error_code ec, std::size_t) {
            if (self->finished_) return;
            if (ec) return self->tunnel_side_ended(ec, true);
            net::post(*self->u_, [self] { self->tunnel_read_upstream(); });
        });
    }

    // On S. A clean close by either side ends the tunnel; so does an error or the idle timeout.
    void tunnel_side_ended(error_code ec, bool client_side) {
        if (finished_) return;
        const bool clean = ec == net::error::eof || ec == boost::beast::http::error::end_of_stream ||
                           ec == net::error::operation_aborted;
        if (!clean && ec != boost::beast::error::timeout) {
            auto* aborts = client_side ? p_.route_metrics->stream_aborts_client : p_.route_metrics->stream_aborts_upstream;
            aborts->Increment();
        }
        end(true, false);
    }

    // --- ending -------------------------------------------------------------------------------

    void maybe_finish() {
        if (!response_done_) return;
        // An answer complete before the request's body was: the rest of the body cannot be told
        // from a next request, and the upstream connection is mid-message.
        if (!request_done_) return end(true, false);
        end(!keep_client_, upstream_reusable_);
    }

    // After the head went out: the connection is cut, and the side that failed counted.
    void abort(bool upstream_side) {
        if (finished_) return;
        (upstream_side ? p_.route_metrics->stream_aborts_upstream : p_.route_metrics->stream_aborts_client)->Increment();
        end(true, false);
    }

    void over_budget() {
        p_.budget_rejected->Increment();
        fail_before_head(gateway_error::overloaded, "the gateway's memory budget (limits.max_buffered) cannot hold another stream now");
    }

    void fail_before_head(gateway_error e, const std::string& message) {
        if (finished_) return;
        if (client_writing_) {  // the session's answer waits for the write of the gateway's own
            if (!owed_failure_) {
                owed_failure_.emplace(e, message);
                close_upstream();  // nothing more goes up (read_request_piece stops too)
            }
            return;
        }
        finished_ = true;
        close_upstream();
        stream_outcome out;
        out.error = error_response(e, message, p_.route->name, version_);
        out.close_client = !request_done_ || upgrade_;
        out.info = info_;
        done(std::move(out));
    }

    void end(bool close_client, bool upstream_reusable) {
        if (finished_) return;
        finished_ = true;
        if (upstream_reusable && u_) {
            on_u([this] { p_.pool->give_back(std::move(conn_), true); });
        } else {
            close_upstream();
        }
        stream_outcome out;
        out.close_client = close_client;
        out.status = status_;
        out.info = info_;
        done(std::move(out));
    }

    void close_upstream() {
        if (u_) on_u([this] { close_upstream_now(); });
    }

    void done(stream_outcome out) {
        out.client_read_pending = client_reading_;
        if (!std::exchange(ended_, true)) owner_->end_stream(std::move(out));
    }

    // --- helpers ---------------------------------------------------------------------------

    template <class F>
    void with_upstream(F&& f) {
        conn_->with_stream(std::forward<F>(f));
    }

    // Writes `buffers` to `stream`, then runs then(ec). Over plain TCP the bytes are first
    // tried at once (swept_stream::send_now): when they all go, or the send fails, `then` runs
    // here, as the caller's last step (callers call this last). What is left goes by
    // async_write, and `then` runs from its handler.
    template <class Stream, class Buffers, class Then>
    void write_then(Stream& stream, const Buffers& buffers, Then then) {
        std::size_t sent = 0;
        if constexpr (std::is_same_v<Stream, swept_stream>) {
            error_code ec;
            sent = stream.send_now(buffers, ec);
            if (ec || sent == net::buffer_size(buffers)) return then(ec);
        }
        boost::beast::buffers_suffix<Buffers> rest(buffers);
        rest.consume(sent);
        net::async_write(stream, rest, [self = this->shared_from_this(), then = std::move(then)](error_code ec, std::size_t) mutable {
            then(ec);
        });
    }

    // Runs f on S, or on U: at once when this thread is that side's (one shard runs both, the
    // usual case: a post there cost a queued handler, a scheduler round and a reference count
    // per hop), else posted. The caller's own handler keeps the exchange alive through an
    // inline f. Callers call these last, but for end() and fail_before_head(), whose f only
    // hands conn_ back or closes it before done(): nothing after it may touch conn_, and the
    // connection may already carry the next queued exchange's request when done() runs.
    template <class F>
    void on_s(F&& f) {
        hop(s_, std::forward<F>(f));
    }
    template <class F>
    void on_u(F&& f) {
        hop(*u_, std::forward<F>(f));
    }
    template <class F>
    void hop(const executor_t& ex, F&& f) {
        if (ex.running_in_this_thread()) return f();
        net::post(ex, [self = this->shared_from_this(), f = std::forward<F>(f)]() mutable { f(); });
    }

    void count_upstream(const char* outcome) { p_.upstream_metrics->requests->inc(std::string(outcome)); }

    std::string upstream_name() const { return "upstream '" + p_.route->upstream + "'"; }

    ClientStream& client_;
    boost::beast::flat_buffer& client_buffer_;
    executor_t s_;
    std::optional<executor_t> u_;  // set when the connection is lent
    request_parser_t req_;
    stream_params p_;
    std::shared_ptr<stream_owner> owner_;
    bool ended_ = false;  // owner_ was told
    budget_lease request_charge_;   // S: the request window
    budget_lease response_charge_;  // U: the response window, until the exchange is gone
    std::string upgrade_value_;     // the client's Upgrade field, when it asks for one
    // One direction's bytes in flight; allocated once, never zeroed.
    struct window {
        std::unique_ptr<char[]> bytes;
        std::size_t cap = 0;
        void ensure(std::size_t n) {
            if (cap < n) bytes.reset(new char[n]), cap = n;
        }
        char* data() { return bytes.get(); }
        std::size_t size() const { return cap; }
    };
    window request_window_;
    window response_window_;
    std::string upstream_head_;
    std::string framed_;       // U: the chunk-size line of the request piece being written
    std::string client_head_;  // S: the answer's head, until written
    std::string piece_head_;   // S: the chunk-size line of the answer piece being written
    // U
    std::unique_ptr<upstream_pool::connection> conn_;
    head_arena response_arena_;  // before response_, which uses it
    std::optional<response_parser_t> response_;
    // The client's head as U wrote it, for S to send (U writes it before it posts to S).
    std::string ready_head_;
    int ready_status_ = 0;
    bool ready_chunk_out_ = false;
    bool ready_keep_client_ = true;
    bool head_pending_ = false;  // U read body bytes with the head: the head goes with them
    clock::duration head_elapsed_{};  // U's: from the request's start to the upstream's head
    bool reused_ = false;
    bool retried_ = false;
    bool head_seen_ = false;
    bool request_sent_ = false;  // the request's last byte went upstream
    std::optional<conn_timer> head_timer_;  // the head owed after a streamed body
    bool head_timed_out_ = false;
    // set in start(), then read-only
    unsigned version_ = 11;
    bool head_request_ = false;
    bool read_only_ = false;  // GET or HEAD: safe to answer "try again" whatever was sent
    bool request_may_be_out_ = false;  // S: an upstream connection was handed over (never reset)
    bool idempotent_ = false;
    bool chunked_in_ = false;
    bool bodyless_ = false;
    bool upgrade_ = false;
    // the first window, read on S before the upstream head is built; then read-only
    std::size_t first_n_ = 0;
    bool first_done_ = false;
    bool upstream_begun_ = false;
    bool replayable_ = false;  // the whole request is in hand: a stale connection can be retried
    // S
    dispatch_info info_;
    int status_ = 0;
    bool head_sent_ = false;
    bool chunk_out_ = false;
    bool keep_client_ = true;
    bool request_done_ = false;
    bool response_done_ = false;
    bool upstream_reusable_ = false;
    bool finished_ = false;
    bool client_reading_ = false;  // a read of the client is pending (its handler not run yet)
    // A write of the gateway's own (100 Continue, an interim head) is pending on the client, and
    // a failure that came meanwhile, answered once it ends.
    bool client_writing_ = false;
    std::optional<std::pair<gateway_error, std::string>> owed_failure_;
    // U
    bool interim_seen_ = false;  // the upstream sent an interim answer
    unsigned interim_relayed_ = 0;
};

}  // namespace batchgate::gateway
