#include "gateway/listener.hpp"

#include <sys/socket.h>

#include <iostream>


#include "gateway/http_session.hpp"
#include "net/errors.hpp"
#include "net/log.hpp"

namespace batchgate::gateway {

namespace net = boost::asio;
using tcp = net::ip::tcp;

listener::listener(net::io_context& ioc, const config::endpoint& where, listener_role role,
                   std::shared_ptr<shared_state> state, bool reuse_port, std::size_t shard)
    : ioc_(ioc), acceptor_(ioc), pause_(acceptor_.get_executor()), role_(role), state_(std::move(state)) {
    if (role_ == listener_role::traffic) accepted_ = &state_->metrics.connections_accepted(shard);
    boost::system::error_code ec;
    auto address = net::ip::make_address(where.host, ec);
    if (ec) {
        // A host name: resolve it once at start-up.
        tcp::resolver resolver(ioc);
        auto results = resolver.resolve(where.host, std::to_string(where.port), ec);
        if (ec || results.empty())
            throw std::system_error(ec, "cannot resolve listen address " + where.host);
        address = results.begin()->endpoint().address();
    }
    tcp::endpoint endpoint(address, where.port);
    const std::string name = where.host + ":" + std::to_string(where.port);
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec && reuse_port)
        acceptor_.set_option(net::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>(true), ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
    if (ec) throw std::system_error(ec, "cannot listen on " + name);
    port_ = acceptor_.local_endpoint().port();
}

void listener::run() {
    net::dispatch(acceptor_.get_executor(), [self = shared_from_this()] { self->do_accept(); });
}

void listener::stop() {
    net::dispatch(acceptor_.get_executor(), [self = shared_from_this()] {
        // Connections already in the backlog have sent their requests: closing the socket would
        // reset them. Take them in first; the drain answers them (and closes them) like the rest.
        boost::system::error_code ec;
        self->acceptor_.non_blocking(true, ec);
        for (std::size_t i = 0; !ec && i < net::socket_base::max_listen_connections; ++i) {
            socket_t socket(executor_t(self->ioc_.get_executor()));
            self->acceptor_.accept(socket, ec);
            if (!ec) start_session(std::move(socket), self->role_, self->state_, /*owed_request=*/true);
        }
        self->acceptor_.close(ec);
        self->pause_.cancel();
        // An accept that had completed before the close is queued on this thread ahead of
        // this post: it starts its session first, and only then does the drain hear "stopped".
        net::post(self->acceptor_.get_executor(), [self] { self->stopped_ = true; });
    });
}

void listener::do_accept() {
    // Each connection runs on this shard's thread alone, so its handlers never run concurrently.
    acceptor_.async_accept(executor_t(ioc_.get_executor()), [self = shared_from_this()](boost::system::error_code ec,
                                                                                      socket_t socket) {
        if (ec == net::error::operation_aborted) return;
        if (!self->acceptor_.is_open()) {
            // Accepted just as the listener stopped: its request was sent, so it is served.
            if (!ec) start_session(std::move(socket), self->role_, self->state_, /*owed_request=*/true);
            return;
        }
        if (ec) return self->pause_after(ec);
        if (self->accepted_) self->accepted_->Increment();
        const bool full = self->role_ == listener_role::traffic
                              ? self->state_->client_connections.load(std::memory_order_relaxed) >=
                                    self->state_->max_connections.load()
                              : self->state_->admin_connections.load(std::memory_order_relaxed) >= max_admin_connections;
        if (full) {
            self->state_->metrics.connections_refused("max_connections").Increment();
            self->refuse(socket.native_handle());
        } else {
            start_session(std::move(socket), self->role_, self->state_);
        }
        self->do_accept();
    });
}

void listener::pause_after(const boost::system::error_code& ec) {
    state_->metrics.connections_refused("accept_error").Increment();
    const auto now = std::chrono::steady_clock::now();
    ++unwarned_;
    if (now - last_warned_ >= std::chrono::seconds(5)) {
        log_line("warn", "accept failed; pausing new connections for 100ms",
                 {{"error", ec.message()}, {"failures", unwarned_}, {"open_connections", state_->client_connections.load()}});
        last_warned_ = now;
        unwarned_ = 0;
    }
    pause_.expires_after(std::chrono::milliseconds(100));
    pause_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
        if (ec || !self->acceptor_.is_open()) return;
        self->do_accept();
    });
}

void listener::refuse(tcp::socket::native_handle_type fd) {
    static const std::string answer = [] {
        const std::string body = error_body(gateway_error::overloaded, "too many open connections (limits.max_connections; 32 on the admin listener)", "");
        return "HTTP/1.1 503 Service Unavailable\r\nServer: batchgate\r\nContent-Type: application/json\r\n"
               "Retry-After: 1\r\nConnection: close\r\nContent-Length: " +
               std::to_string(body.size()) + "\r\n\r\n" + body;
    }();
    // Best effort and never blocking: the socket closes when the caller's object goes.
    [[maybe_unused]] auto sent = ::send(fd, answer.data(), answer.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    ::shutdown(fd, SHUT_WR);
}

}  // namespace batchgate::gateway
