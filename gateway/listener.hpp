// Accepts connections on one endpoint and starts an http_session for each, on its own strand.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include "gateway/shared_state.hpp"

namespace batchgate::gateway {

enum class listener_role { traffic, admin };

class listener : public std::enable_shared_from_this<listener> {
public:
    // Binds at once; throws std::system_error naming the endpoint when it cannot.
    listener(boost::asio::io_context& ioc, const config::endpoint& where, listener_role role,
             std::shared_ptr<shared_state> state);
    void run();
    void stop();  // takes the backlog's connections, closes the acceptor; open connections finish
    bool stopped() const { return stopped_.load(); }  // stop() has run: no connection will come
    unsigned short port() const { return port_; }

private:
    void do_accept();
    // Out of descriptors (or kernel memory): the connection stays in the backlog, so accepting
    // again at once would spin. Pause, and say so at a bounded rate.
    void pause_after(const boost::system::error_code& ec);
    // Over limits.max_connections: a short 503 and close, without reading the request.
    void refuse(boost::asio::ip::tcp::socket::native_handle_type fd);

    boost::asio::io_context& ioc_;
    boost::asio::ip::tcp::acceptor acceptor_;
    boost::asio::steady_timer pause_;  // on the acceptor's strand
    std::chrono::steady_clock::time_point last_warned_{};
    std::size_t unwarned_ = 0;  // accept failures since the last warning
    listener_role role_;
    std::shared_ptr<shared_state> state_;
    unsigned short port_ = 0;
    std::atomic<bool> stopped_{false};
};

}  // namespace batchgate::gateway
