#include "gateway/request_head.hpp"

#include <boost/beast/core/string.hpp>
#include <boost/beast/http/rfc7230.hpp>

namespace batchgate::gateway {

namespace http = boost::beast::http;

std::optional<head_rejection> check_request_head(const request_head& head) {
    const auto hosts = head.count(http::field::host);
    if (hosts > 1) return head_rejection{gateway_error::bad_request, "more than one Host header"};
    if (hosts == 0 && head.version() >= 11)
        return head_rejection{gateway_error::bad_request, "HTTP/1.1 request without a Host header"};
    for (char c : std::string_view(head.target()))
        if (static_cast<unsigned char>(c) >= 0x80)  // Beast allows obs-text here; a URI never holds it
            return head_rejection{gateway_error::bad_request, "request-target holds a byte over 0x7f"};

    auto [te_first, te_last] = head.equal_range(http::field::transfer_encoding);
    if (te_first == te_last) return std::nullopt;
    if (head.count(http::field::content_length) != 0)
        return head_rejection{gateway_error::bad_request, "request has both Transfer-Encoding and Content-Length"};
    if (head.version() < 11)
        return head_rejection{gateway_error::bad_request, "HTTP/1.0 request with Transfer-Encoding"};
    // The codings of every Transfer-Encoding line, in order: chunked exactly once, and last.
    std::size_t codings = 0;
    std::size_t chunked_at = 0;  // 1-based position of the first chunked; 0 = none
    for (auto it = te_first; it != te_last; ++it)
        for (auto coding : http::token_list{it->value()}) {
            ++codings;
            if (chunked_at == 0 && boost::beast::iequals(coding, "chunked")) chunked_at = codings;
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
    // The host is what precedes the port (after an IP literal's ']', if any): "", ":80" and
    // "[]" name none.
    const auto bracket = authority.rfind(']');
    const auto port = authority.find(':', bracket == std::string_view::npos ? 0 : bracket);
    const auto host_part = authority.substr(0, port);
    if (host_part.empty() || host_part == "[]")
        return head_rejection{gateway_error::bad_request, "absolute-form request-target without a host"};
    std::string origin(rest.substr(authority.size()));
    // RFC 9112 3.2.4: OPTIONS of a URI with an empty path and no query asks about the server:
    // the origin gets "*".
    if (origin.empty() && head.method() == http::verb::options) origin = "*";
    if (origin.empty() || (origin.front() != '/' && origin != "*")) origin.insert(0, 1, '/');
    const std::string host(authority);  // a view into the target, which target() replaces
    head.target(origin);
    head.set(http::field::host, host);
    return std::nullopt;
}

}  // namespace batchgate::gateway
