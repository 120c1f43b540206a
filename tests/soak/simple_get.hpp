#pragma once

// A plain blocking HTTP/1.1 GET for the load clients (tests/soak/soak_client.cpp,
// bench/write_bench.cpp): the gateway's admin /metrics, the mock's GET /__soak/state.

#include <chrono>
#include <exception>
#include <optional>
#include <string>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace batchgate::load {

/// The body of a 200 answer to `GET target` on host:port, or nullopt on any error or other
/// status. Bounded: the connection, the request and the answer together get 10 s.
inline std::optional<std::string> simple_get(const std::string& host, unsigned short port, const std::string& target) {
  namespace beast = boost::beast;
  namespace http = beast::http;
  namespace net = boost::asio;
  try {
    net::io_context ioc;
    beast::tcp_stream stream(ioc);
    stream.expires_after(std::chrono::seconds(10));
    stream.connect(net::ip::tcp::endpoint(net::ip::make_address(host), port));
    http::request<http::empty_body> req(http::verb::get, target, 11);
    req.set(http::field::host, "load.local");
    http::write(stream, req);
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(1ull << 32);
    http::read(stream, buffer, parser);
    if (parser.get().result_int() != 200) return std::nullopt;
    return parser.get().body();
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace batchgate::load
