// Accepts connections on one endpoint and starts an http_session for each, on this listener's
// io_context (its shard's). With several worker threads each shard has a traffic listener of
// its own on the same port (SO_REUSEPORT): the kernel spreads new connections over them.
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
    // Binds at once; throws std::system_error naming the endpoint when it cannot. reuse_port:
    // SO_REUSEPORT, so the other shards' listeners can bind the same port. shard: whose thread
    // runs ioc (connections_accepted_total{thread}).
    listener(boost::asio::io_context& ioc, const config::endpoint& where, listener_role role,
             std::shared_ptr<shared_state> state, bool reuse_port = false, std::size_t shard = 0);
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
    boost::asio::steady_timer pause_;  // on the acceptor's executor
    std::chrono::steady_clock::time_point last_warned_{};
    std::size_t unwarned_ = 0;  // accept failures since the last warning
    listener_role role_;
    std::shared_ptr<shared_state> state_;
    unsigned short port_ = 0;
    prometheus::Counter* accepted_ = nullptr;  // traffic listeners only
    std::atomic<bool> stopped_{false};
};

}  // namespace batchgate::gateway
