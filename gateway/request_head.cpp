#include "gateway/request_head.hpp"

#include <algorithm>
#include <array>
#include <iterator>
#include <string_view>

#include <boost/beast/core/string.hpp>
#include <boost/beast/http/rfc7230.hpp>

#include "text/url.hpp"

namespace batchgate::gateway {

namespace http = boost::beast::http;

namespace {

using routes::is_hex_digit;

// RFC 3986 unreserved / sub-delims.
// unreserved or sub-delims (RFC 3986 3.2.2), as a table: every request's Host is checked.
constexpr auto reg_name_chars = [] {
    std::array<bool, 256> t{};
    for (unsigned c = 0; c < 256; ++c)
        t[c] = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               std::string_view("-._~!$&'()*+,;=").find(static_cast<char>(c)) != std::string_view::npos;
    return t;
}();
bool is_reg_name_char(char c) { return reg_name_chars[static_cast<unsigned char>(c)]; }

bool all_digits(std::string_view s) {
    for (char c : s)
        if (c < '0' || c > '9') return false;
    return true;
}

}  // namespace

bool valid_host(std::string_view v) {
    if (v.empty()) return true;  // RFC 9112 3.2: a target URI without an authority
    std::string_view port;
    if (v.front() == '[') {
        // IP-literal, checked for its characters, not its full grammar: IPvFuture is "v", hex
        // digits, "." and unreserved, sub-delims or ':'; an IPv6 address is hex digits, ':' (at
        // least two) and '.' (an IPv4 tail), then perhaps a zone: '%' and unreserved or '%'
        // (RFC 6874 writes "%25"; browsers send it bare).
        const auto close = v.find(']');
        if (close == std::string_view::npos || close == 1) return false;
        const auto inside = v.substr(1, close - 1);
        if (inside.front() == 'v' || inside.front() == 'V') {
            const auto dot = inside.find('.');
            if (dot == std::string_view::npos || dot == 1 || dot + 1 == inside.size()) return false;
            for (char c : inside.substr(1, dot - 1))
                if (!is_hex_digit(c)) return false;
            for (char c : inside.substr(dot + 1))
                if (!is_reg_name_char(c) && c != ':') return false;
        } else {
            const auto percent = inside.find('%');
            const auto address = inside.substr(0, percent);
            if (std::count(address.begin(), address.end(), ':') < 2) return false;
            for (char c : address)
                if (!is_hex_digit(c) && c != ':' && c != '.') return false;
            if (percent != std::string_view::npos) {
                const auto zone = inside.substr(percent + 1);
                if (zone.empty()) return false;
                for (char c : zone)
                    if (!is_reg_name_char(c) && c != '%') return false;
            }
        }
        const auto rest = v.substr(close + 1);
        if (rest.empty()) return true;
        if (rest.front() != ':') return false;
        port = rest.substr(1);
    } else {
        const auto colon = v.find(':');
        const auto host = v.substr(0, colon);
        // RFC 9110 4.2.1: an http(s) URI's host is never empty (":80" names none).
        if (host.empty()) return false;
        for (std::size_t i = 0; i < host.size(); ++i) {
            if (host[i] == '%') {  // pct-encoded
                if (i + 2 >= host.size() || !is_hex_digit(host[i + 1]) || !is_hex_digit(host[i + 2])) return false;
                i += 2;
            } else if (!is_reg_name_char(host[i])) {
                return false;
            }
        }
        if (colon == std::string_view::npos) return true;
        port = v.substr(colon + 1);
    }
    return all_digits(port);  // RFC 3986's port is *DIGIT: "c:" is valid
}

std::optional<head_rejection> check_request_head(const request_head& head) {
    // One pass over the fields, by the name Beast gave each as it parsed it (case-insensitive):
    // cheaper than the field set's look-ups by name for the few fields a head carries.
    std::size_t hosts = 0, lengths = 0, te_lines = 0;
    boost::beast::string_view host;
    for (const auto& f : head) {
        switch (f.name()) {
            case http::field::host:
                if (hosts++ == 0) host = f.value();
                break;
            case http::field::content_length: ++lengths; break;
            case http::field::transfer_encoding: ++te_lines; break;
            default: break;
        }
    }
    if (hosts > 1) return head_rejection{gateway_error::bad_request, "more than one Host header"};
    if (hosts == 0 && head.version() >= 11)
        return head_rejection{gateway_error::bad_request, "HTTP/1.1 request without a Host header"};
    if (hosts == 1 && !valid_host(host))
        return head_rejection{gateway_error::bad_request, "the Host header is not a host[:port]"};
    for (char c : std::string_view(head.target())) {
        if (static_cast<unsigned char>(c) >= 0x80)  // Beast allows obs-text here; a URI never holds it
            return head_rejection{gateway_error::bad_request, "request-target holds a byte over 0x7f"};
        if (c == '#')  // RFC 9112 3.2: a request-target has no fragment
            return head_rejection{gateway_error::bad_request, "request-target holds a fragment ('#')"};
    }

    if (te_lines == 0) return std::nullopt;
    if (lengths != 0)
        return head_rejection{gateway_error::bad_request, "request has both Transfer-Encoding and Content-Length"};
    if (head.version() < 11)
        return head_rejection{gateway_error::bad_request, "HTTP/1.0 request with Transfer-Encoding"};
    // The codings of every Transfer-Encoding line, in order: chunked exactly once, and last.
    std::size_t codings = 0;
    std::size_t chunked_at = 0;  // 1-based position of the first chunked; 0 = none
    for (const auto& f : head) {
        if (f.name() != http::field::transfer_encoding) continue;
        for (auto coding : http::token_list{f.value()}) {
            ++codings;
            if (chunked_at == 0 && boost::beast::iequals(coding, "chunked")) chunked_at = codings;
        }
    }
    // The first chunked is the last coding: present, final and never applied twice.
    if (chunked_at == 0 || chunked_at != codings)
        return head_rejection{gateway_error::bad_request,
                              "Transfer-Encoding must end with chunked, applied once"};
    if (codings > 1)  // RFC 9112 6.1: a coding the gateway cannot decode (gzip, chunked) is a 501
        return head_rejection{gateway_error::not_implemented, "only the chunked transfer coding is supported"};
    return std::nullopt;
}

std::optional<head_rejection> normalize_target(request_head& head) {
    const std::string_view target = head.target();
    if (target.empty() || target.front() == '/') return std::nullopt;  // origin-form: the usual case
    const auto colon = target.find("://");
    if (colon == std::string_view::npos) return std::nullopt;
    const auto scheme = target.substr(0, colon);
    if (!boost::beast::iequals(scheme, "http") && !boost::beast::iequals(scheme, "https")) return std::nullopt;
    const auto rest = target.substr(colon + 3);
    const auto authority = rest.substr(0, rest.find_first_of("/?#"));
    if (authority.find('@') != std::string_view::npos)
        return head_rejection{gateway_error::bad_request, "absolute-form request-target with userinfo"};
    // "", ":80" and "[]" name no host (RFC 9110 4.2.1).
    if (authority.empty() || authority.front() == ':' || authority.starts_with("[]"))
        return head_rejection{gateway_error::bad_request, "absolute-form request-target without a host"};
    if (!valid_host(authority))
        return head_rejection{gateway_error::bad_request, "absolute-form request-target's authority is not a host[:port]"};
    std::string origin(rest.substr(authority.size()));
    // RFC 9112 3.2.4: OPTIONS of a URI with an empty path and no query asks about the server:
    // the origin gets "*".
    if (origin.empty() && head.method() == http::verb::options) origin.assign(1, '*');  // not = "*": GCC 12 warns falsely (-Wrestrict, PR 105329)
    if (origin.empty() || (origin.front() != '/' && origin != "*")) origin.insert(0, 1, '/');
    const std::string host(authority);  // a view into the target, which target() replaces
    head.target(origin);
    head.set(http::field::host, host);
    return std::nullopt;
}

}  // namespace batchgate::gateway
