// A TCP stream whose timeouts are deadlines in its shard's sweep (net/deadline_sweep.hpp),
// in place of beast::basic_stream. basic_stream arms a kernel-backed asio timer for every read
// and write that has a timeout, and cancels it when the operation completes: a timer-queue
// insert and removal under the reactor's lock, an aborted handler posted and run, a work guard
// and a shared_ptr copied, per operation; four of each for a passthrough request. Here an
// operation with a deadline links a node into a sorted list at its start and unlinks it at its
// end (no lock, no allocation, no handler), and the shard's one tick closes the socket of any
// deadline that passed.
//
// The same contract as basic_stream, so code written against it keeps its meaning:
// - expires_after / expires_at / expires_never set the deadline of every direction (read,
//   write) that has no operation pending, for the operations started from then on; a pending
//   operation keeps the deadline it started with;
// - when a deadline passes while its operation is pending, the socket is closed (every pending
//   operation ends) and that operation completes with beast::error::timeout; an operation
//   started after its deadline has passed closes the socket and fails with timeout too;
// - a deadline with no operation pending does nothing.
// Deadlines fire up to deadline_sweep::tick late. Used from its shard's thread only, like the
// sweep; connect counts as both directions pending and keeps the write deadline.
#pragma once

#include <chrono>
#include <cstddef>
#include <utility>

#include <boost/asio/associator.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/core/error.hpp>

#include "net/deadline_sweep.hpp"
#include "net/wire.hpp"

namespace batchgate::gateway {

class swept_stream {
public:
    using clock_type = std::chrono::steady_clock;
    using socket_type = socket_t;
    using lowest_layer_type = socket_t;  // what asio's ssl::stream asks of its next layer
    using executor_type = executor_t;
    using endpoint_type = boost::asio::ip::tcp::endpoint;

    explicit swept_stream(socket_t socket)
        : socket_(std::move(socket)), sweep_(&deadline_sweep::of(socket_.get_executor())) {}
    explicit swept_stream(const executor_t& ex) : socket_(ex), sweep_(&deadline_sweep::of(ex)) {}
    // Only before any operation: a pending operation holds a pointer to its stream.
    swept_stream(swept_stream&& other) noexcept
        : socket_(std::move(other.socket_)), sweep_(other.sweep_), read_(other.read_), write_(other.write_) {}
    swept_stream& operator=(swept_stream&&) = delete;
    swept_stream(const swept_stream&) = delete;

    executor_type get_executor() noexcept { return socket_.get_executor(); }
    socket_t& socket() noexcept { return socket_; }
    const socket_t& socket() const noexcept { return socket_; }
    lowest_layer_type& lowest_layer() noexcept { return socket_; }
    const lowest_layer_type& lowest_layer() const noexcept { return socket_; }

    void expires_after(clock_type::duration d) {
        const auto now = clock_type::now();
        for (auto* dir : {&read_, &write_})
            if (!dir->pending) dir->set(now, d);
    }
    void expires_at(clock_type::time_point at) {
        const auto now = clock_type::now();
        for (auto* dir : {&read_, &write_})
            if (!dir->pending) dir->set(now, at > now ? at - now : clock_type::duration::zero());
    }
    void expires_never() {
        for (auto* dir : {&read_, &write_})
            if (!dir->pending) dir->clear();
    }

    void close() {
        boost::system::error_code ignored;
        socket_.close(ignored);
    }

    template <class Buffers, class Handler>
    auto async_read_some(const Buffers& buffers, Handler&& handler) {
        return async_io<true>(buffers, std::forward<Handler>(handler));
    }
    template <class Buffers, class Handler>
    auto async_write_some(const Buffers& buffers, Handler&& handler) {
        return async_io<false>(buffers, std::forward<Handler>(handler));
    }

    // Tries each endpoint in turn, as asio::async_connect does; handler(ec, endpoint).
    template <class Endpoints, class Handler>
    auto async_connect(const Endpoints& endpoints, Handler&& handler) {
        return boost::asio::async_initiate<Handler, void(boost::system::error_code, endpoint_type)>(
            [this](auto h, const Endpoints& eps) {
                if (!begin(write_, h, endpoint_type{})) return;
                read_.pending = true;
                boost::asio::async_connect(socket_, eps, done_op<std::decay_t<decltype(h)>>{std::move(h), this, &write_});
            },
            handler, endpoints);
    }

private:
    template <bool read, class Buffers, class Handler>
    auto async_io(const Buffers& buffers, Handler&& handler) {
        return boost::asio::async_initiate<Handler, void(boost::system::error_code, std::size_t)>(
            [this](auto h, const Buffers& b) {
                direction& dir = read ? read_ : write_;
                if (!begin(dir, h, std::size_t{0})) return;
                done_op<std::decay_t<decltype(h)>> op{std::move(h), this, &dir};
                if constexpr (read) socket_.async_read_some(b, std::move(op));
                else socket_.async_write_some(b, std::move(op));
            },
            handler, buffers);
    }

    struct direction : deadline_entry {
        swept_stream* owner = nullptr;
        clock_type::time_point set_at{};
        clock_type::duration length = clock_type::duration::max();  // max: no deadline
        bool pending = false;
        bool timed_out = false;

        direction() = default;
        direction(const direction& o) : owner(nullptr), set_at(o.set_at), length(o.length) {}
        void set(clock_type::time_point now, clock_type::duration d) {
            set_at = now;
            length = d;
        }
        void clear() { length = clock_type::duration::max(); }
        bool has_deadline() const { return length != clock_type::duration::max(); }
        void deadline_passed() override {
            timed_out = true;
            owner->close();  // every pending operation ends; this one reports the timeout
        }
    };

    // Marks dir pending and arms its deadline; false when the deadline has passed already (the
    // socket is closed and the handler posted with timeout, as basic_stream does). "Passed" is
    // judged without reading the clock: a deadline of zero or less, or one before the sweep's
    // last tick; one that passed since then is fired by the next tick.
    template <class Handler, class... Rest>
    bool begin(direction& dir, Handler& h, Rest... rest) {
        dir.owner = this;
        if (dir.has_deadline() &&
            (dir.length <= clock_type::duration::zero() || dir.set_at + dir.length <= sweep_->swept_to())) {
            close();
            auto ex = boost::asio::get_associated_executor(h, get_executor());
            boost::asio::post(ex, [h = std::move(h), rest...]() mutable {
                std::move(h)(boost::system::error_code(boost::beast::error::timeout), rest...);
            });
            return false;
        }
        dir.pending = true;
        if (dir.has_deadline()) sweep_->arm(dir, dir.set_at, dir.length);
        return true;
    }

    // The end of an operation: its deadline disarmed, a timeout reported as such.
    void end(direction& dir, boost::system::error_code& ec) {
        sweep_->disarm(dir);
        dir.pending = false;
        if (&dir == &write_) read_.pending = false;  // a connect held both
        if (dir.timed_out) {
            dir.timed_out = false;
            ec = boost::beast::error::timeout;
        }
    }

public:
    // The completion of one operation; carries the handler's executor, allocator and
    // cancellation slot (asio's associators) through.
    template <class Handler>
    struct done_op {
        Handler handler;
        swept_stream* stream;
        direction* dir;

        template <class... Args>
        void operator()(boost::system::error_code ec, Args&&... args) {
            stream->end(*dir, ec);
            std::move(handler)(ec, std::forward<Args>(args)...);
        }
    };

private:
    socket_t socket_;
    deadline_sweep* sweep_;
    direction read_;
    direction write_;
};

// Every connection's TCP stream, client or upstream.
using stream_t = swept_stream;

}  // namespace batchgate::gateway

template <template <typename, typename> class Associator, typename Handler, typename DefaultCandidate>
struct boost::asio::associator<Associator, batchgate::gateway::swept_stream::done_op<Handler>, DefaultCandidate>
    : Associator<Handler, DefaultCandidate> {
    static typename Associator<Handler, DefaultCandidate>::type get(
        const batchgate::gateway::swept_stream::done_op<Handler>& h) noexcept {
        return Associator<Handler, DefaultCandidate>::get(h.handler);
    }
    static auto get(const batchgate::gateway::swept_stream::done_op<Handler>& h, const DefaultCandidate& c) noexcept
        -> decltype(Associator<Handler, DefaultCandidate>::get(h.handler, c)) {
        return Associator<Handler, DefaultCandidate>::get(h.handler, c);
    }
};
