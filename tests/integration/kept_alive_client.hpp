// One kept-alive client connection for several requests in turn (harness.hpp's helpers open a
// connection per request).
#pragma once

#include <chrono>
#include <string>

#include "tests/integration/harness.hpp"

namespace batchgate::testing {

class kept_alive_client {
public:
    explicit kept_alive_client(unsigned short port, long timeout_seconds = 5)
        : socket_(connect_client(ioc_, port, timeout_seconds)), timeout_(std::chrono::seconds(timeout_seconds)) {}

    // GET target; its answer. Throws when none comes within the timeout.
    http::response<http::string_body> get(const std::string& target) {
        http::request<http::empty_body> req{http::verb::get, target, 11};
        req.set(http::field::host, "gateway.test");
        http::write(socket_, req);
        http::response<http::string_body> res;
        auto r = read_within(ioc_, socket_, timeout_,
                             [&](auto&& handler) { http::async_read(socket_, buffer_, res, handler); });
        if (r.ec) throw beast::system_error(r.ec);
        return res;
    }
    // Bytes read past the last answer (none, unless the server sent more than one answer).
    std::size_t leftover() const { return buffer_.size(); }

private:
    net::io_context ioc_;
    tcp::socket socket_;
    std::chrono::milliseconds timeout_;
    beast::flat_buffer buffer_;
};

}  // namespace batchgate::testing
