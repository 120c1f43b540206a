// A request as the gateway serves it, whichever part serves it (passthrough, a batcher, a
// fan-out engine): the message types, what is known about the caller, the completion that
// answers it, and the error answer every part gives. gateway/dispatcher.hpp routes requests.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include "net/errors.hpp"

namespace batchgate::gateway {

namespace http = boost::beast::http;

using request_t = http::request<http::string_body>;
using response_t = http::response<http::string_body>;

// What a coalesce route's caller and the gateway's work for it tell each other across threads.
struct caller_flags {
    // Set by the client connection when the caller hangs up before its answer; a batcher then
    // leaves its item out of a batch not sent yet.
    std::atomic<bool> gone{false};

    // waiting -> sent: its request goes upstream (in a batch call, or alone), and from then on may
    // have taken effect: an answer the gateway makes up for it must not invite a retry.
    // waiting -> abandoned: the gateway answered it before it went (the drain deadline), and it
    // never goes. One compare-and-swap decides between the two threads that may race for it.
    enum : std::uint8_t { waiting, sent, abandoned };
    std::atomic<std::uint8_t> state{waiting};
    // True when the request may go (now sent, or sent already: a retry).
    bool claim_for_sending() {
        std::uint8_t expected = waiting;
        return state.compare_exchange_strong(expected, sent, std::memory_order_acq_rel) || expected == sent;
    }
    // True when the request will never go (now or already abandoned); false: it went.
    bool abandon() {
        std::uint8_t expected = waiting;
        return state.compare_exchange_strong(expected, abandoned, std::memory_order_acq_rel) || expected == abandoned;
    }
    bool abandoned_now() const { return state.load(std::memory_order_acquire) == abandoned; }
};

struct request_context {
    std::string client_ip;       // for X-Forwarded-For
    std::string_view proto = "http";  // X-Forwarded-Proto: the client's connection (https with listen_tls)
    std::string request_id;      // X-Request-Id (set on the request too, but a coalesce route's)
    std::string traceparent;     // W3C trace context, "" when none
    std::chrono::steady_clock::time_point deadline;  // when the caller stops waiting
    int depth = 0;               // 0: a client's request; 1: a sub-request of a $batch call
    // Shared with the client connection (coalesce routes); nullptr: nobody watches ($batch
    // sub-requests).
    std::shared_ptr<caller_flags> caller;
};

// What the access log and metrics want to know about how a request was served.
struct dispatch_info {
    std::string batch_id;
    std::size_t batch_size = 0;
    int upstream_status = 0;
    std::chrono::steady_clock::duration upstream_elapsed{};
};

// An answer the gateway composed as bytes (a coalesced caller's share of a batch answer): no
// Beast fields are built for it, one element each, only for the client connection to write them
// out again. fields holds "Name: value\r\n" for each field, Content-Length among them unless the
// status has no body (204, 304); never Connection, Server or X-Request-Id, which the connection
// writes. Its composer writes only names and values a parsed HTTP head could hold (no CR or LF).
struct composed_answer {
    unsigned status = 200;
    std::string fields;
    std::string body;
};

// What a request is answered with: a Beast response, or bytes the gateway composed.
using answer = std::variant<response_t, composed_answer>;

using dispatch_done = std::function<void(answer&&, dispatch_info&&)>;

// An answer as a Beast response of the given version, for who reads its fields ($batch entries).
response_t to_response(answer a, unsigned version);

// Every line of a header as one value ("a=1; b=2" for Cookie, "x, y" otherwise), nullopt when
// absent: two Cookie lines (HTTP/2 hops send them) are one caller's credentials.
std::optional<std::string> header_value(const request_t& req, std::string_view name);

// A JSON error response for a request (content type, body naming the route).
response_t error_response(gateway_error e, const std::string& message, const std::string& route, unsigned version = 11);

}  // namespace batchgate::gateway
