// Keep-alive connection pool to one upstream. Shared by every session and batcher of every
// shard (net/shard.hpp); safe to call from any thread. A connection is opened on the shard
// of the call that needs it and runs there; idle connections are kept per shard and a call
// takes one of its own shard's first. The bookkeeping (idle lists, waiting queue, the
// max_connections count over all shards) is guarded by a mutex never held across a callback.
#pragma once

#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/rfc7230.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/range/iterator_range.hpp>

#include "config/config.hpp"
#include "net/errors.hpp"
#include "net/hop_by_hop.hpp"
#include "net/memory_budget.hpp"
#include "net/shard.hpp"

namespace boost::asio::ssl {
class context;  // kept out of this header: only upstream_pool.cpp needs OpenSSL
}

namespace batchgate::gateway {

namespace http = boost::beast::http;

using upstream_request = http::request<http::string_body>;
using upstream_response = http::response<http::string_body>;

// Answers the gateway reads itself (batch calls, fan-out items) are asked for unencoded:
// without Accept-Encoding, any content coding is acceptable (RFC 9110 12.5.3).
inline void accept_identity_only(upstream_request& req) { req.set(http::field::accept_encoding, "identity"); }

// The content codings an answer says its body has, as sent ("" for none, or identity only): such
// a body is not the JSON it may still be labelled. Every Content-Encoding line counts, and every
// element of each (RFC 9110 8.4: a list, in the order applied); a line that is no list of tokens
// counts as coded.
inline std::string content_coding(const upstream_response& res) {
    std::string all;
    bool coded = false;
    for (const auto& line : boost::make_iterator_range(res.equal_range(http::field::content_encoding))) {
        all += (all.empty() ? "" : ", ") + std::string(line.value());
        const http::opt_token_list codings{line.value()};
        coded = coded || !http::validate_list(codings) ||
                std::any_of(codings.begin(), codings.end(),
                            [](auto coding) { return !boost::beast::iequals(coding, "identity"); });
    }
    return coded ? all : std::string();
}

// Why an answer the gateway reads is refused when it came coded anyway (content_coding).
inline std::string coded_answer(const std::string& coding) {
    return "Content-Encoding \"" + coding + "\", which the gateway cannot read (it asks for identity)";
}

// RFC 9110 section 15: a status outside 100-599 is invalid, though Beast's parser takes any
// three digits ("002", "999"). Relayed, "HTTP/1.1 2 OK" is no status line a client can read.
inline bool valid_status(int status) { return status >= 100 && status <= 599; }

// Why such an answer is refused: "upstream answered status 002, ...".
inline std::string invalid_status_answer(int status) {
    const char digits[] = {static_cast<char>('0' + status / 100 % 10), static_cast<char>('0' + status / 10 % 10),
                           static_cast<char>('0' + status % 10), '\0'};
    return std::string("status ") + digits + ", outside 100-599 (RFC 9110 section 15)";
}

// What the gateway makes of an upstream answer's head, one rule for the pool, streamed
// passthrough and the fuzz target that reads answers as they do: an interim answer (1xx but 101:
// the real one follows), the final answer, or an answer refused (a 502 bad_response) with why,
// for "<upstream> answered " + why. A 101 is final only when the request asked to upgrade (the
// pool never does: Upgrade is hop-by-hop). A body under a transfer coding beyond chunked is
// refused: the gateway decodes none, and relayed it would reach the client as if plain (RFC 9112
// 6.1); a HEAD, 204 or 304 answer has no body.
enum class answer_head { interim, final_answer, refused };
struct answer_head_check {
    answer_head kind = answer_head::final_answer;
    std::string why;  // refused only
};
template <class Fields>
answer_head_check check_answer_head(const http::response_header<Fields>& head, bool head_request, bool upgrade_asked) {
    const int status = head.result_int();
    if (!valid_status(status)) return {answer_head::refused, invalid_status_answer(status)};
    if (status < 200 && status != 101) return {answer_head::interim, {}};
    if (status == 101)
        return upgrade_asked ? answer_head_check{}
                             : answer_head_check{answer_head::refused,
                                                 "101 Switching Protocols to a request that asked for no upgrade"};
    if (!head_request && status != 204 && status != 304)
        if (auto coded = transfer_coded(head); !coded.empty())
            return {answer_head::refused, "with " + transfer_coded_answer(coded)};
    return {};
}

// An answer's Content-Length as the gateway relays it: the one number the parser read. Beast takes
// a list of equal lengths ("2, 2") or repeated lines as that length; relayed as sent (the body of a
// HEAD or 304 is not re-counted), the list is ambiguous to a stricter client (RFC 9110 8.6).
template <class Parser>
void settle_content_length(Parser& parser) {
    if (const auto length = parser.content_length()) parser.get().content_length(*length);
}

enum class upstream_failure {
    none,
    connect_failed,  // refused, unreachable, DNS failure
    timeout,         // no complete answer before the deadline
    io_error,        // connection dropped mid-exchange
    bad_response,    // not HTTP, or over max_response
    over_budget,     // the answer's body would go over limits.max_buffered (callers: 502 answer_over_budget)
};

// What a failed read or write of an upstream exchange counts as, one rule for pooled calls and
// streamed passthrough: a deadline is a timeout; a FIN or reset before the answer is whole
// (partial_message included) is a dropped connection; any other Beast parse error is bad HTTP.
// who names the upstream in the message. body_limit is left to the caller, who knows whose cap
// it was (it is counted as bad_response).
// How a failure is counted (batchgate_upstream_requests_total's outcome label) and what the
// caller is answered: one table for pooled calls and streams.
inline const char* failure_label(upstream_failure f) {
    switch (f) {
        case upstream_failure::timeout: return "timeout";
        case upstream_failure::connect_failed: return "connect_error";
        case upstream_failure::io_error: return "io_error";
        case upstream_failure::bad_response: return "bad_response";
        case upstream_failure::over_budget: return "over_budget";
        case upstream_failure::none: break;
    }
    return "none";
}
inline gateway_error failure_error(upstream_failure f) {
    switch (f) {
        case upstream_failure::timeout: return gateway_error::upstream_timeout;
        case upstream_failure::bad_response: return gateway_error::upstream_bad_response;
        case upstream_failure::over_budget: return gateway_error::answer_over_budget;
        default: return gateway_error::upstream_unreachable;
    }
}

struct classified_failure {
    upstream_failure kind;
    std::string message;
};
classified_failure classify_exchange_error(const boost::system::error_code& ec, const std::string& who);

struct upstream_result {
    upstream_failure failure = upstream_failure::none;
    std::string detail;              // human-readable cause when failure != none
    upstream_response response;      // valid when failure == none
    std::chrono::steady_clock::duration elapsed{};
};

class upstream_pool : public std::enable_shared_from_this<upstream_pool> {
public:
    using handler = std::function<void(upstream_result)>;
    struct connection;  // one keep-alive connection (net/upstream_connection.hpp)

    // A connection lent for one streamed exchange (passthrough), connected (and TLS set up).
    struct lease {
        upstream_failure failure = upstream_failure::none;  // connect_failed or timeout, else none
        std::string detail;
        std::unique_ptr<connection> conn;  // set when failure == none
        bool reused = false;               // an idle keep-alive connection, not a new one
    };
    // Who takes a lent connection (async_lease), told exactly once. An interface, not a
    // std::function: the taker (a passthrough exchange) is already shared, and wrapping it in a
    // function was an allocation per request.
    class lease_taker {
    public:
        virtual void take_lease(lease l) = 0;

    protected:
        ~lease_taker() = default;
    };
    using lease_handler = std::shared_ptr<lease_taker>;

    // Throws config::config_error when an https upstream's ca_file cannot be loaded. Answer
    // bodies are reserved from budget while they are read.
    // shards: one executor per worker thread; connections run on the one of the shard that opened them.
    upstream_pool(std::vector<shard_executor> shards, config::upstream_settings settings, memory_budget& budget);
    ~upstream_pool();
    upstream_pool(const upstream_pool&) = delete;
    upstream_pool& operator=(const upstream_pool&) = delete;

    // Sends req (Host is set here) and calls done exactly once, on the thread of the connection
    // that carried it (usually the caller's shard; another's when only its idle connection was
    // free), within `timeout` (plus scheduling delay). The caller posts to its own executor.
    // A request found to have gone on a kept-alive connection the upstream had already closed
    // (nothing came back) is sent once more on a new one: by_method when its method is
    // idempotent; the batcher knows better (yes for a batch of reads, even as a POST; no for a
    // batch of writes, even as a PUT).
    enum class repeat { by_method, yes, no };
    void async_send(upstream_request req, std::chrono::milliseconds timeout, handler done,
                    repeat again = repeat::by_method);

    // Lends a connection until give_back: done is called exactly once, on the connection's
    // executor when one is lent, on any thread when none came before `deadline`. fresh: never an
    // idle one (a retry after a reused connection failed).
    void async_lease(std::chrono::steady_clock::time_point deadline, bool fresh, lease_handler done);
    // Ends a lease: reusable only after complete messages both ways and nothing unread. Call on
    // the connection's executor.
    void give_back(std::unique_ptr<connection> conn, bool reusable);

    // "host[:port]", the Host of every request to this upstream.
    const std::string& host_header() const { return host_header_; }

    // Closes idle connections; calls in flight finish normally.
    void close_idle();

    // After the io_context has stopped for good: drops the queued calls and idle connections
    // without calling anyone back. Their handlers hold callers' sessions, which hold the
    // runtime that holds this pool: left in place, that cycle outlives the process's end.
    void abandon();

    const config::upstream_settings& settings() const { return settings_; }

    // What the pool holds now (the status page and /metrics read it; takes the pool's lock).
    struct usage {
        std::size_t in_use = 0;  // lent out or being connected
        std::size_t idle = 0;    // kept alive for the next call
        std::size_t queued = 0;  // calls waiting for a connection (max_connections reached)
    };
    usage current_usage();

private:
    // An idle pooled connection keeps a read buffer of at most this capacity.
    static constexpr std::size_t idle_buffer_keep = 8 * 1024;

    class call;
    friend class call;

    // Gives the call a connection now (idle or new), or queues it.
    void acquire(const std::shared_ptr<call>& c);  // c->fresh(): never an idle connection
    // Returns a connection (nullptr: it is broken) and hands a slot to the next queued call.
    void release(std::unique_ptr<connection> conn);
    // A queued call gave up; false when it was already handed a slot.
    bool forget(const call* c);

    std::vector<shard_executor> shards_;
    config::upstream_settings settings_;
    memory_budget& budget_;
    std::string host_header_;  // "host[:port]" for every request
    std::unique_ptr<boost::asio::ssl::context> tls_;  // https:// upstreams only
    std::mutex mutex_;
    std::vector<std::vector<std::unique_ptr<connection>>> idle_;  // per shard
    std::deque<std::shared_ptr<call>> waiting_;
    std::size_t active_ = 0;  // connections lent out or being connected
};

}  // namespace batchgate::gateway
