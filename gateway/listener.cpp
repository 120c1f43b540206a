#include "gateway/listener.hpp"

#include <iostream>

#include <boost/asio/strand.hpp>

#include "gateway/http_session.hpp"

namespace batchgate::gateway {

namespace net = boost::asio;
using tcp = net::ip::tcp;

listener::listener(net::io_context& ioc, const config::endpoint& where, listener_role role,
                   std::shared_ptr<shared_state> state)
    : ioc_(ioc), acceptor_(net::make_strand(ioc)), role_(role), state_(std::move(state)) {
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
        boost::system::error_code ignored;
        self->acceptor_.close(ignored);
    });
}

void listener::do_accept() {
    // Each connection gets its own strand, so its handlers never run concurrently.
    acceptor_.async_accept(strand_t(ioc_.get_executor()), [self = shared_from_this()](boost::system::error_code ec,
                                                                                      socket_t socket) {
        if (ec == net::error::operation_aborted || !self->acceptor_.is_open()) return;
        if (ec) {
            std::cerr << "{\"level\":\"warn\",\"msg\":\"accept failed\",\"error\":\"" << ec.message() << "\"}\n";
        } else {
            start_session(std::move(socket), self->role_, self->state_);
        }
        self->do_accept();
    });
}

}  // namespace batchgate::gateway
