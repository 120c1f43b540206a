// A streaming test upstream for the passthrough tests of issue 12, in-process and header-only,
// and the client helpers those tests read it with.
//
// stream_upstream listens on 127.0.0.1:0 and serves, over HTTP/1.1 keep-alive:
//   GET  /bytes/<N>?mode=length|chunked|close&chunk=<K>&delay_ms=<D>
//        200 with N bytes of pattern_byte(0..N-1), framed by Content-Length (default), chunked
//        (one chunk per piece) or close-delimited (Connection: close, no length); generated and
//        written K bytes at a time (default 64 KiB), each write finished before the next piece is
//        made (so a reader that does not read stalls the writer), D ms between pieces.
//   POST|PUT /sink
//        reads the body as it comes (Content-Length or chunked), checks it against pattern_byte and
//        answers {"bytes":N,"pattern_ok":bool,"chunked":bool}; sink_bytes() counts as it reads.
//        Answers `Expect: 100-continue` with a 100 first.
//   GET  /events?n=<N>&gap_ms=<G>[&gated=1]
//        text/event-stream, chunked: N events "data: <i> <steady_clock ms>\n\n", one chunk each,
//        G ms apart, then the last chunk. event_sent_times() has the send time of each. Gated,
//        event i (i > 0) also waits until the test called allow_events(i): a test that allows
//        the next event only once the last one reached its client shows each event went
//        through alone, with no clock involved.
//   GET  /die?after=<N>&length=<L>&how=rst|fin
//        a head with Content-Length L (default 2N + 1024), N bytes of the pattern, then an abortive
//        close (SO_LINGER 0: RST, the default) or a graceful one (how=fin).
//   GET  /slow-head?delay_ms=<D>[&fin=1&hold_ms=<H>]    waits D ms, then 200 "slow\n"; with fin=1
//        the answer says keep-alive but the FIN follows it in the same segment, and the connection
//        stays open, reading nothing, for H ms.
//   GET  /drop-if-reused?drop_ms=<D>&delay_ms=<E>   on a connection's first request, waits E ms,
//        then 200 "fresh\n"; on a later one, waits D ms and closes the connection without an
//        answer (a kept-alive connection the upstream dropped just as a request came on it).
//   ANY  /echo-headers              200 JSON of the request as received: {"method","target",
//        "version":"HTTP/1.1","headers":[[name,value],...] in order,"chunked":bool,"body_bytes":N}.
//   GET  /ws                        WebSocket echo (same type, text or binary) until the peer closes.
//   GET  /ws-refuse                 a plain 403, upgrade request or not.
//   anything else                   404.
// Any request body is read (and counted) before the answer, so keep-alive holds for all of them.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

namespace batchgate::testing {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;

// ---------------------------------------------------------------------------------------------
// The body pattern

/// Byte i of every body /bytes sends and /sink expects.
inline char pattern_byte(std::uint64_t i) { return static_cast<char>('a' + (i * 7 + i / 1000) % 26); }

namespace detail {

// pattern_byte repeats every 26,000 bytes (7 * 26000 and 26000 / 1000 are both multiples of 26), so
// bodies are made and checked by copying from one period instead of byte by byte.
inline constexpr std::size_t pattern_period = 26000;

inline const std::array<char, pattern_period>& pattern_table() {
    static const std::array<char, pattern_period> table = [] {
        std::array<char, pattern_period> t{};
        for (std::size_t i = 0; i < pattern_period; ++i) t[i] = pattern_byte(i);
        return t;
    }();
    return table;
}

}  // namespace detail

/// Writes pattern_byte(offset .. offset + n - 1) to out.
inline void fill_pattern(std::uint64_t offset, char* out, std::size_t n) {
    const auto& table = detail::pattern_table();
    std::size_t pos = offset % detail::pattern_period;
    while (n > 0) {
        const std::size_t k = std::min(n, detail::pattern_period - pos);
        std::memcpy(out, table.data() + pos, k);
        out += k;
        n -= k;
        pos = 0;
    }
}

/// Whether data is pattern_byte(offset ..).
inline bool pattern_matches(std::uint64_t offset, std::string_view data) {
    const auto& table = detail::pattern_table();
    std::size_t pos = offset % detail::pattern_period;
    while (!data.empty()) {
        const std::size_t k = std::min(data.size(), detail::pattern_period - pos);
        if (std::memcmp(data.data(), table.data() + pos, k) != 0) return false;
        data.remove_prefix(k);
        pos = 0;
    }
    return true;
}

/// Checks a body piece by piece: call it with each piece in order.
struct pattern_check {
    std::uint64_t bytes = 0;
    bool ok = true;
    void operator()(std::string_view piece) {
        if (ok && !pattern_matches(bytes, piece)) ok = false;
        bytes += piece.size();
    }
};

namespace detail {

inline std::string lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

// The value of `name` in the query of target ("" when present without a value), not decoded.
inline std::optional<std::string> query_param(std::string_view target, std::string_view name) {
    const auto q = target.find('?');
    if (q == std::string_view::npos) return std::nullopt;
    std::string_view query = target.substr(q + 1);
    while (!query.empty()) {
        const auto amp = query.find('&');
        const std::string_view pair = query.substr(0, amp);
        const auto eq = pair.find('=');
        if (pair.substr(0, eq) == name)
            return std::string(eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1));
        if (amp == std::string_view::npos) break;
        query.remove_prefix(amp + 1);
    }
    return std::nullopt;
}

inline std::uint64_t query_number(std::string_view target, std::string_view name, std::uint64_t fallback) {
    const auto text = query_param(target, name);
    if (!text) return fallback;
    std::uint64_t v = 0;
    const auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), v);
    return ec == std::errc() && end == text->data() + text->size() ? v : fallback;
}

inline constexpr auto use_tuple = net::as_tuple(net::use_awaitable);

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// The server

class stream_upstream {
public:
    using clock = std::chrono::steady_clock;

    explicit stream_upstream(unsigned threads = 2)
        : acceptor_(net::make_strand(ioc_)), accept_retry_(acceptor_.get_executor()) {
        acceptor_.open(tcp::v4());
        acceptor_.set_option(tcp::acceptor::reuse_address(true));
        acceptor_.bind(tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
        acceptor_.listen(net::socket_base::max_listen_connections);
        port_ = acceptor_.local_endpoint().port();
        net::co_spawn(acceptor_.get_executor(), accept_loop(), net::detached);
        threads_.reserve(std::max(threads, 1u));
        for (unsigned i = 0; i < std::max(threads, 1u); ++i) threads_.emplace_back([this] { ioc_.run(); });
    }

    ~stream_upstream() { stop(); }

    stream_upstream(const stream_upstream&) = delete;
    stream_upstream& operator=(const stream_upstream&) = delete;

    unsigned short port() const { return port_; }

    /// Stops accepting, closes every connection (mid-transfer or not) and joins the threads.
    void stop() {
        std::vector<std::shared_ptr<connection>> live;
        {
            std::lock_guard lock(mutex_);
            if (stopping_) return;
            stopping_ = true;
            for (auto& weak : connections_)
                if (auto c = weak.lock()) live.push_back(std::move(c));
            connections_.clear();
        }
        net::post(acceptor_.get_executor(), [this] {
            beast::error_code ec;
            acceptor_.close(ec);
            accept_retry_.cancel();
        });
        for (auto& c : live) net::post(c->strand, [c] { c->abort(); });
        live.clear();
        for (auto& t : threads_) t.join();
    }

    /// TCP connections accepted so far.
    std::uint64_t connections_accepted() const { return accepted_.load(); }
    /// Connections whose session still runs (accepted and not yet closed by either side).
    std::uint64_t open_connections() const { return open_.load(); }
    /// Request heads read so far, on all connections.
    std::uint64_t requests() const { return requests_.load(); }
    /// Body bytes /sink has read so far, over all uploads (grows while an upload comes in).
    std::uint64_t sink_bytes() const { return sink_bytes_.load(); }
    /// Body bytes /bytes and /die have written so far (each piece counted once its write is done).
    std::uint64_t bytes_sent() const { return bytes_sent_.load(); }
    /// Gated /events streams may send events up to number n (0-based, exclusive).
    void allow_events(std::uint64_t n) {
        for (auto seen = allowed_events_.load(); seen < n && !allowed_events_.compare_exchange_weak(seen, n);) {
        }
    }
    /// When each /events event was handed to the socket, in order, over all /events streams.
    std::vector<clock::time_point> event_sent_times() const {
        std::lock_guard lock(mutex_);
        return event_times_;
    }

private:
    struct connection {
        explicit connection(tcp::socket s)
            : strand(s.get_executor()), socket(std::move(s)), timer(strand) {}
        net::any_io_executor strand;                          // the connection's; socket moves to ws
        tcp::socket socket;
        net::steady_timer timer;                              // delays, so stop() can cut them
        std::optional<websocket::stream<tcp::socket>> ws;     // takes the socket on upgrade
        bool closed = false;                                  // by stop(); on the strand only
        std::uint64_t served = 0;                             // requests read on it; on the strand only
        void abort() {
            closed = true;
            beast::error_code ec;
            timer.cancel();
            if (ws) ws->next_layer().close(ec);
            socket.close(ec);
        }
    };
    using request_head = http::request<http::empty_body>;
    using body_parser = http::request_parser<http::buffer_body>;

    net::awaitable<void> accept_loop() {
        for (;;) {
            tcp::socket socket(net::make_strand(ioc_));
            auto [ec] = co_await acceptor_.async_accept(socket, detail::use_tuple);
            if (ec == net::error::operation_aborted || !acceptor_.is_open()) co_return;
            if (ec) {  // e.g. out of descriptors: try again shortly
                accept_retry_.expires_after(std::chrono::milliseconds(10));
                auto [wait_ec] = co_await accept_retry_.async_wait(detail::use_tuple);
                if (wait_ec) co_return;
                continue;
            }
            ++accepted_;
            socket.set_option(tcp::no_delay(true), ec);  // events and pieces leave at once
            auto c = std::make_shared<connection>(std::move(socket));
            {
                std::lock_guard lock(mutex_);
                if (stopping_) co_return;
                std::erase_if(connections_, [](const auto& w) { return w.expired(); });
                connections_.push_back(c);
            }
            ++open_;
            net::co_spawn(c->strand, session(c), net::detached);
        }
    }

    net::awaitable<void> session(std::shared_ptr<connection> c) {
        try {
            beast::flat_buffer buffer;
            for (;;) {
                http::request_parser<http::empty_body> head;
                head.header_limit(64 * 1024);
                head.body_limit(boost::none);  // checked when the head is parsed: set it now
                auto [ec, n] = co_await http::async_read_header(c->socket, buffer, head, detail::use_tuple);
                if (ec) break;  // the peer closed, stop(), or a malformed head
                ++requests_;
                ++c->served;
                if (!co_await handle(*c, buffer, head)) break;
            }
        } catch (const std::exception&) {
            // a write or read failed (the peer went away, or stop()): the connection ends
        }
        beast::error_code ec;
        if (c->ws) c->ws->next_layer().close(ec);
        c->socket.close(ec);
        --open_;
    }

    // Serves one request; returns whether the connection stays open for the next.
    net::awaitable<bool> handle(connection& c, beast::flat_buffer& buffer,
                                http::request_parser<http::empty_body>& head) {
        const std::string target(head.get().target());
        const std::string path = target.substr(0, target.find('?'));
        if (path == "/ws" && websocket::is_upgrade(head.get())) {
            co_await websocket_echo(c, head.release());
            co_return false;
        }

        body_parser p(std::move(head));
        p.body_limit(boost::none);
        const auto& req = p.get();
        const bool keep = req.keep_alive();

        if (path == "/sink" && (req.method() == http::verb::post || req.method() == http::verb::put)) {
            pattern_check check;
            if (!co_await read_body(c, buffer, p, [&](std::string_view piece) {
                    check(piece);
                    sink_bytes_ += piece.size();
                }))
                co_return false;
            const nlohmann::json answer{{"bytes", check.bytes}, {"pattern_ok", check.ok}, {"chunked", req.chunked()}};
            co_return co_await write_small(c, req, http::status::ok, answer.dump(), "application/json", keep);
        }

        std::uint64_t body_bytes = 0;
        if (!co_await read_body(c, buffer, p, [&](std::string_view piece) { body_bytes += piece.size(); }))
            co_return false;

        if (path == "/echo-headers") {
            nlohmann::json fields = nlohmann::json::array();
            for (const auto& f : req) fields.push_back({std::string(f.name_string()), std::string(f.value())});
            const nlohmann::json answer{
                {"method", std::string(req.method_string())},
                {"target", target},
                {"version", "HTTP/" + std::to_string(req.version() / 10) + "." + std::to_string(req.version() % 10)},
                {"headers", fields},
                {"chunked", req.chunked()},
                {"body_bytes", body_bytes}};
            co_return co_await write_small(c, req, http::status::ok, answer.dump(), "application/json", keep);
        }
        if (path == "/ws-refuse") co_return co_await write_small(c, req, http::status::forbidden, "refused\n", "text/plain", keep);
        if (path == "/ws") co_return co_await write_small(c, req, http::status::upgrade_required, "websocket only\n", "text/plain", keep);
        if (req.method() != http::verb::get && req.method() != http::verb::head)
            co_return co_await write_small(c, req, http::status::not_found, "not found\n", "text/plain", keep);
        if (path.rfind("/bytes/", 0) == 0) {
            std::uint64_t n = 0;
            const std::string_view digits = std::string_view(path).substr(7);
            const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
            if (ec == std::errc() && end == digits.data() + digits.size() && !digits.empty())
                co_return co_await serve_bytes(c, req, target, n);
        }
        if (path == "/events") co_return co_await serve_events(c, req, target);
        if (path == "/die") co_return co_await serve_die(c, req, target);
        if (path == "/drop-if-reused") {
            if (c.served > 1) {
                co_await sleep(c, std::chrono::milliseconds(detail::query_number(target, "drop_ms", 0)));
                co_return false;  // closed, no answer
            }
            co_await sleep(c, std::chrono::milliseconds(detail::query_number(target, "delay_ms", 0)));
            co_return co_await write_small(c, req, http::status::ok, "fresh\n", "text/plain", keep);
        }
        if (path == "/slow-head") {
            co_await sleep(c, std::chrono::milliseconds(detail::query_number(target, "delay_ms", 0)));
            if (detail::query_number(target, "fin", 0) == 0)
                co_return co_await write_small(c, req, http::status::ok, "slow\n", "text/plain", keep);
            // A keep-alive answer with the FIN in its segment: corked, the shutdown sends both.
            const int cork = 1;
            ::setsockopt(c.socket.native_handle(), IPPROTO_TCP, TCP_CORK, &cork, sizeof cork);
            co_await write_small(c, req, http::status::ok, "slow\n", "text/plain", keep);
            beast::error_code ec;
            c.socket.shutdown(tcp::socket::shutdown_send, ec);
            // Open, but serving nothing more, for hold_ms: a request written to it meets no reset.
            co_await sleep(c, std::chrono::milliseconds(detail::query_number(target, "hold_ms", 0)));
            co_return false;
        }
        co_return co_await write_small(c, req, http::status::not_found, "not found\n", "text/plain", keep);
    }

    // Reads the request body through p as it arrives (never whole), handing on each piece. Returns
    // false when the connection failed. Answers `Expect: 100-continue` first.
    template <class OnPiece>
    net::awaitable<bool> read_body(connection& c, beast::flat_buffer& buffer, body_parser& p, OnPiece on_piece) {
        if (p.is_done()) co_return true;
        if (beast::iequals(p.get()[http::field::expect], "100-continue")) {
            static constexpr std::string_view cont = "HTTP/1.1 100 Continue\r\n\r\n";
            auto [ec, n] = co_await net::async_write(c.socket, net::buffer(cont), detail::use_tuple);
            if (ec) co_return false;
        }
        std::vector<char> piece(64 * 1024);
        while (!p.is_done()) {
            p.get().body().data = piece.data();
            p.get().body().size = piece.size();
            // read_some, not read: read waits until the piece is full, and tests watch progress
            auto [ec, n] = co_await http::async_read_some(c.socket, buffer, p, detail::use_tuple);
            const std::size_t got = piece.size() - p.get().body().size;
            if (got > 0) on_piece(std::string_view(piece.data(), got));
            if (ec && ec != http::error::need_buffer) co_return false;
        }
        co_return true;
    }

    template <class Request>
    net::awaitable<bool> write_small(connection& c, const Request& req, http::status status, std::string body,
                                     const char* content_type, bool keep) {
        http::response<http::string_body> res{status, req.version()};
        res.set(http::field::server, "stream_upstream");
        res.set(http::field::content_type, content_type);
        res.keep_alive(keep);
        res.body() = std::move(body);
        res.prepare_payload();
        co_await http::async_write(c.socket, res, net::use_awaitable);
        co_return keep;
    }

    template <class Request>
    net::awaitable<void> write_head(connection& c, const Request& req, http::response<http::empty_body>& res) {
        res.version(req.version());
        res.set(http::field::server, "stream_upstream");
        http::response_serializer<http::empty_body> sr{res};
        co_await http::async_write_header(c.socket, sr, net::use_awaitable);
    }

    net::awaitable<void> sleep(connection& c, std::chrono::milliseconds d) {
        if (c.closed) throw beast::system_error(net::error::operation_aborted);
        if (d.count() == 0) co_return;
        c.timer.expires_after(d);
        co_await c.timer.async_wait(net::use_awaitable);  // stop() cancels it: throws
    }

    // Writes pattern bytes [from, to) in pieces of `piece` bytes, as chunks or raw.
    net::awaitable<void> write_pattern(connection& c, std::uint64_t from, std::uint64_t to, std::size_t piece_size,
                                       bool chunked, std::chrono::milliseconds delay) {
        std::vector<char> piece(static_cast<std::size_t>(std::min<std::uint64_t>(piece_size, to - from)));
        for (std::uint64_t off = from; off < to;) {
            if (off != from) co_await sleep(c, delay);
            const std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(piece.size(), to - off));
            fill_pattern(off, piece.data(), k);
            if (chunked)
                co_await net::async_write(c.socket, http::make_chunk(net::buffer(piece.data(), k)), net::use_awaitable);
            else
                co_await net::async_write(c.socket, net::buffer(piece.data(), k), net::use_awaitable);
            off += k;
            bytes_sent_ += k;
        }
    }

    template <class Request>
    net::awaitable<bool> serve_bytes(connection& c, const Request& req, const std::string& target, std::uint64_t n) {
        const std::string mode = detail::query_param(target, "mode").value_or("length");
        std::uint64_t piece = detail::query_number(target, "chunk", 64 * 1024);
        if (piece == 0) piece = 64 * 1024;
        piece = std::min<std::uint64_t>(piece, 16 * 1024 * 1024);
        const std::chrono::milliseconds delay(detail::query_number(target, "delay_ms", 0));
        const bool chunked = mode == "chunked";
        const bool close = mode == "close";
        if (!chunked && !close && mode != "length")
            co_return co_await write_small(c, req, http::status::bad_request, "mode: length, chunked or close\n",
                                           "text/plain", req.keep_alive());

        http::response<http::empty_body> res{http::status::ok, req.version()};
        res.set(http::field::content_type, "application/octet-stream");
        if (chunked) res.chunked(true);
        else if (!close) res.content_length(n);
        res.keep_alive(!close && req.keep_alive());
        co_await write_head(c, req, res);
        if (req.method() != http::verb::head) {
            co_await write_pattern(c, 0, n, static_cast<std::size_t>(piece), chunked, delay);
            if (chunked) co_await net::async_write(c.socket, http::make_chunk_last(), net::use_awaitable);
        }
        if (close) {
            beast::error_code ec;
            c.socket.shutdown(tcp::socket::shutdown_send, ec);  // the FIN ends the body
            co_return false;
        }
        co_return res.keep_alive();
    }

    template <class Request>
    net::awaitable<bool> serve_events(connection& c, const Request& req, const std::string& target) {
        const std::uint64_t n = detail::query_number(target, "n", 10);
        const std::chrono::milliseconds gap(detail::query_number(target, "gap_ms", 100));
        const bool gated = detail::query_number(target, "gated", 0) != 0;
        http::response<http::empty_body> res{http::status::ok, req.version()};
        res.set(http::field::content_type, "text/event-stream");
        res.set(http::field::cache_control, "no-cache");
        res.chunked(true);
        res.keep_alive(req.keep_alive());
        co_await write_head(c, req, res);
        for (std::uint64_t i = 0; i < n; ++i) {
            if (i > 0) co_await sleep(c, gap);
            while (gated && allowed_events_.load() < i) co_await sleep(c, std::chrono::milliseconds(1));
            const auto now = clock::now();
            const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
            const std::string event = "data: " + std::to_string(i) + " " + std::to_string(ms) + "\n\n";
            {
                std::lock_guard lock(mutex_);
                event_times_.push_back(now);
            }
            co_await net::async_write(c.socket, http::make_chunk(net::buffer(event)), net::use_awaitable);
        }
        co_await net::async_write(c.socket, http::make_chunk_last(), net::use_awaitable);
        co_return res.keep_alive();
    }

    template <class Request>
    net::awaitable<bool> serve_die(connection& c, const Request& req, const std::string& target) {
        const std::uint64_t after = detail::query_number(target, "after", 1000);
        const std::uint64_t length = std::max(detail::query_number(target, "length", 2 * after + 1024), after + 1);
        const bool fin = detail::query_param(target, "how").value_or("rst") == "fin";
        http::response<http::empty_body> res{http::status::ok, req.version()};
        res.set(http::field::content_type, "application/octet-stream");
        res.content_length(length);
        res.keep_alive(req.keep_alive());
        co_await write_head(c, req, res);
        co_await write_pattern(c, 0, after, 64 * 1024, false, std::chrono::milliseconds(0));
        beast::error_code ec;
        if (fin) {
            c.socket.shutdown(tcp::socket::shutdown_send, ec);
        } else {
            c.socket.set_option(net::socket_base::linger(true, 0), ec);  // close() then sends RST
        }
        c.socket.close(ec);
        co_return false;
    }

    // Beast's accept(request) overload takes no bytes read past the head: a client that sends a
    // frame before the 101 would lose it (none does; a tunnel relaying such bytes early might).
    net::awaitable<void> websocket_echo(connection& c, request_head req) {
        c.ws.emplace(std::move(c.socket));
        auto& ws = *c.ws;
        ws.set_option(websocket::stream_base::decorator(
            [](websocket::response_type& res) { res.set(http::field::server, "stream_upstream"); }));
        co_await ws.async_accept(req, net::use_awaitable);
        beast::flat_buffer message;
        for (;;) {
            auto [ec, n] = co_await ws.async_read(message, detail::use_tuple);
            if (ec) co_return;  // websocket::error::closed after the peer's close, or a failure
            ws.text(ws.got_text());
            co_await ws.async_write(message.data(), net::use_awaitable);
            message.consume(message.size());
        }
    }

    net::io_context ioc_;
    tcp::acceptor acceptor_;
    net::steady_timer accept_retry_;
    unsigned short port_ = 0;
    std::vector<std::thread> threads_;

    mutable std::mutex mutex_;
    bool stopping_ = false;                                 // guarded by mutex_
    std::vector<std::weak_ptr<connection>> connections_;    // guarded by mutex_
    std::vector<clock::time_point> event_times_;            // guarded by mutex_

    std::atomic<std::uint64_t> accepted_{0};
    std::atomic<std::uint64_t> open_{0};
    std::atomic<std::uint64_t> requests_{0};
    std::atomic<std::uint64_t> sink_bytes_{0};
    std::atomic<std::uint64_t> bytes_sent_{0};
    std::atomic<std::uint64_t> allowed_events_{0};          // gated /events (allow_events)
};

// ---------------------------------------------------------------------------------------------
// Client helpers: each runs its own io_context on the calling thread; no call outlives its return.

/// What stream_get and stream_upload saw of a response.
struct stream_result {
    static constexpr std::size_t body_cap = 1024 * 1024;

    int status = 0;                                    // 0: no response head arrived
    std::map<std::string, std::string> headers;        // lower-case names; repeats joined by ", "
    std::uint64_t bytes = 0;                           // body bytes received
    std::string body;                                  // the first body_cap bytes of the body
    bool complete = false;   // the body ended as framed (length reached, last chunk, or FIN when close-delimited)
    bool stopped = false;    // the piece callback returned false and the client closed
    beast::error_code error; // why it ended otherwise: http::error::partial_message for a FIN
                             // mid-body, connection_reset, net::error::timed_out, ...
    std::chrono::steady_clock::time_point head_time{}; // when the response head was parsed

    std::string header(const std::string& name) const {
        auto it = headers.find(detail::lower(name));
        return it == headers.end() ? std::string() : it->second;
    }
    nlohmann::json json() const { return nlohmann::json::parse(body, nullptr, false); }
};

struct stream_options {
    std::string method = "GET";
    std::size_t read_size = 64 * 1024;                     // the most bytes one piece can carry
    std::chrono::milliseconds idle_timeout{30000};         // no progress this long: close, timed_out
};

struct upload_options {
    std::string method = "POST";
    std::map<std::string, std::string> headers{};
    std::size_t piece = 64 * 1024;                         // bytes per write (and per chunk)
    std::chrono::milliseconds piece_delay{0};              // pause between pieces
    std::chrono::milliseconds idle_timeout{30000};
};

struct upload_result : stream_result {
    std::uint64_t bytes_sent = 0;   // body bytes whose write finished
    bool sent_all = false;          // the whole body (and the last chunk) went out
    beast::error_code write_error;  // operation_aborted when the answer came first and the client closed
};

namespace detail {

using piece_fn = std::function<bool(std::string_view, std::chrono::steady_clock::time_point)>;

// One client connection with an idle watchdog: no touch() for `idle` closes the socket.
struct client_connection {
    client_connection(net::io_context& ioc, std::chrono::milliseconds idle)
        : socket(ioc), watchdog(ioc), delay(ioc), idle(idle) {}
    tcp::socket socket;
    net::steady_timer watchdog;
    net::steady_timer delay;
    std::chrono::milliseconds idle;
    std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
    bool done = false;
    bool timed_out = false;

    void touch() { last = std::chrono::steady_clock::now(); }
    void finish() {
        done = true;
        watchdog.cancel();
        delay.cancel();
        beast::error_code ec;
        socket.close(ec);
    }
    net::awaitable<void> watch() {
        while (!done) {
            watchdog.expires_at(last + idle);
            co_await watchdog.async_wait(use_tuple);
            if (done) co_return;
            if (std::chrono::steady_clock::now() >= last + idle) {
                timed_out = true;
                beast::error_code ec;
                socket.close(ec);
                co_return;
            }
        }
    }
    beast::error_code why(beast::error_code ec) const { return timed_out ? net::error::timed_out : ec; }

    net::awaitable<beast::error_code> connect(unsigned short port) {
        auto [ec] = co_await socket.async_connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port), use_tuple);
        if (!ec) socket.set_option(tcp::no_delay(true), ec);
        touch();
        co_return why(ec);
    }
};

// Reads one response (1xx skipped) into out, the body piece by piece.
inline net::awaitable<void> read_response(client_connection& c, stream_result& out, bool head_request,
                                          std::size_t read_size, const piece_fn& on_piece) {
    beast::flat_buffer buffer;
    std::optional<http::response_parser<http::buffer_body>> p;
    for (;;) {
        p.emplace();
        p->body_limit(boost::none);
        p->header_limit(64 * 1024);
        if (head_request) p->skip(true);
        auto [ec, n] = co_await http::async_read_header(c.socket, buffer, *p, use_tuple);
        c.touch();
        if (ec) {
            out.error = c.why(ec);
            co_return;
        }
        const int status = p->get().result_int();
        if (status < 100 || status >= 200 || status == 101) break;
    }
    out.head_time = std::chrono::steady_clock::now();
    out.status = p->get().result_int();
    for (const auto& f : p->get()) {
        auto& v = out.headers[lower(f.name_string())];
        v += (v.empty() ? "" : ", ") + std::string(f.value());
    }
    std::vector<char> piece(std::max<std::size_t>(read_size, 1));
    while (!p->is_done()) {
        p->get().body().data = piece.data();
        p->get().body().size = piece.size();
        // read_some: a piece is what one socket read brought, so pieces show when bytes arrived
        auto [ec, n] = co_await http::async_read_some(c.socket, buffer, *p, use_tuple);
        const auto now = std::chrono::steady_clock::now();
        c.touch();
        const std::size_t got = piece.size() - p->get().body().size;
        if (got > 0) {
            out.bytes += got;
            if (out.body.size() < stream_result::body_cap)
                out.body.append(piece.data(), std::min(got, stream_result::body_cap - out.body.size()));
            if (on_piece && !on_piece(std::string_view(piece.data(), got), now)) {
                out.stopped = true;
                co_return;
            }
            c.touch();  // the callback may have slept on purpose
        }
        if (ec && ec != http::error::need_buffer) {
            out.error = c.why(ec);
            co_return;
        }
    }
    out.complete = true;
}

template <class F>
piece_fn adapt_piece_callback(F&& f) {
    using time_point = std::chrono::steady_clock::time_point;
    if constexpr (std::is_same_v<std::decay_t<F>, std::nullptr_t>) {
        return {};
    } else if constexpr (std::is_void_v<std::invoke_result_t<F&, std::string_view, time_point>>) {
        return [f = std::forward<F>(f)](std::string_view piece, time_point at) mutable {
            f(piece, at);
            return true;
        };
    } else {
        return [f = std::forward<F>(f)](std::string_view piece, time_point at) mutable { return bool(f(piece, at)); };
    }
}

// A request head for 127.0.0.1:port; `headers` are set last, so they can replace Host.
inline http::request<http::empty_body> request_head_for(const std::string& method, const std::string& target,
                                                        unsigned short port,
                                                        const std::map<std::string, std::string>& headers) {
    http::request<http::empty_body> req{http::string_to_verb(method), target, 11};
    if (req.method() == http::verb::unknown) req.method_string(method);
    req.set(http::field::host, "127.0.0.1:" + std::to_string(port));
    req.set(http::field::user_agent, "stream_upstream-client");
    for (const auto& [k, v] : headers) req.set(k, v);
    return req;
}

// Runs a client coroutine (and what it started) to the end on the calling thread; when the
// coroutine ends, by return or throw, the connection closes, which ends the watchdog and any writer.
inline void run_client(net::io_context& ioc, client_connection& c, net::awaitable<void> task) {
    std::exception_ptr failure;
    net::co_spawn(ioc, c.watch(), net::detached);
    net::co_spawn(ioc, std::move(task), [&](std::exception_ptr e) {
        failure = e;
        c.finish();
    });
    ioc.run();
    if (failure) std::rethrow_exception(failure);
}

}  // namespace detail

/// GETs target on 127.0.0.1:port with a fresh connection and reads the answer as it comes:
/// on_body_piece(std::string_view piece, steady_clock::time_point received) is called for each
/// piece (one socket read's worth, at most options.read_size bytes); it may return void, or bool
/// where false means stop reading and close the connection (result.stopped). Sleeping in it
/// reads slowly. Never holds the whole body (only result.body's first 1 MiB).
template <class F = std::nullptr_t>
stream_result stream_get(unsigned short port, const std::string& target,
                         const std::map<std::string, std::string>& headers = {}, F&& on_body_piece = nullptr,
                         const stream_options& options = {}) {
    net::io_context ioc;
    detail::client_connection c(ioc, options.idle_timeout);
    stream_result out;
    const detail::piece_fn on_piece = detail::adapt_piece_callback(std::forward<F>(on_body_piece));
    auto task = [&]() -> net::awaitable<void> {
        if (auto ec = co_await c.connect(port)) {
            out.error = ec;
            co_return;
        }
        const auto req = detail::request_head_for(options.method, target, port, headers);
        auto [ec, n] = co_await http::async_write(c.socket, req, detail::use_tuple);
        c.touch();
        if (ec) out.error = c.why(ec);
        else co_await detail::read_response(c, out, req.method() == http::verb::head, options.read_size, on_piece);
    };
    detail::run_client(ioc, c, task());
    return out;
}

/// Sends `bytes` pattern bytes as the body of options.method target (Content-Length, or chunked
/// with one chunk per piece), made on the fly piece by piece, while reading the answer. If the
/// answer is complete before the body is sent, the client stops sending and closes.
inline upload_result stream_upload(unsigned short port, const std::string& target, std::uint64_t bytes, bool chunked,
                                   const upload_options& options = {}) {
    net::io_context ioc;
    detail::client_connection c(ioc, options.idle_timeout);
    upload_result out;

    auto writer = [&]() -> net::awaitable<void> {
        std::vector<char> piece(static_cast<std::size_t>(std::clamp<std::uint64_t>(bytes, 1, std::max<std::size_t>(options.piece, 1))));
        for (std::uint64_t off = 0; off < bytes;) {
            if (off > 0 && options.piece_delay.count() > 0) {
                c.delay.expires_after(options.piece_delay);
                co_await c.delay.async_wait(detail::use_tuple);
                if (c.done) break;
            }
            const std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(piece.size(), bytes - off));
            fill_pattern(off, piece.data(), k);
            auto [ec, n] = chunked
                ? co_await net::async_write(c.socket, http::make_chunk(net::buffer(piece.data(), k)), detail::use_tuple)
                : co_await net::async_write(c.socket, net::buffer(piece.data(), k), detail::use_tuple);
            c.touch();
            if (ec) {  // the server went away, or the answer came first and run_client closed
                out.write_error = c.done ? beast::error_code(net::error::operation_aborted) : c.why(ec);
                break;
            }
            off += k;
            out.bytes_sent = off;
        }
        if (!out.write_error && out.bytes_sent < bytes) out.write_error = net::error::operation_aborted;
        if (!out.write_error && chunked) {
            auto [ec, n] = co_await net::async_write(c.socket, http::make_chunk_last(), detail::use_tuple);
            if (ec) out.write_error = c.why(ec);
        }
        out.sent_all = !out.write_error;
        c.touch();
    };

    auto task = [&]() -> net::awaitable<void> {
        if (auto ec = co_await c.connect(port)) {
            out.error = ec;
            co_return;
        }
        auto req = detail::request_head_for(options.method, target, port, options.headers);
        if (chunked) req.chunked(true);
        else req.content_length(bytes);
        http::request_serializer<http::empty_body> sr{req};
        auto [ec, n] = co_await http::async_write_header(c.socket, sr, detail::use_tuple);
        c.touch();
        if (ec) {
            out.error = out.write_error = c.why(ec);
            co_return;
        }
        net::co_spawn(ioc, writer(), net::detached);
        co_await detail::read_response(c, out, false, 64 * 1024, {});
        // If the writer still runs here, the answer came first (or reading failed): run_client
        // closes the socket, which ends the writer's pending write or pause (operation_aborted).
    };
    detail::run_client(ioc, c, task());
    return out;
}

/// VmRSS of a process in KiB (from /proc/<pid>/status), -1 when unreadable.
inline long rss_kib(pid_t pid = ::getpid()) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    return -1;
}

/// A blocking WebSocket client with a timeout on every call (beast::system_error on failure or
/// timeout, net::error::timed_out for the latter).
class ws_client {
public:
    struct message {
        std::string data;
        bool binary = false;
    };

    ws_client(unsigned short port, const std::string& target = "/ws",
              const std::map<std::string, std::string>& headers = {},
              std::chrono::milliseconds timeout = std::chrono::milliseconds(10000))
        : ws_(ioc_), timeout_(timeout) {
        run([&](auto done) {
            ws_.next_layer().async_connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port), done);
        });
        ws_.set_option(websocket::stream_base::decorator([headers](websocket::request_type& req) {
            for (const auto& [k, v] : headers) req.set(k, v);
        }));
        run([&](auto done) {
            ws_.async_handshake(response_, "127.0.0.1:" + std::to_string(port), target,
                                [done](beast::error_code ec) mutable { done(ec); });
        });
    }

    void send(std::string_view data, bool binary = false) {
        ws_.binary(binary);
        run([&](auto done) {
            ws_.async_write(net::buffer(data), [done](beast::error_code ec, std::size_t) mutable { done(ec); });
        });
    }

    message receive() {
        beast::flat_buffer buffer;
        run([&](auto done) {
            ws_.async_read(buffer, [done](beast::error_code ec, std::size_t) mutable { done(ec); });
        });
        return {beast::buffers_to_string(buffer.data()), ws_.got_binary()};
    }

    void close() {
        run([&](auto done) { ws_.async_close(websocket::close_code::normal, done); });
    }

    /// The handshake's response (its status is 101 once connected).
    const websocket::response_type& handshake_response() const { return response_; }
    websocket::stream<tcp::socket>& stream() { return ws_; }

private:
    // Starts one operation with a completion `done(error_code)`, runs it to its end or the timeout.
    template <class Start>
    void run(Start start) {
        beast::error_code result = net::error::would_block;
        bool finished = false;
        start([&result, &finished](beast::error_code ec) {
            result = ec;
            finished = true;
        });
        ioc_.restart();
        ioc_.run_for(timeout_);
        if (!finished) {
            beast::error_code ignored;
            ws_.next_layer().close(ignored);
            ioc_.restart();
            ioc_.run();
            throw beast::system_error(net::error::timed_out);
        }
        if (result) throw beast::system_error(result);
    }

    net::io_context ioc_;
    websocket::stream<tcp::socket> ws_;
    websocket::response_type response_;
    std::chrono::milliseconds timeout_;
};

}  // namespace batchgate::testing
