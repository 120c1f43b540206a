#include "net/upstream_pool.hpp"

#include <type_traits>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/beast/ssl.hpp>

#include "config/loader.hpp"
#include "net/hop_by_hop.hpp"
#include "net/upstream_connection.hpp"
#include "net/wire.hpp"

namespace batchgate::gateway {

namespace net = boost::asio;
namespace beast = boost::beast;
using tcp = net::ip::tcp;
using clock_type = std::chrono::steady_clock;
using resolver_t = net::ip::basic_resolver<tcp, executor_t>;

namespace {

// An idle keep-alive connection the upstream has closed must not carry the next request: a
// POST batch on it would fail for every caller. Nor may one that holds bytes nobody asked for
// (a second answer, a 408 before closing): the next caller would take them for its own answer,
// another user's data included. So every reuse is checked with a non-blocking peek.
bool still_usable(upstream_pool::connection& c) {
    return peek_socket(c.tcp().socket().native_handle()) == peeked::nothing;
}

// Closes a connection on its own thread, where a stale timer handler may still be queued.
// The handler owns it: destroyed unrun at shutdown, it still frees the connection.
void discard(std::unique_ptr<upstream_pool::connection> c) {
    auto ex = c->tcp().get_executor();
    net::post(ex, [c = std::move(c)]() mutable {
        beast::error_code ignored;
        c->tcp().socket().close(ignored);
    });
}

}  // namespace

// One request/response exchange. Lives while an async operation holds shared_from_this().
class upstream_pool::call : public std::enable_shared_from_this<upstream_pool::call> {
public:
    call(std::shared_ptr<upstream_pool> pool, upstream_request req, std::chrono::milliseconds timeout,
         handler done, repeat again)
        : pool_(std::move(pool)),
          req_(std::move(req)),
          again_(again),
          start_(clock_type::now()),
          deadline_(start_ + timeout),
          done_(std::move(done)),
          lease_(&pool_->budget_),
          home_(shard_here(pool_->shards_.size())) {}

    // A call that only lends a connection (streamed passthrough): nothing is sent, and nothing
    // is timed (start_ stays unset: the lender times its own exchange).
    call(std::shared_ptr<upstream_pool> pool, clock_type::time_point deadline, lease_handler done)
        : pool_(std::move(pool)),
          deadline_(deadline),
          lend_(std::move(done)),
          lease_(&pool_->budget_),
          home_(shard_here(pool_->shards_.size())) {}

    // fresh: never an idle connection, nor one handed over by release() (a retry after a stale one).
    void start(bool fresh = false) {
        fresh_ = fresh;
        pool_->acquire(shared_from_this());
    }
    bool fresh() const { return fresh_; }

    // The shard the call was made on: a connection it opens runs there.
    std::size_t home() const { return home_; }

    // Queued: give up at the deadline unless a connection arrives first. Only queued calls
    // pay for a timer.
    void wait_in_queue() {
        queue_timer_ = std::make_unique<conn_timer>(pool_->shards_[home_]);
        queue_timer_->expires_at(deadline_);
        queue_timer_->async_wait([self = shared_from_this()](beast::error_code ec) {
            if (ec) return;
            if (self->pool_->forget(self.get()))
                self->finish(upstream_failure::timeout, "no upstream connection free before the deadline");
        });
    }

    // Called by the pool, from any thread, with an idle connection or nullptr (connect one).
    void use(std::unique_ptr<connection> conn) {
        if (queue_timer_) {
            // Stop the queue timer on its own thread so it does not keep this call alive.
            net::post(queue_timer_->get_executor(), [self = shared_from_this()] { self->queue_timer_->cancel(); });
        }
        // A new connection runs on the call's home shard; a slot freed on another shard's thread
        // hands it over there, so the resolver, timers and connect start where they complete.
        if (!conn)
            return net::dispatch(pool_->shards_[home_], [self = shared_from_this()] { self->begin(nullptr); });
        // A pooled connection's stale timer handler may still be queued on its thread: start
        // the next exchange there (inline when the previous call is handing it over).
        auto ex = conn->tcp().get_executor();
        net::dispatch(ex, [self = shared_from_this(), conn = std::move(conn)]() mutable { self->begin(std::move(conn)); });
    }

private:
    void begin(std::unique_ptr<connection> conn) {
        if (conn) {
            reused_ = true;
            conn_ = std::move(conn);
            connected();
        } else {
            reused_ = false;
            conn_ = std::make_unique<connection>(pool_->shards_[home_], home_, pool_->tls_.get());
            do_resolve();
        }
    }

    std::chrono::steady_clock::duration remaining() const {
        auto left = deadline_ - clock_type::now();
        return left > clock_type::duration::zero() ? left : clock_type::duration(1);
    }

    void do_resolve() {
        // Resolve per new connection (connections are pooled, so this is rare) so that DNS
        // changes of a Kubernetes service are picked up.
        const auto& s = pool_->settings_;
        beast::error_code literal;
        auto address = net::ip::make_address(s.host, literal);
        if (!literal)  // an IP address needs no resolver
            return on_resolve({}, resolver_t::results_type::create(tcp::endpoint(address, s.port), s.host,
                                                                      std::to_string(s.port)));
        resolver_ = std::make_unique<resolver_t>(conn_->tcp().get_executor());
        // A resolver that hangs must not hold the slot past the connect budget.
        resolve_timer_ = std::make_unique<conn_timer>(conn_->tcp().get_executor());
        resolve_timer_->expires_after(std::min<clock_type::duration>(remaining(), s.connect_timeout));
        resolve_timer_->async_wait([self = shared_from_this()](beast::error_code ec) {
            if (!ec && self->resolver_) self->resolver_->cancel();
        });
        resolver_->async_resolve(s.host, std::to_string(s.port),
                                 [self = shared_from_this()](beast::error_code ec, resolver_t::results_type r) {
                                     self->resolve_timer_->cancel();
                                     self->on_resolve(ec, std::move(r));
                                 });
    }

    void on_resolve(beast::error_code ec, resolver_t::results_type results) {
        if (ec == net::error::operation_aborted)
            return fail(upstream_failure::connect_failed, "resolving the upstream host timed out");
        if (ec) return fail(upstream_failure::connect_failed, "cannot resolve upstream host: " + ec.message());
        auto connect_budget = std::min<clock_type::duration>(remaining(), pool_->settings_.connect_timeout);
        conn_->tcp().expires_after(connect_budget);
        conn_->tcp().async_connect(results, [self = shared_from_this()](beast::error_code ec, const tcp::endpoint&) {
            self->on_connect(ec);
        });
    }

    void on_connect(beast::error_code ec) {
        if (ec == beast::error::timeout)
            return fail(clock_type::now() >= deadline_ ? upstream_failure::timeout : upstream_failure::connect_failed,
                        "connect timed out");
        if (ec) return fail(upstream_failure::connect_failed, "cannot connect to upstream: " + ec.message());
        conn_->tcp().socket().set_option(tcp::no_delay(true), ec);
        if (conn_->secure) return do_handshake();
        connected();
    }

    // On the connection's thread: send the request, or lend the connection out.
    void connected() {
        if (!lend_) return do_write();
        conn_->tcp().expires_never();
        lease l;
        l.conn = std::move(conn_);
        l.reused = reused_;
        auto lend = std::move(lend_);
        lend->take_lease(std::move(l));
    }

    void do_handshake() {
        const auto& s = pool_->settings_;
        const std::string& name = s.tls_server_name.empty() ? s.host : s.tls_server_name;
        beast::error_code not_ip;
        net::ip::make_address(name, not_ip);
        // SNI carries host names only; the certificate is checked against the name (or IP).
        if (not_ip) SSL_set_tlsext_host_name(conn_->secure->native_handle(), name.c_str());
        if (s.tls_verify) conn_->secure->set_verify_callback(net::ssl::host_name_verification(name));
        conn_->tcp().expires_after(std::min<clock_type::duration>(remaining(), s.connect_timeout));
        conn_->secure->async_handshake(net::ssl::stream_base::client, [self = shared_from_this()](beast::error_code ec) {
            if (ec == beast::error::timeout)
                return self->fail(clock_type::now() >= self->deadline_ ? upstream_failure::timeout
                                                                      : upstream_failure::connect_failed,
                                  "TLS handshake timed out");
            if (ec) return self->fail(upstream_failure::connect_failed, "TLS handshake failed: " + ec.message());
            self->connected();
        });
    }

    void do_write() {
        conn_->tcp().expires_after(remaining());
        // One head buffer plus the body in place: a single writev, no per-field buffers.
        conn_->with_stream([&](auto& stream) {
            auto on_written = [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_write(ec); };
            const auto bufs = wire::buffers(head_, req_);
            if constexpr (std::is_same_v<std::decay_t<decltype(stream)>, tls_stream_t>) {
                // Not as a two-element array: asio's special case for those hands TLS a leading
                // empty buffer once the head is out, Beast's flat_stream then writes 0 bytes,
                // and the write "completes" without the body.
                net::async_write(stream, beast::buffers_cat(bufs[0], bufs[1]), std::move(on_written));
            } else {
                net::async_write(stream, bufs, std::move(on_written));
            }
        });
    }

    void on_write(beast::error_code ec) {
        if (ec) return io_failed(ec, true);
        read_response();
    }

    void read_response() {
        parser_.emplace();
        parser_->body_limit(pool_->settings_.max_response_bytes);
        parser_->header_limit(upstream_head_limit);
        if (req_.method() == http::verb::head) parser_->skip(true);
        conn_->tcp().expires_after(remaining());
        conn_->with_stream([&](auto& stream) {
            wait_for_message(stream, conn_->buffer);
            http::async_read_header(stream, conn_->buffer, *parser_, [self = shared_from_this()](beast::error_code ec, std::size_t n) {
                self->on_header(ec, n);
            });
        });
    }

    // The body's memory is reserved before it is read: all of a Content-Length, or room made
    // step by step for a chunked or close-delimited answer (make_room).
    void on_header(beast::error_code ec, std::size_t n) {
        if (ec || parser_->is_done()) return on_read(ec, n);
        // Refused on its head: its body is not worth reading (on_read refuses it too).
        if (auto check = check_head(); check.kind == answer_head::refused)
            return fail(upstream_failure::bad_response, "upstream answered " + check.why);
        if (auto length = parser_->content_length(); length && !lease_.grow_to(*length))
            return over_budget();
        read_body();
    }

    void read_body() {
        if (!parser_->content_length() && !make_room(parser_->get().body(), lease_, pool_->settings_.max_response_bytes))
            return over_budget();
        conn_->with_stream([&](auto& stream) {
            http::async_read_some(stream, conn_->buffer, *parser_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
                if (ec || self->parser_->is_done()) return self->on_read(ec, 1);
                self->read_body();
            });
        });
    }

    answer_head_check check_head() const {
        return check_answer_head(parser_->get(), req_.method() == http::verb::head, false);
    }

    void over_budget() {
        fail(upstream_failure::over_budget, std::string(answer_refused));
    }

    void on_read(beast::error_code ec, std::size_t bytes) {
        // Nothing came back: nothing parsed, and no part of a head left unparsed in the buffer.
        if (ec) return io_failed(ec, bytes == 0 && conn_->buffer.size() == 0);
        switch (auto check = check_head(); check.kind) {
            case answer_head::interim: return read_response();  // 100 Continue, 103 Early Hints: the real one follows
            case answer_head::refused: return fail(upstream_failure::bad_response, "upstream answered " + check.why);
            case answer_head::final_answer: break;
        }
        settle_content_length(*parser_);
        upstream_result r;
        // The parser's keep_alive() also knows a body framed by closing the connection.
        const bool reusable = parser_->keep_alive();
        r.response = parser_->release();
        // Only a connection with nothing left unread may serve another call (and only when the
        // upstream's connections carry more than one: keep_alive).
        const bool keep = reusable && conn_->buffer.size() == 0 && pool_->settings_.keep_alive;
        conn_->tcp().expires_never();
        if (keep) pool_->release(std::move(conn_));
        else drop_connection();
        r.elapsed = clock_type::now() - start_;
        deliver(std::move(r));
    }

    void io_failed(beast::error_code ec, bool nothing_received) {
        // An idle keep-alive connection the upstream already closed: try once more on a fresh
        // one when the request is safe to repeat.
        if (reused_ && nothing_received && !retried_ && ec != beast::error::timeout && idempotent()) {
            retried_ = true;
            reused_ = false;
            beast::error_code ignored;
            conn_->tcp().socket().close(ignored);
            conn_ = std::make_unique<connection>(pool_->shards_[home_], home_, pool_->tls_.get());
            return do_resolve();
        }
        if (ec == http::error::body_limit)
            return fail(upstream_failure::bad_response, "upstream response exceeds max_response");
        auto failure = classify_exchange_error(ec, "upstream");
        fail(failure.kind, std::move(failure.message));
    }

    bool idempotent() const {
        if (again_ != repeat::by_method) return again_ == repeat::yes;
        switch (req_.method()) {
            case http::verb::get:
            case http::verb::head:
            case http::verb::options:
            case http::verb::put:
            case http::verb::delete_:
                return true;
            default:
                return false;
        }
    }

    void fail(upstream_failure f, std::string detail) {
        drop_connection();
        finish(f, std::move(detail));
    }

    void drop_connection() {
        if (!conn_) return;
        beast::error_code ignored;
        conn_->tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
        conn_->tcp().socket().close(ignored);
        conn_.reset();
        pool_->release(nullptr);
    }

    void finish(upstream_failure f, std::string detail) {
        if (lend_) {
            lease l;
            l.failure = f;
            l.detail = std::move(detail);
            auto lend = std::move(lend_);
            return lend->take_lease(std::move(l));
        }
        upstream_result r;
        r.failure = f;
        r.detail = std::move(detail);
        r.elapsed = clock_type::now() - start_;
        deliver(std::move(r));
    }

    void deliver(upstream_result r) {
        lease_.reset();  // the caller charges what it keeps of the answer
        if (!done_) return;  // exactly once
        auto done = std::move(done_);
        done_ = nullptr;
        done(std::move(r));
    }

    std::shared_ptr<upstream_pool> pool_;
    upstream_request req_;
    repeat again_ = repeat::by_method;  // whether it may be sent again (async_send)
    clock_type::time_point start_;
    clock_type::time_point deadline_;
    handler done_;
    lease_handler lend_;  // a lending call: set until the connection (or a failure) is handed over
    std::string head_;  // serialized request line and fields of req_
    std::unique_ptr<conn_timer> queue_timer_;  // only while queued for a connection
    std::unique_ptr<connection> conn_;
    std::unique_ptr<resolver_t> resolver_;
    std::unique_ptr<conn_timer> resolve_timer_;
    std::optional<http::response_parser<http::string_body>> parser_;
    budget_lease lease_;  // the answer body being read
    std::size_t home_;    // the caller's shard when made
    bool fresh_ = false;  // set by start(), before the call is queued
    bool reused_ = false;
    bool retried_ = false;
};

classified_failure classify_exchange_error(const beast::error_code& ec, const std::string& who) {
    if (ec == beast::error::timeout) return {upstream_failure::timeout, who + " did not answer in time"};
    if (ec.category() == beast::error_code(http::error::end_of_stream).category() && ec != http::error::end_of_stream &&
        ec != http::error::partial_message)
        return {upstream_failure::bad_response, who + " sent invalid HTTP: " + ec.message()};
    return {upstream_failure::io_error, who + " connection failed: " + ec.message()};
}

upstream_pool::upstream_pool(std::vector<shard_executor> shards, config::upstream_settings settings,
                             memory_budget& budget)
    : shards_(std::move(shards)), settings_(std::move(settings)), budget_(budget), idle_(shards_.size()) {
    // Host of every request, built once. An IPv6 literal goes in brackets: Host: [::1]:9000.
    host_header_ = settings_.host.find(':') != std::string::npos ? "[" + settings_.host + "]" : settings_.host;
    if (settings_.port != (settings_.tls ? 443 : 80)) host_header_ += ":" + std::to_string(settings_.port);
    if (!settings_.tls) return;
    tls_ = std::make_unique<net::ssl::context>(net::ssl::context::tls_client);
    tls_->set_options(net::ssl::context::default_workarounds | net::ssl::context::no_sslv2 |
                      net::ssl::context::no_sslv3 | net::ssl::context::no_tlsv1 | net::ssl::context::no_tlsv1_1);
    if (!settings_.tls_verify) {
        tls_->set_verify_mode(net::ssl::verify_none);
        return;
    }
    tls_->set_verify_mode(net::ssl::verify_peer);
    beast::error_code ec;
    if (settings_.tls_ca_file.empty())
        tls_->set_default_verify_paths(ec);
    else
        tls_->load_verify_file(settings_.tls_ca_file, ec);
    if (ec) {
        // Only a file the loader could read but OpenSSL cannot parse gets here.
        const auto& m = settings_.mark;
        throw config::config_error({m.file + ":" + std::to_string(m.line) + ": upstreams." + settings_.name +
                                    ".tls.ca_file: cannot load certificates from \"" + settings_.tls_ca_file +
                                    "\": " + ec.message()});
    }
}

upstream_pool::~upstream_pool() = default;

void upstream_pool::async_send(upstream_request req, std::chrono::milliseconds timeout, handler done, repeat again) {
    req.set(http::field::host, host_header_);
    req.insert(http::field::via, via_hop(req.version()));  // the version it came in (the gateway's own: 1.1)
    req.version(11);
    req.keep_alive(settings_.keep_alive);  // false: Connection: close, one request per connection
    req.prepare_payload();
    auto c = std::make_shared<call>(shared_from_this(), std::move(req), timeout, std::move(done), again);
    c->start();
}

void upstream_pool::async_lease(clock_type::time_point deadline, bool fresh, lease_handler done) {
    // From the thread's block cache: one call per passthrough request.
    std::allocate_shared<call>(thread_cached_allocator<call>(), shared_from_this(), deadline, std::move(done))
        ->start(fresh);
}

void upstream_pool::give_back(std::unique_ptr<connection> conn, bool reusable) {
    if (!conn) return;
    conn->tcp().expires_never();
    if (reusable && conn->buffer.size() == 0 && settings_.keep_alive) {
        // A stream may have grown it to a window (64 KiB): idle, it holds nothing. A buffer
        // the size of an ordinary head stays, for the next request on this connection to read
        // into (freeing and growing it again was an allocation per passthrough request).
        if (conn->buffer.capacity() > idle_buffer_keep) conn->buffer.shrink_to_fit();
        return release(std::move(conn));
    }
    beast::error_code ignored;
    conn->tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
    conn->tcp().socket().close(ignored);
    release(nullptr);
}

void upstream_pool::acquire(const std::shared_ptr<call>& c) {
    // A call takes one of max_connections slots before any connection, pooled or new, so no
    // more than max_connections requests are ever in flight, whichever shards their idle
    // connections sit on; at the cap it queues, and release() hands it the next connection
    // that frees. An idle connection of its shard is peeked (a system call) outside the mutex,
    // so the threads sharing the pool never wait for each other's peeks; a dead one leaves the
    // slot to this call, for the next idle connection or a new one.
    bool holds_slot = false;
    for (;;) {
        std::unique_ptr<connection> conn;
        {
            std::lock_guard lock(mutex_);
            if (!holds_slot) {
                if (active_ >= settings_.max_connections) {
                    waiting_.push_back(c);
                    c->wait_in_queue();
                    return;
                }
                ++active_;
                holds_slot = true;
            }
            auto& idle = idle_[c->home()];
            if (!c->fresh() && !idle.empty()) {
                conn = std::move(idle.back());
                idle.pop_back();
            }
        }
        if (!conn || still_usable(*conn)) return c->use(std::move(conn));  // nullptr: a new one
        discard(std::move(conn));
    }
}

void upstream_pool::release(std::unique_ptr<connection> conn) {
    std::shared_ptr<call> next;
    {
        std::lock_guard lock(mutex_);
        if (!waiting_.empty()) {
            next = std::move(waiting_.front());
            waiting_.pop_front();
            // A call that must go on a new connection takes the slot, not this connection,
            // which goes idle as it would with no one waiting.
            if (conn && next->fresh()) idle_[conn->shard].push_back(std::move(conn));
        } else {
            --active_;
            if (conn) idle_[conn->shard].push_back(std::move(conn));
            return;
        }
    }
    // The slot passes to the next queued call, with this connection if it is still good (the
    // same peek as a reuse from the idle list: a FIN that came with the last answer raises no
    // new edge for the next answer's read to wait on), else with a new one.
    if (conn && !still_usable(*conn)) discard(std::move(conn));
    next->use(std::move(conn));
}

upstream_pool::usage upstream_pool::current_usage() {
    std::lock_guard lock(mutex_);
    usage u{active_, 0, waiting_.size()};
    for (const auto& idle : idle_) u.idle += idle.size();
    return u;
}

bool upstream_pool::forget(const call* c) {
    std::lock_guard lock(mutex_);
    for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
        if (it->get() == c) {
            waiting_.erase(it);
            return true;
        }
    }
    return false;
}

void upstream_pool::abandon() {
    std::deque<std::shared_ptr<call>> waiting;
    std::vector<std::vector<std::unique_ptr<connection>>> idle(idle_.size());
    {
        std::lock_guard lock(mutex_);
        waiting.swap(waiting_);
        idle.swap(idle_);
    }
}

void upstream_pool::close_idle() {
    std::vector<std::vector<std::unique_ptr<connection>>> idle(idle_.size());
    {
        std::lock_guard lock(mutex_);
        idle.swap(idle_);
    }
    for (auto& shard : idle)
        for (auto& c : shard) discard(std::move(c));
}

}  // namespace batchgate::gateway
