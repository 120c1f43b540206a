// Fuzz target: the bytes a client sends, read the way the session reads them
// (gateway/http_session.cpp do_read/on_header/read_body): a Beast request_parser with the
// session's limits (apply_limits), the head first, then check_request_head
// and normalize_target (gateway/request_head.hpp), then the body; pipelined requests one after the other on the
// same buffer. Checks that a head the session accepts is framed the way the checks promise:
// Transfer-Encoding means chunked, nothing else is; and that what goes upstream from it (the
// streamed head, append_upstream_fields, and the buffered one, prepare_for_upstream) is one
// well-formed head with the gateway's own forwarding fields, the same fields on both paths.
// Input: byte 0 picks the limits and the size of each read, the rest is the connection's bytes.
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <set>
#include <optional>
#include <string>
#include <string_view>

#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include "fuzz_common.hpp"
#include "fuzz_http.hpp"
#include "gateway/request_head.hpp"
#include "net/hop_by_hop.hpp"

using namespace batchgate;
namespace http = boost::beast::http;

using fuzz::connection;
using fuzz::parse_until;

namespace {

using fields_list = std::multiset<std::pair<std::string, std::string>>;

// A head's fields (names lower case), but those the two paths frame or name themselves.
template <class Fields>
fields_list crossing(const Fields& fields) {
    fields_list out;
    for (const auto& f : fields) {
        std::string name(f.name_string());
        for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if (name == "host" || name == "via" || name == "content-length" || name == "x-request-id") continue;
        out.emplace(std::move(name), std::string(f.value()));
    }
    return out;
}

// What an accepted head becomes upstream: the streamed path writes it as bytes
// (append_upstream_fields), the buffered one edits the fields (prepare_for_upstream). The bytes
// parse back as one head, with the gateway's own Host, X-Request-Id and forwarding fields once
// each, no hop-by-hop field and nothing the client's Connection named; and both paths let the
// same fields cross, with the same values.
void check_upstream_head(const http::request_header<>& head) {
    std::string bytes = "GET / HTTP/1.1\r\n";
    gateway::append_upstream_fields(bytes, head, head.version(), "192.0.2.1", "http", "rid-1", "upstream:9000");
    bytes += "\r\n";
    http::request_parser<http::empty_body> again;
    again.header_limit(1 << 20);
    boost::beast::error_code ec;
    const std::size_t used = again.put(boost::asio::buffer(bytes), ec);
    fuzz::check(!ec && again.is_header_done() && used == bytes.size(), "the upstream head does not parse back");
    const auto& up = again.get();
    for (auto name : {"Host", "X-Request-Id", "X-Forwarded-For", "X-Forwarded-Proto"})
        fuzz::check(up.count(name) == 1, "the gateway's own field is not there once");
    auto [via, via_end] = up.equal_range(http::field::via);  // the client's lines, then this hop's
    std::string_view last_via;
    for (; via != via_end; ++via) last_via = via->value();
    fuzz::check(last_via == gateway::via_hop(head.version()), "the last Via is not this hop");
    fuzz::check(up[http::field::host] == "upstream:9000" && up["X-Request-Id"] == "rid-1" &&
                    up["X-Forwarded-Proto"] == "http",
                "the gateway's own field has another value");
    fuzz::check(std::string_view(up["X-Forwarded-For"]).ends_with("192.0.2.1"),
                "X-Forwarded-For does not end in this hop");
    const std::string_view client_host = head[http::field::host];  // may be empty (RFC 9110 7.2)
    fuzz::check(up.count("X-Forwarded-Host") == (client_host.empty() ? 0u : 1u) &&
                    (client_host.empty() || up["X-Forwarded-Host"] == client_host),
                "X-Forwarded-Host is not the client's Host");
    for (auto f : {http::field::connection, http::field::keep_alive, http::field::te, http::field::trailer,
                   http::field::transfer_encoding, http::field::upgrade, http::field::proxy_connection,
                   http::field::content_length})
        fuzz::check(up.count(f) == 0, "a hop-by-hop or framing field crossed");

    http::request_header<> edited = head;
    edited.set("X-Request-Id", "rid-1");  // as the session (or a coalesce route's exchange) sets it before
    if (!gateway::prepare_for_upstream(edited, "192.0.2.1", "http")) {
        fuzz::check(up["X-Forwarded-For"].size() > gateway::max_field_value, "a X-Forwarded-For that fits was refused");
        return;
    }
    fuzz::check(crossing(up) == crossing(edited), "the streamed and buffered paths let other fields cross");
}

}  // namespace

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

        check_upstream_head(head);

        if (!parse_until(parser, buffer, conn, [&] { return parser.is_done(); })) return 0;
        const auto& req = parser.get();
        fuzz::check(req.body().size() <= limits.max_body_bytes, "body over limits.max_body");
        if (!req.keep_alive()) return 0;
    }
    return 0;
}
