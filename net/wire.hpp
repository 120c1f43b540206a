// Concrete executor types for the hot path, and HTTP/1.1 message heads serialized into one
// contiguous buffer. Beast's serializer hands the socket one buffer per header field and
// copies type-erased executors on every step; on a proxy that does nothing else per request
// that was a fifth of the CPU (bench/README.md has the profile).
#pragma once

#include <array>
#include <chrono>
#include <new>
#include <string>
#include <string_view>

#include <boost/asio/buffer.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/basic_waitable_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/status.hpp>

namespace batchgate::gateway {

// Every connection (client or upstream) runs on the io_context of one worker thread (a shard,
// net/shard.hpp), run by that thread alone: its handlers never run concurrently, so it
// needs no strand.
using executor_t = boost::asio::io_context::executor_type;
using socket_t = boost::asio::basic_stream_socket<boost::asio::ip::tcp, executor_t>;
using conn_timer = boost::asio::basic_waitable_timer<std::chrono::steady_clock,
                                                       boost::asio::wait_traits<std::chrono::steady_clock>, executor_t>;

// An allocator asio does not recycle (it swaps std::allocator for its per-thread cache of
// blocks, each the size of whatever operation freed it, often a read's ~300 bytes). For an
// operation a connection keeps pending a long time, such as a waiting caller's hang-up
// watch: a block of the operation's own size.
template <class T>
struct exact_allocator {
    using value_type = T;
    exact_allocator() noexcept = default;
    template <class U>
    exact_allocator(const exact_allocator<U>&) noexcept {}
    T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T))); }
    void deallocate(T* p, std::size_t) noexcept { ::operator delete(p); }
    template <class U>
    bool operator==(const exact_allocator<U>&) const noexcept { return true; }
};

namespace wire {

// "Name: value\r\n".
inline void append_field(std::string& out, std::string_view name, std::string_view value) {
    out.append(name);
    out += ": ";
    out.append(value);
    out += "\r\n";
}

// The bytes "Name: value\r\n" takes for every field: a head written from them is reserved once,
// not grown field by field.
template <class Fields>
std::size_t fields_bytes(const Fields& fields) {
    std::size_t n = 0;
    for (const auto& f : fields) n += f.name_string().size() + f.value().size() + 4;
    return n;
}

// "Name: value\r\n" for each field, then the blank line that ends the head.
template <class Fields>
void append_fields(std::string& out, const Fields& fields) {
    for (const auto& f : fields) append_field(out, f.name_string(), f.value());
    out += "\r\n";
}

// "HTTP/1.1 200 OK\r\n": an answer's status line; its fields follow (the session writes them).
template <class Body, class Fields>
void append_status_line(std::string& out, const boost::beast::http::response<Body, Fields>& res) {
    namespace http = boost::beast::http;
    const unsigned v = res.version();
    out += v == 10 ? "HTTP/1.0 " : "HTTP/1.1 ";
    out += std::to_string(res.result_int());
    out += ' ';
    auto reason = res.reason();
    if (reason.empty()) reason = http::obsolete_reason(res.result());
    out.append(reason.data(), reason.size());
    out += "\r\n";
}

// "GET /path HTTP/1.1\r\n" + fields + "\r\n".
template <class Body, class Fields>
void append_head(std::string& out, const boost::beast::http::request<Body, Fields>& req) {
    auto m = req.method_string();
    auto t = req.target();
    out.append(m.data(), m.size());
    out += ' ';
    out.append(t.data(), t.size());
    out += req.version() == 10 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n";
    append_fields(out, req);
}

// A whole request as two buffers: the head, built here, and the body in place. head must
// outlive the write; so must the request.
template <class Request>
std::array<boost::asio::const_buffer, 2> buffers(std::string& head, const Request& req) {
    head.clear();
    append_head(head, req);
    return {boost::asio::buffer(head), boost::asio::buffer(req.body())};
}

}  // namespace wire
}  // namespace batchgate::gateway
