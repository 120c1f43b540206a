// The checks a client request's head must pass before it is routed, in one place so the
// session (gateway/http_session.cpp) and the fuzz target (tests/fuzz/fuzz_request_head.cpp)
// run exactly the same code. Beast-light: fields and the parser's limits only, no Asio.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <boost/beast/http/fields.hpp>
#include <boost/beast/http/message.hpp>

#include "config/config.hpp"
#include "net/errors.hpp"

namespace batchgate::gateway {

using request_head = boost::beast::http::request_header<>;

// Why a request head is refused: the error the client gets. The connection is closed after
// the answer, since the framing of what follows cannot be trusted.
struct head_rejection {
    gateway_error error = gateway_error::bad_request;
    std::string message;
};

// The limits the session sets on every request parser (limits.max_body, limits.max_header).
template <class Parser>
void apply_limits(Parser& parser, const config::limits_settings& limits) {
    parser.body_limit(limits.max_body_bytes);
    parser.header_limit(static_cast<std::uint32_t>(limits.max_header_bytes));
}

// nullopt when the head may be routed. Refused (400):
// - no Host in HTTP/1.1, or more than one Host (RFC 9112 3.2);
// - Transfer-Encoding together with Content-Length, in any order (RFC 9112 6.1);
// - Transfer-Encoding whose final coding is not chunked, or chunked applied more than once
//   (RFC 9112 6.3: the body length cannot be determined; Beast would take it as empty and read
//   the body as the next request);
// - Transfer-Encoding in an HTTP/1.0 request (RFC 9112 6.1: faulty framing);
// - a Host that is not uri-host [":" port] (RFC 9112 3.2: "a Host header field with an invalid
//   field value"): see valid_host;
// - a request-target with a byte over 0x7f (Beast allows obs-text there; a URI never holds it),
//   or with a fragment ('#': RFC 9112 3.2's forms have none, and "/users/1#x" would otherwise
//   route, and key a batch, as "1#x").
// A valid list with a coding before chunked ("gzip, chunked") is a 501: the gateway cannot
// decode it (RFC 9112 6.1).
// Beast's parser already refuses bad or conflicting Content-Length values and a
// Content-Length after chunked.
std::optional<head_rejection> check_request_head(const request_head& head);

// Whether a Host value (or an absolute-form target's authority) is RFC 3986's uri-host with an
// optional port: empty (RFC 9112 3.2 allows it); a reg-name or IPv4 address of unreserved,
// sub-delims and %XX, not empty when a port follows; or an IP literal, "[v<hex>.<chars>]" or
// hex digits, at least two ':' and '.', then perhaps a '%' zone ("[fe80::1%25eth0]"), checked
// for its characters, not its full grammar. The port is digits only (possibly none, as RFC
// 3986 allows), its range unchecked. So
// "a b", "a/b", "a@b", "a\\b", "a:b", "a:1:2", ":80" and "[]" are refused; "a,b" is a valid
// reg-name (',' is a sub-delim).
bool valid_host(std::string_view value);

// RFC 9112 3.2.2: a server MUST accept the absolute-form of request-target ("GET http://c/a").
// An http or https absolute-form target is rewritten in place to its origin-form ("/a", the
// query kept; "/" for an empty path), which is what routes match and what goes upstream, and
// its authority replaces the Host field (a server MUST use the target's host, not Host's).
// OPTIONS of a URI with an empty path and no query becomes "OPTIONS *" (RFC 9112 3.2.4).
// Any other target is left as it is (origin-form, "*", an authority, another scheme: the routes
// decide). Called after check_request_head. Refused (400): an http(s) target whose host is
// empty ("http:///a", "http://:80/a", "http://[]/", RFC 9110 4.2.1) or whose authority holds
// userinfo ("user@host", RFC 9110 4.2.4).
std::optional<head_rejection> normalize_target(request_head& head);

}  // namespace batchgate::gateway
