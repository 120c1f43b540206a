// Fuzz target: the bytes a client sends, read the way the session reads them
// (gateway/http_session.cpp do_read/on_header/read_body): a Beast request_parser with the
// session's limits (apply_limits), the head first, then check_request_head
// and normalize_target (gateway/request_head.hpp), then the body; pipelined requests one after the other on the
// same buffer. Checks that a head the session accepts is framed the way the checks promise:
// Transfer-Encoding means chunked, nothing else is.
// Input: byte 0 picks the limits and the size of each read, the rest is the connection's bytes.
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include "fuzz_common.hpp"
#include "fuzz_http.hpp"
#include "gateway/request_head.hpp"

using namespace batchgate;
namespace http = boost::beast::http;

using fuzz::connection;
using fuzz::parse_until;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    fuzz::input in(data, size);
    const std::uint8_t choice = in.byte();
    config::limits_settings limits;  // the defaults of limits.max_body and limits.max_header
    if (choice & 1) {                // and small ones, so the limits are reached
        limits.max_body_bytes = 64;
        limits.max_header_bytes = 256;
    }
    constexpr std::size_t read_sizes[] = {65536, 1, 7, 100};
    connection conn(in.rest(), read_sizes[(choice >> 1) % std::size(read_sizes)]);

    std::string buffer;  // the session's flat_buffer: bytes read but not parsed yet
    for (int n = 0; n < 8; ++n) {  // keep-alive: one parser per request
        http::request_parser<http::string_body> parser;
        gateway::apply_limits(parser, limits);
        if (!parse_until(parser, buffer, conn, [&] { return parser.is_header_done(); })) return 0;

        auto& head = parser.get().base();
        auto rejected = gateway::check_request_head(head);
        if (!rejected) {
            const std::string before(head.target());
            rejected = gateway::normalize_target(head);
            const std::string_view after = head.target();
            if (!rejected && after != before) {
                // Only an http(s) absolute-form target is rewritten: to origin-form, its
                // authority the one Host.
                fuzz::check(!after.empty() && (after.front() == '/' || (after == "*" && head.method() == http::verb::options)),
                            "absolute-form rewritten to a target without '/'");
                fuzz::check(before.find("://") != std::string::npos, "a target that is not absolute-form was rewritten");
                fuzz::check(head.count(http::field::host) == 1, "absolute-form rewrite left no single Host");
                fuzz::check(before.find(std::string(head[http::field::host])) != std::string::npos,
                            "Host is not the absolute-form target's authority");
            }
        }
        const bool has_te = head.count(http::field::transfer_encoding) != 0;
        if (rejected) {
            fuzz::check(!rejected->message.empty(), "a rejection without a message");
            return 0;  // answered 400, connection closed
        }
        // What the checks promise about the framing of everything that follows.
        fuzz::check(has_te == parser.chunked(), has_te ? "Transfer-Encoding accepted but the body is not read as chunked"
                                                       : "chunked framing without Transfer-Encoding");
        if (has_te) fuzz::check(head.count(http::field::content_length) == 0, "Transfer-Encoding with Content-Length accepted");
        fuzz::check(head.count(http::field::host) == 1 || (head.version() < 11 && head.count(http::field::host) == 0),
                    "Host checks let a bad head through");
        // What goes upstream as X-Forwarded-Host, and what routes and batch keys are cut from,
        // holds no delimiter that would change its meaning.
        fuzz::check(head[http::field::host].find_first_of(" \t/?#@\\\"<>{}|^`") == std::string_view::npos,
                    "a Host holding a delimiter got through");
        fuzz::check(std::string_view(head.target()).find('#') == std::string_view::npos, "a target with a fragment got through");

        if (!parse_until(parser, buffer, conn, [&] { return parser.is_done(); })) return 0;
        const auto& req = parser.get();
        fuzz::check(req.body().size() <= limits.max_body_bytes, "body over limits.max_body");
        if (!req.keep_alive()) return 0;
    }
    return 0;
}
