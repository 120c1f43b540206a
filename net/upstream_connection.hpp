// One keep-alive connection of an upstream_pool, plain TCP or TLS, on its shard's executor. Kept out
// of upstream_pool.hpp (OpenSSL headers): only the pool and streamed passthrough see it.
#pragma once

#include <optional>

#include <boost/asio/ssl/context.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/ssl.hpp>

#include "net/upstream_pool.hpp"
#include "net/swept_stream.hpp"
#include "net/wire.hpp"

namespace batchgate::gateway {

using tls_stream_t = boost::beast::ssl_stream<stream_t>;

// The most an upstream's answer head may take (the header_limit of both of its parsers: the
// pool's, and a passthrough stream's).
inline constexpr std::size_t upstream_head_limit = 64 * 1024;

// The most a passthrough stream reads of a body at once, either way.
inline constexpr std::size_t stream_window = 64 * 1024;

// The most an upstream connection's read buffer holds: an answer's head and a passthrough
// window. Beast bounds neither a chunk-size line's
// extensions nor a trailer section, and waits for each whole in the buffer: an upstream that
// sends an endless one grew it without end (gigabytes, outside limits.max_buffered). Past this
// the read fails with buffer_overflow, an invalid answer (502, or the client's connection
// closed once the head went out), as a client's is (limits.max_header_bytes + 64 KiB).
inline constexpr std::size_t upstream_read_buffer_max = upstream_head_limit + stream_window;

struct upstream_pool::connection {
    connection(const boost::asio::io_context::executor_type& ex, std::size_t shard, boost::asio::ssl::context* tls)
        : shard(shard) {
        if (tls)
            secure.emplace(executor_t(ex), *tls);
        else
            plain.emplace(executor_t(ex));
    }
    // The TCP stream: timeouts, connect, socket options, close.
    stream_t& tcp() { return secure ? boost::beast::get_lowest_layer(*secure) : *plain; }
    // Calls f with the stream HTTP goes over: TLS or plain TCP.
    template <class F>
    void with_stream(F&& f) {
        if (secure)
            f(*secure);
        else
            f(*plain);
    }
    std::size_t shard;  // whose thread runs it (the index into the shards' executors)
    std::optional<stream_t> plain;
    std::optional<tls_stream_t> secure;
    boost::beast::flat_buffer buffer{upstream_read_buffer_max};
};

}  // namespace batchgate::gateway
