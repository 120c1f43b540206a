// Shared by the fuzz targets that read HTTP off a connection (fuzz_request_head.cpp,
// fuzz_upstream_answer.cpp): the connection's bytes handed out one read at a time, and a Beast
// parser fed from the read buffer the way Beast's read does.
#pragma once

#include <algorithm>
#include <string>
#include <string_view>

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/error.hpp>

namespace batchgate::fuzz {

// Hands out the connection's bytes one read at a time, like the socket.
class connection {
public:
    connection(std::string_view bytes, std::size_t read_size) : bytes_(bytes), read_size_(read_size) {}
    // Appends the next read to buffer; false at end of stream.
    bool read(std::string& buffer) {
        if (bytes_.empty()) return false;
        auto n = std::min(read_size_, bytes_.size());
        buffer.append(bytes_.substr(0, n));
        bytes_.remove_prefix(n);
        return true;
    }

private:
    std::string_view bytes_;
    std::size_t read_size_;
};

// Feeds parser from buffer (reading more from conn as it needs) until done(); false on a parse
// error, or at the end of the stream unless the close ends the message (put_eof: a body
// framed by the connection's close).
template <class Parser, class Done>
bool parse_until(Parser& parser, std::string& buffer, connection& conn, Done done, bool eof_ends = false) {
    while (!done()) {
        boost::beast::error_code ec;
        std::size_t used = 0;
        if (!buffer.empty()) used = parser.put(boost::asio::buffer(buffer.data(), buffer.size()), ec);
        else ec = boost::beast::http::error::need_more;
        buffer.erase(0, used);
        if (ec == boost::beast::http::error::need_more) {
            if (conn.read(buffer)) continue;
            if (!eof_ends) return false;
            parser.put_eof(ec);
            return !ec && done();
        }
        if (ec) return false;  // answered 400/413/431 (a client) or 502 (an upstream), then closed
    }
    return true;
}

}  // namespace batchgate::fuzz
