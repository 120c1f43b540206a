// Accepts connections on one endpoint and starts an http_session for each, on its own strand.
#pragma once

#include <memory>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "gateway/shared_state.hpp"

namespace batchgate::gateway {

enum class listener_role { traffic, admin };

class listener : public std::enable_shared_from_this<listener> {
public:
    // Binds at once; throws std::system_error naming the endpoint when it cannot.
    listener(boost::asio::io_context& ioc, const config::endpoint& where, listener_role role,
             std::shared_ptr<shared_state> state);
    void run();
    void stop();  // closes the acceptor; open connections are left to finish
    unsigned short port() const { return port_; }

private:
    void do_accept();

    boost::asio::io_context& ioc_;
    boost::asio::ip::tcp::acceptor acceptor_;
    listener_role role_;
    std::shared_ptr<shared_state> state_;
    unsigned short port_ = 0;
};

}  // namespace batchgate::gateway
