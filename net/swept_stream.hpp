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
//
// Reads and the kernel's receive queue. asio tries every receive at once before it waits for
// epoll (epoll_reactor::start_op), so the read of the next request on a keep-alive connection,
// or of an upstream's answer just after the request went out, costs a receive that finds
// nothing: two per passthrough request (bench/syscalls.sh). nginx reads only when epoll has said
// so, and notes a receive that took less than it asked for as "drained" (ngx_unix_recv). Here the
// same: a read whose receive takes less than it asked for tells asio's reactor that the socket
// is exhausted (the status asio's own send uses for a short write), and the reactor then waits
// for the next edge of its edge-triggered registration before it tries a receive again. A TCP
// receive stops short only when the receive queue is empty, and every byte that arrives later
// raises a new edge, so no data is missed. What is missed is a FIN that had arrived before that
// receive, behind the data (epoll has no new edge for it; nginx learns it from EPOLLRDHUP, which
// asio does not ask for). So after a drained read, every read tries the socket once itself, as
// asio would have, unless it is declared the first read of a new message
// (next_read_may_wait, wait_for_message below): waiting for the client's next request or the
// upstream's answer, where a FIN behind the last message means only that the connection is
// done. Such a read, if it still waits after fin_probe_after, peeks once: a FIN there (a
// client that half-closed right after its request) ends it as EOF, as asio's own read would
// have at once. Connections that are busy never wait that long; idle ones pay one peek.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <type_traits>
#include <utility>

#include <boost/asio/append.hpp>
#include <boost/asio/associator.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/detail/reactive_socket_recv_op.hpp>
#include <boost/asio/error.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/version.hpp>

#include "net/deadline_sweep.hpp"
#include "net/wire.hpp"

namespace batchgate::gateway {

// What one byte peeked from a socket, without waiting and without taking it, says: nothing
// there yet (or an interrupted call), bytes, a FIN, or an error (a reset). The one look at a
// socket that the hang-up watch, the FIN probe and the upstream pool's reuse check each need.
enum class peeked { nothing, bytes, fin, error };
inline peeked peek_socket(int fd) noexcept {
    char byte;
    const auto n = ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) return peeked::bytes;
    if (n == 0) return peeked::fin;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? peeked::nothing : peeked::error;
}

// The buffer of a read that tells the reactor when it drained the socket (above; the
// specialization of asio's receive operation for it is at the end of this file).
struct drain_noting_buffer : boost::asio::mutable_buffer {
    explicit drain_noting_buffer(const boost::asio::mutable_buffer& b) noexcept : mutable_buffer(b) {}
};

#if BOOST_VERSION == 108100
inline constexpr bool reads_note_drain = true;
#else
// The specialization below is written against asio's internals of Boost 1.81; on another
// version reads behave as asio's own (each tried at once).
inline constexpr bool reads_note_drain = false;
#endif

class swept_stream {
public:
    using clock_type = std::chrono::steady_clock;
    using socket_type = socket_t;
    using lowest_layer_type = socket_t;  // what asio's ssl::stream asks of its next layer
    using executor_type = executor_t;
    using endpoint_type = boost::asio::ip::tcp::endpoint;
    // How long a read that waits for the socket's edge after draining it waits before it peeks
    // for a FIN that came in before it (above).
    static constexpr std::chrono::seconds fin_probe_after{1};

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
    void expires_at(clock_type::time_point at) { expires_at(at, clock_type::now()); }
    // The same, with the clock just read by the caller: a stale `now` would arm a deadline that
    // has passed (it then times out at the next tick, not at once).
    void expires_at(clock_type::time_point at, clock_type::time_point now) {
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

    // The next read waits for the socket to turn readable if the last one drained it, instead of
    // trying it first: say it only before the first read of a new message, with nothing of it
    // buffered (wait_for_message). One read only; reads after it try the socket again.
    void next_read_may_wait() noexcept { may_wait_ = true; }
    // Whether the last read took less than it asked for (or met EOF): the receive queue was empty
    // then, and the reactor tries no receive on this socket before its next edge.
    bool drained() const noexcept { return drained_; }

    template <class Buffers, class Handler>
    auto async_read_some(const Buffers& buffers, Handler&& handler) {
        return async_io<true>(buffers, std::forward<Handler>(handler));
    }
    template <class Buffers, class Handler>
    auto async_write_some(const Buffers& buffers, Handler&& handler) {
        return async_io<false>(buffers, std::forward<Handler>(handler));
    }

    // One non-blocking send of what it can of `buffers`, now: the bytes sent (0 when the socket
    // is full, or while a write or connect is pending: bytes never interleave with one). An
    // error other than "would block" goes to ec. A caller whose bytes all went goes on without
    // an asynchronous write (its operation, deadline and scheduler round); the rest, if any,
    // is for async_write_some.
    template <class Buffers>
    std::size_t send_now(const Buffers& buffers, boost::system::error_code& ec) {
        if (write_.pending || connecting_ || !socket_.is_open()) return 0;
        iovec iov[16];
        const int count = to_iovec(buffers, iov);
        if (count == 0) return 0;
        msghdr msg{};
        msg.msg_iov = iov;
        msg.msg_iovlen = static_cast<decltype(msg.msg_iovlen)>(count);
        const auto sent = ::sendmsg(socket_.native_handle(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (sent >= 0) return static_cast<std::size_t>(sent);
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) ec.assign(errno, boost::system::system_category());
        return 0;
    }

    // Tries each endpoint in turn, as asio::async_connect does; handler(ec, endpoint).
    template <class Endpoints, class Handler>
    auto async_connect(const Endpoints& endpoints, Handler&& handler) {
        return boost::asio::async_initiate<Handler, void(boost::system::error_code, endpoint_type)>(
            [this](auto h, const Endpoints& eps) {
                if (!begin(write_, h, endpoint_type{})) return;
                read_.pending = true;
                connecting_ = true;
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
                if constexpr (read) {
                    const bool may_wait = std::exchange(may_wait_, false);
                    const std::size_t asked = boost::asio::buffer_size(b);
                    if (reads_note_drain && drained_ && may_wait) arm_fin_probe();
                    if (drained_ && !may_wait && asked != 0) {
                        // What asio would have done, had the last read not told it to wait.
                        boost::system::error_code ec;
                        std::size_t n = 0;
                        if (receive_now(b, ec, n)) {
                            op.asked = asked;
                            op.notes_drain = true;
                            boost::asio::post(get_executor(), boost::asio::append(std::move(op), ec, n));
                            return;
                        }
                    }
                    if constexpr (reads_note_drain &&
                                  std::is_convertible_v<const Buffers*, const boost::asio::mutable_buffer*>) {
                        op.asked = asked;
                        op.notes_drain = true;
                        socket_.async_read_some(drain_noting_buffer(b), std::move(op));
                    } else {
                        op.asked = asked;  // asio's own receive: never drained, it tries each at once
                        socket_.async_read_some(b, std::move(op));
                    }
                } else {
                    socket_.async_write_some(b, std::move(op));
                }
            },
            handler, buffers);
    }

    // The non-empty pieces of a buffer sequence, at most N of them, as iovecs for sendmsg or
    // recvmsg; their count. (iovec has no const: a send's pieces are only read.)
    template <class Buffers, std::size_t N>
    static int to_iovec(const Buffers& buffers, iovec (&iov)[N]) {
        int count = 0;
        for (auto it = boost::asio::buffer_sequence_begin(buffers), end = boost::asio::buffer_sequence_end(buffers);
             it != end && count < static_cast<int>(N); ++it) {
            const boost::asio::const_buffer piece(*it);
            if (piece.size() != 0) iov[count++] = {const_cast<void*>(piece.data()), piece.size()};
        }
        return count;
    }

    // One non-blocking receive into b; false when nothing is there yet.
    template <class Buffers>
    bool receive_now(const Buffers& b, boost::system::error_code& ec, std::size_t& n) {
        iovec iov[8];
        const int count = to_iovec(b, iov);
        msghdr msg{};
        msg.msg_iov = iov;
        msg.msg_iovlen = static_cast<decltype(msg.msg_iovlen)>(count);
        const auto got = ::recvmsg(socket_.native_handle(), &msg, MSG_DONTWAIT);
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return false;
        n = got > 0 ? static_cast<std::size_t>(got) : 0;
        if (got == 0) ec = boost::asio::error::eof;
        else if (got < 0) ec.assign(errno, boost::system::system_category());
        return true;
    }

    // A read that waits for the edge of a drained socket looks once, after fin_probe_after, for a
    // FIN already in (direction::deadline_passed); its own deadline, if sooner, comes first.
    void arm_fin_probe() {
        const auto now = sweep_->coarse_now();  // a second's wait needs no exact start
        if (read_.has_deadline() && read_.set_at + read_.length <= now + fin_probe_after) return;
        read_.probe = true;
        sweep_->arm(read_, now, fin_probe_after);
    }

    // A FIN (or an error) waiting in the socket, seen without taking anything.
    bool peer_left() {
        const peeked p = peek_socket(socket_.native_handle());
        return p == peeked::fin || p == peeked::error;
    }

    // What a read's end says about the receive queue. An aborted or timed-out read tells nothing,
    // and neither does one of nothing (asio completes it without a receive: asio's ssl::stream
    // makes one to complete from what OpenSSL holds). A read by asio's own receive leaves the
    // reactor trying the socket at once: not drained.
    void note_read(const boost::system::error_code& ec, std::size_t n, std::size_t asked, bool notes_drain) {
        if (asked == 0) return;
        if (!ec) drained_ = notes_drain && n < asked;
        else if (ec == boost::asio::error::eof) drained_ = true;
    }

    struct direction : deadline_entry {
        swept_stream* owner = nullptr;
        clock_type::time_point set_at{};
        clock_type::duration length = clock_type::duration::max();  // max: no deadline
        bool pending = false;
        bool timed_out = false;
        bool probe = false;      // armed for the FIN probe, not the deadline (arm_fin_probe)
        bool peer_gone = false;  // the probe found a FIN: the read ends as EOF

        direction() = default;
        direction(const direction& o) : owner(nullptr), set_at(o.set_at), length(o.length) {}
        void set(clock_type::time_point now, clock_type::duration d) {
            set_at = now;
            length = d;
        }
        void clear() { length = clock_type::duration::max(); }
        bool has_deadline() const { return length != clock_type::duration::max(); }
        void deadline_passed() override {
            if (std::exchange(probe, false)) {
                if (owner->peer_left()) {
                    // The pending read ends, and reports EOF; one that completed meanwhile (its
                    // handler not run yet) keeps what it read, and the next read sees the EOF.
                    peer_gone = true;
                    boost::system::error_code ignored;
                    owner->socket_.cancel(ignored);
                } else if (has_deadline()) {
                    owner->sweep_->arm(*this, set_at, length);  // the read's own deadline
                }
                return;
            }
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
        dir.probe = false;
        // A connect held both; a write that ends beside a pending read (a body streaming up while
        // the answer's head is awaited) leaves the read pending, with the deadline it started with.
        if (&dir == &write_ && std::exchange(connecting_, false)) read_.pending = false;
        if (dir.timed_out) {
            dir.timed_out = false;
            ec = boost::beast::error::timeout;
        }
        if (std::exchange(dir.peer_gone, false) && ec == boost::asio::error::operation_aborted)
            ec = boost::asio::error::eof;
    }

public:
    // The completion of one operation; carries the handler's executor, allocator and
    // cancellation slot (asio's associators) through.
    template <class Handler>
    struct done_op {
        Handler handler;
        swept_stream* stream;
        direction* dir;
        std::size_t asked = 0;     // a read's: how much it asked for
        bool notes_drain = false;  // a read's: whether a short receive left the reactor waiting

        void operator()(boost::system::error_code ec, std::size_t n) {
            if (dir == &stream->read_) stream->note_read(ec, n, asked, notes_drain);
            stream->end(*dir, ec);
            std::move(handler)(ec, n);
        }
        void operator()(boost::system::error_code ec, const endpoint_type& where) {
            stream->end(*dir, ec);
            std::move(handler)(ec, where);
        }
    };

private:
    socket_t socket_;
    deadline_sweep* sweep_;
    direction read_;
    direction write_;
    bool may_wait_ = false;
    bool drained_ = false;
    bool connecting_ = false;
};

// Every connection's TCP stream, client or upstream.
using stream_t = swept_stream;

// Before reading a new message (a request, an answer) from stream: over plain TCP, and with
// nothing of it in buffer, the read may wait for the socket's edge (swept_stream above). Over TLS
// the read of a record may be one of several, so it is left to try first.
template <class Stream, class Buffer>
void wait_for_message(Stream& stream, const Buffer& buffer) noexcept {
    if constexpr (std::is_same_v<Stream, swept_stream>)
        if (buffer.size() == 0) stream.next_read_may_wait();
}

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

#if BOOST_VERSION == 108100
// asio's receive operation for a drain_noting_buffer: as asio's own (reactive_socket_recv_op.hpp,
// Boost 1.81), except that a receive that took less than it asked for reports
// done_and_exhausted, which makes the reactor wait for the socket's next edge before it tries
// another receive (epoll_reactor::start_op and perform_io), as it does after a short send.
template <>
class boost::asio::detail::reactive_socket_recv_op_base<batchgate::gateway::drain_noting_buffer> : public reactor_op {
public:
    reactive_socket_recv_op_base(const boost::system::error_code& success_ec, socket_type socket,
                                 socket_ops::state_type state, const batchgate::gateway::drain_noting_buffer& buffers,
                                 socket_base::message_flags flags, func_type complete_func)
        : reactor_op(success_ec, &reactive_socket_recv_op_base::do_perform, complete_func),
          socket_(socket),
          state_(state),
          buffers_(buffers),
          flags_(flags) {}

    static status do_perform(reactor_op* base) {
        auto* o = static_cast<reactive_socket_recv_op_base*>(base);
        const bool stream = (o->state_ & socket_ops::stream_oriented) != 0;
        if (!socket_ops::non_blocking_recv1(o->socket_, o->buffers_.data(), o->buffers_.size(), o->flags_, stream,
                                            o->ec_, o->bytes_transferred_))
            return not_done;
        if (!stream) return done;
        if (o->ec_) return o->ec_ == boost::asio::error::eof ? done_and_exhausted : done;
        return o->bytes_transferred_ < o->buffers_.size() ? done_and_exhausted : done;
    }

private:
    socket_type socket_;
    socket_ops::state_type state_;
    batchgate::gateway::drain_noting_buffer buffers_;
    socket_base::message_flags flags_;
};
#endif
