// Hop-by-hop header fields (RFC 9110 7.6.1): they describe one connection and never cross
// the proxy.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <boost/beast/core/string.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/rfc7230.hpp>

#include "net/wire.hpp"

namespace batchgate::gateway {

namespace http = boost::beast::http;

// An upstream answer's transfer codings beyond chunked, as sent ("" when it has none, or only
// chunked once): its body, once de-chunked, is still coded ("gzip, chunked"), or is framed by
// the connection's close under a coding ("gzip"). The gateway decodes no coding but chunked,
// and a hop-by-hop field is never relayed: relayed as it came, such a body would reach the
// client as if plain (RFC 9112 6.1), so it is a bad answer instead.
template <class Fields>
std::string transfer_coded(const Fields& fields) {
    std::string all;
    std::size_t codings = 0;
    bool only_chunked = true;
    // Beast keeps the lines of one name together, in the order they came.
    auto [first, last] = fields.equal_range(http::field::transfer_encoding);
    for (auto it = first; it != last; ++it) {
        all += (all.empty() ? "" : ", ") + std::string(it->value());
        const http::opt_token_list list{it->value()};
        only_chunked = only_chunked && http::validate_list(list);
        for (auto coding : list) {
            ++codings;
            only_chunked = only_chunked && boost::beast::iequals(coding, "chunked");
        }
    }
    return all.empty() || (only_chunked && codings == 1) ? std::string() : all;
}

// Why such an answer is refused.
inline std::string transfer_coded_answer(const std::string& codings) {
    return "Transfer-Encoding \"" + codings + "\", a coding the gateway does not decode (only chunked)";
}

inline bool is_hop_by_hop(http::field f) {
    // "expect" too: the gateway has the whole body already, and a 100 Continue from the
    // upstream must never be taken for its answer.
    switch (f) {
        case http::field::connection:
        case http::field::keep_alive:
        case http::field::proxy_authenticate:
        case http::field::proxy_authorization:
        case http::field::te:
        case http::field::trailer:
        case http::field::transfer_encoding:
        case http::field::upgrade:
        case http::field::proxy_connection:
        case http::field::expect:
            return true;
        default:
            return false;
    }
}

// Whether the Connection field at `connection` (and any after it) names `name`: a hop-by-hop
// field of the sender's own.
template <class Fields>
inline bool named_by_connection(const Fields& fields, typename Fields::const_iterator connection, std::string_view name) {
    for (auto it = connection; it != fields.end() && it->name() == http::field::connection; ++it)
        for (auto token : http::token_list(it->value()))
            if (boost::beast::iequals(token, name)) return true;
    return false;
}

// Whether a message lets its connection carry another after it (RFC 9112 section 9.3): "close"
// in any Connection line ends it, and HTTP/1.0 persists only with "keep-alive". Beast's
// keep_alive() reads the first Connection line only, and in HTTP/1.0 takes "keep-alive, close"
// for keep-alive.
template <class Fields>
bool connection_persists(const Fields& fields, unsigned version) {
    bool keep_alive = false;
    auto [first, last] = fields.equal_range(http::field::connection);
    for (auto it = first; it != last; ++it)
        for (auto token : http::token_list(it->value())) {
            if (boost::beast::iequals(token, "close")) return false;
            keep_alive = keep_alive || boost::beast::iequals(token, "keep-alive");
        }
    return version >= 11 || keep_alive;
}

// X-Request-Id, a field Beast has no name for: the gateway sets its own on every request it
// forwards and every answer it gives.
template <class Field>
inline bool is_request_id(const Field& f) {
    return f.name() == http::field::unknown && boost::beast::iequals(f.name_string(), "X-Request-Id");
}

// Removes hop-by-hop headers, including any the Connection header names.
template <class Fields>
inline void strip_hop_by_hop(Fields& fields) {
    std::vector<std::string> named;
    for (const auto& f : fields)
        if (f.name() == http::field::connection)
            for (auto token : http::token_list(f.value())) named.emplace_back(token);
    for (const auto& n : named) fields.erase(n);
    for (auto it = fields.begin(); it != fields.end();) {
        if (it->name() != http::field::unknown && is_hop_by_hop(it->name()))
            it = fields.erase(it);
        else
            ++it;
    }
}

// "Name: value\r\n" for each field that crosses this hop and is not one the gateway sets itself
// (`own(field)`), in the order received: the head written straight into its buffer, with no
// copy of the fields to edit first. `crossed(field)` is told of each field written.
template <class Fields, class Own, class Crossed = void (*)(const typename Fields::value_type&)>
inline void append_crossing_fields(std::string& out, const Fields& fields, Own own,
                                   Crossed crossed = [](const typename Fields::value_type&) {}) {
    const auto connection = fields.find(http::field::connection);  // looked up once, not per field
    for (const auto& f : fields) {
        // own first: it sees every field, also one Connection names (it may note what it reads).
        if (own(f)) continue;
        // Beast knows every hop-by-hop name, so the enum decides (no string compares).
        if (f.name() != http::field::unknown && is_hop_by_hop(f.name())) continue;
        if (connection != fields.end() && named_by_connection(fields, connection, f.name_string())) continue;
        wire::append_field(out, f.name_string(), f.value());
        crossed(f);
    }
}

// A list field's line with no element in it: empty, or only commas and spaces (RFC 9110 5.6.1: a
// recipient ignores empty list elements).
inline bool holds_no_element(std::string_view line) { return line.find_first_not_of(" \t,") == line.npos; }

// One X-Forwarded-For line the client sent, as it goes on before this hop: its elements and ", ",
// or nothing when it holds none.
inline void append_forwarded_line(std::string& out, std::string_view line) {
    if (!holds_no_element(line)) out.append(line).append(", ", 2);
}

// X-Forwarded-For's value going upstream: every X-Forwarded-For line the client sent, as one list
// (RFC 9110 5.3; a line with no element adds nothing), then this hop.
template <class Fields>
inline void append_forwarded_for(std::string& out, const Fields& fields, std::string_view client_ip) {
    for (auto [it, last] = fields.equal_range("X-Forwarded-For"); it != last; ++it) append_forwarded_line(out, it->value());
    out.append(client_ip);
}

// Via (RFC 9110 7.6.3): a gateway adds itself to every request it sends on, as the protocol it
// received the request in and its name, in a line of its own after the Via lines the request came
// with (several lines are one list, RFC 9110 5.3).
inline std::string_view via_hop(unsigned version) { return version == 10 ? "1.0 batchgate" : "1.1 batchgate"; }

// What prepare_for_upstream does, written straight into a request head after its start line:
// the client's fields that cross (not Host, Content-Length or the ones set here), then
// X-Request-Id, X-Forwarded-For, -Proto, -Host, Via and Host (`version`: the client's
// request's). Framing fields and the blank line are the caller's.
template <class Fields>
inline void append_upstream_fields(std::string& out, const Fields& fields, unsigned version, std::string_view client_ip,
                                   std::string_view proto, std::string_view request_id, std::string_view host) {
    // The client's Host and X-Forwarded-For, noted in the one pass over its fields (whatever its
    // Connection names).
    std::string_view client_host, first_forwarded;
    bool host_seen = false;
    std::size_t forwarded_lines = 0;
    append_crossing_fields(out, fields, [&](const auto& f) {
        switch (f.name()) {
            case http::field::host:
                if (!host_seen) client_host = f.value(), host_seen = true;
                return true;
            case http::field::content_length:
                return true;
            case http::field::unknown: {
                auto n = f.name_string();
                if (boost::beast::iequals(n, "X-Forwarded-For")) {
                    if (forwarded_lines++ == 0) first_forwarded = f.value();
                    return true;
                }
                return boost::beast::iequals(n, "X-Request-Id") || boost::beast::iequals(n, "X-Forwarded-Proto") ||
                       boost::beast::iequals(n, "X-Forwarded-Host");
            }
            default:
                return false;
        }
    });
    wire::append_field(out, "X-Request-Id", request_id);
    out.append("X-Forwarded-For: ", 17);
    if (forwarded_lines > 1)
        append_forwarded_for(out, fields, client_ip);  // the rare case: look them all up
    else {  // none or one line (behind an ingress, every request), without a look-up
        if (forwarded_lines == 1) append_forwarded_line(out, first_forwarded);
        out.append(client_ip);
    }
    out.append("\r\n", 2);
    wire::append_field(out, "X-Forwarded-Proto", proto);
    if (!client_host.empty()) wire::append_field(out, "X-Forwarded-Host", client_host);
    wire::append_field(out, "Via", via_hop(version));
    wire::append_field(out, "Host", host);
}

// The longest field value Beast holds (it keeps a value's length in 16 bits, and throws past it).
inline constexpr std::size_t max_field_value = 65533;

// Why a request whose X-Forwarded-For would be longer than that is refused (431).
inline constexpr std::string_view forwarded_for_too_long =
    "X-Forwarded-For with this hop added would be longer than a header field can be (64 KiB)";

// A client's header fields made ready to go upstream: hop-by-hop fields removed (after
// X-Forwarded-For and X-Forwarded-Host were taken from what the client sent, and the request id
// the gateway set, before the client's Connection header could strip them), Host removed (the
// pool sets the upstream's), and X-Forwarded-For, -Proto and -Host set. False, and the fields
// untouched, when X-Forwarded-For would be over max_field_value.
template <class Fields>
[[nodiscard]] inline bool prepare_for_upstream(Fields& fields, const std::string& client_ip, std::string_view proto) {
    std::string xff;
    append_forwarded_for(xff, fields, client_ip);
    if (xff.size() > max_field_value) return false;
    std::string forwarded_host;
    if (auto it = fields.find(http::field::host); it != fields.end()) forwarded_host = std::string(it->value());
    std::string request_id;  // the gateway's own (set before this): Connection cannot name it away
    if (auto it = fields.find("X-Request-Id"); it != fields.end()) request_id = std::string(it->value());
    strip_hop_by_hop(fields);
    fields.erase(http::field::host);
    if (!request_id.empty() && fields.find("X-Request-Id") == fields.end()) fields.set("X-Request-Id", request_id);
    fields.set("X-Forwarded-For", xff);
    fields.set("X-Forwarded-Proto", proto);
    // The client's Host, or none: never one the client named itself (an empty Host).
    fields.erase("X-Forwarded-Host");
    if (!forwarded_host.empty()) fields.set("X-Forwarded-Host", forwarded_host);
    return true;
}

}  // namespace batchgate::gateway
